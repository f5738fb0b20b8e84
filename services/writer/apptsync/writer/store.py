"""PostgreSQL side of the writer: one transaction applies consecutive pages of one tenant.

The decisions are made by `apptsync.writer.batch` and `apptsync.writer.accounting` (pure); this
module runs the statements of `apptsync.writer.sql` in order, one write strategy per transaction
(`batch.WRITE_STRATEGIES`), and translates asyncpg failures into the error tree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from apptsync.shared.db.pool import DATABASE_ERRORS, is_transient_database_error, tenant_transaction
from apptsync.shared.errors import (
    ApptsyncError,
    PermanentError,
    PoisonMessageError,
    StorageUnavailableError,
)
from apptsync.writer import sql
from apptsync.writer.accounting import (
    BatchPlan,
    DecodedPage,
    PageKey,
    PageOutcome,
    RecordKey,
    RefusedRecord,
    RowKey,
    RowWrite,
    StoredVersion,
    drop_refused_records,
    keys_by_source,
    payment_refreshes,
    plan_batch,
    plan_contacts,
    refused_page_counts,
)
from apptsync.writer.batch import (
    WRITE_STRATEGIES,
    Fallback,
    FallbackReason,
    LedgerRow,
    Recorded,
    RowsWritten,
    Settlement,
    WriteStrategy,
    inserts_plainly,
    next_strategy,
    page_outcomes,
    recorded_pages,
    settle,
    split_claimed,
    unknown_jobs,
)
from apptsync.writer.contacts import resolve, stored_contacts

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


async def write_pages(connection: Connection, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
    """Applies consecutive `pages` of one tenant in one transaction; one outcome per page, in order.

    A page recorded before (or earlier in `pages`) writes nothing and replays its stored counts and
    refused records. A record PostgreSQL refuses (a data or constraint error) is taken out of its
    page, recorded as a dead letter of the page and returned in its outcome's `refused`; the rest of
    the page lands. Guarantees on return: the transaction committed the rows, their contacts, each
    new page's import_job_pages row (and refused records) and the import_jobs counters together.
    Raises StorageUnavailableError (nothing committed, try again), PoisonMessageError (a page cannot
    be stored at all, e.g. its job does not exist; nothing committed) or PermanentError.
    """
    if not pages:
        return []
    tenant_id = pages[0].tenant_id
    if any(page.tenant_id != tenant_id for page in pages):
        raise ValueError("write_pages takes pages of one tenant")
    tried: int | None = 0
    try:
        # Each strategy writes the whole batch in a transaction of its own; one that falls back
        # leaves nothing behind. Bounded: every fallback moves on to a later strategy.
        while tried is not None:
            async with tenant_transaction(connection, tenant_id, scope=sql.SET_TRANSACTION_SCOPE) as end:
                attempt = await _write_batch(connection, tenant_id, pages, WRITE_STRATEGIES[tried])
                if isinstance(attempt, Fallback):
                    end.roll_back()
            if not isinstance(attempt, Fallback):
                return attempt
            fallback = attempt
            tried = next_strategy(WRITE_STRATEGIES, tried, fallback.reason)
    except DATABASE_ERRORS as exc:
        raise translate_store_error(exc) from exc
    raise PermanentError(f"no write strategy copes with: {fallback.reason.value}: {fallback.detail}")


async def record_refused_page(connection: Connection, page: DecodedPage) -> PageOutcome:
    """Records `page`, which PostgreSQL refused as a whole, with every record it carried counted as a
    dead letter (ledger row and job counters in one transaction), so the job's counts stay complete.

    A page recorded before replays its stored counts. Raises PoisonMessageError when even that cannot
    be recorded (e.g. its job does not exist), StorageUnavailableError or PermanentError."""
    refused = dataclasses.replace(page, rows=(), contacts=(), skipped=refused_page_counts(page).skipped)
    return (await write_pages(connection, [refused]))[0]


async def _write_batch(
    connection: Connection, tenant_id: str, pages: Sequence[DecodedPage], strategy: WriteStrategy
) -> list[PageOutcome] | Fallback:
    """One attempt at the batch inside its transaction: claim, plan, write the rows with `strategy`,
    settle; the outcomes, or the strategy's Fallback (then the caller rolls the transaction back)."""
    claim = split_claimed(pages, await _claim(connection, tenant_id, pages))
    earlier = await _recorded(connection, tenant_id, claim.recorded)
    settlement: Settlement | None = None
    to_write = claim.fresh + earlier.rewrites
    if to_write:
        stored = await _stored_versions(connection, tenant_id, to_write)
        if strategy.isolate_refused:
            rows: RowsWritten | Fallback = await _upsert_isolating_refused(connection, tenant_id, to_write, stored)
        else:
            rows = await _write_rows(connection, tenant_id, to_write, stored, strategy)
        if isinstance(rows, Fallback):
            return rows
        settlement = await _settle(connection, tenant_id, to_write, rows, earlier)
    return page_outcomes(pages, settlement, earlier, await _replayed_dead_letters(connection, tenant_id, earlier))


