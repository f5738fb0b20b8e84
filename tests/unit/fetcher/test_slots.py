"""Job slots: a job waiting out a provider's rate window lends its working slot; open jobs stay bounded."""

from __future__ import annotations

import asyncio

import pytest

from apptsync.fetcher.slots import JobSlots, SlotBook, releases_slot

pytestmark = pytest.mark.unit


def test_a_new_claim_needs_a_free_working_slot() -> None:
    book = SlotBook(working_slots=2, max_open_jobs=10)
    book.claimed("a")
    book.claimed("b")

    assert not book.may_claim()
    assert book.working == 2


def test_a_job_that_waits_for_its_rate_window_lets_another_job_be_claimed() -> None:
    book = SlotBook(working_slots=1, max_open_jobs=10)
    book.claimed("large")

    assert book.sleep_started("large") == []
    assert book.may_claim()
    assert book.claimed("small") is True
    assert book.working == 1 and book.open_jobs == 2


def test_open_jobs_are_bounded_however_many_wait() -> None:
    book = SlotBook(working_slots=1, max_open_jobs=3)
    for key in ("a", "b", "c"):
        book.claimed(key)
        book.sleep_started(key)

    assert book.working == 0
    assert not book.may_claim()


def test_a_job_back_from_its_wait_gets_the_free_slot_at_once() -> None:
    book = SlotBook(working_slots=1, max_open_jobs=10)
    book.claimed("large")
    book.sleep_started("large")

    assert book.sleep_ended("large") is True
    assert book.holds("large")
    assert not book.may_claim()


def test_a_job_back_from_its_wait_queues_while_others_work_and_goes_before_new_claims() -> None:
    book = SlotBook(working_slots=1, max_open_jobs=10)
    book.claimed("large")
    book.sleep_started("large")
    book.claimed("small")

    assert book.sleep_ended("large") is False
    assert book.queued == ("large",)
    assert not book.may_claim()  # the waiting job resumes first: a large job still finishes
    assert book.finished("small") == ["large"]
    assert book.holds("large")


def test_jobs_back_from_waits_are_granted_slots_in_the_order_they_came_back() -> None:
    book = SlotBook(working_slots=1, max_open_jobs=10)
    for key in ("first", "second"):
        book.claimed(key)
        book.sleep_started(key)
    book.claimed("worker")
    book.sleep_ended("second")
    book.sleep_ended("first")

    assert book.sleep_started("worker") == ["second"]
    assert book.finished("second") == ["first"]


def test_a_claim_that_races_a_job_coming_back_queues_behind_it() -> None:
    book = SlotBook(working_slots=1, max_open_jobs=10)
    book.claimed("large")
    book.sleep_started("large")
    assert book.may_claim()
    book.sleep_ended("large")  # came back while the claim's query ran

    assert book.claimed("new") is False
    assert book.queued == ("new",)
    assert book.working == 1


def test_two_sleeping_tasks_of_one_job_release_one_slot_once() -> None:
    book = SlotBook(working_slots=2, max_open_jobs=10)
    book.claimed("calendly")
    book.claimed("other")
    book.sleep_started("calendly")
    book.sleep_started("calendly")

    assert book.working == 1
    assert book.sleep_ended("calendly") is True
    assert book.sleep_ended("calendly") is True
    assert book.working == 2


def test_a_finished_job_leaves_the_queue_and_a_waiting_finished_job_frees_no_slot() -> None:
    book = SlotBook(working_slots=1, max_open_jobs=10)
    book.claimed("a")
    book.sleep_started("a")
    book.claimed("b")
    book.sleep_ended("a")

    assert book.finished("a") == []
    assert book.queued == ()
    assert book.finished("b") == []
    assert book.open_jobs == 0 and book.may_claim()


def test_only_a_long_sleep_releases_the_slot() -> None:
    assert releases_slot(1.0, release_after_seconds=1.0)
    assert releases_slot(57.0, release_after_seconds=1.0)
    assert not releases_slot(0.2, release_after_seconds=1.0)


def test_bounds_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SlotBook(working_slots=0, max_open_jobs=4)


