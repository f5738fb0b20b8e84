"""The Calendly targeted session: the invitees named by webhook notifications, fetched by URI.

A Calendly notification carries the invitee resource, but the receiver does not trust it as the
record: the payload arrives over the internet, is signed with a key stored beside the connection, and
may be older than a later change (notifications can arrive late or out of order). The invitee is
fetched by its URI (`GET /scheduled_events/{event}/invitees/{invitee}`, which the receiver checked is
on the connection's API origin) and its event by the invitee's `event` URI, with the connection's
token; what Calendly answers now is what is written (newer-wins then orders versions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from apptsync.fetcher.providers._http import ProviderHttp
from apptsync.fetcher.providers._model import ConnectionConfig, JobWindow, JsonValue, ProviderPage
from apptsync.fetcher.providers._oauth import OAuthBearer
from apptsync.fetcher.providers._state import ConnectionStateStore
from apptsync.fetcher.providers.acuity._targeted import targeted_cursor_position
from apptsync.fetcher.providers.calendly._normalizer import FetchedEvent, calendly_page
from apptsync.fetcher.providers.calendly._session import (
    CALENDLY_PUBLIC_API,
    CALENDLY_RATE_BUDGET,
    CALENDLY_TOKEN_URL,
)
from apptsync.shared.appointments import Source
from apptsync.shared.errors import InvalidArgumentError, ProviderRejectedError
from apptsync.shared.webhooks import calendly_uri_allowed


def _resource(body: JsonValue, what: str) -> dict[str, JsonValue]:
    resource = body.get("resource") if isinstance(body, dict) else None
    if not isinstance(resource, dict):
        raise ProviderRejectedError(f"calendly {what} answered without a `resource` object", status_code=200)
    return resource


class CalendlyTargetedSession:
    """A ProviderSession over each target invitee URI (and its event)."""

    def __init__(
        self,
        *,
        http: ProviderHttp,
        connection: ConnectionConfig,
        window: JobWindow,
        page_size: int,
        targets: Sequence[str],
        cursor: JsonValue | None,
        clock: Callable[[], datetime],
        state: ConnectionStateStore,
    ) -> None:
        if page_size < 1:
            raise InvalidArgumentError("page_size", "must be at least 1")
        base_url = (connection.base_url or CALENDLY_PUBLIC_API).rstrip("/")
        bad = [target for target in targets if not calendly_uri_allowed(target, base_url)]
        if bad:
            raise InvalidArgumentError("targets", f"{len(bad)} Calendly target(s) are not invitee URIs of the API")
        token_url = connection.settings.get("token_url", "").strip()
        if not token_url:
            token_url = base_url + "/oauth/token" if connection.base_url else CALENDLY_TOKEN_URL
        self._auth = OAuthBearer(
            http=http,
            source=Source.CALENDLY,
            budget=CALENDLY_RATE_BUDGET,
            token_url=token_url,
            credentials=connection.credentials,
            store=state,
        )
        self._http = http
        self._base_url = base_url
        self._rate_limit_scope = connection.scope_key or f"session-{id(self)}"
        self._window = window
        self._page_size = page_size
        self._targets = list(targets)
        self._next = targeted_cursor_position(cursor, len(self._targets))
        self._clock = clock
        self._retries = 0

    @property
    def retries(self) -> int:
        return self._retries

    @property
    def near_term_pages(self) -> int:
        return 0

    def cursor(self) -> JsonValue:
        return {"next": self._next}

    async def next_page(self) -> ProviderPage | None:
        """The next batch of target invitees Calendly still has, each with its event; None at the end."""
        while self._next < len(self._targets):
            batch = self._targets[self._next : self._next + self._page_size]
            by_event: dict[str, tuple[dict[str, JsonValue], list[JsonValue]]] = {}
            for uri in batch:
                invitee = await self._resource_or_none(uri, "invitee")
                if invitee is None:
                    continue
                event_uri = invitee.get("event")
                if not isinstance(event_uri, str) or not event_uri.startswith(self._base_url + "/scheduled_events/"):
                    raise ProviderRejectedError("calendly invitee names no event of the API", status_code=200)
                if event_uri not in by_event:
                    event = await self._resource_or_none(event_uri, "event")
                    if event is None:
                        continue
                    by_event[event_uri] = (event, [])
                by_event[event_uri][1].append(invitee)
            self._next += len(batch)
            if by_event:
                fetched = [FetchedEvent(event, invitees) for event, invitees in by_event.values()]
                return calendly_page(fetched, window=self._window, fetched_at=self._clock())
        return None

    async def _resource_or_none(self, url: str, what: str) -> dict[str, JsonValue] | None:
        """The resource at `url`; None when Calendly has it no more (404)."""

        async def send(headers: dict[str, str]) -> JsonValue:
            response = await self._http.get_json(
                source=Source.CALENDLY,
                budget=CALENDLY_RATE_BUDGET,
                url=url,
                params={},
                headers=headers,
                rate_limit_scope=self._rate_limit_scope,
            )
            self._retries += response.retries
            return response.body

        try:
            return _resource(await self._auth.call(send), what)
        except ProviderRejectedError as exc:
            if exc.status_code == 404:
                return None
            raise
