"""PostgresSharedBudget ends a finished request's lease without a statement of its own: the next acquire
carries it; when none comes within RELEASE_FLUSH_DELAY_SECONDS, one flush ends every lease pending;
close() ends what is left; while a request waits for a lease (the budget is full) a release ends at
once. A failed acquire keeps the leases it carried pending; a failed flush leaves them to expire. No
I/O: provider_budgets is replaced by a recording fake, time by a virtual clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from apptsync.fetcher.providers import RateBudget
from apptsync.fetcher.shared_budget import RELEASE_FLUSH_DELAY_SECONDS, PostgresSharedBudget
from apptsync.shared.appointments import Source
from apptsync.shared.db import provider_budgets
from apptsync.shared.db.provider_budgets import BudgetGrant
from apptsync.shared.errors import StorageUnavailableError

pytestmark = pytest.mark.unit

BUDGET = RateBudget(requests_per_period=10, period_seconds=1.0, max_concurrent=20)


class FakePool:
    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[None]:
        yield None


class VirtualClock:
    """Monotonic time that moves only by `advance`; `sleep` returns once the clock passed its end."""

    def __init__(self) -> None:
        self.now = 100.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        woken = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, woken))
        await woken

    def sleeping(self) -> int:
        return sum(1 for _, woken in self._sleepers if not woken.done())

    async def advance(self, seconds: float) -> None:
        await settle()  # tasks started meanwhile begin their sleeps at the current time
        self.now += seconds
        for due, woken in self._sleepers:
            if due <= self.now + 1e-9 and not woken.done():
                woken.set_result(None)
        self._sleepers = [(due, woken) for due, woken in self._sleepers if not woken.done()]
        await settle()  # the woken tasks run their statements


async def settle() -> None:
    """Lets every ready task run until it waits again."""
    for _ in range(20):
        await asyncio.sleep(0)


class FakeStore:
    """Records each statement: ("acquire", finished leases carried) or ("release_many", lease ids)."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, list[int]]] = []
        self.next_lease = 1
        self.acquire_error: Exception | None = None
        self.full = False  # every lease held: grants nothing, ask again after 0.1 s
        self.release_error: Exception | None = None
        self.release_gate: asyncio.Event | None = None
        self.released: list[int] = []  # by release_many statements that completed

    async def acquire(self, _conn: Any, *, finished_leases: Sequence[int] = (), **_kwargs: Any) -> BudgetGrant:
        self.statements.append(("acquire", list(finished_leases)))
        if self.acquire_error is not None:
            raise self.acquire_error
        if self.full:
            return BudgetGrant(None, 0.1)
        lease, self.next_lease = self.next_lease, self.next_lease + 1
        return BudgetGrant(lease, 0.0)

    async def release_many(self, _conn: Any, *, lease_ids: Sequence[int]) -> None:
        self.statements.append(("release_many", list(lease_ids)))
        if self.release_gate is not None:
            await self.release_gate.wait()
        if self.release_error is not None:
            raise self.release_error
        self.released.extend(lease_ids)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    fake = FakeStore()
    monkeypatch.setattr(provider_budgets, "acquire", fake.acquire)
    monkeypatch.setattr(provider_budgets, "release_many", fake.release_many)
    return fake


@pytest.fixture
async def budget(clock: VirtualClock, store: FakeStore) -> AsyncIterator[PostgresSharedBudget]:
    shared = PostgresSharedBudget(
        FakePool(),  # type: ignore[arg-type]
        sources=[Source.ACUITY],
        budget_key="ip-1",
        holder="w",
        http_timeout_seconds=10,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )
    yield shared
    await shared.close()


async def test_a_finished_lease_rides_on_the_next_acquire_and_no_flush_follows(
    budget: PostgresSharedBudget, clock: VirtualClock, store: FakeStore
) -> None:
    first = await budget.acquire(Source.ACUITY, BUDGET)
    await budget.release(first)
    second = await budget.acquire(Source.ACUITY, BUDGET)
    await clock.advance(RELEASE_FLUSH_DELAY_SECONDS * 10)

    assert (first, second) == (1, 2)
    # Two requests, two statements: the release cost none of its own.
    assert store.statements == [("acquire", []), ("acquire", [1])]
    assert clock.sleeping() == 0


async def test_without_an_acquire_one_flush_ends_every_pending_lease_after_the_delay(
    budget: PostgresSharedBudget, clock: VirtualClock, store: FakeStore
) -> None:
    leases = [await budget.acquire(Source.ACUITY, BUDGET) for _ in range(3)]
    await budget.release(leases[0])
    await clock.advance(RELEASE_FLUSH_DELAY_SECONDS * 0.8)
    await budget.release(leases[1])
    assert [kind for kind, _ in store.statements] == ["acquire"] * 3  # not yet

    await clock.advance(RELEASE_FLUSH_DELAY_SECONDS * 0.2)
    assert store.statements[3:] == [("release_many", [1, 2])]  # one statement for both

    # A later release starts a new delay.
    await budget.release(leases[2])
    await clock.advance(RELEASE_FLUSH_DELAY_SECONDS)
    assert store.statements[4:] == [("release_many", [3])]
    assert clock.sleeping() == 0


