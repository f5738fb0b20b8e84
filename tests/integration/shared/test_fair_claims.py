"""Fair claims against real PostgreSQL, as the services' role: a tenant that queues many imports
does not hold every fetcher slot while other tenants wait, and the cap holds across fetchers."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import pytest

from apptsync.shared.db import jobs as jobs_db
from apptsync.shared.db.migrator import migrate
from tests.integration.shared.test_jobs_repository import NOW, new_job

pytestmark = pytest.mark.integration
FETCHERS = 3
SLOTS_PER_FETCHER = 4
LEASE_SECONDS = 30.0


@pytest.fixture
async def pool(database_url: str, service_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    owner = await asyncpg.connect(database_url)
    await migrate(owner)
    await owner.close()
    pool = await asyncpg.create_pool(service_database_url, min_size=1, max_size=FETCHERS * SLOTS_PER_FETCHER)
    yield pool
    await pool.close()


async def queue(pool: asyncpg.Pool, tenant_id: str, connection_id: str, created_at: datetime) -> str:
    """One QUEUED job (a connection has at most one active job, so each gets its own connection)."""
    async with pool.acquire() as conn:
        record, existed = await jobs_db.create_job(conn, new_job(tenant_id, connection_id), now=created_at)
    assert not existed
    return record.tenant_id


async def queue_the_flood(pool: asyncpg.Pool) -> tuple[str, list[str]]:
    """50 jobs of one tenant, then one job each of 10 other tenants, all younger than the 50."""
    flooder = str(uuid.uuid4())
    for n in range(50):
        await queue(pool, flooder, f"conn-{n}", NOW - timedelta(minutes=60 - n))
    others = [await queue(pool, str(uuid.uuid4()), "main", NOW - timedelta(seconds=10 - n)) for n in range(10)]
    return flooder, others


async def claim(pool: asyncpg.Pool, owner: str, *, now: datetime, cap: int) -> jobs_db.JobRecord | None:
    async with pool.acquire() as conn:
        return await jobs_db.claim_job(
            conn, lease_owner=owner, lease_seconds=LEASE_SECONDS, now=now, max_running_per_tenant=cap
        )


async def fill_every_slot(pool: asyncpg.Pool, *, cap: int) -> list[jobs_db.JobRecord]:
    """Three fetchers with four slots each claim at the same time, as their claim loops would."""
    claims = await asyncio.gather(
        *(claim(pool, f"fetcher-{f}#{s}", now=NOW, cap=cap) for f in range(FETCHERS) for s in range(SLOTS_PER_FETCHER))
    )
    return [job for job in claims if job is not None]


async def test_the_other_tenants_start_at_once_while_one_tenant_queued_fifty(pool: asyncpg.Pool) -> None:
    flooder, others = await queue_the_flood(pool)
    claimed = await fill_every_slot(pool, cap=4)
    per_tenant = Counter(job.tenant_id for job in claimed)
    # Every waiting tenant got a slot in the first round, and the flooder no more than its cap.
    assert set(others) <= per_tenant.keys()
    assert all(per_tenant[tenant] == 1 for tenant in others)
    assert per_tenant[flooder] == 2  # 12 slots - 10 others; below the cap of 4
    assert len(claimed) == FETCHERS * SLOTS_PER_FETCHER


async def test_without_a_cap_the_tenant_with_fewest_running_jobs_goes_first(pool: asyncpg.Pool) -> None:
    flooder, others = await queue_the_flood(pool)
    order = [await claim(pool, f"f#{n}", now=NOW, cap=2**31 - 1) for n in range(13)]
    tenants = [job.tenant_id for job in order if job is not None]
    # The flooder's oldest job, then every tenant without a running job (oldest first), then the flooder.
    assert tenants == [flooder, *others, flooder, flooder]


async def test_the_cap_holds_across_concurrent_fetchers(pool: asyncpg.Pool) -> None:
    flooder = str(uuid.uuid4())
    for n in range(50):
        await queue(pool, flooder, f"conn-{n}", NOW - timedelta(minutes=60 - n))
    # Only the flooder waits: twelve concurrent claims give it its cap, and the other slots stay free.
    claimed = await fill_every_slot(pool, cap=3)
    assert [job.tenant_id for job in claimed] == [flooder] * 3
    # ... for a tenant that comes later.
    latecomer = await queue(pool, str(uuid.uuid4()), "main", NOW)
    second = await fill_every_slot(pool, cap=3)
    assert [job.tenant_id for job in second] == [latecomer]


async def test_a_job_whose_lease_expired_frees_its_tenants_share(pool: asyncpg.Pool) -> None:
    flooder = str(uuid.uuid4())
    for n in range(3):
        await queue(pool, flooder, f"conn-{n}", NOW - timedelta(minutes=10 - n))
    first = await claim(pool, "a#1", now=NOW, cap=1)
    assert first is not None
    assert await claim(pool, "a#2", now=NOW + timedelta(seconds=1), cap=1) is None
    # The first fetcher died: once its lease ran out its job no longer counts, and is claimed again first.
    later = NOW + timedelta(seconds=LEASE_SECONDS + 1)
    resumed = await claim(pool, "b#1", now=later, cap=1)
    assert resumed is not None
    assert resumed.job_id == first.job_id
    assert await claim(pool, "b#2", now=later, cap=1) is None


async def test_a_claim_skips_the_sources_it_is_told_to_and_takes_the_oldest_other(pool: asyncpg.Pool) -> None:
    """A fetcher holding enough jobs of a shared-budget provider (Acuity) claims other providers'."""
    acuity_tenant, google_tenant = str(uuid.uuid4()), str(uuid.uuid4())
    await queue(pool, acuity_tenant, "acuity-1", NOW - timedelta(minutes=3))
    async with pool.acquire() as conn:
        google = dataclasses.replace(new_job(google_tenant, "google"), external_source="google_calendar")
        await jobs_db.create_job(conn, google, now=NOW - timedelta(minutes=1))
        skipping = await jobs_db.claim_job(
            conn, lease_owner="f#1", lease_seconds=LEASE_SECONDS, now=NOW, skip_sources={"acuity"}
        )
        nothing_else = await jobs_db.claim_job(
            conn, lease_owner="f#2", lease_seconds=LEASE_SECONDS, now=NOW, skip_sources={"acuity"}
        )
        oldest = await jobs_db.claim_job(conn, lease_owner="f#3", lease_seconds=LEASE_SECONDS, now=NOW)

    assert skipping is not None and skipping.tenant_id == google_tenant
    assert nothing_else is None  # the acuity job stays queued for a fetcher with room for it
    assert oldest is not None and oldest.tenant_id == acuity_tenant
