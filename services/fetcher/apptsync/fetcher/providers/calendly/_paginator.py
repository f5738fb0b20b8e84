"""Calendly's pager: `GET /scheduled_events` by `page_token`, as a pure state object (no I/O).

Calendly pages with opaque tokens: the last page has no `next_page_token`. The listing is scoped to
an organization or a user (connection settings) and to the job window by `min_start_time` /
`max_start_time`; the normalizer enforces the exact window again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from apptsync.fetcher.providers._model import JobWindow, JsonValue
from apptsync.fetcher.providers._page_tokens import PageTokenTrail
from apptsync.shared.errors import InvalidArgumentError, PaginationLoopError

CURSOR_VERSION = 1
MAX_COUNT = 100  # Calendly's largest `count`


@dataclass(frozen=True, slots=True)
class CalendlyScope:
    """Whose events are listed: `organization=<uri>` (admins and owners) or `user=<uri>`."""

    parameter: str
    uri: str


def calendly_scope(settings: Mapping[str, str]) -> CalendlyScope:
    """The listing scope from connection settings `organization` (preferred) or `user`.

    Raises InvalidArgumentError when neither is set."""
    for parameter in ("organization", "user"):
        uri = settings.get(parameter, "").strip()
        if uri:
            return CalendlyScope(parameter, uri)
    raise InvalidArgumentError("settings", "a calendly connection needs an `organization` or `user` URI")


def calendly_time(moment: datetime) -> str:
    """Calendly's UTC timestamp form, e.g. `2024-06-15T14:00:00.000000Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class CalendlyEventsRequest:
    """One `GET /scheduled_events` query."""

    page_token: str | None
    count: int
    min_start_time: str
    max_start_time: str

    def query_params(self, scope: CalendlyScope) -> dict[str, str]:
        params = {
            scope.parameter: scope.uri,
            "count": str(self.count),
            "min_start_time": self.min_start_time,
            "max_start_time": self.max_start_time,
            "sort": "start_time:desc",
        }
        if self.page_token is not None:
            params["page_token"] = self.page_token
        return params


class CalendlyPaginator:
    """Cursor in, next request out; `next_page_token` in, next cursor out.

    The cursor is `{"v": 1, "page_token": str | null, "done": bool}`. Raises InvalidArgumentError for
    an unreadable cursor or a page size below 1; `accept` raises PaginationLoopError when Calendly
    hands back a token this session already followed."""

    def __init__(self, *, window: JobWindow, page_size: int, cursor: JsonValue | None) -> None:
        if page_size < 1:
            raise InvalidArgumentError("page_size", "must be at least 1")
        self._count = min(MAX_COUNT, page_size)
        self._window = window
        self._page_token, self._done = _parse_cursor(cursor)
        self._trail = PageTokenTrail("calendly /scheduled_events")
        if self._page_token is not None:
            self._trail.follow(self._page_token)

    @property
    def exhausted(self) -> bool:
        return self._done

    def cursor(self) -> JsonValue:
        return {"v": CURSOR_VERSION, "page_token": self._page_token, "done": self._done}

    def next_request(self) -> CalendlyEventsRequest | None:
        if self._done:
            return None
        return CalendlyEventsRequest(
            page_token=self._page_token,
            count=self._count,
            min_start_time=calendly_time(self._window.start),
            max_start_time=calendly_time(self._window.end),
        )

    def accept(self, request: CalendlyEventsRequest, next_page_token: str | None) -> None:
        """Takes the `pagination.next_page_token` of the answer to `request` (None or "": last page)."""
        if request != self.next_request():
            raise ValueError("accept() takes the answer to the current next_request()")
        if not next_page_token:
            self._done = True
            return
        if next_page_token == request.page_token:
            raise PaginationLoopError("pagination loop: calendly /scheduled_events returned the same page token")
        self._trail.follow(next_page_token)
        self._page_token = next_page_token


def _parse_cursor(cursor: JsonValue | None) -> tuple[str | None, bool]:
    if cursor is None:
        return None, False
    if not isinstance(cursor, dict) or cursor.get("v") != CURSOR_VERSION:
        raise InvalidArgumentError("cursor", "not a calendly cursor of version 1")
    token, done = cursor.get("page_token"), cursor.get("done")
    if not (token is None or isinstance(token, str)) or not isinstance(done, bool):
        raise InvalidArgumentError("cursor", "calendly cursor needs `page_token` (string or null) and `done`")
    return token or None, done
