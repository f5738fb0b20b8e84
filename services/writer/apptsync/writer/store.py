"""PostgreSQL side of the writer: one transaction applies consecutive pages of one tenant.

The decisions are made by `apptsync.writer.accounting` (pure); this module runs the statements of
`apptsync.writer.sql` in order and translates asyncpg failures into the error tree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from apptsync.shared.db.pool import is_transient_database_error
from apptsync.shared.errors import (
    ApptsyncError,
    PermanentError,
    PoisonMessageError,
    StorageUnavailableError,
)
from apptsync.writer import sql
from apptsync.writer.accounting import (
    DecodedPage,
    PageCounts,
    PageKey,
    PageOutcome,
    RowKey,
    StoredVersion,
    assemble_outcomes,
    count_pages,
    first_deliveries,
    job_totals,
    keys_by_source,
    plan_batch,
)

# A plain connection or one borrowed from a pool.
Connection = asyncpg.Connection | PoolConnectionProxy

# SQLSTATE classes of failures caused by the data of a page (22 data exception, e.g. malformed
# JSON; 23 integrity constraint violation, e.g. a job that does not exist): retrying cannot help,
# but the other pages are fine.
_PAGE_DATA_SQLSTATE_CLASSES = frozenset({"22", "23"})


def translate_store_error(exc: BaseException) -> ApptsyncError:
    """StorageUnavailableError (transient: retry the batch), PoisonMessageError (the page's data is
    unstorable: dead-letter it) or PermanentError (anything else: a bug or a broken deployment)."""
    if isinstance(exc, ApptsyncError):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    if is_transient_database_error(exc):
        return StorageUnavailableError(message)
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    if sqlstate[:2] in _PAGE_DATA_SQLSTATE_CLASSES:
        return PoisonMessageError(message)
    return PermanentError(message)


@asynccontextmanager
async def tenant_transaction(connection: Connection, tenant_id: str) -> AsyncIterator[None]:
    """A transaction scoped to `tenant_id`: sets `app.tenant_id` for its duration (SET LOCAL), the
    setting row-level security policies will read; plans every statement for its own arguments."""
    async with connection.transaction():
        await connection.execute(sql.SET_TRANSACTION_SCOPE, tenant_id)
        yield


async def write_pages(connection: Connection, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
    """Applies consecutive `pages` of one tenant in one transaction; one outcome per page, in order.

    A page recorded before (or earlier in `pages`) writes nothing and replays its stored counts.
    Guarantees on return: the transaction committed the rows, each new page's import_job_pages row
    and the import_jobs counters together. Raises StorageUnavailableError (nothing committed, try
    again), PoisonMessageError (a page's data cannot be stored; nothing committed) or PermanentError.
    """
    if not pages:
        return []
    tenant_id = pages[0].tenant_id
    if any(page.tenant_id != tenant_id for page in pages):
        raise ValueError("write_pages takes pages of one tenant")
    try:
        async with tenant_transaction(connection, tenant_id):
            return await _write_pages_in_transaction(connection, tenant_id, pages)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise translate_store_error(exc) from exc


async def _write_pages_in_transaction(
    connection: Connection, tenant_id: str, pages: Sequence[DecodedPage]
) -> list[PageOutcome]:
    unique_pages = first_deliveries(pages)
    claimed = await connection.fetch(
        sql.CLAIM_PAGES, tenant_id, *sql.page_key_arguments([page.key for page in unique_pages])
    )
    claimed_keys = {PageKey(record["job_id"], record["page_no"]) for record in claimed}
    fresh = [page for page in unique_pages if page.key in claimed_keys]
    replayed = [page for page in unique_pages if page.key not in claimed_keys]

    fresh_counts: dict[PageKey, PageCounts] = {}
    if fresh:
        stored: dict[RowKey, StoredVersion] = {}
        for source, external_ids in keys_by_source(fresh).items():
            for record in await connection.fetch(sql.SELECT_STORED_VERSIONS, tenant_id, source, external_ids):
                stored[(source, record["external_id"])] = StoredVersion(
                    record["content_hash"], record["observed_at"]
                )
        plan = plan_batch(fresh, stored)
        written: dict[RowKey, bool] = {}
        if plan.writes:
            for record in await connection.fetch(
                sql.UPSERT_APPOINTMENTS, *sql.upsert_arguments(tenant_id, list(plan.writes.values()))
            ):
                written[(record["external_source"], record["external_id"])] = record["inserted"]
        counts = count_pages(plan, written)
        await connection.execute(sql.RECORD_PAGE_COUNTS, *sql.record_page_counts_arguments(tenant_id, counts))
        totals = job_totals(counts)
        updated_jobs = await connection.fetch(
            sql.ADD_JOB_COUNTERS, *sql.job_counter_arguments(tenant_id, totals)
        )
        missing_jobs = {t.job_id for t in totals} - {record["job_id"] for record in updated_jobs}
        if missing_jobs:
            raise PoisonMessageError(f"job(s) {sorted(missing_jobs)} do not belong to tenant {tenant_id}")
        fresh_counts = {PageKey(c.job_id, c.page_no): c for c in counts}

    stored_counts: dict[PageKey, PageCounts] = {}
    if replayed:
        for record in await connection.fetch(
            sql.SELECT_PAGE_COUNTS, tenant_id, *sql.page_key_arguments([page.key for page in replayed])
        ):
            counts_of_page = sql.page_counts_from_record(record)
            stored_counts[PageKey(counts_of_page.job_id, counts_of_page.page_no)] = counts_of_page
    return assemble_outcomes(pages, fresh_counts, stored_counts)


class PageStore:
    """Writes page batches through a connection pool (see `write_pages` for the guarantees)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def write(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        """`write_pages` on a pooled connection. Raises StorageUnavailableError also when no
        connection can be had, PoisonMessageError / PermanentError like `write_pages`."""
        try:
            async with self._pool.acquire() as connection:
                return await write_pages(connection, pages)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise translate_store_error(exc) from exc