async def _claim(connection: Connection, tenant_id: str, pages: Sequence[DecodedPage]) -> set[PageKey]:
    """Claims the ledger rows of `pages` for this transaction; the keys no one recorded before."""
    keys = list(dict.fromkeys(page.key for page in pages))
    claimed = await connection.fetch(sql.CLAIM_PAGES, tenant_id, *sql.page_key_arguments(keys))
    return {sql.page_key_from_record(record) for record in claimed}


async def _recorded(connection: Connection, tenant_id: str, pages: Sequence[DecodedPage]) -> Recorded:
    """What the ledger holds for `pages` (recorded before), see `batch.recorded_pages`."""
    if not pages:
        return recorded_pages(pages, ())
    records = await connection.fetch(
        sql.SELECT_PAGE_COUNTS, tenant_id, *sql.page_key_arguments([page.key for page in pages])
    )
    return recorded_pages(pages, [
        LedgerRow(sql.page_counts_from_record(record), record["content_digest"], frozenset(record["inserted_ids"]))
        for record in records
    ])


async def _stored_versions(
    connection: Connection, tenant_id: str, pages: Sequence[DecodedPage]
) -> dict[RowKey, StoredVersion]:
    """The stored versions of the keys `pages` carry (absent: never stored)."""
    stored: dict[RowKey, StoredVersion] = {}
    for source, external_ids in keys_by_source(pages).items():
        for record in await connection.fetch(sql.SELECT_STORED_VERSIONS, tenant_id, source, external_ids):
            stored[(source, record["external_id"])] = StoredVersion(
                record["content_hash"], record["observed_at"], record["status"], record["deleted"]
            )
    return stored


async def _write_rows(
    connection: Connection, tenant_id: str, pages: list[DecodedPage], stored: Mapping[RowKey, StoredVersion],
    strategy: WriteStrategy,
) -> RowsWritten | Fallback:
    """Writes the rows of `pages` as planned against `stored`, with plain inserts where `strategy`
    allows them; a Fallback when PostgreSQL refuses rows or another writer inserted a key since."""
    plan = plan_batch(pages, stored)
    writes = list(plan.writes.values())
    try:
        if inserts_plainly(strategy, plan, stored):
            written = await _insert_new(connection, tenant_id, writes, pages)
        else:
            written = await _upsert(connection, tenant_id, writes, pages)
    except asyncpg.PostgresError as exc:
        if not _is_data_error(exc):
            raise
        return Fallback(FallbackReason.ROWS_REFUSED, str(exc))
    if isinstance(written, Fallback):
        return written
    return RowsWritten(pages, plan, written, {})


async def _settle(
    connection: Connection, tenant_id: str, delivered: Sequence[DecodedPage], rows: RowsWritten, earlier: Recorded
) -> Settlement:
    """After the rows: payments of unchanged rows, cancellations, then the ledger entries, dead
    letters and job counters of `batch.settle`. Raises PoisonMessageError for a job the tenant does
    not have."""
    refreshes = payment_refreshes(rows.plan)
    if refreshes:
        await _write_payments(connection, tenant_id, refreshes, {write.key: False for write in refreshes})
    canceled = await _cancel(connection, tenant_id, rows.plan)
    settlement = settle(delivered, rows, canceled, earlier)
    await connection.execute(sql.RECORD_PAGE_COUNTS, *sql.record_page_counts_arguments(tenant_id, settlement.entries))
    if settlement.dead_letters:
        arguments = sql.dead_letter_arguments(tenant_id, settlement.dead_letters)
        await connection.execute(sql.RECORD_DEAD_LETTERS, *arguments)
    known_jobs = await connection.fetch(sql.ADD_JOB_COUNTERS, *sql.job_counter_arguments(tenant_id, settlement.totals))
    missing_jobs = unknown_jobs(settlement.totals, [record["job_id"] for record in known_jobs])
    if missing_jobs:
        raise PoisonMessageError(f"job(s) {sorted(missing_jobs)} do not belong to tenant {tenant_id}")
    return settlement


