"""The writer's (and the fetcher's) per-key probes read the same few buffers per key whatever the tenant's size.

Production's normal state: `appointments` holds other tenants' rows and has statistics, and a new
tenant's first import grows faster than autovacuum re-analyzes (the statistics say the tenant has no
rows). Planned on those statistics, the stored-version lookup probed `appointments_by_start` /
`appointments_by_connection_start` and read the tenant's whole index range for every key, so a batch
cost grew with the tenant (measured: 20,000 rows, 13,988 index scans reading 95.8 million index
entries). Buffer counts from EXPLAIN (ANALYZE, BUFFERS) are deterministic for a given plan and data,
so this test compares them per key at two tenant sizes; it measures no time.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from apptsync.fetcher.connection_state import STORED_PAYMENTS
from apptsync.writer import sql
from apptsync.writer.accounting import decode_page
from apptsync.writer.store import write_pages
from tests.unit.writer.page_builders import T0, appointment, page

pytestmark = pytest.mark.integration

CreateJob = Callable[..., Awaitable[str]]  # the `create_job` fixture

NEW_TENANT = "3f2e1d0c-9b8a-4765-8432-10fedcba9876"
OTHER_TENANTS = 20
ROWS_PER_OTHER_TENANT = 1_000
BATCH_ROWS = 800  # 8 pages of 100, as the writer batches them
PAGE_ROWS = 100
SMALL_TENANT_ROWS = 800
LARGE_TENANT_ROWS = 6_400
# A probe of the unique index reads its root-to-leaf path (and the heap page of a found row); the
# index may gain a level as the tenant grows, which adds at most one buffer per key.
ALLOWED_GROWTH_BUFFERS_PER_KEY = 1.0


def other_tenant(number: int) -> str:
    return f"00000000-0000-4000-8000-{number:012d}"


async def import_rows(connection: asyncpg.Connection, tenant_id: str, job_id: str, first: int, count: int,
                      prefix: str) -> None:
    """Writes rows `prefix-first` .. `prefix-(first+count-1)` through the writer, a batch at a time."""
    for batch_start in range(first, first + count, BATCH_ROWS):
        batch_end = min(batch_start + BATCH_ROWS, first + count)
        rows = [appointment(f"{prefix}-{n:06d}") for n in range(batch_start, batch_end)]
        pages = [
            decode_page(page(rows[i:i + PAGE_ROWS], page_no=(batch_start + i) // PAGE_ROWS + 1, job_id=job_id,
                             tenant_id=tenant_id).SerializeToString())
            for i in range(0, len(rows), PAGE_ROWS)
        ]
        await write_pages(connection, pages)


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def buffers_and_indexes(connection: asyncpg.Connection, statement: str,
                              *arguments: object) -> tuple[int, set[str]]:
    """Shared buffers (hit + read) of `statement` and the indexes its plan scans, run as the writer
    runs it (tenant transaction scope, custom plan) and rolled back."""
    transaction = connection.transaction()
    await transaction.start()
    try:
        await connection.execute(sql.SET_TRANSACTION_SCOPE, NEW_TENANT)
        raw = await connection.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, *arguments)
    finally:
        await transaction.rollback()
    root = json.loads(raw)[0]["Plan"]
    buffers = int(root["Shared Hit Blocks"]) + int(root["Shared Read Blocks"])
    indexes = {str(node["Index Name"]) for node in _plan_nodes(root) if "Index Name" in node}
    return buffers, indexes


def keys(prefix: str, first: int, count: int) -> list[str]:
    return [f"{prefix}-{n:06d}" for n in range(first, first + count)]


def cancel_arguments(external_ids: Sequence[str], job_id: str) -> tuple[object, ...]:
    """CANCEL_APPOINTMENTS stubs observed before the stored rows: the probe finds them, newer wins
    keeps them (a cancel that updates would add the update's own index writes to the count)."""
    return (NEW_TENANT, ["acuity"] * len(external_ids), list(external_ids), [b"\x01" * 32] * len(external_ids),
            [T0 - timedelta(hours=1)] * len(external_ids), [job_id] * len(external_ids))


def contact_arguments(external_ids: Sequence[str]) -> tuple[object, ...]:
    """SELECT_CONTACTS_BY_IDENTITY for the emails appointment() stored: every identity is found."""
    return sql.identity_arguments(NEW_TENANT, [("email", f"{external_id}@example.org") for external_id in external_ids])


async def probe_costs(
    connection: asyncpg.Connection, tenant_rows: int, job_id: str
) -> dict[str, tuple[float, set[str]]]:
    """Buffers per key of each probe for a batch of keys the tenant has (its first rows) and a batch of
    keys it does not have yet (the next batch of a first import)."""
    stored = keys("new", 0, BATCH_ROWS)
    missing = keys("new", tenant_rows, BATCH_ROWS)
    measured = {
        "stored versions, missing keys": await buffers_and_indexes(
            connection, sql.SELECT_STORED_VERSIONS, NEW_TENANT, "acuity", missing),
        "stored versions, stored keys": await buffers_and_indexes(
            connection, sql.SELECT_STORED_VERSIONS, NEW_TENANT, "acuity", stored),
        "cancel (stale), missing keys": await buffers_and_indexes(
            connection, sql.CANCEL_APPOINTMENTS, *cancel_arguments(missing, job_id)),
        "cancel (stale), stored keys": await buffers_and_indexes(
            connection, sql.CANCEL_APPOINTMENTS, *cancel_arguments(stored, job_id)),
        # The fetcher's question before asking Acuity for payments (apptsync.fetcher.connection_state).
        "stored payments, missing keys": await buffers_and_indexes(
            connection, STORED_PAYMENTS, NEW_TENANT, "acuity", missing, "conn-1"),
        "stored payments, stored keys": await buffers_and_indexes(
            connection, STORED_PAYMENTS, NEW_TENANT, "acuity", stored, "conn-1"),
        "contacts, stored contacts": await buffers_and_indexes(
            connection, sql.SELECT_CONTACTS_BY_IDENTITY, *contact_arguments(stored)),
    }
    return {name: (buffers / BATCH_ROWS, indexes) for name, (buffers, indexes) in measured.items()}


async def test_probes_read_the_same_buffers_per_key_at_any_tenant_size(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    for number in range(1, OTHER_TENANTS + 1):
        tenant_id = other_tenant(number)
        await import_rows(connection, tenant_id, await create_job(tenant_id), 0, ROWS_PER_OTHER_TENANT, "other")
    await connection.execute("ANALYZE appointments")
    await connection.execute("ANALYZE contacts")
    await connection.execute("ANALYZE contact_identities")
    # Statistics as of before the new tenant's import, as between two autovacuum runs: an automatic
    # ANALYZE in the middle of the test would change the plans it compares.
    await connection.execute("ALTER TABLE appointments SET (autovacuum_enabled = false)")
    await connection.execute("ALTER TABLE contacts SET (autovacuum_enabled = false)")
    await connection.execute("ALTER TABLE contact_identities SET (autovacuum_enabled = false)")

    await assert_probes_stay_flat(
        connection, create_job, f"{OTHER_TENANTS * ROWS_PER_OTHER_TENANT:,} other tenants' rows analyzed")


async def test_probes_read_the_same_buffers_per_key_on_a_table_never_analyzed(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """A new installation's first import: no statistics at all, so every equality gets the planner's
    default selectivity. appointments_by_connection_start then cost the same as the unique key (both
    began with tenant_id, external_source) and was taken: 1.5 s per batch of 800 keys at 20,000 rows
    (migration 0015)."""
    for table in ("appointments", "contacts", "contact_identities"):
        await connection.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    await assert_probes_stay_flat(connection, create_job, "the table never analyzed")


async def assert_probes_stay_flat(connection: asyncpg.Connection, create_job: CreateJob, setting: str) -> None:
    """Imports a new tenant at two sizes and asserts its probes' buffers per key did not grow."""
    job_id = await create_job(NEW_TENANT)
    await import_rows(connection, NEW_TENANT, job_id, 0, SMALL_TENANT_ROWS, "new")
    small = await probe_costs(connection, SMALL_TENANT_ROWS, job_id)
    await import_rows(connection, NEW_TENANT, job_id, SMALL_TENANT_ROWS, LARGE_TENANT_ROWS - SMALL_TENANT_ROWS, "new")
    large = await probe_costs(connection, LARGE_TENANT_ROWS, job_id)

    print(f"\nbuffers per key, {setting}, batches of {BATCH_ROWS}:")
    for name in small:
        print(f"  {name:32s} tenant of {SMALL_TENANT_ROWS:5,} rows: {small[name][0]:7.2f}   "
              f"of {LARGE_TENANT_ROWS:5,} rows: {large[name][0]:7.2f}   indexes {sorted(large[name][1])}")
    grown = {name: (small[name][0], large[name][0], sorted(large[name][1])) for name in small
             if large[name][0] > small[name][0] + ALLOWED_GROWTH_BUFFERS_PER_KEY}
    assert grown == {}, f"buffers per key grew with the tenant (small, large, indexes): {grown}"
