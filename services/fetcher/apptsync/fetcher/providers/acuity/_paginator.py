"""Acuity's pager: a pure state machine that walks date windows through a job window.

Acuity's `GET /appointments` has no offset or cursor and silently truncates at `max`, so the only way
to page is by date: ask for `minDate..maxDate` (inclusive days), and if the answer holds `max`
records it may be cut short, so discard it and ask again for fewer days (or, for one crowded day, a
larger `max`).

The order of the days serves an early-stopping job (see apptsync.fetcher.providers._near_term): the
near term first, soonest day first (always walked completely); then the future beyond it, soonest
first; then the past, most recent first. Changes grow rarer with distance from now, so the stop rule
meets the likeliest news first. Without a near term the whole window is walked newest first (the
order of cursor version 1).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta

from apptsync.fetcher.providers._model import JobWindow, JsonValue
from apptsync.shared.errors import InvalidArgumentError, PaginationLoopError, ProviderRejectedError

CURSOR_VERSION = 2
# Cursors of version 1 (`{"v": 1, "before", "span_days"}`: every day before `before` still to page,
# newest first) are still read: a job resumed across the upgrade continues exactly where it was.
_CURSOR_VERSION_NEWEST_FIRST = 1
FIRST_SPAN_DAYS = 7
MAX_SPAN_DAYS = 366
# A single day holding more than this many appointments cannot be paged by Acuity's API at all.
MAX_RECORDS_PER_REQUEST = 10_000
# The account's timezone is unknown: a day either side keeps every appointment of the window inside
# the requested dates whatever the offset; the normalizer then enforces the exact window.
COVERAGE_MARGIN = timedelta(days=1)
# The largest offset any timezone has (Pacific/Kiritimati).
MAX_UTC_OFFSET = timedelta(hours=14)


@dataclass(frozen=True, slots=True)
class AcuityRequest:
    """One `GET /appointments` query: every appointment on days `min_date..max_date` (inclusive).
    `near_term`: the days belong to the near term (the page it yields never counts toward a stop)."""

    min_date: date
    max_date: date
    max_records: int
    near_term: bool = False

    @property
    def span_days(self) -> int:
        return (self.max_date - self.min_date).days + 1

    def covers(self, day: date) -> bool:
        return self.min_date <= day <= self.max_date

    def query_params(self) -> dict[str, str]:
        return {
            "minDate": self.min_date.isoformat(),
            "maxDate": self.max_date.isoformat(),
            "max": str(self.max_records),
            "showall": "true",  # canceled appointments too (as `canceled: true`)
            "direction": "DESC",
            "excludeForms": "true",
        }


class WindowVerdict(enum.Enum):
    COMPLETE = "complete"  # the response holds every appointment of the requested days: a page
    TRUNCATED = "truncated"  # the response may be cut short: discard it, ask the next request instead


@dataclass(frozen=True, slots=True)
class DaySpan:
    """Days `first..last` (inclusive) still to page, walked `newest_first` or oldest first."""

    first: date
    last: date
    newest_first: bool
    near_term: bool

    def covers(self, day: date) -> bool:
        return self.first <= day <= self.last


class AcuityPaginator:
    """Cursor in, next request out; response in, verdict and next cursor out. No I/O.

    The days of the job window (with COVERAGE_MARGIN) are split into spans walked one after the other
    (see the module docstring); together they cover every day exactly once, so the walk stays
    complete whatever the order. `near_term` (the job's near-term window; None: none) only shapes a
    new walk: a resumed walk keeps the spans its cursor holds, so a job whose clock moved on between
    two fetchers neither pages a day twice nor skips one.

    The cursor is `{"v": 2, "spans": [{"first", "last", "order", "near_term"}, ...], "span_days",
    "near_term_pages"}`: the spans still to page, in order (dates YYYY-MM-DD, order "newest_first"
    or "oldest_first"). Raises InvalidArgumentError for an unreadable cursor or a page size below 1."""

    def __init__(
        self, *, window: JobWindow, page_size: int, cursor: JsonValue | None, near_term: JobWindow | None = None
    ) -> None:
        if page_size < 1:
            raise InvalidArgumentError("page_size", "must be at least 1")
        self._page_size = page_size
        first_day = (window.start.astimezone(UTC) - COVERAGE_MARGIN).date()
        last_day = (window.end.astimezone(UTC) + COVERAGE_MARGIN).date()
        self._first_day, self._last_day = first_day, last_day
        self._span_days = FIRST_SPAN_DAYS
        self._near_term_pages = 0
        if cursor is None:
            self._spans = _plan(first_day, last_day, near_term)
        else:
            spans, self._span_days, self._near_term_pages = _parse_cursor(cursor, first_day)
            self._spans = _clamped(spans, first_day, last_day)
        self._max_records = page_size

    @property
    def exhausted(self) -> bool:
        return not self._spans

    @property
    def near_term_pages(self) -> int:
        """Complete, non-empty near-term answers so far (the pages a session returned of the near
        term), counting those before a resume."""
        return self._near_term_pages

    def cursor(self) -> JsonValue:
        return {
            "v": CURSOR_VERSION,
            "spans": [
                {
                    "first": span.first.isoformat(),
                    "last": span.last.isoformat(),
                    "order": "newest_first" if span.newest_first else "oldest_first",
                    "near_term": span.near_term,
                }
                for span in self._spans
            ],
            "span_days": self._span_days,
            "near_term_pages": self._near_term_pages,
        }

    def whole_window_request(self, max_records: int) -> AcuityRequest:
        """A request covering every day of the job window, as a near-term page: what a page of
        appointments asked for one by one (the near-term sweep) is filed under; counted as a near-term
        page, since the sweep's page follows the near term's. Not for sending."""
        self._near_term_pages += 1
        return AcuityRequest(min_date=self._first_day, max_date=self._last_day, max_records=max(1, max_records),
                             near_term=True)

    def next_request(self) -> AcuityRequest | None:
        """The request to send next; None once every day of the window has been paged."""
        if not self._spans:
            return None
        span = self._spans[0]
        reach = timedelta(days=self._span_days - 1)
        if span.newest_first:
            min_date, max_date = max(span.first, span.last - reach), span.last
        else:
            min_date, max_date = span.first, min(span.last, span.first + reach)
        return AcuityRequest(
            min_date=min_date, max_date=max_date, max_records=self._max_records, near_term=span.near_term
        )

    def accept(self, request: AcuityRequest, record_starts: Sequence[datetime | None]) -> WindowVerdict:
        """Takes the response to `request`, given as each record's start (aware, in the record's own
        offset, so its date is the day Acuity files it under; None: unreadable).

        Acuity orders by start instant but filters by local day, so a record of an earlier day may
        sort among those of the requested days. A response of `max_records` records or more is
        therefore complete only if its oldest record started before `min_date` began anywhere on
        earth: everything cut off is older still, so of earlier days. Raises PaginationLoopError when
        `request` covers days already paged, ProviderRejectedError when a single day holds more than
        MAX_RECORDS_PER_REQUEST appointments."""
        if not any(span.covers(request.min_date) and span.covers(request.max_date) for span in self._spans):
            raise PaginationLoopError(
                f"pagination loop: acuity days {request.min_date}..{request.max_date} were already paged"
            )
        if request != self.next_request():
            raise ValueError("accept() takes the response to the current next_request()")
        if len(record_starts) >= request.max_records and not _reaches_before(request.min_date, record_starts):
            # Earlier days in the answer (Acuity ignoring minDate) mean the cut fell near the window's
            # first day: reading further back settles it, fewer days would not.
            earlier_days = any(start is not None and start.date() < request.min_date for start in record_starts)
            self._narrow(request, read_further=earlier_days)
            return WindowVerdict.TRUNCATED
        in_range = sum(1 for start in record_starts if start is not None and request.covers(start.date()))
        self._paged(request)
        if request.near_term and record_starts:
            self._near_term_pages += 1
        self._max_records = self._page_size
        if in_range < self._page_size / 2:
            self._span_days = min(MAX_SPAN_DAYS, self._span_days * 2)
        return WindowVerdict.COMPLETE

    def _paged(self, request: AcuityRequest) -> None:
        """Removes the request's days from the current span (from its walking end)."""
        span = self._spans[0]
        if span.newest_first:
            span = replace(span, last=request.min_date - timedelta(days=1))
        else:
            span = replace(span, first=request.max_date + timedelta(days=1))
        if span.first <= span.last:
            self._spans[0] = span
        else:
            del self._spans[0]

    def _narrow(self, request: AcuityRequest, *, read_further: bool) -> None:
        can_read_further = request.max_records < MAX_RECORDS_PER_REQUEST
        if (read_further or request.span_days == 1) and can_read_further:
            self._max_records = min(MAX_RECORDS_PER_REQUEST, request.max_records * 2)
        elif request.span_days > 1:
            self._span_days = max(1, request.span_days // 2)
        else:
            raise ProviderRejectedError(
                f"acuity day {request.min_date} holds at least {request.max_records} appointments: "
                "more than one request can return",
                status_code=200,
            )


def _plan(first_day: date, last_day: date, near_term: JobWindow | None) -> list[DaySpan]:
    """The spans of a new walk over `first_day..last_day`: near term soonest first, the future beyond
    it soonest first, the past most recent first; without a near term, everything newest first."""
    if near_term is None:
        return [DaySpan(first_day, last_day, newest_first=True, near_term=False)]
    # The same margin as the window's: every appointment of the near term is filed under these days.
    near_first = max(first_day, (near_term.start.astimezone(UTC) - COVERAGE_MARGIN).date())
    near_last = min(last_day, (near_term.end.astimezone(UTC) + COVERAGE_MARGIN).date())
    if near_first > near_last:
        return [DaySpan(first_day, last_day, newest_first=True, near_term=False)]
    one_day = timedelta(days=1)
    spans = [
        DaySpan(near_first, near_last, newest_first=False, near_term=True),
        DaySpan(near_last + one_day, last_day, newest_first=False, near_term=False),
        DaySpan(first_day, near_first - one_day, newest_first=True, near_term=False),
    ]
    return [span for span in spans if span.first <= span.last]


def _clamped(spans: list[DaySpan], first_day: date, last_day: date) -> list[DaySpan]:
    """`spans` cut to the window's days (a cursor never widens a job), empty ones dropped."""
    cut = [replace(span, first=max(span.first, first_day), last=min(span.last, last_day)) for span in spans]
    return [span for span in cut if span.first <= span.last]


def _reaches_before(day: date, starts: Sequence[datetime | None]) -> bool:
    """Whether some start lies before `day` began in the most eastern timezone (UTC+14)."""
    earliest_beginning = datetime.combine(day, time.min, UTC) - MAX_UTC_OFFSET
    return any(start is not None and start < earliest_beginning for start in starts)


def _parse_cursor(cursor: JsonValue, first_day: date) -> tuple[list[DaySpan], int, int]:
    """(spans still to page, span_days, near_term_pages) of a cursor of version 1 or 2."""
    if isinstance(cursor, dict) and cursor.get("v") == _CURSOR_VERSION_NEWEST_FIRST:
        before, span_days = cursor.get("before"), cursor.get("span_days")
        if not isinstance(before, str) or not _is_int(span_days):
            raise InvalidArgumentError("cursor", "acuity cursor needs `before` (a date) and `span_days`")
        remaining = DaySpan(first_day, _day(before, "before") - timedelta(days=1), newest_first=True, near_term=False)
        return [remaining], _span(span_days), 0
    if not isinstance(cursor, dict) or cursor.get("v") != CURSOR_VERSION:
        raise InvalidArgumentError("cursor", "not an acuity cursor of version 1 or 2")
    spans, span_days, near_term_pages = cursor.get("spans"), cursor.get("span_days"), cursor.get("near_term_pages")
    if not isinstance(spans, list) or not _is_int(span_days) or not _is_int(near_term_pages):
        raise InvalidArgumentError("cursor", "acuity cursor needs `spans`, `span_days` and `near_term_pages`")
    parsed = []
    for span in spans:
        if not isinstance(span, dict):
            raise InvalidArgumentError("cursor", "an acuity cursor span is an object")
        first, last, order, near = span.get("first"), span.get("last"), span.get("order"), span.get("near_term")
        if not isinstance(first, str) or not isinstance(last, str) or not isinstance(near, bool):
            raise InvalidArgumentError("cursor", "an acuity cursor span needs `first`, `last` and `near_term`")
        if order not in ("newest_first", "oldest_first"):
            raise InvalidArgumentError("cursor", f"unknown acuity span order {order!r}")
        parsed.append(DaySpan(_day(first, "first"), _day(last, "last"), order == "newest_first", near))
    assert isinstance(near_term_pages, int)  # noqa: S101 -- narrows the type; validated by the loop above
    return parsed, _span(span_days), max(0, near_term_pages)


def _is_int(value: JsonValue) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _span(value: JsonValue) -> int:
    assert isinstance(value, int)  # noqa: S101 -- narrows the type; callers pass values they validated as int
    return min(MAX_SPAN_DAYS, max(1, value))


def _day(text: str, name: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise InvalidArgumentError("cursor", f"`{name}` is not a date: {text!r}") from exc
