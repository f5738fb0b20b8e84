"""AcuityPaginator: date windows split on truncation, resumable, loop-safe; without a near term walked
newest first, with one the near term first, then the future soonest first, then the past most recent
first, every day exactly once."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
# A job started on 2024-03-13 at 09:00 with a 3-day horizon: [now - 1 day, now + 3 days).
NEAR_TERM = JobWindow(datetime(2024, 3, 12, 9, tzinfo=UTC), datetime(2024, 3, 16, 9, tzinfo=UTC))
NEAR_FIRST, NEAR_LAST = date(2024, 3, 11), date(2024, 3, 17)  # the near term's days, with the same margin


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
    assert paginator.cursor() == {"v": 2, "spans": [], "span_days": 3, "near_term_pages": 0}
    assert json.loads(json.dumps(paginator.cursor())) == paginator.cursor()


def test_a_version_1_cursor_continues_its_newest_first_walk_exactly() -> None:
    """A job resumed across the upgrade pages the days its v1 cursor left, in the old order, once."""
    starts = [noon(FIRST_DAY + timedelta(days=i % 13)) for i in range(130)]
    old_cursor: JsonValue = {"v": 1, "before": "2024-03-16", "span_days": 2}
    paginator = AcuityPaginator(window=WINDOW, page_size=50, cursor=old_cursor, near_term=NEAR_TERM)
    assert paginator.cursor() == {
        "v": 2,
        "spans": [{"first": "2024-03-09", "last": "2024-03-15", "order": "newest_first", "near_term": False}],
        "span_days": 2,
        "near_term_pages": 0,
    }
    pages, requests = walk(paginator, starts)
    assert flat(pages) == sorted(s for s in starts if s.date() < date(2024, 3, 16))
    assert requests[0] == AcuityRequest(min_date=date(2024, 3, 14), max_date=date(2024, 3, 15), max_records=50)
    assert [r.max_date for r in requests] == sorted((r.max_date for r in requests), reverse=True)


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
        {"v": 2, "spans": "all", "span_days": 3, "near_term_pages": 0},
        {"v": 2, "spans": [], "span_days": 3},
        {
            "v": 2,
            "spans": [{"first": "2024-03-09", "last": "2024-03-10", "order": "up", "near_term": False}],
            "span_days": 3,
            "near_term_pages": 0,
        },
        {
            "v": 2,
            "spans": [{"first": "2024-03-09", "last": "soon", "order": "oldest_first", "near_term": False}],
            "span_days": 3,
            "near_term_pages": 0,
        },
        {
            "v": 2,
            "spans": [{"first": "2024-03-09", "last": "2024-03-10", "order": "oldest_first"}],
            "span_days": 3,
            "near_term_pages": 0,
        },
        {"v": 3, "spans": [], "span_days": 3, "near_term_pages": 0},
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


# --- The near term first ---------------------------------------------------------------------------


def days_of(requests: Sequence[AcuityRequest]) -> list[date]:
    return [r.min_date + timedelta(days=n) for r in requests for n in range(r.span_days)]


def complete_requests(
    paginator: AcuityPaginator, starts: Sequence[datetime], *, ignore_min_date: bool = False
) -> list[AcuityRequest]:
    """The requests whose answers were complete (the pages), in walking order."""
    done: list[AcuityRequest] = []
    for _ in range(2_000):
        request = paginator.next_request()
        if request is None:
            return done
        if paginator.accept(request, fake_acuity(starts, request, ignore_min_date=ignore_min_date)) is (
            WindowVerdict.COMPLETE
        ):
            done.append(request)
    raise AssertionError("paginator did not finish within the request bound")


def test_the_near_term_is_walked_first_then_the_future_then_the_past() -> None:
    starts = [noon(FIRST_DAY + timedelta(days=i % 13)) for i in range(39)]  # 3 a day
    paginator = AcuityPaginator(window=WINDOW, page_size=100, cursor=None, near_term=NEAR_TERM)
    requests = complete_requests(paginator, starts)
    near = [r for r in requests if r.near_term]
    assert requests[: len(near)] == near, "the near term comes first"
    assert days_of(near) == [NEAR_FIRST + timedelta(days=n) for n in range(7)], "soonest first, every day once"
    rest = requests[len(near) :]
    future = [r for r in rest if r.min_date > NEAR_LAST]
    past = [r for r in rest if r.max_date < NEAR_FIRST]
    assert rest == future + past, "then the future, then the past"
    assert days_of(future) == [NEAR_LAST + timedelta(days=n) for n in range(1, 5)], "future soonest first"
    assert days_of(past) == sorted(days_of(past))
    assert [r.max_date for r in past] == sorted((r.max_date for r in past), reverse=True), "past most recent first"
    assert sorted(days_of(requests)) == [FIRST_DAY + timedelta(days=n) for n in range(13)]


def test_a_near_term_covers_its_instants_whatever_the_account_offset() -> None:
    """A booking 08:59 UTC on the near term's first day is filed under the previous day in UTC-10 and
    one at 09:00 on its last day under the next day in UTC+14: both are near-term days."""
    west, east = timezone(timedelta(hours=-10)), timezone(timedelta(hours=14))
    first = NEAR_TERM.start.astimezone(west)
    last = (NEAR_TERM.end - timedelta(minutes=1)).astimezone(east)
    paginator = AcuityPaginator(window=WINDOW, page_size=100, cursor=None, near_term=NEAR_TERM)
    near = [r for r in complete_requests(paginator, [first, last]) if r.near_term]
    assert near[0].min_date <= first.date() == date(2024, 3, 11)
    assert near[-1].max_date >= last.date() == date(2024, 3, 16)


def test_a_near_term_at_the_window_edge_leaves_out_the_empty_side() -> None:
    near = JobWindow(datetime(2024, 3, 18, tzinfo=UTC), datetime(2024, 3, 20, tzinfo=UTC))
    paginator = AcuityPaginator(window=WINDOW, page_size=100, cursor=None, near_term=near)
    spans = paginator.cursor()["spans"]  # type: ignore[index,call-overload]
    assert spans == [
        {"first": "2024-03-17", "last": "2024-03-21", "order": "oldest_first", "near_term": True},
        {"first": "2024-03-09", "last": "2024-03-16", "order": "newest_first", "near_term": False},
    ]


def test_a_near_term_outside_the_window_is_no_near_term() -> None:
    outside = JobWindow(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 15, tzinfo=UTC))
    with_outside = AcuityPaginator(window=WINDOW, page_size=100, cursor=None, near_term=outside)
    assert with_outside.cursor() == AcuityPaginator(window=WINDOW, page_size=100, cursor=None).cursor()


def test_near_term_pages_counts_the_complete_answers_with_records() -> None:
    starts = [noon(NEAR_FIRST + timedelta(days=1))] * 12 + [noon(LAST_DAY)]
    paginator = AcuityPaginator(window=WINDOW, page_size=10, cursor=None, near_term=NEAR_TERM)
    pages_of_near_term = 0
    for _ in range(100):
        request = paginator.next_request()
        if request is None or not request.near_term:
            break
        response = fake_acuity(starts, request)
        if paginator.accept(request, response) is WindowVerdict.COMPLETE and response:
            pages_of_near_term += 1
    assert pages_of_near_term == paginator.near_term_pages == 1  # one crowded day, split, then empty days
    assert paginator.cursor()["near_term_pages"] == 1  # type: ignore[index,call-overload]


def test_a_resumed_walk_keeps_its_plan_when_the_clock_moved_on() -> None:
    """A fetcher that takes a job over a day later gets another near term: the cursor's spans win, so
    no day is paged twice or skipped."""
    starts = [noon(FIRST_DAY + timedelta(days=(i * 5) % 13)) for i in range(120)]
    later = JobWindow(NEAR_TERM.start + timedelta(days=1), NEAR_TERM.end + timedelta(days=1))
    straight = complete_requests(AcuityPaginator(window=WINDOW, page_size=15, cursor=None, near_term=NEAR_TERM), starts)
    resumed: list[AcuityRequest] = []
    cursor: JsonValue = None
    for turn in range(200):
        near_term = NEAR_TERM if turn == 0 else later
        paginator = AcuityPaginator(window=WINDOW, page_size=15, cursor=cursor, near_term=near_term)
        step = complete_requests_once(paginator, starts)
        if step is None:
            break
        resumed.append(step)
        cursor = paginator.cursor()
    assert resumed == straight
    assert sorted(days_of(resumed)) == [FIRST_DAY + timedelta(days=n) for n in range(13)]


def complete_requests_once(paginator: AcuityPaginator, starts: Sequence[datetime]) -> AcuityRequest | None:
    for _ in range(50):
        request = paginator.next_request()
        if request is None:
            return None
        if paginator.accept(request, fake_acuity(starts, request)) is WindowVerdict.COMPLETE:
            return request
    raise AssertionError("no complete window within 50 requests")


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    records=st.integers(0, 400),
    page_size=st.integers(1, 60),
    near_offset_hours=st.integers(-24 * 20, 24 * 20),
    horizon_days=st.integers(1, 30),
    ignore_min_date=st.booleans(),
)
def test_any_walk_with_a_near_term_yields_every_record_exactly_once(
    seed: int, records: int, page_size: int, near_offset_hours: int, horizon_days: int, ignore_min_date: bool
) -> None:
    """Whatever the data (crowded days, far-east and far-west offsets, Acuity ignoring minDate), the
    page size and the near term: every record of the window's days once, the near term first."""
    rng = random.Random(seed)
    zones = [timezone(timedelta(hours=h)) for h in (-10, -5, 0, 8, 14)]
    crowded = FIRST_DAY + timedelta(days=rng.randrange(13))
    starts = [
        datetime.combine(
            crowded if rng.random() < 0.3 else FIRST_DAY + timedelta(days=rng.randrange(13)),
            time(rng.randrange(24), rng.randrange(60)),
            rng.choice(zones),
        )
        for _ in range(records)
    ]
    now = datetime(2024, 3, 15, tzinfo=UTC) + timedelta(hours=near_offset_hours)
    near_term = WINDOW.intersection(JobWindow(now - timedelta(days=1), now + timedelta(days=horizon_days)))
    paginator = AcuityPaginator(window=WINDOW, page_size=page_size, cursor=None, near_term=near_term)
    pages: list[list[datetime]] = []
    complete: list[AcuityRequest] = []
    for _ in range(5_000):
        request = paginator.next_request()
        if request is None:
            break
        response = fake_acuity(starts, request, ignore_min_date=ignore_min_date)
        if paginator.accept(request, response) is WindowVerdict.COMPLETE:
            pages.append([s for s in response if request.covers(s.date())])
            complete.append(request)
    assert paginator.exhausted
    assert flat(pages) == sorted(starts)
    assert sorted(days_of(complete)) == [FIRST_DAY + timedelta(days=n) for n in range(13)], "every day once"
    flags = [r.near_term for r in complete]
    assert flags == sorted(flags, reverse=True), "near-term pages come first"
    assert any(flags) == (near_term is not None)
