"""The Calendly targeted session: the invitees that webhook notifications carried, as pages.

A Calendly notification carries the invitee resource and its scheduled event; the receiver verified
its signature (the subscription's own signing key) and its age, and stored both in the job's target
(`apptsync.shared.webhooks.calendly_target` says why the payload is used rather than fetched again).
This session turns those into pages with the same normalizer as the polling session, so counts,
ledger and newer-wins apply as for any page. It sends no request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from apptsync.fetcher.providers._model import JobWindow, JsonValue, ProviderPage
from apptsync.fetcher.providers.acuity._targeted import targeted_cursor_position
from apptsync.fetcher.providers.calendly._normalizer import FetchedEvent, calendly_page
from apptsync.shared.errors import InvalidArgumentError
from apptsync.shared.webhooks import calendly_target_parts


class CalendlyTargetedSession:
    """A ProviderSession over the invitees (with their events) a targeted job carries."""

    def __init__(
        self,
        *,
        window: JobWindow,
        page_size: int,
        targets: Sequence[str],
        cursor: JsonValue | None,
        clock: Callable[[], datetime],
    ) -> None:
        if page_size < 1:
            raise InvalidArgumentError("page_size", "must be at least 1")
        parsed = [calendly_target_parts(target) for target in targets]
        if any(part is None for part in parsed):
            raise InvalidArgumentError("targets", "a Calendly target is not a notification's invitee and event")
        self._targets = [part for part in parsed if part is not None]
        self._window = window
        self._page_size = page_size
        self._next = targeted_cursor_position(cursor, len(self._targets))
        self._clock = clock

    @property
    def retries(self) -> int:
        return 0

    @property
    def near_term_pages(self) -> int:
        return 0

    def cursor(self) -> JsonValue:
        return {"next": self._next}

    async def next_page(self) -> ProviderPage | None:
        """The next `page_size` targets as one page (invitees grouped by event); None at the end."""
        if self._next >= len(self._targets):
            return None
        batch = self._targets[self._next : self._next + self._page_size]
        self._next += len(batch)
        by_event: dict[str, tuple[JsonValue, list[JsonValue]]] = {}
        for key, invitee, event in batch:
            event_uuid = key.split("/", 1)[0]
            if event_uuid not in by_event:
                by_event[event_uuid] = (_json(event), [])
            by_event[event_uuid][1].append(_json(invitee))
        fetched = [FetchedEvent(event, invitees) for event, invitees in by_event.values()]
        return calendly_page(fetched, window=self._window, fetched_at=self._clock())


def _json(document: dict[str, object]) -> JsonValue:
    """A JSON object parsed by json.loads is a JsonValue (mypy cannot see through `object`)."""
    return document  # type: ignore[return-value]
