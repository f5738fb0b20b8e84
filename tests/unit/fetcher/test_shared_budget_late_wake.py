"""PostgresSharedBudget: a request whose wake-up came too late for its slot takes a new slot (else it
would land closer than one spacing to the next holder's request), giving the old one back in the same
statement; one on time keeps its slot."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from apptsync.fetcher.providers import RateBudget
from apptsync.fetcher.shared_budget import LATE_WAKE_SPACINGS, PostgresSharedBudget
from apptsync.shared.appointments import Source
from apptsync.shared.db import provider_budgets
from apptsync.shared.db.provider_budgets import BudgetGrant

pytestmark = pytest.mark.unit

BUDGET = RateBudget(requests_per_period=10, period_seconds=1.0, max_concurrent=20)  # 0.1 s spacing


class FakePool:
    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[None]:
        yield None


class Clock:
    """A monotonic clock that each sleep advances by its length plus `lateness` (the loop was busy)."""

    def __init__(self, latenesses: list[float]) -> None:
        self.now = 100.0
        self.latenesses = latenesses

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.latenesses.pop(0)


def budget_with(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> tuple[PostgresSharedBudget, list[int]]:
    """The budget, and the leases ended so far: those acquire statements carried, then those released
    by statements of their own (there must be none: a given-back slot rides on the next acquire)."""
    leases = iter(range(1, 100))
    released: list[int] = []

    async def acquire(_conn: Any, *, finished_leases: Sequence[int] = (), **_kwargs: Any) -> BudgetGrant:
        released.extend(finished_leases)
        return BudgetGrant(next(leases), 0.3)

    async def release_many(_conn: Any, *, lease_ids: Sequence[int]) -> None:
        raise AssertionError(f"a statement of its own for {lease_ids}")

    monkeypatch.setattr(provider_budgets, "acquire", acquire)
    monkeypatch.setattr(provider_budgets, "release_many", release_many)
    budget = PostgresSharedBudget(FakePool(), sources=[Source.ACUITY], budget_key="ip-1", holder="w",  # type: ignore[arg-type]
                                  http_timeout_seconds=10, sleep=clock.sleep, monotonic=clock.monotonic)
    return budget, released


async def test_a_wake_within_the_tolerance_keeps_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock([0.1 * LATE_WAKE_SPACINGS * 0.9])
    budget, released = budget_with(clock, monkeypatch)

    assert await budget.acquire(Source.ACUITY, BUDGET) == 1
    assert (released, budget.late_wakes) == ([], 0)


async def test_a_late_wake_gives_its_slot_back_and_takes_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock([0.5, 0.0])  # half a second late (a busy loop), then on time
    budget, released = budget_with(clock, monkeypatch)

    assert await budget.acquire(Source.ACUITY, BUDGET) == 2
    assert (released, budget.late_wakes) == ([1], 1)
