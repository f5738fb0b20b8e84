"""PostgreSQL side of the writer: one transaction applies consecutive pages of one tenant.

The decisions are made by `apptsync.writer.accounting` (pure); this module runs the statements of
`apptsync.writer.sql` in order and translates asyncpg failures into the error tree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from apptsync.shared.db.pool import DATABASE_ERRORS, is_transient_database_error
from apptsync.shared.errors import (
    ApptsyncError,
    PermanentError,
    PoisonMessageError,
    StorageUnavailableError,
)
from apptsync.shared.messages.page_results import PageCounts
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
    StaleRecord,
    StoredVersion,
    assemble_outcomes,
    count_pages,
    drop_refused_records,
    first_deliveries,
    inserted_keys,
    job_totals,
    keys_by_source,
    outcome_by_key,
    payment_refreshes,
    plan_batch,
    plan_contacts,
    recount_rewrite,
    refused_page_counts,
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


@asynccontextmanager
async def tenant_transaction(connection: Connection, tenant_id: str) -> AsyncIterator[None]:
    """A transaction scoped to `tenant_id`: sets `app.tenant_id` for its duration (SET LOCAL), the
    setting row-level security policies will read; plans every statement for its own arguments."""
    async with connection.transaction():
        await connection.execute(sql.SET_TRANSACTION_SCOPE, tenant_id)
        yield


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
    try:
        try:
            try:
                async with tenant_transaction(connection, tenant_id):
                    return await _write_pages_in_transaction(
                        connection, tenant_id, pages, isolate_refused=False, plain_inserts=True
                    )
            except _ConcurrentInsertError:
                # Rare: another writer inserted some of the batch's new keys after our lookup; redo
                # the batch with the upsert, which counts those rows as it finds them.
                async with tenant_transaction(connection, tenant_id):
                    return await _write_pages_in_transaction(
                        connection, tenant_id, pages, isolate_refused=False, plain_inserts=False
                    )
        except _RowsRefusedError:
            # Rare: redo the batch, this time pinning the refusal on records (savepoints, bisection).
            async with tenant_transaction(connection, tenant_id):
                return await _write_pages_in_transaction(
                    connection, tenant_id, pages, isolate_refused=True, plain_inserts=False
                )
    except DATABASE_ERRORS as exc:
        raise translate_store_error(exc) from exc


async def record_refused_page(connection: Connection, page: DecodedPage) -> PageOutcome:
    """Records `page`, which PostgreSQL refused as a whole, with every record it carried counted as a
    dead letter (ledger row and job counters in one transaction), so the job's counts stay complete.

    A page recorded before replays its stored counts. Raises PoisonMessageError when even that cannot
    be recorded (e.g. its job does not exist), StorageUnavailableError or PermanentError."""
    refused = dataclasses.replace(page, rows=(), contacts=(), skipped=refused_page_counts(page).skipped)
    return (await write_pages(connection, [refused]))[0]


class _RowsRefusedError(Exception):
    """The upsert of a batch's rows failed with a data or constraint error (internal signal)."""


def _is_data_error(exc: BaseException) -> bool:
    return str(getattr(exc, "sqlstate", "") or "")[:2] in _PAGE_DATA_SQLSTATE_CLASSES


class _ConcurrentInsertError(Exception):
    """A plain insert of keys the batch's lookup did not find met a row another writer inserted since
    (internal signal: redo the batch with the upsert)."""


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