async def _replayed_dead_letters(
    connection: Connection, tenant_id: str, earlier: Recorded
) -> list[tuple[PageKey, RefusedRecord]]:
    """The records refused earlier of the replayed pages (looked up only when their counts have some)."""
    if not any(counts.skipped.dead_letter for counts in earlier.replayed_counts.values()):
        return []
    replayed_keys = sql.page_key_arguments([page.key for page in earlier.replayed])
    return [
        sql.dead_letter_from_record(record)
        for record in await connection.fetch(sql.SELECT_DEAD_LETTERS, tenant_id, *replayed_keys)
    ]


def _is_data_error(exc: BaseException) -> bool:
    return str(getattr(exc, "sqlstate", "") or "")[:2] in _PAGE_DATA_SQLSTATE_CLASSES


async def _cancel(connection: Connection, tenant_id: str, plan: BatchPlan) -> set[RowKey]:
    """Applies the batch's final cancellation stubs; the keys it canceled."""
    if not plan.cancels:
        return set()
    arguments = sql.cancel_arguments(tenant_id, list(plan.cancels.values()))
    records = await connection.fetch(sql.CANCEL_APPOINTMENTS, *arguments)
    return {(record["external_source"], record["external_id"]) for record in records}


async def _resolve_contacts(
    connection: Connection, tenant_id: str, pages: Sequence[DecodedPage], writes: Sequence[RowWrite]
) -> dict[RowKey, int]:
    """Resolves the batch's people (listed clients and the written rows' contacts) to one contact per
    person (apptsync.writer.contacts, under the tenant's contacts lock) and writes the new contacts,
    merges, identities and column updates; the contact id of each written row that has one."""
    plan = plan_contacts(pages, writes)
    if not plan.observations:
        return {}
    await connection.execute(sql.LOCK_TENANT_CONTACTS, tenant_id)
    columns: dict[int, tuple[str, str, str]] = {}
    owned: list[tuple[int, str, str]] = []
    for record in await connection.fetch(
        sql.SELECT_CONTACTS_BY_IDENTITY, *sql.identity_arguments(tenant_id, plan.all_identities)
    ):
        columns[record["contact_id"]] = (record["name"], record["email"], record["phone"])
        if record["kind"] is not None:
            owned.append((record["contact_id"], record["kind"], record["value"]))
    resolution = resolve(plan.observations, stored_contacts(columns, owned))
    created: dict[tuple[str, int], int] = {}
    if resolution.new_contacts:
        by_key = {
            record["match_key"]: record["contact_id"]
            for record in await connection.fetch(sql.INSERT_CONTACTS, *sql.new_contact_arguments(tenant_id, resolution))
        }
        created = {ref: by_key[values[1]] for ref, values in resolution.new_contacts.items()}
    if resolution.merges:
        arguments = sql.merge_arguments(tenant_id, resolution)
        await connection.execute(sql.MERGE_IDENTITIES, *arguments)
        await connection.execute(sql.MERGE_APPOINTMENTS, *arguments)
        await connection.execute(sql.DELETE_MERGED_CONTACTS, tenant_id, arguments[1])
    if resolution.updates:
        await connection.execute(sql.UPDATE_CONTACTS, *sql.contact_update_arguments(tenant_id, resolution))
    if resolution.identities:
        await connection.execute(sql.INSERT_IDENTITIES, *sql.new_identity_arguments(tenant_id, resolution, created))
    contact_of = resolution.contact_of
    return {
        key: sql.contact_id_of(ref, created)
        for key, index in plan.write_index.items()
        if (ref := contact_of[index]) is not None
    }


async def _write_payments(
    connection: Connection, tenant_id: str, writes: Sequence[RowWrite], written: Mapping[RowKey, bool]
) -> None:
    """Replaces the payments of the written rows whose payment list is known (pages.proto)."""
    arguments = sql.payment_arguments(tenant_id, [write for write in writes if write.key in written])
    if arguments is None:
        return
    delete, upsert = arguments
    await connection.execute(sql.DELETE_ABSENT_PAYMENTS, *delete)
    if upsert[1]:
        await connection.execute(sql.UPSERT_PAYMENTS, *upsert)


async def _linked_rows(
    connection: Connection, tenant_id: str, writes: Sequence[RowWrite], pages: Sequence[DecodedPage]
) -> list[tuple[object, ...]] | None:
    """Resolves the contacts of `pages` (their listed clients) and of `writes`; the appointment
    rows of `writes` linked to them, None when there are no writes."""
    contact_ids = await _resolve_contacts(connection, tenant_id, pages, writes)
    if not writes:
        return None
    return sql.appointment_rows(writes, contact_ids)