class FakeSleeps:
    """Sleeps that end when the test says so."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((seconds, done))
        await done

    def end_all(self) -> None:
        for _seconds, done in self.pending:
            if not done.done():
                done.set_result(None)
        self.pending.clear()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_job_sleeping_for_its_rate_window_lends_its_slot_and_waits_to_get_one_back() -> None:
    sleeps = FakeSleeps()
    freed: list[int] = []
    slots = JobSlots(working_slots=1, max_open_jobs=4, on_slot_freed=lambda: freed.append(1), sleep_for=sleeps.sleep)
    events: list[str] = []
    small_may_finish = asyncio.Event()

    async def large() -> None:
        async with slots.running("large"):
            await slots.sleep(60.0)  # its user's rate window
            events.append("large resumed")

    async def small() -> None:
        async with slots.running("small"):
            events.append("small started")
            await small_may_finish.wait()
            events.append("small done")

    slots.claimed("large")
    large_task = asyncio.create_task(large())
    await settle()
    assert slots.may_claim() and freed  # the waiting job's slot is free for another claim
    slots.claimed("small")
    small_task = asyncio.create_task(small())
    await settle()
    sleeps.end_all()  # the window reset: the large job queues behind the small one
    await settle()
    assert events == ["small started"]
    small_may_finish.set()
    await asyncio.wait_for(asyncio.gather(large_task, small_task), timeout=5)

    assert events == ["small started", "small done", "large resumed"]
    assert slots.slot_releases == 1
    assert slots.book.open_jobs == 0


async def test_a_short_backoff_keeps_the_slot() -> None:
    sleeps = FakeSleeps()
    slots = JobSlots(working_slots=1, max_open_jobs=4, sleep_for=sleeps.sleep)
    slots.claimed("job")

    async def job() -> None:
        async with slots.running("job"):
            await slots.sleep(0.25)

    task = asyncio.create_task(job())
    await settle()
    assert not slots.may_claim()
    sleeps.end_all()
    await asyncio.wait_for(task, timeout=5)
    assert slots.slot_releases == 0


async def test_a_sleep_outside_any_job_is_a_plain_sleep() -> None:
    sleeps = FakeSleeps()
    slots = JobSlots(working_slots=1, max_open_jobs=1, sleep_for=sleeps.sleep)
    task = asyncio.create_task(slots.sleep(30.0))
    await settle()
    assert [seconds for seconds, _ in sleeps.pending] == [30.0]
    sleeps.end_all()
    await asyncio.wait_for(task, timeout=5)
    assert slots.slot_releases == 0


async def test_a_job_waiting_for_a_providers_answer_or_budget_lends_its_slot() -> None:
    slots = JobSlots(working_slots=1, max_open_jobs=4)
    answered = asyncio.Event()
    slots.claimed("acuity")

    async def job() -> None:
        async with slots.running("acuity"), slots.waiting_for_provider():
            await answered.wait()  # the per-IP budget's queue, then the request

    task = asyncio.create_task(job())
    await settle()
    assert slots.may_claim()  # a small tenant's job can start meanwhile
    answered.set()
    await asyncio.wait_for(task, timeout=5)
    assert slots.slot_releases == 1


async def test_a_long_sleep_nested_in_a_provider_wait_neither_lends_again_nor_takes_the_slot_back() -> None:
    sleeps = FakeSleeps()
    slots = JobSlots(working_slots=1, max_open_jobs=4, sleep_for=sleeps.sleep)
    slots.claimed("calendly")
    inside: list[bool] = []

    async def job() -> None:
        async with slots.running("calendly"), slots.waiting_for_provider():
            await slots.sleep(60.0)  # the user's rate window, paused inside the request's wait
            inside.append(slots.book.holds("calendly"))

    task = asyncio.create_task(job())
    await settle()
    sleeps.end_all()
    await asyncio.wait_for(task, timeout=5)

    assert inside == [False]  # still lent until the outer wait ends
    assert slots.slot_releases == 1
    assert slots.book.open_jobs == 0


def test_a_shared_budget_provider_with_a_working_slots_worth_of_open_jobs_is_skipped_by_the_next_claim() -> None:
    book = SlotBook(working_slots=2, max_open_jobs=32)
    book.claimed("a1", "acuity")
    book.sleep_started("a1")
    assert book.saturated_sources(["acuity"]) == frozenset()
    book.claimed("a2", "acuity")
    book.sleep_started("a2")
    book.claimed("c1", "calendly")
    book.claimed("c2", "calendly")

    assert book.saturated_sources(["acuity"]) == {"acuity"}  # waiting on the per-IP budget, both
    assert book.saturated_sources([]) == frozenset()  # calendly's limits are per user: never capped
    book.finished("a1")
    assert book.saturated_sources(["acuity"]) == frozenset()


async def test_only_a_jobs_end_tells_the_claim_loop_that_a_held_back_job_may_be_claimable() -> None:
    sleeps = FakeSleeps()
    freed: list[str] = []
    slots = JobSlots(
        working_slots=2, max_open_jobs=4, on_slot_freed=lambda: freed.append("slot"),
        on_job_finished=lambda: freed.append("job"), sleep_for=sleeps.sleep,
    )  # fmt: skip
    may_finish = asyncio.Event()

    async def job() -> None:
        async with slots.running("a"):
            await slots.sleep(60.0)
            await may_finish.wait()

    slots.claimed("a")
    task = asyncio.create_task(job())
    await settle()
    assert freed == ["slot"]  # lent out: no job ended
    sleeps.end_all()
    may_finish.set()
    await asyncio.wait_for(task, timeout=5)
    assert freed == ["slot", "job", "slot"]
