"""Acuity's pager: a pure state machine that walks date windows backwards through a job window.

Acuity's `GET /appointments` has no offset or cursor and silently truncates at `max`, so the only way
to page is by date: ask for `minDate..maxDate` (inclusive days), and if the answer holds `max`
records it may be cut short, so discard it and ask again for fewer days (or, for one crowded day, a
larger `max`). Windows run newest first so an early-stopping job sees new bookings first.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from apptsync.fetcher.providers._model import JobWindow, JsonValue
from apptsync.shared.errors import InvalidArgumentError, PaginationLoopError, ProviderRejectedError

CURSOR_VERSION = 1
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
    """One `GET /appointments` query: every appointment on days `min_date..max_date` (inclusive)."""

    min_date: date
    max_date: date
    max_records: int

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


class AcuityPaginator:
    """Cursor in, next request out; response in, verdict and next cursor out. No I/O.

    The cursor is `{"v": 1, "before": "YYYY-MM-DD", "span_days": n}`: every day before `before` (down to
    the window's first day) is still to be paged. Raises InvalidArgumentError for an unreadable cursor
    or a page size below 1."""

    def __init__(self, *, window: JobWindow, page_size: int, cursor: JsonValue | None) -> None:
        if page_size < 1:
            raise InvalidArgumentError("page_size", "must be at least 1")
        self._page_size = page_size
        self._first_day = (window.start.astimezone(UTC) - COVERAGE_MARGIN).date()
        last_day = (window.end.astimezone(UTC) + COVERAGE_MARGIN).date()
        if cursor is None:
            self._before = last_day + timedelta(days=1)
            self._span_days = FIRST_SPAN_DAYS
        else:
            before, span_days = _parse_cursor(cursor)
            self._before = min(before, last_day + timedelta(days=1))
            self._span_days = span_days
        self._max_records = page_size

    @property
    def exhausted(self) -> bool:
        return self._before <= self._first_day

    def cursor(self) -> JsonValue:
        return {"v": CURSOR_VERSION, "before": self._before.isoformat(), "span_days": self._span_days}

    def next_request(self) -> AcuityRequest | None:
        """The request to send next; None once every day of the window has been paged."""
        if self.exhausted:
            return None
        max_date = self._before - timedelta(days=1)
        min_date = max(self._first_day, max_date - timedelta(days=self._span_days - 1))
        return AcuityRequest(min_date=min_date, max_date=max_date, max_records=self._max_records)

    def accept(self, request: AcuityRequest, record_starts: Sequence[datetime | None]) -> WindowVerdict:
        """Takes the response to `request`, given as each record's start (aware, in the record's own
        offset, so its date is the day Acuity files it under; None: unreadable).

        Acuity orders by start instant but filters by local day, so a record of an earlier day may
        sort among those of the requested days. A response of `max_records` records or more is
        therefore complete only if its oldest record started before `min_date` began anywhere on
        earth: everything cut off is older still, so of earlier days. Raises PaginationLoopError when
        `request` covers days already paged, ProviderRejectedError when a single day holds more than
        MAX_RECORDS_PER_REQUEST appointments."""
        if request.max_date >= self._before:
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
        self._before = request.min_date
        self._max_records = self._page_size
        if in_range < self._page_size / 2:
            self._span_days = min(MAX_SPAN_DAYS, self._span_days * 2)
        return WindowVerdict.COMPLETE

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


def _reaches_before(day: date, starts: Sequence[datetime | None]) -> bool:
    """Whether some start lies before `day` began in the most eastern timezone (UTC+14)."""
    earliest_beginning = datetime.combine(day, time.min, UTC) - MAX_UTC_OFFSET
    return any(start is not None and start < earliest_beginning for start in starts)


def _parse_cursor(cursor: JsonValue) -> tuple[date, int]:
    if not isinstance(cursor, dict) or cursor.get("v") != CURSOR_VERSION:
        raise InvalidArgumentError("cursor", "not an acuity cursor of version 1")
    before, span_days = cursor.get("before"), cursor.get("span_days")
    if not isinstance(before, str) or not isinstance(span_days, int) or isinstance(span_days, bool):
        raise InvalidArgumentError("cursor", "acuity cursor needs `before` (a date) and `span_days`")
    try:
        before_day = date.fromisoformat(before)
    except ValueError as exc:
        raise InvalidArgumentError("cursor", f"`before` is not a date: {before!r}") from exc
    return before_day, min(MAX_SPAN_DAYS, max(1, span_days))
