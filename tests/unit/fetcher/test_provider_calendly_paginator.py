"""CalendlyPaginator: without a near term one listing of the window, latest first; with one the near
term first (soonest first), then the future (soonest first), then the past (latest first), disjoint
in start time whatever Calendly's bounds include, resumable across versions and clock changes."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apptsync.fetcher.providers import JobWindow, JsonValue
from apptsync.fetcher.providers.calendly import CalendlyEventsRequest, CalendlyPaginator, calendly_scope
from apptsync.shared.errors import PaginationLoopError

pytestmark = pytest.mark.unit

WINDOW = JobWindow(datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
# A job started 2024-06-10 12:00 with a 5-day horizon: [now - 1 day, now + 5 days).
NEAR_TERM = JobWindow(datetime(2024, 6, 9, 12, tzinfo=UTC), datetime(2024, 6, 15, 12, tzinfo=UTC))
SCOPE = calendly_scope({"organization": "https://api.calendly.com/organizations/ORG1"})


def params(request: CalendlyEventsRequest | None) -> dict[str, str]:
    assert request is not None
    return {k: v for k, v in request.query_params(SCOPE).items() if k in ("min_start_time", "max_start_time", "sort")}


def test_the_near_term_is_listed_first_then_the_future_then_the_past() -> None:
    paginator = CalendlyPaginator(window=WINDOW, page_size=100, cursor=None, near_term=NEAR_TERM)
    seen = []
    for _ in range(3):
        request = paginator.next_request()
        assert request is not None
        seen.append((params(request), request.near_term))
        paginator.accept(request, None, listed=1)
    assert paginator.exhausted and paginator.next_request() is None
    assert seen == [
        ({"min_start_time": "2024-06-09T11:59:59.999999Z", "max_start_time": "2024-06-15T12:00:00.000000Z",
          "sort": "start_time:asc"}, True),
        ({"min_start_time": "2024-06-15T11:59:59.999999Z", "max_start_time": "2024-07-01T00:00:00.000000Z",
          "sort": "start_time:asc"}, False),
        ({"min_start_time": "2024-06-01T00:00:00.000000Z", "max_start_time": "2024-06-09T12:00:00.000000Z",
          "sort": "start_time:desc"}, False),
    ]  # fmt: skip
    assert paginator.near_term_pages == 1


def test_without_a_near_term_one_listing_covers_the_window_latest_first() -> None:
    paginator = CalendlyPaginator(window=WINDOW, page_size=100, cursor=None)
    assert params(paginator.next_request()) == {
        "min_start_time": "2024-06-01T00:00:00.000000Z", "max_start_time": "2024-07-01T00:00:00.000000Z",
        "sort": "start_time:desc",
    }  # fmt: skip
    outside = JobWindow(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC))
    assert CalendlyPaginator(window=WINDOW, page_size=100, cursor=None, near_term=outside).cursor() == (
        paginator.cursor()
    )


def test_an_event_at_a_shared_boundary_belongs_to_the_listing_whose_range_holds_it() -> None:
    paginator = CalendlyPaginator(window=WINDOW, page_size=100, cursor=None, near_term=NEAR_TERM)
    one = timedelta(microseconds=1)
    # The near-term listing: its own start is its own; its end is the future listing's.
    assert not paginator.listed_elsewhere(NEAR_TERM.start)
    assert paginator.listed_elsewhere(NEAR_TERM.start - one)
    assert not paginator.listed_elsewhere(NEAR_TERM.end - one)
    assert paginator.listed_elsewhere(NEAR_TERM.end)
    # Outside the job window or unreadable: kept (counted as skipped, as without a near term).
    assert not paginator.listed_elsewhere(WINDOW.end)
    assert not paginator.listed_elsewhere(None)
    request = paginator.next_request()
    assert request is not None
    paginator.accept(request, None)
    assert not paginator.listed_elsewhere(NEAR_TERM.end)  # now the future listing's own
    assert paginator.listed_elsewhere(NEAR_TERM.end - one)


def test_tokens_are_followed_per_listing() -> None:
    paginator = CalendlyPaginator(window=WINDOW, page_size=10, cursor=None, near_term=NEAR_TERM)
    first = paginator.next_request()
    assert first is not None
    paginator.accept(first, "a", listed=2)
    second = paginator.next_request()
    assert second is not None and second.page_token == "a" and second.near_term
    paginator.accept(second, None, listed=0)
    future = paginator.next_request()
    assert future is not None and future.page_token is None and not future.near_term
    paginator.accept(future, "a")  # another listing's token sequence: not a loop
    again = paginator.next_request()
    assert again is not None
    with pytest.raises(PaginationLoopError, match="pagination loop"):
        paginator.accept(again, "a")
    assert paginator.near_term_pages == 1


def test_a_version_1_cursor_continues_its_listing_with_its_token() -> None:
    paginator = CalendlyPaginator(
        window=WINDOW, page_size=100, cursor={"v": 1, "page_token": "tok-7", "done": False}, near_term=NEAR_TERM
    )
    request = paginator.next_request()
    assert request is not None and request.page_token == "tok-7" and not request.near_term
    assert params(request) == {
        "min_start_time": "2024-06-01T00:00:00.000000Z", "max_start_time": "2024-07-01T00:00:00.000000Z",
        "sort": "start_time:desc",
    }  # fmt: skip
    paginator.accept(request, None)
    assert paginator.exhausted
    done = CalendlyPaginator(window=WINDOW, page_size=100, cursor={"v": 1, "page_token": None, "done": True})
    assert done.exhausted and done.next_request() is None


# --- Disjoint and complete whatever Calendly's bounds mean ------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """Whether Calendly's `min_start_time` / `max_start_time` include the instant itself: its
    reference says "after" and "prior to" only."""

    min_inclusive: bool
    max_inclusive: bool


def fake_list(
    starts: Sequence[datetime], request: CalendlyEventsRequest, bounds: Bounds
) -> tuple[list[int], str | None]:
    """Indexes of the events one `GET /scheduled_events` answer lists, and the next token."""
    low = datetime.fromisoformat(request.min_start_time.replace("Z", "+00:00"))
    high = datetime.fromisoformat(request.max_start_time.replace("Z", "+00:00"))
    chosen = [
        i
        for i, s in enumerate(starts)
        if (s >= low if bounds.min_inclusive else s > low) and (s <= high if bounds.max_inclusive else s < high)
    ]
    chosen.sort(key=lambda i: (starts[i], i), reverse=request.sort.endswith("desc"))
    offset = int(request.page_token or "0")
    page = chosen[offset : offset + request.count]
    more = offset + request.count < len(chosen)
    return page, str(offset + request.count) if more else None


def walk(paginator: CalendlyPaginator, starts: Sequence[datetime], bounds: Bounds) -> list[tuple[bool, list[int]]]:
    """(near_term, kept event indexes) of every answer, as the session keeps them."""
    answers: list[tuple[bool, list[int]]] = []
    for _ in range(10_000):
        request = paginator.next_request()
        if request is None:
            return answers
        listed, token = fake_list(starts, request, bounds)
        kept = [i for i in listed if not paginator.listed_elsewhere(starts[i])]
        paginator.accept(request, token, listed=len(kept))
        answers.append((request.near_term, kept))
    raise AssertionError("no end")


BOUNDS = [Bounds(a, b) for a in (True, False) for b in (True, False)]


def bounds_id(bounds: Bounds) -> str:
    return f"min-{'in' if bounds.min_inclusive else 'ex'}clusive-max-{'in' if bounds.max_inclusive else 'ex'}clusive"


@pytest.mark.parametrize("bounds", BOUNDS, ids=bounds_id)
def test_events_on_every_boundary_are_listed_exactly_once(bounds: Bounds) -> None:
    one = timedelta(microseconds=1)
    edges = [NEAR_TERM.start, NEAR_TERM.end, WINDOW.start + timedelta(hours=1), WINDOW.end - one]
    starts = [edge + delta for edge in edges for delta in (-one, timedelta(0), one)]
    starts += [datetime(2024, 8, 24, 14, 15, 22, 123456, tzinfo=UTC)]  # the reference's example instant, outside
    answers = walk(CalendlyPaginator(window=WINDOW, page_size=3, cursor=None, near_term=NEAR_TERM), starts, bounds)
    kept = [i for _, indexes in answers for i in indexes if WINDOW.contains(starts[i])]
    assert sorted(kept) == [i for i, s in enumerate(starts) if WINDOW.contains(s)]
    near = [i for near_term, indexes in answers if near_term for i in indexes]
    assert sorted(near) == [i for i, s in enumerate(starts) if NEAR_TERM.contains(s)]


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    events=st.integers(0, 120),
    page_size=st.integers(1, 20),
    now_offset_hours=st.integers(-24 * 40, 24 * 40),
    horizon_days=st.integers(1, 30),
    bounds=st.sampled_from(BOUNDS),
    resume_every=st.integers(0, 4),
)
def test_any_walk_lists_each_event_of_the_window_once_the_near_term_first(
    seed: int, events: int, page_size: int, now_offset_hours: int, horizon_days: int, bounds: Bounds,
    resume_every: int,
) -> None:  # fmt: skip
    """Random events (some on whole minutes, some with microseconds as in Calendly's reference), any
    near term, any page size; resumed from the cursor every few answers by a fetcher whose clock
    moved on: each in-window event once, the near-term ones on the first (near-term) pages."""
    rng = random.Random(seed)
    span_seconds = int((WINDOW.end - WINDOW.start).total_seconds()) + 7200
    starts = [
        WINDOW.start - timedelta(hours=1) + timedelta(seconds=rng.randrange(span_seconds) // 60 * 60)
        if rng.random() < 0.5
        else WINDOW.start + timedelta(microseconds=rng.randrange(span_seconds * 1_000_000))
        for _ in range(events)
    ]
    now = datetime(2024, 6, 15, tzinfo=UTC) + timedelta(hours=now_offset_hours)
    near_term = WINDOW.intersection(JobWindow(now - timedelta(days=1), now + timedelta(days=horizon_days)))
    paginator = CalendlyPaginator(window=WINDOW, page_size=page_size, cursor=None, near_term=near_term)
    answers: list[tuple[bool, list[int]]] = []
    for turn in range(10_000):
        request = paginator.next_request()
        if request is None:
            break
        listed, token = fake_list(starts, request, bounds)
        kept = [i for i in listed if not paginator.listed_elsewhere(starts[i])]
        paginator.accept(request, token, listed=len(kept))
        answers.append((request.near_term, kept))
        if resume_every and turn % resume_every == 0:
            cursor: JsonValue = paginator.cursor()
            moved = JobWindow(now + timedelta(days=3), now + timedelta(days=3 + horizon_days))
            paginator = CalendlyPaginator(window=WINDOW, page_size=page_size, cursor=cursor, near_term=moved)
    in_window = [i for _, indexes in answers for i in indexes if WINDOW.contains(starts[i])]
    assert sorted(in_window) == [i for i, s in enumerate(starts) if WINDOW.contains(s)]
    flags = [near for near, _ in answers]
    assert flags == sorted(flags, reverse=True), "near-term answers come first"
    near = sorted(i for near_flag, indexes in answers if near_flag for i in indexes)
    assert near == [i for i, s in enumerate(starts) if near_term is not None and near_term.contains(s)]
    assert paginator.near_term_pages == sum(1 for near_flag, indexes in answers if near_flag and indexes)
