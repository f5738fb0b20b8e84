"""The fetcher's claim loop: when it asks PostgreSQL for a job (one query per wake-up, so what wakes it
decides the cost of an idle or busy fetcher)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from apptsync.fetcher import service
from apptsync.fetcher.slots import JobSlots
from apptsync.shared.db import jobs as jobs_db

pytestmark = pytest.mark.unit


class Claims:
    """Stands in for jobs_db.claim_job: counts the queries and answers None (nothing queued)."""

    def __init__(self) -> None:
        self.queries = 0
        self.asked = asyncio.Event()

    async def claim_job(self, _conn: object, **_kwargs: Any) -> None:
        self.queries += 1
        self.asked.set()


@contextlib.asynccontextmanager
async def fake_acquired(_pool: object) -> AsyncIterator[object]:
    yield object()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
def claims(monkeypatch: pytest.MonkeyPatch) -> Claims:
    fake = Claims()
    monkeypatch.setattr(jobs_db, "claim_job", fake.claim_job)
    monkeypatch.setattr(service, "acquired", fake_acquired)
    return fake


def context() -> Any:
    settings = SimpleNamespace(
        shared_budget_providers="acuity", poll_interval_seconds=3600.0, lease_seconds=30.0,
        max_running_jobs_per_tenant=1,
    )  # fmt: skip
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return SimpleNamespace(settings=settings, pool=object(), worker_id="w", clock=lambda: now)


async def test_a_lent_slot_after_an_empty_claim_asks_nothing_but_a_jobs_end_and_a_notification_do(
    claims: Claims,
) -> None:
    wake, stop, slot_freed, job_finished = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()
    slots = JobSlots(working_slots=2, max_open_jobs=4)
    async with asyncio.TaskGroup() as group:
        loop = group.create_task(service._claim_loop(context(), group, wake, stop, slots, slot_freed, job_finished))
        await settle()
        assert claims.queries == 1  # the first look
        for _ in range(5):
            slot_freed.set()  # a running job lends its slot for each provider request
            await settle()
        assert claims.queries == 1
        job_finished.set()
        await settle()
        assert claims.queries == 2
        wake.set()
        await settle()
        assert claims.queries == 3
        stop.set()
        await asyncio.wait_for(loop, timeout=5)


async def test_with_every_slot_taken_a_lent_slot_is_worth_a_claim(claims: Claims) -> None:
    wake, stop, slot_freed, job_finished = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()
    slots = JobSlots(working_slots=1, max_open_jobs=4)
    slots.claimed("busy")  # holds the only working slot
    async with asyncio.TaskGroup() as group:
        loop = group.create_task(service._claim_loop(context(), group, wake, stop, slots, slot_freed, job_finished))
        await settle()
        assert claims.queries == 0  # no slot free: nothing to ask
        slots.book.sleep_started("busy")  # the job waits for its provider and lends its slot
        slot_freed.set()
        await settle()
        assert claims.queries == 1
        stop.set()
        await asyncio.wait_for(loop, timeout=5)
