"""The writer's store against a real PostgreSQL: counts, untouched rows, newer-wins, redelivery."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import pytest

from apptsync.shared.appointments import CanonicalAppointment, Contact
from apptsync.shared.errors import PoisonMessageError
from apptsync.writer.accounting import DecodedPage, PageOutcome, decode_page
from apptsync.writer.store import write_pages
from tests.integration.writer.writer_database import job_counters, padded
from tests.unit.writer.page_builders import OTHER_TENANT, T0, TENANT, page

pytestmark = pytest.mark.integration

CreateJob = Callable[..., Awaitable[str]]  # the `create_job` fixture
def pages_of(job_id: str, appointments: list[CanonicalAppointment], *, per_page: int,
             tenant_id: str = TENANT, first_page_no: int = 1) -> list[DecodedPage]:
    return [
        decode_page(page(appointments[i:i + per_page], page_no=first_page_no + i // per_page,
                         job_id=job_id, tenant_id=tenant_id).SerializeToString())
        for i in range(0, len(appointments), per_page)
    ]


def counts_of(outcomes: list[PageOutcome]) -> list[tuple[int, int, int, bool]]:
    return [(o.counts.inserted, o.counts.updated, o.counts.unchanged, o.redelivered) for o in outcomes]


async def write_in_batches(connection: asyncpg.Connection, pages: list[DecodedPage],
                           batch_pages: int = 8) -> list[PageOutcome]:
    outcomes: list[PageOutcome] = []
    for i in range(0, len(pages), batch_pages):
        outcomes.extend(await write_pages(connection, pages[i:i + batch_pages]))
    return outcomes


async def tuple_versions(connection: asyncpg.Connection) -> dict[str, tuple[str, str]]:
    """external_id -> (xmin, ctid): any insert or update of a row changes its pair."""
    rows = await connection.fetch("SELECT external_id, xmin::text AS xmin, ctid::text AS ctid FROM appointments")
    return {row["external_id"]: (row["xmin"], row["ctid"]) for row in rows}


async def identity_value(connection: asyncpg.Connection) -> int | None:
    value: int | None = await connection.fetchval(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('appointments', 'appointment_id')::regclass)"
    )
    return value


async def test_first_load_inserts_and_identical_rerun_touches_nothing(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    rows = [padded(f"appt-{i:04d}") for i in range(2000)]
    first_job = await create_job(TENANT)

    started = time.perf_counter()
    first = await write_in_batches(connection, pages_of(first_job, rows, per_page=100))
    elapsed_seconds = time.perf_counter() - started
    print(f"\nwriter store first load: 20 pages x 100 rows (~1 KB JSON) in {elapsed_seconds:.3f} s "
          f"= {2000 / elapsed_seconds:,.0f} rows/s (8 pages per transaction)")

    assert counts_of(first) == [(100, 0, 0, False)] * 20
    assert await connection.fetchval("SELECT count(*) FROM appointments") == 2000
    before = await tuple_versions(connection)
    identity_before = await identity_value(connection)

    rerun_job = await create_job(TENANT)
    started = time.perf_counter()
    rerun = await write_in_batches(connection, pages_of(rerun_job, rows, per_page=100))
    print(f"writer store identical re-run: {2000 / (time.perf_counter() - started):,.0f} rows/s")

    assert counts_of(rerun) == [(0, 0, 100, False)] * 20
    assert await tuple_versions(connection) == before  # no row was rewritten
    assert await identity_value(connection) == identity_before  # no insert was even attempted
    assert (await job_counters(connection, rerun_job))["unchanged"] == 2000
    assert (await job_counters(connection, first_job))["inserted"] == 2000


async def test_changed_rows_are_updated_and_only_they(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    rows = [padded(f"appt-{i:03d}") for i in range(200)]
    await write_in_batches(connection, pages_of(await create_job(TENANT), rows, per_page=100))
    before = await tuple_versions(connection)
    later = T0 + timedelta(hours=2)
    changed = [padded(r.external_id, version=1, observed_at=later) if i % 10 == 0 else r
               for i, r in enumerate(rows)]

    job = await create_job(TENANT)
    outcomes = await write_in_batches(connection, pages_of(job, changed, per_page=100))

    assert counts_of(outcomes) == [(0, 10, 90, False)] * 2
    after = await tuple_versions(connection)
    rewritten = sorted(key for key in after if after[key] != before[key])
    assert rewritten == [f"appt-{i:03d}" for i in range(0, 200, 10)]
    stored = await connection.fetchrow(
        "SELECT raw->>'version' AS version, last_job_id::text AS job, updated_at > first_seen_at AS bumped "
        "FROM appointments WHERE external_id = 'appt-010'"
    )
    assert stored is not None
    assert (stored["version"], stored["job"], stored["bumped"]) == ("1", job, True)


async def test_a_stale_copy_never_overwrites_newer_data(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    newer = padded("appt-1", version=2, observed_at=T0 + timedelta(hours=1))
    older = padded("appt-1", version=1, observed_at=T0)
    job = await create_job(TENANT)
    await write_pages(connection, pages_of(job, [newer], per_page=1))

    outcomes = await write_pages(connection, pages_of(job, [older], per_page=1, first_page_no=2))

    assert counts_of(outcomes) == [(0, 0, 0, False)]
    assert outcomes[0].counts.stale == 1  # refused, and counted as such, not as unchanged
    assert [(r.external_id, r.stored_observed_at, r.offered_observed_at) for r in outcomes[0].stale] == [
        ("appt-1", T0 + timedelta(hours=1), T0)]
    assert await connection.fetchval("SELECT raw->>'version' FROM appointments") == "2"


async def test_a_redelivered_page_replays_its_result_and_writes_nothing(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    job = await create_job(TENANT)
    pages = pages_of(job, [padded(f"appt-{i}", contact=Contact()) for i in range(10)], per_page=5)
    first = await write_pages(connection, pages)
    counters = await job_counters(connection, job)
    versions = await tuple_versions(connection)
    ledger = await connection.fetch("SELECT *, xmin::text AS version FROM import_job_pages ORDER BY page_no")

    again = await write_pages(connection, pages)

    assert [o.counts for o in again] == [o.counts for o in first]
    assert [o.redelivered for o in again] == [True, True]
    assert await job_counters(connection, job) == counters
    assert counters["pages_written"] == 2
    assert counters["inserted"] == 10
    assert counters["contacts_unmatched"] == 10
    assert await tuple_versions(connection) == versions
    assert await connection.fetch(
        "SELECT *, xmin::text AS version FROM import_job_pages ORDER BY page_no") == ledger


async def test_pages_in_one_transaction_keep_separate_results(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    job = await create_job(TENANT)
    later = T0 + timedelta(minutes=5)
    page_1 = [padded("a"), padded("b")]
    page_2 = [padded("b", version=1, observed_at=later), padded("c"), padded("c")]  # "c" twice
    page_3 = [padded("a")]
    pages = [*pages_of(job, page_1, per_page=2), *pages_of(job, page_2, per_page=3, first_page_no=2),
             *pages_of(job, page_3, per_page=1, first_page_no=3)]

    outcomes = await write_pages(connection, [*pages, pages[0]])  # page 1 delivered twice in the batch

    assert counts_of(outcomes) == [(2, 0, 0, False), (1, 1, 0, False), (0, 0, 1, False), (2, 0, 0, True)]
    assert outcomes[1].counts.skipped.duplicate_in_page == 1
    assert await job_counters(connection, job) == {
        "pages_written": 3, "records_fetched": 6, "inserted": 3, "updated": 1, "unchanged": 1,
        "skipped_out_of_window": 0, "skipped_duplicate_in_page": 1, "contacts_unmatched": 0,
    }
    stored = await connection.fetch(
        "SELECT page_no, inserted, updated, unchanged FROM import_job_pages ORDER BY page_no")
    assert [tuple(r) for r in stored] == [(1, 2, 0, 0), (2, 1, 1, 0), (3, 0, 0, 1)]
    assert await connection.fetchval("SELECT raw->>'version' FROM appointments WHERE external_id = 'b'") == "1"


async def test_concurrent_deliveries_of_one_page_count_once(
    connection: asyncpg.Connection, create_job: CreateJob, database_url: str
) -> None:
    job = await create_job(TENANT)
    pages = pages_of(job, [padded(f"appt-{i}") for i in range(50)], per_page=50)
    other = await asyncpg.connect(database_url)
    try:
        outcomes = await asyncio.gather(write_pages(connection, pages), write_pages(other, pages))
    finally:
        await other.close()

    assert sorted(counts_of([o[0] for o in outcomes])) == [(50, 0, 0, False), (50, 0, 0, True)]
    assert (await job_counters(connection, job))["inserted"] == 50
    assert await connection.fetchval("SELECT count(*) FROM appointments") == 50


async def race_uncommitted(connection: asyncpg.Connection, database_url: str, uncommitted: list[DecodedPage],
                           racing: list[DecodedPage]) -> tuple[list[PageOutcome], list[PageOutcome]]:
    """Writes `uncommitted` in a transaction left open on another connection, starts writing `racing`
    on `connection`, and commits the other transaction once `racing` waits for its rows."""
    other = await asyncpg.connect(database_url)
    try:
        open_transaction = other.transaction()
        await open_transaction.start()
        first = await write_pages(other, uncommitted)  # a savepoint of the open transaction
        racing_task = asyncio.create_task(write_pages(connection, racing))
        for _ in range(500):
            if await other.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                                    connection.get_server_pid()):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the racing writer never waited for the uncommitted rows")
        await open_transaction.commit()
        return first, await racing_task
    finally:
        await other.close()


async def test_a_new_key_inserted_by_another_writer_after_the_lookup_is_counted_once(
    connection: asyncpg.Connection, create_job: CreateJob, database_url: str
) -> None:
    """The batch's lookup does not see a row another transaction has not committed yet, so it inserts
    that key without ON CONFLICT: the unique violation after the other commit must redo the batch with
    the upsert (the row is then unchanged), not dead-letter records or count the row twice."""
    rows = [padded(f"appt-{i}") for i in range(20)]
    first_job, second_job = await create_job(TENANT), await create_job(TENANT)

    first, second = await race_uncommitted(connection, database_url, pages_of(first_job, rows[:1], per_page=1),
                                           pages_of(second_job, rows, per_page=10))

    assert counts_of(first) == [(1, 0, 0, False)]
    assert counts_of(second) == [(9, 0, 1, False), (10, 0, 0, False)]
    assert await connection.fetchval("SELECT count(*) FROM appointments") == 20
    assert (await job_counters(connection, second_job))["inserted"] == 19
    assert await connection.fetchval("SELECT count(*) FROM appointments WHERE contact_id IS NULL") == 0


async def test_a_contact_inserted_by_another_writer_meanwhile_is_still_linked(
    connection: asyncpg.Connection, create_job: CreateJob, database_url: str
) -> None:
    """The contacts upsert returns no id for a contact another transaction inserted meanwhile (its ON
    CONFLICT leaves the equal row alone): the appointment insert must find it itself."""
    shared = Contact(name="Ada", email="ada@example.org")
    first_job, second_job = await create_job(TENANT), await create_job(TENANT)

    first, second = await race_uncommitted(
        connection, database_url, pages_of(first_job, [padded("mine", contact=shared)], per_page=1),
        pages_of(second_job, [padded("yours", contact=shared)], per_page=1))

    assert counts_of(first) == counts_of(second) == [(1, 0, 0, False)]
    links = await connection.fetch("SELECT external_id, contact_id FROM appointments ORDER BY external_id")
    assert [r["external_id"] for r in links] == ["mine", "yours"]
    assert links[0]["contact_id"] is not None
    assert links[0]["contact_id"] == links[1]["contact_id"]
    assert await connection.fetchval("SELECT count(*) FROM contacts") == 1


async def test_unstorable_pages_are_poison_and_leave_nothing_behind(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    job = await create_job(TENANT)
    good = pages_of(job, [padded("ok")], per_page=1)
    no_such_job = pages_of(str(uuid.uuid4()), [padded("orphan")], per_page=1)
    other_tenants_job = pages_of(job, [padded("intruder")], per_page=1, tenant_id=OTHER_TENANT,
                                 first_page_no=3)

    for pages in (good + no_such_job, other_tenants_job):
        with pytest.raises(PoisonMessageError):
            await write_pages(connection, pages)

    assert await connection.fetchval("SELECT count(*) FROM appointments") == 0
    assert await connection.fetchval("SELECT count(*) FROM import_job_pages") == 0
    assert (await job_counters(connection, job))["pages_written"] == 0
