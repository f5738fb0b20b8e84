"""`apptsync prune` (apptsync.shared.db.retention) against a real PostgreSQL, as the services' role.

Two tenants with old and recent appointments, finished, kept and running jobs: exactly the old rows
are pruned, nothing else of either tenant; a second run changes nothing; a re-import of an unchanged
record after the prune counts it unchanged and writes nothing, a changed one brings its payload back.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from apptsync.shared.appointments import CanonicalAppointment
from apptsync.shared.db.migrator import migrate
from apptsync.shared.db.retention import prune
from apptsync.shared.retention import PruneBudget, PruneReport, retention_cutoffs
from apptsync.writer.accounting import decode_page
from apptsync.writer.store import write_pages
from tests.integration.writer.writer_database import padded
from tests.unit.writer.page_builders import OTHER_TENANT, TENANT, page

pytestmark = pytest.mark.integration

OLD_DAYS = 60  # beyond both retention ages below
RAW_PAYLOAD_DAYS = 30
LEDGER_DAYS = 30


@dataclasses.dataclass
class Fixture:
    owner: asyncpg.Connection  # the truth, beyond row-level security
    service: asyncpg.Connection  # what `apptsync prune` connects as
    jobs: dict[tuple[str, str], str]  # (tenant, job name) -> job id


async def insert_job(owner: asyncpg.Connection, tenant_id: str, connection_id: str, state: str,
                     finished_days_ago: int | None) -> str:
    job_id = str(uuid.uuid4())
    await owner.execute(
        """INSERT INTO import_jobs (job_id, tenant_id, external_source, connection_id, state, window_start,
               window_end, page_size, max_pages, max_in_flight_pages, stop_policy, stop_after_pages,
               deadline_at, first_import, created_at, finished_at)
           VALUES ($1::uuid, $2, 'acuity', $3, $4, now() - interval '30 days', now() + interval '30 days',
                   100, 1000, 8, 'NEVER', 1, now() + interval '1 hour', false, now() - interval '70 days',
                   now() - make_interval(days => $5))""",
        job_id, tenant_id, connection_id, state, finished_days_ago,
    )
    for page_no in (1, 2, 3):
        await owner.execute(
            """INSERT INTO import_job_pages (job_id, page_no, tenant_id, records_fetched, inserted, updated,
                   unchanged, skipped_out_of_window, skipped_invalid, skipped_dead_letter,
                   skipped_duplicate_in_page, contacts_unmatched, external_ids)
               VALUES ($1::uuid, $2, $3, 1, 1, 0, 0, 0, 0, 1, 0, 0, ARRAY['x'])""",
            job_id, page_no, tenant_id,
        )
        await owner.execute(
            """INSERT INTO import_job_dead_letters (job_id, page_no, external_id, tenant_id, error)
               VALUES ($1::uuid, $2::integer, 'refused-' || $2::integer::text, $3, 'value too long')""",
            job_id, page_no, tenant_id,
        )
    return job_id


# Per connection: c1's old jobs go (a recent success is its latest); c2 keeps its latest success and
# its latest finished job (both old: their pages go, the rows stay) and its running job untouched.
JOBS = (
    ("c1-old-succeeded", "c1", "SUCCEEDED", OLD_DAYS),
    ("c1-old-failed", "c1", "FAILED", OLD_DAYS - 10),
    ("c1-recent", "c1", "SUCCEEDED", 1),
    ("c2-old-succeeded", "c2", "SUCCEEDED", OLD_DAYS),
    ("c2-old-failed", "c2", "FAILED", OLD_DAYS - 20),
    ("c2-running", "c2", "RUNNING", None),
)
DELETED_JOBS = {"c1-old-succeeded", "c1-old-failed"}
JOBS_WITHOUT_PAGES = DELETED_JOBS | {"c2-old-succeeded", "c2-old-failed"}


def records(tenant: str, version: int = 0) -> list[CanonicalAppointment]:
    return [padded(f"{tenant[:4]}-{i}", version=version) for i in range(4)]


def old_ids(tenant: str) -> set[str]:
    return {f"{tenant[:4]}-0", f"{tenant[:4]}-2"}


async def write(fixture: Fixture, tenant: str, job_id: str, version: int = 0) -> tuple[int, int, int]:
    decoded = decode_page(page(records(tenant, version), job_id=job_id, tenant_id=tenant,
                               page_no=99).SerializeToString())
    (outcome,) = await write_pages(fixture.service, [decoded])
    return outcome.counts.inserted, outcome.counts.updated, outcome.counts.unchanged


@pytest.fixture
async def fixture(database_url: str, service_database_url: str) -> AsyncIterator[Fixture]:
    owner = await asyncpg.connect(database_url)
    service = await asyncpg.connect(service_database_url)
    try:
        await migrate(owner)
        jobs = {}
        for tenant in (TENANT, OTHER_TENANT):
            for name, connection_id, state, days in JOBS:
                jobs[(tenant, name)] = await insert_job(owner, tenant, connection_id, state, days)
        result = Fixture(owner, service, jobs)
        for tenant in (TENANT, OTHER_TENANT):
            assert await write(result, tenant, jobs[(tenant, "c2-running")]) == (4, 0, 0)
            await owner.execute(
                "UPDATE appointments SET updated_at = now() - make_interval(days => $1) WHERE external_id = ANY($2)",
                OLD_DAYS, sorted(old_ids(tenant)),
            )
        yield result
    finally:
        await service.close()
        await owner.close()


async def run_prune(fixture: Fixture, *, max_batches: int = 10_000, batch_rows: int = 2) -> PruneReport:
    cutoffs = retention_cutoffs(datetime.now(UTC), raw_payload_days=RAW_PAYLOAD_DAYS, ledger_days=LEDGER_DAYS)
    budget = PruneBudget(max_batches=max_batches, deadline_monotonic=time.monotonic() + 60)
    return await prune(fixture.service, cutoffs=cutoffs, batch_rows=batch_rows, budget=budget,
                       monotonic=time.monotonic)


async def appointment_state(owner: asyncpg.Connection) -> dict[str, tuple[str, bytes, str, datetime]]:
    """external_id -> (raw, content hash, xmin, updated_at)."""
    rows = await owner.fetch("SELECT external_id, raw::text AS raw, content_hash, xmin::text AS xmin, updated_at "
                             "FROM appointments")
    return {r["external_id"]: (r["raw"], r["content_hash"], r["xmin"], r["updated_at"]) for r in rows}


async def ledger_state(fixture: Fixture) -> dict[str, dict[str, tuple[int, int] | None]]:
    """tenant -> job name -> (pages, dead letters), None for a deleted job."""
    state: dict[str, dict[str, tuple[int, int] | None]] = {}
    for tenant in (TENANT, OTHER_TENANT):
        state[tenant] = {}
        for name, *_ in JOBS:
            job_id = fixture.jobs[(tenant, name)]
            exists = await fixture.owner.fetchval("SELECT count(*) FROM import_jobs WHERE job_id = $1", job_id)
            pages = await fixture.owner.fetchval("SELECT count(*) FROM import_job_pages WHERE job_id = $1", job_id)
            dead = await fixture.owner.fetchval(
                "SELECT count(*) FROM import_job_dead_letters WHERE job_id = $1", job_id)
            state[tenant][name] = (pages, dead) if exists else None
    return state


async def test_prune_removes_exactly_the_old_rows_of_every_tenant_and_is_idempotent(fixture: Fixture) -> None:
    before = await appointment_state(fixture.owner)

    report = await run_prune(fixture)

    assert report.complete
    assert report.tenants == 2
    assert report.raw_payloads_pruned == 4  # two old rows per tenant
    assert report.appointments_read == 8
    # Per tenant, c1's two old jobs and c2's two old ones lose their 3 pages (and 3 dead letters) each;
    # c1's old two go entirely, c2's are kept as its latest success and latest finished job.
    assert (report.pages_deleted, report.dead_letters_deleted, report.jobs_deleted) == (24, 24, 4)
    after = await appointment_state(fixture.owner)
    for tenant in (TENANT, OTHER_TENANT):
        for i in range(4):
            external_id = f"{tenant[:4]}-{i}"
            raw, content_hash, _xmin, updated_at = after[external_id]
            assert content_hash == before[external_id][1], "the content hash survives the prune"
            assert updated_at == before[external_id][3], "pruning is not a change of the record"
            if external_id in old_ids(tenant):
                assert json.loads(raw) == {}
            else:
                assert raw == before[external_id][0]
        expected: dict[str, tuple[int, int] | None] = {
            name: None if name in DELETED_JOBS else ((0, 0) if name in JOBS_WITHOUT_PAGES else (3, 3))
            for name, *_ in JOBS
        }
        expected["c2-running"] = (4, 3)  # and the page that stored the appointments
        assert (await ledger_state(fixture))[tenant] == expected

    ledger_after = await ledger_state(fixture)
    again = await run_prune(fixture)

    assert again.complete
    assert (again.raw_payloads_pruned, again.pages_deleted, again.dead_letters_deleted, again.jobs_deleted) == (
        0, 0, 0, 0)
    assert await appointment_state(fixture.owner) == after, "a second run rewrites no row"
    assert await ledger_state(fixture) == ledger_after


async def test_a_reimport_after_the_prune_counts_unchanged_records_unchanged(fixture: Fixture) -> None:
    await run_prune(fixture)
    pruned = await appointment_state(fixture.owner)
    reimport_job = await insert_job(fixture.owner, TENANT, "c3", "RUNNING", None)

    assert await write(fixture, TENANT, reimport_job) == (0, 0, 4)
    assert await appointment_state(fixture.owner) == pruned, "unchanged: no row written, payloads stay pruned"

    changed_job = await insert_job(fixture.owner, TENANT, "c4", "RUNNING", None)
    assert await write(fixture, TENANT, changed_job, version=1) == (0, 4, 0)
    restored = await appointment_state(fixture.owner)
    for external_id in old_ids(TENANT):
        assert json.loads(restored[external_id][0])["version"] == 1, "a changed record brings its payload"


async def test_a_run_out_of_budget_stops_between_batches_and_the_next_run_finishes(fixture: Fixture) -> None:
    partial = await run_prune(fixture, max_batches=3)

    assert not partial.complete
    assert partial.batches == 3
    rest = await run_prune(fixture)
    assert rest.complete
    assert partial.raw_payloads_pruned + rest.raw_payloads_pruned == 4
    assert partial.jobs_deleted + rest.jobs_deleted == 4
    assert partial.pages_deleted + rest.pages_deleted == 24