async def _upsert(
    connection: Connection, tenant_id: str, writes: Sequence[RowWrite], pages: Sequence[DecodedPage] = ()
) -> dict[RowKey, bool]:
    """Upserts `writes` (newer wins) with their contacts and payments (see `_linked_rows`); which
    keys were written and whether as inserts (True) or updates (False)."""
    rows = await _linked_rows(connection, tenant_id, writes, pages)
    if rows is None:
        return {}
    written = {
        (record["external_source"], record["external_id"]): record["inserted"]
        for record in await connection.fetch(sql.UPSERT_APPOINTMENTS, tenant_id, rows)
    }
    await _write_payments(connection, tenant_id, writes, written)
    return written


async def _insert_new(
    connection: Connection, tenant_id: str, writes: Sequence[RowWrite], pages: Sequence[DecodedPage]
) -> dict[RowKey, bool] | Fallback:
    """Inserts `writes`, none of whose keys the batch's lookup found, without ON CONFLICT, with
    their contacts and payments; every key is an insert. A Fallback (CONCURRENT_INSERT) when
    another writer inserted one of the keys since the lookup."""
    rows = await _linked_rows(connection, tenant_id, writes, pages)
    if rows is None:
        return {}
    try:
        status = await connection.execute(sql.INSERT_NEW_APPOINTMENTS, tenant_id, rows)
    except asyncpg.UniqueViolationError as exc:
        return Fallback(FallbackReason.CONCURRENT_INSERT, str(exc))
    if status != f"INSERT 0 {len(writes)}":
        raise PermanentError(f"inserting {len(writes)} new appointments reported {status!r}")
    written = {write.key: True for write in writes}
    await _write_payments(connection, tenant_id, writes, written)
    return written


async def _probe(connection: Connection, tenant_id: str, writes: Sequence[RowWrite]) -> str | None:
    """Tries `writes` in a savepoint that is always rolled back: the data error, or None."""
    savepoint = connection.transaction()
    await savepoint.start()
    try:
        await _upsert(connection, tenant_id, writes)
    except asyncpg.PostgresError as exc:
        if not _is_data_error(exc):
            raise
        return f"{type(exc).__name__}: {exc}"
    finally:
        await savepoint.rollback()
    return None


async def _find_refused(
    connection: Connection, tenant_id: str, writes: Sequence[RowWrite]
) -> dict[RecordKey, str]:
    """The writes PostgreSQL refuses on their own, by bisection: O(refused * log(len(writes)))
    probes; empty when only the whole set fails (then no record is to blame)."""
    error = await _probe(connection, tenant_id, writes)
    if error is None:
        return {}
    if len(writes) == 1:
        return {(writes[0].page.key, writes[0].row.external_id): error}
    middle = len(writes) // 2
    refused = await _find_refused(connection, tenant_id, writes[:middle])
    refused.update(await _find_refused(connection, tenant_id, writes[middle:]))
    return refused


async def _upsert_isolating_refused(
    connection: Connection, tenant_id: str, pages: list[DecodedPage], stored: Mapping[RowKey, StoredVersion]
) -> RowsWritten:
    """Upserts the batch, taking refused records out of their pages until the rest lands: the pages
    as stored (refused records counted as dead letters), their plan, the written keys and the
    refused records. Raises PoisonMessageError when a refusal cannot be pinned on records."""
    refused: dict[RecordKey, str] = {}
    for _attempt in range(sum(len(page.rows) for page in pages) + 1):
        plan = plan_batch(pages, stored)
        writes = list(plan.writes.values())
        savepoint = connection.transaction()
        await savepoint.start()
        try:
            written = await _upsert(connection, tenant_id, writes, pages)
        except asyncpg.PostgresError as exc:
            await savepoint.rollback()
            if not _is_data_error(exc):
                raise
            found = await _find_refused(connection, tenant_id, writes)
            if not found:
                raise PoisonMessageError(f"the page's records are refused together: {exc}") from exc
            refused.update(found)
            pages = drop_refused_records(pages, found)
            continue
        await savepoint.commit()
        return RowsWritten(pages, plan, written, refused)
    raise PoisonMessageError("refused records could not be isolated")  # unreachable: each round drops one


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
        except DATABASE_ERRORS as exc:
            raise translate_store_error(exc) from exc

    async def record_refused(self, page: DecodedPage) -> PageOutcome:
        """`record_refused_page` on a pooled connection; raises like it."""
        try:
            async with self._pool.acquire() as connection:
                return await record_refused_page(connection, page)
        except DATABASE_ERRORS as exc:
            raise translate_store_error(exc) from exc