async def _upsert(
    connection: Connection, tenant_id: str, writes: Sequence[RowWrite], *, plain_insert: bool = False,
    pages: Sequence[DecodedPage] = (),
) -> dict[RowKey, bool]:
    """Resolves the contacts of `pages` (their listed clients) and of `writes`, then upserts `writes`
    linked to them, then their payments; which keys were written and whether as inserts (True) or
    updates (False). `plain_insert`: no key of `writes` was stored when the batch looked them up, so
    they are inserted without ON CONFLICT; raises _ConcurrentInsertError when one was inserted since."""
    written: dict[RowKey, bool] = {}
    contact_ids = await _resolve_contacts(connection, tenant_id, pages, writes)
    if not writes:
        return written
    rows = sql.appointment_rows(writes, contact_ids)
    if plain_insert:
        try:
            status = await connection.execute(sql.INSERT_NEW_APPOINTMENTS, tenant_id, rows)
        except asyncpg.UniqueViolationError as exc:
            raise _ConcurrentInsertError(str(exc)) from exc
        if status != f"INSERT 0 {len(writes)}":
            raise PermanentError(f"inserting {len(writes)} new appointments reported {status!r}")
        written = {write.key: True for write in writes}
    else:
        for record in await connection.fetch(sql.UPSERT_APPOINTMENTS, tenant_id, rows):
            written[(record["external_source"], record["external_id"])] = record["inserted"]
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
) -> tuple[list[DecodedPage], BatchPlan, dict[RowKey, bool], dict[RecordKey, str]]:
    """Upserts the batch, taking refused records out of their pages until the rest lands. Returns the
    pages as stored (refused records counted as dead letters), their plan, the written keys and the
    refused records. Raises PoisonMessageError when a refusal cannot be pinned on records."""
    refused: dict[RecordKey, str] = {}
    for _attempt in range(sum(len(page.rows) for page in pages) + 1):
        plan = plan_batch(pages, stored)
        writes = list(plan.writes.values())
        savepoint = connection.transaction()
        await savepoint.start()
        try:
            written = await _upsert(connection, tenant_id, writes, pages=pages)
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
        return pages, plan, written, refused
    raise PoisonMessageError("refused records could not be isolated")  # unreachable: each round drops one


@dataclasses.dataclass(frozen=True, slots=True)
class _Recorded:
    """What the ledger holds for pages recorded before: their counts and inserted keys, and the
    pages split into those delivered again with the same content (`replayed`: their stored result
    is the answer) and those fetched again with other content (`rewrites`: written again)."""

    counts: dict[PageKey, PageCounts]
    inserted_ids: dict[PageKey, frozenset[str]]
    rewrites: list[DecodedPage]
    replayed: list[DecodedPage]


async def _recorded(connection: Connection, tenant_id: str, pages: Sequence[DecodedPage]) -> _Recorded:
    recorded = _Recorded({}, {}, [], [])
    if not pages:
        return recorded
    digests: dict[PageKey, bytes | None] = {}
    for record in await connection.fetch(
        sql.SELECT_PAGE_COUNTS, tenant_id, *sql.page_key_arguments([page.key for page in pages])
    ):
        counts_of_page = sql.page_counts_from_record(record)
        key = PageKey(counts_of_page.job_id, counts_of_page.page_no)
        recorded.counts[key] = counts_of_page
        digests[key] = record["content_digest"]
        recorded.inserted_ids[key] = frozenset(record["inserted_ids"])
    for page in pages:
        digest = digests.get(page.key)
        if digest is not None and digest != page.content_digest:
            recorded.rewrites.append(page)
        else:
            recorded.replayed.append(page)
    return recorded


