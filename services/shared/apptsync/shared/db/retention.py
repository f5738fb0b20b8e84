"""`apptsync prune` against PostgreSQL: executes apptsync.shared.retention's cutoffs in bounded batches.

Runs as the services' role (apptsync_service). Only the list of tenants crosses tenants (the SECURITY
DEFINER function of migration 0011); every batch is one transaction under one tenant's row-level
security, so no prune statement can touch another tenant's rows.

Raw payloads: a row whose `updated_at` (its last change: insert, update, cancellation, deletion mark)
is older than the cutoff gets `raw = '{}'`; `updated_at` and `content_hash` stay. The writer decides
"unchanged" by comparing the content hash of an incoming record (computed from the provider's payload
in the page, apptsync.shared.appointments.content_hash) with the stored hash (writer/sql.py
SELECT_STORED_VERSIONS, accounting.classify), never by reading `raw`: a re-import of an unchanged
record after the prune counts as unchanged and writes nothing, so the payload stays pruned. A record
that changed is written in full, its new payload included, and is pruned again once it is old.

Ledger: the pages (`import_job_pages`, whose `external_ids` only the reconciliation of a running job
reads), dead-letter records and `import_jobs` rows of jobs finished before the cutoff. A running or
queued job is never touched (the state filter). Each connection keeps its latest finished job and its
latest succeeded one (without their pages): StartImport decides `first_import` by whether a
succeeded job exists, and the kept rows keep the tenant visible to apptsync_retention_tenants.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from apptsync.shared.db.pool import DATABASE_ERRORS, tenant_transaction, translate_database_error
from apptsync.shared.errors import PermanentError
from apptsync.shared.retention import (
    PRUNED_RAW_PAYLOAD,
    PruneBudget,
    PruneReport,
    RetentionCutoffs,
    batch_exhausted,
)

if TYPE_CHECKING:
    from apptsync.shared.db import DbConnection

# The keyset's start: before any appointment's starts_at.
_BEFORE_EVERY_ROW = datetime.min.replace(tzinfo=UTC)
_FINISHED = "('SUCCEEDED', 'FAILED', 'CANCELED')"

LIST_TENANTS = "SELECT t::text AS tenant_id FROM apptsync_retention_tenants() AS t ORDER BY 1"

# One batch of a tenant's appointments in (starts_at, appointment_id) order, from after the previous
# batch's last row (keyset on appointments_by_start): every row is read once per run, pruned or not,
# instead of re-reading the pruned ones per batch. Only old rows with a payload are written.
PRUNE_RAW_PAYLOADS = f"""
WITH batch AS MATERIALIZED (
    SELECT a.appointment_id, a.starts_at FROM appointments AS a
    WHERE a.tenant_id = $1::uuid
      AND a.starts_at >= $2 AND (a.starts_at > $2 OR a.appointment_id > $3)
    ORDER BY a.starts_at, a.appointment_id
    LIMIT $4
), pruned AS (
    UPDATE appointments AS a SET raw = '{PRUNED_RAW_PAYLOAD}'::jsonb
    FROM batch
    WHERE a.appointment_id = batch.appointment_id AND a.tenant_id = $1::uuid
      AND a.updated_at < $5 AND a.raw <> '{PRUNED_RAW_PAYLOAD}'::jsonb
    RETURNING 1
), last AS (
    SELECT batch.starts_at, batch.appointment_id FROM batch
    ORDER BY batch.starts_at DESC, batch.appointment_id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM batch) AS read, (SELECT count(*) FROM pruned) AS pruned,
       (SELECT last.starts_at FROM last) AS last_starts_at, (SELECT last.appointment_id FROM last) AS last_id
"""  # noqa: S608 -- the interpolated text is this module's constant, not input

_OLD_FINISHED_JOBS = f"""
    SELECT j.job_id FROM import_jobs AS j
    WHERE j.tenant_id = $1::uuid AND j.finished_at < $2 AND j.state IN {_FINISHED}
"""  # noqa: S608 -- the interpolated text is this module's constant, not input

DELETE_DEAD_LETTERS = f"""
DELETE FROM import_job_dead_letters AS d
WHERE (d.job_id, d.page_no, d.external_id) IN (
    SELECT x.job_id, x.page_no, x.external_id FROM import_job_dead_letters AS x
    WHERE x.tenant_id = $1::uuid AND x.job_id IN ({_OLD_FINISHED_JOBS})
    LIMIT $3)
"""  # noqa: S608 -- the interpolated text is this module's constant, not input

DELETE_PAGES = f"""
DELETE FROM import_job_pages AS p
WHERE (p.job_id, p.page_no) IN (
    SELECT x.job_id, x.page_no FROM import_job_pages AS x
    WHERE x.tenant_id = $1::uuid AND x.job_id IN ({_OLD_FINISHED_JOBS})
    LIMIT $3)
