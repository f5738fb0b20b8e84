"""Calendly's pager: `GET /scheduled_events` by `page_token`, as a pure state object (no I/O).

Calendly pages with opaque tokens: the last page has no `next_page_token`. The listing is scoped to
an organization or a user (connection settings) and to a time range by `min_start_time` /
`max_start_time`; the normalizer enforces the exact job window again.

A walk is one to three listings, one after the other, disjoint in start time and together the whole
job window (see apptsync.fetcher.providers._near_term): the near term, soonest first (always walked
completely); the future beyond it, soonest first; the past, most recent first. Changes grow rarer
with distance from now, so an early-stopping job meets the likeliest news first. Without a near term
it is one listing of the whole window, latest first (the order of cursor version 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apptsync.fetcher.providers._model import JobWindow, JsonValue
from apptsync.fetcher.providers._page_tokens import PageTokenTrail
from apptsync.shared.errors import InvalidArgumentError, PaginationLoopError

CURSOR_VERSION = 2
# Cursors of version 1 (`{"v": 1, "page_token", "done"}`: one listing of the whole window, latest
# first) are still read: a job resumed across the upgrade continues that listing with its token.
_CURSOR_VERSION_ONE_LISTING = 1
MAX_COUNT = 100  # Calendly's largest `count`
# Calendly documents its bounds as "after" and "prior to" without saying whether they include the
# instant itself. A listing that starts inside the window asks from one microsecond earlier (the
# finest step of its timestamps), so it lists its first instant either way; an event at a shared
# boundary that two listings return is kept only by the listing whose range holds it.
_BOUNDARY_OVERLAP = timedelta(microseconds=1)


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
class CalendlyListing:
    """One listing of a walk: the events starting in `[start, end)`, latest first when `descending`.
    `near_term`: its pages never count toward an early stop."""

    start: datetime
    end: datetime
    descending: bool
    near_term: bool

    def holds(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


@dataclass(frozen=True, slots=True)
class CalendlyEventsRequest:
    """One `GET /scheduled_events` query (`near_term`: of the near-term listing)."""

    page_token: str | None
    count: int
    min_start_time: str
    max_start_time: str
    sort: str = "start_time:desc"
    near_term: bool = False

    def query_params(self, scope: CalendlyScope) -> dict[str, str]:
        params = {
            scope.parameter: scope.uri,
            "count": str(self.count),
            "min_start_time": self.min_start_time,
            "max_start_time": self.max_start_time,
            "sort": self.sort,
        }
        if self.page_token is not None:
            params["page_token"] = self.page_token
        return params


class CalendlyPaginator:
    """Cursor in, next request out; `next_page_token` in, next cursor out.

    `near_term` (the job's near-term window; None: none) only shapes a new walk: a resumed walk keeps
    the listings its cursor holds, so a job whose clock moved on between two fetchers neither lists a
    range twice nor skips one.

    The cursor is `{"v": 2, "listings": [{"start", "end", "order", "near_term"}, ...], "page_token",
    "near_term_pages"}`: the listings still to walk, in order (ISO 8601 instants, order "ascending"
    or "descending"), and the token of the next page of the first. Raises InvalidArgumentError for
    an unreadable cursor or a page size below 1; `accept` raises PaginationLoopError when Calendly
    hands back a token this listing already followed."""

    def __init__(
        self, *, window: JobWindow, page_size: int, cursor: JsonValue | None, near_term: JobWindow | None = None
    ) -> None:
        if page_size < 1:
            raise InvalidArgumentError("page_size", "must be at least 1")
        self._count = min(MAX_COUNT, page_size)
        self._window = window
        if cursor is None:
            self._listings, self._page_token, self._near_term_pages = _plan(window, near_term), None, 0
        else:
            self._listings, self._page_token, self._near_term_pages = _parse_cursor(cursor, window)
        self._trail = PageTokenTrail("calendly /scheduled_events")
        if self._page_token is not None:
            self._trail.follow(self._page_token)

    @property
    def exhausted(self) -> bool:
        return not self._listings

    @property
    def near_term_pages(self) -> int:
        """Answers of the near-term listing that listed events (the pages a session returned of the
        near term), counting those before a resume."""
        return self._near_term_pages

    def cursor(self) -> JsonValue:
        return {
            "v": CURSOR_VERSION,
            "listings": [
                {
                    "start": listing.start.isoformat(),
                    "end": listing.end.isoformat(),
                    "order": "descending" if listing.descending else "ascending",
                    "near_term": listing.near_term,
                }
                for listing in self._listings
            ],
            "page_token": self._page_token,
            "near_term_pages": self._near_term_pages,
        }

    def next_request(self) -> CalendlyEventsRequest | None:
        if not self._listings:
            return None
        listing = self._listings[0]
        low = listing.start if listing.start <= self._window.start else listing.start - _BOUNDARY_OVERLAP
        return CalendlyEventsRequest(
            page_token=self._page_token,
            count=self._count,
            min_start_time=calendly_time(low),
            max_start_time=calendly_time(listing.end),
            sort="start_time:desc" if listing.descending else "start_time:asc",
            near_term=listing.near_term,
        )

    def listed_elsewhere(self, starts_at: datetime | None) -> bool:
        """True for an event of the current listing's answer that another listing of this walk lists
        (its start lies in the job window, outside the current listing's range): the session drops it,
        so no event is listed, counted or stored twice. Events outside the job window stay (they are
        counted as skipped out of window, as without a near term)."""
        if starts_at is None or not self._listings:
            return False
        moment = starts_at.astimezone(UTC)
        return self._window.contains(moment) and not self._listings[0].holds(moment)

    def accept(self, request: CalendlyEventsRequest, next_page_token: str | None, *, listed: int = 0) -> None:
        """Takes the `pagination.next_page_token` of the answer to `request` (None or "": the listing's
        last page) and how many of its events the session kept (`listed`; a near-term answer with
        events is a near-term page)."""
        if request != self.next_request():
            raise ValueError("accept() takes the answer to the current next_request()")
        if request.near_term and listed > 0:
            self._near_term_pages += 1
        if not next_page_token:
            del self._listings[0]
            self._page_token = None
            self._trail.restart()  # another listing's tokens are another sequence
            return
        if next_page_token == request.page_token:
            raise PaginationLoopError("pagination loop: calendly /scheduled_events returned the same page token")
        self._trail.follow(next_page_token)
        self._page_token = next_page_token


def _plan(window: JobWindow, near_term: JobWindow | None) -> list[CalendlyListing]:
    """The listings of a new walk (see the module docstring)."""
    near = None if near_term is None else window.intersection(near_term)
    if near is None:
        return [CalendlyListing(window.start, window.end, descending=True, near_term=False)]
    listings = [
        CalendlyListing(near.start, near.end, descending=False, near_term=True),
        CalendlyListing(near.end, window.end, descending=False, near_term=False),
        CalendlyListing(window.start, near.start, descending=True, near_term=False),
    ]
    return [listing for listing in listings if listing.start < listing.end]


def _parse_cursor(cursor: JsonValue, window: JobWindow) -> tuple[list[CalendlyListing], str | None, int]:
    """(listings still to walk, next page token of the first, near_term_pages) of a v1 or v2 cursor."""
    if isinstance(cursor, dict) and cursor.get("v") == _CURSOR_VERSION_ONE_LISTING:
        token, done = cursor.get("page_token"), cursor.get("done")
        if not (token is None or isinstance(token, str)) or not isinstance(done, bool):
            raise InvalidArgumentError("cursor", "calendly cursor needs `page_token` (string or null) and `done`")
        whole = CalendlyListing(window.start, window.end, descending=True, near_term=False)
        return ([] if done else [whole]), token or None, 0
    if not isinstance(cursor, dict) or cursor.get("v") != CURSOR_VERSION:
        raise InvalidArgumentError("cursor", "not a calendly cursor of version 1 or 2")
    listings, token, near_term_pages = cursor.get("listings"), cursor.get("page_token"), cursor.get("near_term_pages")
    if (
        not isinstance(listings, list)
        or not (token is None or isinstance(token, str))
        or not isinstance(near_term_pages, int)
        or isinstance(near_term_pages, bool)
    ):
        raise InvalidArgumentError(
            "cursor", "calendly cursor needs `listings`, `page_token` (string or null) and `near_term_pages`"
        )
    parsed = [_parse_listing(listing) for listing in listings]
    return parsed, token or None, max(0, near_term_pages)


def _parse_listing(listing: JsonValue) -> CalendlyListing:
    if not isinstance(listing, dict):
        raise InvalidArgumentError("cursor", "a calendly cursor listing is an object")
    start, end, order, near = listing.get("start"), listing.get("end"), listing.get("order"), listing.get("near_term")
    if not isinstance(start, str) or not isinstance(end, str) or not isinstance(near, bool):
        raise InvalidArgumentError("cursor", "a calendly cursor listing needs `start`, `end` and `near_term`")
    if order not in ("ascending", "descending"):
        raise InvalidArgumentError("cursor", f"unknown calendly listing order {order!r}")
    try:
        start_at, end_at = datetime.fromisoformat(start), datetime.fromisoformat(end)
    except ValueError as exc:
        raise InvalidArgumentError("cursor", "a calendly cursor listing's bounds are ISO 8601 instants") from exc
    if start_at.tzinfo is None or end_at.tzinfo is None:
        raise InvalidArgumentError("cursor", "a calendly cursor listing's bounds carry an offset")
    return CalendlyListing(start_at, end_at, descending=order == "descending", near_term=near)
