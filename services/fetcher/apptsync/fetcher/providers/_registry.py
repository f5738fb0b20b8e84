"""Which session pages which provider. Adding a provider = one module plus one line in _FACTORIES."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from apptsync.fetcher.providers._http import ProviderHttp
from apptsync.fetcher.providers._model import ConnectionConfig, JobWindow, JsonValue, ProviderSession
from apptsync.fetcher.providers._state import ConnectionStateStore
from apptsync.fetcher.providers.acuity import open_acuity_session
from apptsync.fetcher.providers.acuity._targeted import AcuityTargetedSession
from apptsync.fetcher.providers.calendly import open_calendly_session
from apptsync.fetcher.providers.calendly._targeted import CalendlyTargetedSession
from apptsync.fetcher.providers.google_calendar import open_google_calendar_session
from apptsync.shared.appointments import Source
from apptsync.shared.errors import InvalidArgumentError


class SessionFactory(Protocol):
    def __call__(
        self,
        *,
        http: ProviderHttp,
        connection: ConnectionConfig,
        window: JobWindow,
        page_size: int,
        cursor: JsonValue | None,
        clock: Callable[[], datetime],
        state: ConnectionStateStore | None = None,
        near_term: JobWindow | None = None,
        clients: bool = False,
    ) -> ProviderSession: ...


_FACTORIES: dict[Source, SessionFactory] = {
    Source.ACUITY: open_acuity_session,
    Source.CALENDLY: open_calendly_session,
    Source.GOOGLE_CALENDAR: open_google_calendar_session,
}


def supported_sources() -> frozenset[Source]:
    return frozenset(_FACTORIES)


def open_session(
    source: Source,
    *,
    http: ProviderHttp,
    connection: ConnectionConfig,
    window: JobWindow,
    page_size: int,
    cursor: JsonValue | None,
    clock: Callable[[], datetime],
    state: ConnectionStateStore | None = None,
    near_term: JobWindow | None = None,
    clients: bool = False,
) -> ProviderSession:
    """A session paging `connection`'s appointments inside `window`, `page_size` records per request,
    resuming after `cursor` (None: from the start). No I/O happens until `next_page()`.

    `state` keeps what a provider needs between jobs (Google sync tokens) and stores refreshed OAuth
    credentials, serialized per connection; None keeps both in the session's memory only.

    `near_term` (see `near_term_window`) is walked first and completely by providers that page by
    start time (Acuity, Calendly), its pages marked `near_term`; None walks as before. It shapes a new
    walk only: a session resumed from a cursor keeps the order that cursor holds. Google Calendar's
    incremental sync sees every change anyway and ignores it.

    `clients`: a new walk first sends the provider's client list as the clients stream (pages of
    contacts and no records) where the provider has one (Acuity's `GET /clients`); the fetcher asks
    for it in jobs that walk everything (first imports and full syncs), not in frequent syncs.

    Raises InvalidArgumentError for an unsupported source, a page size below 1, an unreadable cursor
    or bad connection settings."""
    factory = _FACTORIES.get(source)
    if factory is None:
        raise InvalidArgumentError("source", f"{source.value} is not supported yet")
    return factory(
        http=http,
        connection=connection,
        window=window,
        page_size=page_size,
        cursor=cursor,
        clock=clock,
        state=state,
        clients=clients,
        near_term=near_term,
    )


def open_targeted_session(
    source: Source,
    *,
    http: ProviderHttp,
    connection: ConnectionConfig,
    window: JobWindow,
    page_size: int,
    targets: Sequence[str],
    cursor: JsonValue | None,
    clock: Callable[[], datetime],
    state: ConnectionStateStore,
) -> ProviderSession:
    """A session for a targeted job (queued by provider notifications): Acuity fetches each target
    appointment id, Calendly pages the verified invitees (with their events) the notifications carried
    (see apptsync.shared.webhooks.calendly_target), Google runs its incremental sync
    with the stored sync token (a Google notification names no event). Same pages as any session.

    Raises InvalidArgumentError for an unsupported source, malformed targets or cursor."""
    if source is Source.ACUITY:
        return AcuityTargetedSession(
            http=http, connection=connection, window=window, page_size=page_size, targets=targets,
            cursor=cursor, clock=clock,
        )
    if source is Source.CALENDLY:
        return CalendlyTargetedSession(window=window, page_size=page_size, targets=targets, cursor=cursor, clock=clock)
    if source is Source.GOOGLE_CALENDAR:
        return open_google_calendar_session(
            http=http, connection=connection, window=window, page_size=page_size, cursor=cursor, clock=clock,
            state=state,
        )
    raise InvalidArgumentError("source", f"{source.value} has no targeted sync")