async def _write_pages_in_transaction(
    connection: Connection, tenant_id: str, pages: Sequence[DecodedPage], *, isolate_refused: bool,
    plain_inserts: bool,
) -> list[PageOutcome]:
    unique_pages = first_deliveries(pages)
    claimed = await connection.fetch(
        sql.CLAIM_PAGES, tenant_id, *sql.page_key_arguments([page.key for page in unique_pages])
    )
    claimed_keys = {PageKey(record["job_id"], record["page_no"]) for record in claimed}
    fresh = [page for page in unique_pages if page.key in claimed_keys]
    recorded = [page for page in unique_pages if page.key not in claimed_keys]

    earlier = await _recorded(connection, tenant_id, recorded)
    stored_counts, inserted_before = earlier.counts, earlier.inserted_ids
    rewrites, replayed = earlier.rewrites, earlier.replayed

    fresh_counts: dict[PageKey, PageCounts] = {}
    refused_by_page: dict[PageKey, list[RefusedRecord]] = {}
    stale: list[StaleRecord] = []
    to_write = fresh + rewrites
    if to_write:
        # As delivered: refused records taken out below were still carried (and seen) by the page.
        delivered = {page.key: (page.content_digest, page.external_ids) for page in to_write}
        stored: dict[RowKey, StoredVersion] = {}
        for source, external_ids in keys_by_source(to_write).items():
            for record in await connection.fetch(sql.SELECT_STORED_VERSIONS, tenant_id, source, external_ids):
                stored[(source, record["external_id"])] = StoredVersion(
                    record["content_hash"], record["observed_at"], record["status"], record["deleted"]
                )
        if isolate_refused:
            to_write, plan, written, refused = await _upsert_isolating_refused(connection, tenant_id, to_write, stored)
        else:
            plan = plan_batch(to_write, stored)
            writes = list(plan.writes.values())
            try:
                written = await _upsert(
                    connection, tenant_id, writes,
                    plain_insert=plain_inserts and stored.keys().isdisjoint(plan.writes), pages=to_write,
                )
            except asyncpg.PostgresError as exc:
                if _is_data_error(exc):
                    raise _RowsRefusedError(str(exc)) from exc
                raise
            refused = {}
        refreshes = payment_refreshes(plan)
        if refreshes:
            await _write_payments(connection, tenant_id, refreshes, {write.key: False for write in refreshes})
        canceled = await _cancel(connection, tenant_id, plan)
        counts = count_pages(plan, written, canceled)
        inserted_by_page = inserted_keys(plan, written)
        rewritten = {page.key for page in rewrites}
        entries = []
        for index, (page, page_counts) in enumerate(zip(plan.pages, counts, strict=True)):
            inserted_ids: list[str] = inserted_by_page.get(page.key, [])
            if page.key in rewritten:
                page_counts, inserted_ids = recount_rewrite(
                    page_counts, outcome_by_key(plan, index, written, canceled), inserted_before[page.key]
                )
            digest, external_ids = delivered[page.key]
            entries.append(sql.LedgerEntry(page_counts, external_ids, inserted_ids, digest))
        counts = [entry.counts for entry in entries]
        await connection.execute(sql.RECORD_PAGE_COUNTS, *sql.record_page_counts_arguments(tenant_id, entries))
        if refused:
            records = [(key, RefusedRecord(external_id, error)) for (key, external_id), error in refused.items()]
            await connection.execute(sql.RECORD_DEAD_LETTERS, *sql.dead_letter_arguments(tenant_id, records))
            for key, refused_record in records:
                refused_by_page.setdefault(key, []).append(refused_record)
        totals = job_totals(counts, {key: stored_counts[key] for key in rewritten})
        known_jobs = await connection.fetch(sql.ADD_JOB_COUNTERS, *sql.job_counter_arguments(tenant_id, totals))
        missing_jobs = {t.job_id for t in totals} - {record["job_id"] for record in known_jobs}
        if missing_jobs:
            raise PoisonMessageError(f"job(s) {sorted(missing_jobs)} do not belong to tenant {tenant_id}")
        fresh_counts = {PageKey(c.job_id, c.page_no): c for c in counts}
        stale = plan.stale

    replayed_counts = {page.key: stored_counts[page.key] for page in replayed if page.key in stored_counts}
    if any(c.skipped.dead_letter for c in replayed_counts.values()):
        replayed_keys = sql.page_key_arguments([page.key for page in replayed])
        for record in await connection.fetch(sql.SELECT_DEAD_LETTERS, tenant_id, *replayed_keys):
            refused_by_page.setdefault(PageKey(record["job_id"], record["page_no"]), []).append(
                RefusedRecord(record["external_id"], record["error"])
            )
    outcomes = assemble_outcomes(pages, fresh_counts, replayed_counts, refused_by_page)
    if stale:
        stale_by_page: dict[PageKey, list[StaleRecord]] = {}
        for stale_record in stale:
            stale_by_page.setdefault(stale_record.page, []).append(stale_record)
        outcomes = [
            dataclasses.replace(outcome, stale=tuple(stale_by_page.get(outcome.key, ())))
            if not outcome.redelivered else outcome
            for outcome in outcomes
        ]
    return outcomes


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