"""  # noqa: S608 -- the interpolated text is this module's constant, not input

# A job goes after its pages (each delete stays within its batch), except the kept ones.
DELETE_JOBS = f"""
WITH kept AS (
    (SELECT DISTINCT ON (k.external_source, k.connection_id) k.job_id FROM import_jobs AS k
     WHERE k.tenant_id = $1::uuid AND k.state = 'SUCCEEDED'
     ORDER BY k.external_source, k.connection_id, k.finished_at DESC, k.job_id)
    UNION
    (SELECT DISTINCT ON (k.external_source, k.connection_id) k.job_id FROM import_jobs AS k
     WHERE k.tenant_id = $1::uuid AND k.state IN {_FINISHED}
     ORDER BY k.external_source, k.connection_id, k.finished_at DESC, k.job_id)
)
DELETE FROM import_jobs AS j
WHERE j.job_id IN (
    SELECT o.job_id FROM ({_OLD_FINISHED_JOBS}) AS o
    WHERE o.job_id NOT IN (SELECT kept.job_id FROM kept)
      AND NOT EXISTS (SELECT 1 FROM import_job_pages AS p WHERE p.job_id = o.job_id)
    LIMIT $3)
"""  # noqa: S608 -- the interpolated text is this module's constant, not input


def _deleted(status: str) -> int:
    """The row count of a DELETE's status tag (`DELETE 42`)."""
    return int(status.rsplit(" ", 1)[1])


async def prune(
    connection: DbConnection,
    *,
    cutoffs: RetentionCutoffs,
    batch_rows: int,
    budget: PruneBudget,
    monotonic: Callable[[], float],
) -> PruneReport:
    """Prunes every tenant's old raw payloads, then its old ledger, batch by batch while `budget`
    (read against `monotonic`) allows; each batch commits on its own. Idempotent: a second run over
    the same data changes nothing. Returns the counts; `complete` is False when the budget ran out.

    Raises StorageUnavailableError (transient) or PermanentError for a database failure; the batches
    committed before it stay committed."""
    report = PruneReport()
    try:
        tenants = [row["tenant_id"] for row in await connection.fetch(LIST_TENANTS)]
        report.tenants = len(tenants)
        for tenant_id in tenants:
            done = await _prune_raw_payloads(connection, tenant_id, cutoffs.raw_payload_before, batch_rows,
                                             budget, monotonic, report)
            done = done and await _prune_ledger(connection, tenant_id, cutoffs.ledger_before, batch_rows,
                                                budget, monotonic, report)
            if not done:
                report.complete = False
                break
    except DATABASE_ERRORS as exc:
        raise translate_database_error(exc) from exc
    report.batches = budget.batches
    return report


async def _prune_raw_payloads(
    connection: DbConnection, tenant_id: str, before: datetime, batch_rows: int,
    budget: PruneBudget, monotonic: Callable[[], float], report: PruneReport,
) -> bool:
    """One tenant's payloads; False when the budget ran out first."""
    after_starts_at: datetime | None = None
    after_id = 0
    while budget.allows_another(monotonic()):
        async with tenant_transaction(connection, tenant_id):
            row = await connection.fetchrow(
                PRUNE_RAW_PAYLOADS, uuid.UUID(tenant_id), after_starts_at or _BEFORE_EVERY_ROW, after_id,
                batch_rows, before,
            )
        budget.spend()
        if row is None:  # an aggregate SELECT returns one row; this narrows the type
            raise PermanentError("the raw payload prune returned no row")
        report.appointments_read += row["read"]
        report.raw_payloads_pruned += row["pruned"]
        if batch_exhausted(row["read"], batch_rows):
            return True
        after_starts_at, after_id = row["last_starts_at"], row["last_id"]
    return False


async def _prune_ledger(
    connection: DbConnection, tenant_id: str, before: datetime, batch_rows: int,
    budget: PruneBudget, monotonic: Callable[[], float], report: PruneReport,
) -> bool:
    """One tenant's dead letters, pages, then jobs; False when the budget ran out first."""
    for statement in (DELETE_DEAD_LETTERS, DELETE_PAGES, DELETE_JOBS):
        exhausted = False
        while not exhausted:
            if not budget.allows_another(monotonic()):
                return False
            async with tenant_transaction(connection, tenant_id):
                deleted = _deleted(await connection.execute(statement, uuid.UUID(tenant_id), before, batch_rows))
            budget.spend()
            if statement is DELETE_DEAD_LETTERS:
                report.dead_letters_deleted += deleted
            elif statement is DELETE_PAGES:
                report.pages_deleted += deleted
            else:
                report.jobs_deleted += deleted
            exhausted = batch_exhausted(deleted, batch_rows)
    return True
