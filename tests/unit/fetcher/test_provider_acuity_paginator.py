"""AcuityPaginator: date windows walked newest first, split on truncation, resumable, loop-safe."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest

from apptsync.fetcher.providers import JobWindow, JsonValue
from apptsync.fetcher.providers.acuity import (
    FIRST_SPAN_DAYS,
    MAX_RECORDS_PER_REQUEST,
    MAX_SPAN_DAYS,
    AcuityPaginator,
    AcuityRequest,
    WindowVerdict,
)
from apptsync.shared.errors import InvalidArgumentError, PaginationLoopError, ProviderRejectedError

pytestmark = pytest.mark.unit

WINDOW = JobWindow(datetime(2024, 3, 10, tzinfo=UTC), datetime(2024, 3, 20, tzinfo=UTC))
FIRST_DAY, LAST_DAY = date(2024, 3, 9), date(2024, 3, 21)  # one day of margin each side


def noon(day: date) -> datetime:
    return datetime.combine(day, time(12), UTC)


def fake_acuity(starts: Sequence[datetime], request: AcuityRequest, *, ignore_min_date: bool = False) -> list[datetime]:
    """What Acuity returns: filtered by local day, newest instant first, truncated at max."""
    selected = sorted(
        (s for s in starts if s.date() <= request.max_date and (ignore_min_date or s.date() >= request.min_date)),
        reverse=True,
    )
    return selected[: request.max_records]


def walk(
    paginator: AcuityPaginator,
    starts: Sequence[datetime],
    *,
    ignore_min_date: bool = False,
    max_requests: int = 500,
) -> tuple[list[list[datetime]], list[AcuityRequest]]:
    """Pages (in-range records of each complete response) and every request sent."""
    pages: list[list[datetime]] = []
    requests: list[AcuityRequest] = []
    for _ in range(max_requests):
        request = paginator.next_request()
        if request is None:
            return pages, requests
        requests.append(request)
        response = fake_acuity(starts, request, ignore_min_date=ignore_min_date)
        if paginator.accept(request, response) is WindowVerdict.COMPLETE:
            pages.append([s for s in response if request.covers(s.date())])
    raise AssertionError("paginator did not finish within the request bound")


def flat(pages: list[list[datetime]]) -> list[datetime]:
    return sorted(s for page in pages for s in page)


def test_first_request_covers_the_newest_days_with_the_margin() -> None:
    request = AcuityPaginator(window=WINDOW, page_size=100, cursor=None).next_request()
    assert request == AcuityRequest(
        min_date=LAST_DAY - timedelta(days=FIRST_SPAN_DAYS - 1), max_date=LAST_DAY, max_records=100
    )
    assert request.query_params() == {
        "minDate": "2024-03-15",
        "maxDate": "2024-03-21",
        "max": "100",
        "showall": "true",
        "direction": "DESC",
        "excludeForms": "true",
    }


def test_a_full_walk_covers_every_day_once_newest_first() -> None:
    starts = [noon(FIRST_DAY + timedelta(days=i % 13)) for i in range(260)]  # 20 per day
    pages, requests = walk(AcuityPaginator(window=WINDOW, page_size=50, cursor=None), starts)
    assert flat(pages) == sorted(starts)
    assert requests[0].max_date == LAST_DAY
    assert min(r.min_date for r in requests) == FIRST_DAY
    newest_first = [page[0] for page in pages if page]
    assert newest_first == sorted(newest_first, reverse=True)


def test_a_truncated_window_is_discarded_and_split() -> None:
    paginator = AcuityPaginator(window=WINDOW, page_size=10, cursor=None)
    first = paginator.next_request()
    assert first is not None
    assert paginator.accept(first, [noon(first.max_date)] * 10) is WindowVerdict.TRUNCATED
    second = paginator.next_request()
    assert second == AcuityRequest(min_date=LAST_DAY - timedelta(days=2), max_date=LAST_DAY, max_records=10)


def test_a_crowded_single_day_doubles_max_then_returns_to_the_page_size() -> None:
    starts = [noon(LAST_DAY)] * 35 + [noon(LAST_DAY - timedelta(days=1))] * 3
    paginator = AcuityPaginator(window=WINDOW, page_size=10, cursor=None)
    pages, requests = walk(paginator, starts)
    single_day = [r for r in requests if r.min_date == r.max_date == LAST_DAY]
    assert [r.max_records for r in single_day] == [10, 20, 40]
    assert pages[0] == [noon(LAST_DAY)] * 35
    after = [r for r in requests if r.max_date < LAST_DAY]
    assert after[0].max_records == 10
    assert flat(pages) == sorted(starts)


def test_a_day_beyond_the_largest_max_fails_loudly() -> None:
    paginator = AcuityPaginator(window=WINDOW, page_size=MAX_RECORDS_PER_REQUEST, cursor=None)
    for _ in range(10):
        request = paginator.next_request()
        assert request is not None
        full = [noon(request.max_date)] * request.max_records
        if request.span_days == 1:
            with pytest.raises(ProviderRejectedError, match="more than one request can return"):
                paginator.accept(request, full)
            return
        paginator.accept(request, full)
    raise AssertionError("never narrowed to one day")


def test_records_long_before_min_date_prove_the_window_complete() -> None:
    """Acuity ignoring minDate fills the response up with older records: not a truncation."""
    starts = [noon(FIRST_DAY + timedelta(days=i % 13)) for i in range(130)]
    pages, requests = walk(AcuityPaginator(window=WINDOW, page_size=20, cursor=None), starts, ignore_min_date=True)
    assert flat(pages) == sorted(starts)
    assert len(requests) < 60


def test_an_earlier_day_in_a_far_east_zone_does_not_prove_completeness() -> None:
    """Acuity sorts by instant but files by local day: 23:00 at UTC-10 on day D sorts after 08:00 at
    UTC+14 on day D+1. A full response whose oldest record is of day D-1 (local) proves nothing."""
    east, west = timezone(timedelta(hours=14)), timezone(timedelta(hours=-10))
    day = date(2024, 3, 15)
    in_range = [datetime.combine(day, time(1, minute), east) for minute in range(6)]  # early, far east
    earlier = [datetime.combine(day - timedelta(days=1), time(23, minute), west) for minute in range(6)]
    starts = in_range + earlier  # the west ones are *newer* instants despite their earlier day
    assert min(earlier) > max(in_range)
    window = JobWindow(datetime(2024, 3, 15, tzinfo=UTC), datetime(2024, 3, 16, tzinfo=UTC))
    cursor: JsonValue = {"v": 1, "before": (day + timedelta(days=1)).isoformat(), "span_days": 1}
    paginator = AcuityPaginator(window=window, page_size=8, cursor=cursor)
    request = paginator.next_request()
    assert request == AcuityRequest(min_date=day, max_date=day, max_records=8)
    response = fake_acuity(starts, request, ignore_min_date=True)
    assert sum(1 for s in response if request.covers(s.date())) == 2  # four of day D are cut off
    assert paginator.accept(request, response) is WindowVerdict.TRUNCATED
    pages, _ = walk(paginator, starts, ignore_min_date=True)
    assert sorted(s for s in flat(pages) if s.date() == day) == sorted(in_range)


def test_sparse_windows_grow_the_span_up_to_the_cap() -> None:
    window = JobWindow(datetime(2020, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC))
    pages, requests = walk(AcuityPaginator(window=window, page_size=100, cursor=None), [])
    spans = [r.span_days for r in requests]
    assert spans[:4] == [FIRST_SPAN_DAYS, 2 * FIRST_SPAN_DAYS, 4 * FIRST_SPAN_DAYS, 8 * FIRST_SPAN_DAYS]
    assert max(spans) == MAX_SPAN_DAYS
    assert all(page == [] for page in pages)


def test_answering_a_request_twice_is_a_pagination_loop() -> None:
    paginator = AcuityPaginator(window=WINDOW, page_size=10, cursor=None)
    request = paginator.next_request()
    assert request is not None
    paginator.accept(request, [])
    with pytest.raises(PaginationLoopError, match="pagination loop"):
        paginator.accept(request, [])


def next_complete_page(paginator: AcuityPaginator, starts: Sequence[datetime]) -> list[datetime] | None:
    """What a session's next_page() does: retry split windows until one is complete."""
    for _ in range(50):
        request = paginator.next_request()
        if request is None:
            return None
        response = fake_acuity(starts, request)
        if paginator.accept(request, response) is WindowVerdict.COMPLETE:
            return [s for s in response if request.covers(s.date())]
    raise AssertionError("no complete window within 50 requests")