async def test_close_ends_the_pending_leases_at_once_and_stops_the_flush(
    budget: PostgresSharedBudget, clock: VirtualClock, store: FakeStore
) -> None:
    lease = await budget.acquire(Source.ACUITY, BUDGET)
    await budget.release(lease)
    await settle()
    assert clock.sleeping() == 1  # the flush waits

    await budget.close()
    assert store.statements == [("acquire", []), ("release_many", [1])]
    assert clock.sleeping() == 0
    await clock.advance(RELEASE_FLUSH_DELAY_SECONDS * 10)
    assert len(store.statements) == 2

    # A request that ends after close() (nothing should, but nothing may leak) releases at once.
    late = await budget.acquire(Source.ACUITY, BUDGET)
    await budget.release(late)
    assert store.statements[2:] == [("acquire", []), ("release_many", [2])]


async def test_close_waits_for_a_flush_in_its_statement_instead_of_cancelling_it(
    budget: PostgresSharedBudget, clock: VirtualClock, store: FakeStore
) -> None:
    store.release_gate = asyncio.Event()
    await budget.release(await budget.acquire(Source.ACUITY, BUDGET))
    await clock.advance(RELEASE_FLUSH_DELAY_SECONDS)  # the flush is now in its statement
    await budget.release(await budget.acquire(Source.ACUITY, BUDGET))

    closing = asyncio.create_task(budget.close())
    await asyncio.sleep(0)
    assert not closing.done()
    store.release_gate.set()
    await closing

    assert store.statements == [("acquire", []), ("release_many", [1]), ("acquire", []), ("release_many", [2])]
    assert store.released == [1, 2]  # the flush's statement completed


async def test_while_a_request_waits_for_a_lease_a_release_ends_at_once(
    budget: PostgresSharedBudget, clock: VirtualClock, store: FakeStore
) -> None:
    """Carried by this process's next poll, the freed lease would go to its own waiting request every
    time; ended at once, whichever replica asks first gets it."""
    lease = await budget.acquire(Source.ACUITY, BUDGET)
    store.full = True
    waiting = asyncio.create_task(budget.acquire(Source.ACUITY, BUDGET))
    await settle()
    await budget.release(lease)
    assert store.statements == [("acquire", []), ("acquire", []), ("release_many", [1])]

    store.full = False
    await clock.advance(0.1)
    assert await waiting == 2
    await budget.release(2)  # nobody waits any more: it rides again
    await budget.acquire(Source.ACUITY, BUDGET)
    assert store.statements[3:] == [("acquire", []), ("acquire", [2])]


async def test_a_failed_acquire_keeps_the_leases_it_carried_for_the_next_statement(
    budget: PostgresSharedBudget, clock: VirtualClock, store: FakeStore
) -> None:
    await budget.release(await budget.acquire(Source.ACUITY, BUDGET))
    store.acquire_error = OSError("connection reset")
    with pytest.raises(StorageUnavailableError):
        await budget.acquire(Source.ACUITY, BUDGET)
    store.acquire_error = None
    await budget.acquire(Source.ACUITY, BUDGET)

    assert store.statements == [("acquire", []), ("acquire", [1]), ("acquire", [1])]


async def test_a_failed_acquire_leaves_its_leases_to_the_flush_when_no_acquire_follows(
    budget: PostgresSharedBudget, clock: VirtualClock, store: FakeStore
) -> None:
    await budget.release(await budget.acquire(Source.ACUITY, BUDGET))
    store.acquire_error = OSError("connection reset")
    with pytest.raises(StorageUnavailableError):
        await budget.acquire(Source.ACUITY, BUDGET)
    await clock.advance(RELEASE_FLUSH_DELAY_SECONDS)

    assert store.statements == [("acquire", []), ("acquire", [1]), ("release_many", [1])]


async def test_a_failed_flush_is_logged_and_leaves_its_leases_to_expire(
    budget: PostgresSharedBudget, clock: VirtualClock, store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.release_error = OSError("connection reset")
    await budget.release(await budget.acquire(Source.ACUITY, BUDGET))
    with caplog.at_level(logging.WARNING, logger="apptsync.fetcher.shared_budget"):
        await clock.advance(RELEASE_FLUSH_DELAY_SECONDS)
    await budget.acquire(Source.ACUITY, BUDGET)

    assert "releasing 1 shared budget lease(s) failed (OSError); they expire" in caplog.text
    assert store.statements == [("acquire", []), ("release_many", [1]), ("acquire", [])]
    assert clock.sleeping() == 0


async def test_a_request_cancelled_while_waiting_for_its_slot_gives_its_lease_back(
    budget: PostgresSharedBudget, clock: VirtualClock, store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def later_slot(_conn: Any, *, finished_leases: Sequence[int] = (), **_kwargs: Any) -> BudgetGrant:
        store.statements.append(("acquire", list(finished_leases)))
        return BudgetGrant(7, 0.5)

    monkeypatch.setattr(provider_budgets, "acquire", later_slot)
    waiting = asyncio.create_task(budget.acquire(Source.ACUITY, BUDGET))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await clock.advance(RELEASE_FLUSH_DELAY_SECONDS)

    assert store.statements == [("acquire", []), ("release_many", [7])]