def test_resuming_from_each_cursor_continues_with_the_next_window() -> None:
    starts = [noon(FIRST_DAY + timedelta(days=(i * 7) % 13)) for i in range(200)]
    straight_paginator = AcuityPaginator(window=WINDOW, page_size=30, cursor=None)
    straight: list[list[datetime]] = []
    for _ in range(100):
        page = next_complete_page(straight_paginator, starts)
        if page is None:
            break
        straight.append(page)

    resumed: list[list[datetime]] = []
    cursor = None
    for _ in range(100):
        paginator = AcuityPaginator(window=WINDOW, page_size=30, cursor=cursor)
        page = next_complete_page(paginator, starts)
        if page is None:
            break
        resumed.append(page)
        cursor = paginator.cursor()
    assert resumed == straight
    assert flat(resumed) == sorted(starts)


def test_the_cursor_is_json_and_marks_exhaustion() -> None:
    paginator = AcuityPaginator(window=WINDOW, page_size=10, cursor={"v": 1, "before": "2024-03-09", "span_days": 3})
    assert paginator.exhausted
    assert paginator.next_request() is None
    assert paginator.cursor() == {"v": 1, "before": "2024-03-09", "span_days": 3}


def test_a_cursor_beyond_the_window_is_clamped_to_it() -> None:
    paginator = AcuityPaginator(window=WINDOW, page_size=10, cursor={"v": 1, "before": "2030-01-01", "span_days": 2})
    request = paginator.next_request()
    assert request is not None
    assert request.max_date == LAST_DAY


@pytest.mark.parametrize(
    "cursor",
    [
        "2024-03-01",
        {"v": 2, "before": "2024-03-01", "span_days": 3},
        {"v": 1, "before": "yesterday", "span_days": 3},
        {"v": 1, "before": "2024-03-01", "span_days": "3"},
        {"v": 1, "span_days": 3},
    ],
)
def test_an_unreadable_cursor_is_an_invalid_argument(cursor: object) -> None:
    with pytest.raises(InvalidArgumentError):
        AcuityPaginator(window=WINDOW, page_size=10, cursor=cursor)  # type: ignore[arg-type]


def test_page_size_must_be_positive() -> None:
    with pytest.raises(InvalidArgumentError, match="page_size"):
        AcuityPaginator(window=WINDOW, page_size=0, cursor=None)
