"""The import_jobs table: creating, reading, claiming (with a lease), progressing and finishing jobs.

Shared by the gateway (create, read, cancel) and the fetcher (claim, progress, finish). Every
function takes a connection so the caller owns transactions; each statement is tenant-scoped or
job-scoped and idempotent where the caller may retry it.

Row-level security (migration 0004): tenant-scoped functions run in `tenant_transaction` (the tenant
set for that transaction only); the fetcher's job-scoped ones, which span tenants, call the narrow
SECURITY DEFINER functions of that migration (`apptsync_claim_job`, ...) instead of the table.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from apptsync.shared.db import DbConnection
from apptsync.shared.counts import JOB_COUNTERS
from apptsync.shared.db.pool import tenant_transaction
from apptsync.shared.errors import PermanentError

# Channels: the gateway notifies fetchers of queued jobs; a trigger notifies every job change.
JOBS_QUEUED_CHANNEL = "apptsync_jobs_queued"
JOB_CHANGED_CHANNEL = "apptsync_job_changed"
# A running job's cancellation was requested (payload: its id); the fetcher running it stops at once.
JOB_CANCEL_CHANNEL = "apptsync_job_cancel_requested"
ACTIVE_STATES = ("QUEUED", "RUNNING")
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED")
# The import_jobs counter columns are named like the counters (apptsync.shared.counts).
COUNTER_COLUMNS = JOB_COUNTERS


class LeaseLostError(PermanentError):
    """Another fetcher owns the job now (our lease expired): stop working on it at once."""


class IdempotencyKeyReusedError(PermanentError):
    """The idempotency key already names a job of the tenant that a different request started.

    Nothing was written. `job_id` is the job that holds the key, `differences` the request fields
    (proto field paths) in which the two requests differ."""

    def __init__(
        self, *, idempotency_key: str, job_id: str, source: str, connection_id: str, differences: list[str]
    ) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} is held by job {job_id} ({source} connection "
            f"{connection_id!r}), started by a request that differs in {', '.join(differences)}; "
            "nothing was started: use another key for another request"
        )
        self.idempotency_key = idempotency_key
        self.job_id = job_id
        self.differences = differences


# One recorded request field: a proto field path maps to a JSON scalar.
FingerprintValue = str | int | None


@dataclass(frozen=True)
class JobOptions:
    page_size: int
    max_pages: int
    max_in_flight_pages: int
    stop_policy: str  # NO_NEW_RECORDS | NO_CHANGES | NEVER
    stop_after_pages: int
    deadline_seconds: float


@dataclass(frozen=True)
class NewJob:
    tenant_id: str
    external_source: str
    connection_id: str
    window_start: datetime
    window_end: datetime
    options: JobOptions
    idempotency_key: str | None
    trace_id: str = ""
    traceparent: str = ""
    # What the request asked for beyond source and connection, as sent (see request_differences);
    # stored with the key so that a later call with the same key can be compared.
    request_fingerprint: Mapping[str, FingerprintValue] | None = None


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    tenant_id: str
    external_source: str
    connection_id: str
    state: str
    window_start: datetime
    window_end: datetime
    options: JobOptions
    deadline_at: datetime
    first_import: bool
    idempotency_key: str | None
    cursor: Any
    next_page_no: int
    counts: dict[str, int]
    cancel_requested: bool
    stop_reason: str
    error: str
    trace_id: str
    traceparent: str
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # 'sync' (StartImport: a walk of the window) or 'targeted' (queued by the webhook receiver: fetches
    # `targets` only, never reconciles deletions; migration 0012).
    kind: str = "sync"
    targets: tuple[str, ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def record_from_row(row: asyncpg.Record) -> JobRecord:
    created_at: datetime = row["created_at"]
    deadline_at: datetime = row["deadline_at"]
    return JobRecord(
        job_id=str(row["job_id"]),
        tenant_id=str(row["tenant_id"]),
        external_source=row["external_source"],
        connection_id=row["connection_id"],
        state=row["state"],
        window_start=row["window_start"],
        window_end=row["window_end"],
        options=JobOptions(
            page_size=row["page_size"],
            max_pages=row["max_pages"],
            max_in_flight_pages=row["max_in_flight_pages"],
            stop_policy=row["stop_policy"],
            stop_after_pages=row["stop_after_pages"],
            deadline_seconds=(deadline_at - created_at).total_seconds(),
        ),
        deadline_at=deadline_at,
        first_import=row["first_import"],
        idempotency_key=row["idempotency_key"],
        cursor=None if row["cursor"] is None else json.loads(row["cursor"]),
        next_page_no=row["next_page_no"],
        counts={name: int(row[name]) for name in COUNTER_COLUMNS},
        cancel_requested=row["cancel_requested"],
        stop_reason=row["stop_reason"],
        error=row["error"],
        trace_id=row["trace_id"],
        traceparent=row["traceparent"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        created_at=created_at,
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        kind=row.get("kind", "sync"),
        targets=tuple(json.loads(row["targets"])) if row.get("targets") is not None else (),
    )


def request_differences(held: Mapping[str, FingerprintValue], asked: Mapping[str, FingerprintValue]) -> list[str]:
    """The fields, sorted, in which the request that took an idempotency key (`held`) and a later
    request with the same key (`asked`) differ; empty when they are the same request.

    Only fields both sides recorded are compared: a job started before fingerprints were stored is
    compared on source and connection alone, which every job records (see `held_request`)."""
    return sorted(name for name in held.keys() & asked.keys() if held[name] != asked[name])


def held_request(
    external_source: str, connection_id: str, stored_fingerprint: Mapping[str, FingerprintValue] | None
) -> dict[str, FingerprintValue]:
    """The request a key's job was started by, for `request_differences`: its source and connection
    (the job's columns) and whatever fingerprint was stored with it."""
    return {**(stored_fingerprint or {}), "source": external_source, "connection_id": connection_id}


def asked_request(job: NewJob) -> dict[str, FingerprintValue]:
    """The request of a new job, for `request_differences`."""
    return held_request(job.external_source, job.connection_id, job.request_fingerprint)


async def create_job(connection: DbConnection, job: NewJob, *, now: datetime) -> tuple[JobRecord, bool]:
    """Stores a QUEUED job, or returns the job that makes it a duplicate.

    Returns (job, already_exists). The job of the same idempotency key (in any state), or else an
    active job of the same (tenant, source, connection), is returned instead of a second one; both
    checks are enforced by unique indexes, so concurrent callers race safely. The duplicate may
    finish between our insert and our read; then we try again (bounded).

    Raises IdempotencyKeyReusedError, writing nothing, when the key's job was started by a different
    request (`request_differences`): a key never returns another request's job.
    """
    async with tenant_transaction(connection, job.tenant_id):
        for _attempt in range(5):
            # Only a walk counts: a targeted job (webhooks) fetched a few records, not the window.
            first_import = not await connection.fetchval(
                """SELECT EXISTS (SELECT 1 FROM import_jobs WHERE tenant_id = $1 AND external_source = $2
                                  AND connection_id = $3 AND state = 'SUCCEEDED' AND kind = 'sync')""",
                uuid.UUID(job.tenant_id),
                job.external_source,
                job.connection_id,
            )
            row = await connection.fetchrow(
                """INSERT INTO import_jobs (job_id, tenant_id, external_source, connection_id, window_start,
                       window_end, page_size, max_pages, max_in_flight_pages, stop_policy, stop_after_pages,
                       deadline_at, first_import, idempotency_key, trace_id, traceparent, created_at, updated_at,
                       request_fingerprint)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17,
                           $18::jsonb)
                   ON CONFLICT DO NOTHING
                   RETURNING *""",
                uuid.uuid4(),
                uuid.UUID(job.tenant_id),
                job.external_source,
                job.connection_id,
                job.window_start,
                job.window_end,
                job.options.page_size,
                job.options.max_pages,
                job.options.max_in_flight_pages,
                job.options.stop_policy,
                job.options.stop_after_pages,
                now + timedelta(seconds=job.options.deadline_seconds),
                first_import,
                job.idempotency_key,
                job.trace_id,
                job.traceparent,
                now,
                None if job.request_fingerprint is None else json.dumps(job.request_fingerprint, sort_keys=True),
            )
            if row is not None:
                await connection.execute("SELECT pg_notify($1, $2)", JOBS_QUEUED_CHANNEL, str(row["job_id"]))
                return record_from_row(row), False
            existing = None
            if job.idempotency_key is not None:
                existing = await connection.fetchrow(
                    "SELECT * FROM import_jobs WHERE tenant_id = $1 AND idempotency_key = $2",
                    uuid.UUID(job.tenant_id),
                    job.idempotency_key,
                )
            if existing is not None:
                stored = existing["request_fingerprint"]
                fingerprint = None if stored is None else json.loads(stored)
                held = held_request(existing["external_source"], existing["connection_id"], fingerprint)
                differences = request_differences(held, asked_request(job))
                if differences:
                    raise IdempotencyKeyReusedError(
                        idempotency_key=job.idempotency_key or "",
                        job_id=str(existing["job_id"]),
                        source=existing["external_source"],
                        connection_id=existing["connection_id"],
                        differences=differences,
                    )
            if existing is None:
                existing = await connection.fetchrow(
                    """SELECT * FROM import_jobs WHERE tenant_id = $1 AND external_source = $2
                       AND connection_id = $3 AND state IN ('QUEUED', 'RUNNING') AND kind = 'sync'""",
                    uuid.UUID(job.tenant_id),
                    job.external_source,
                    job.connection_id,
                )
            if existing is not None:
                return record_from_row(existing), True
    raise PermanentError("could not create the job: conflicting jobs kept changing")


async def get_job(connection: DbConnection, *, tenant_id: str, job_id: str) -> JobRecord | None:
    """The job, or None when it does not exist or belongs to another tenant."""
    async with tenant_transaction(connection, tenant_id):
        row = await connection.fetchrow(
            "SELECT * FROM import_jobs WHERE job_id = $1 AND tenant_id = $2", uuid.UUID(job_id), uuid.UUID(tenant_id)
        )
    return None if row is None else record_from_row(row)


async def list_jobs(
    connection: DbConnection, *, tenant_id: str, states: list[str], limit: int, after: tuple[datetime, str] | None
) -> list[JobRecord]:
    """The tenant's jobs, newest first, optionally only in `states`, starting after the keyset
    `(created_at, job_id)` of the previous page's last job."""
    async with tenant_transaction(connection, tenant_id):
        rows = await connection.fetch(
        """SELECT * FROM import_jobs
           WHERE tenant_id = $1
             AND (cardinality($2::text[]) = 0 OR state = ANY($2::text[]))
             AND ($3::timestamptz IS NULL OR (created_at, job_id) < ($3, $4::uuid))
           ORDER BY created_at DESC, job_id DESC
           LIMIT $5""",
            uuid.UUID(tenant_id),
            states,
            None if after is None else after[0],
            None if after is None else uuid.UUID(after[1]),
            limit,
        )
    return [record_from_row(row) for row in rows]


async def request_cancel(connection: DbConnection, *, tenant_id: str, job_id: str, now: datetime) -> JobRecord | None:
    """Marks an active job for cancellation (a QUEUED job is canceled at once) and, for a RUNNING
    job, notifies its id on JOB_CANCEL_CHANNEL when the transaction commits. Idempotent."""
    async with tenant_transaction(connection, tenant_id):
        row = await connection.fetchrow(
        """UPDATE import_jobs SET
               cancel_requested = true,
               state = CASE WHEN state = 'QUEUED' THEN 'CANCELED' ELSE state END,
               stop_reason = CASE WHEN state = 'QUEUED' THEN 'canceled before it started' ELSE stop_reason END,
               finished_at = CASE WHEN state = 'QUEUED' THEN $3 ELSE finished_at END,
               updated_at = $3
           WHERE job_id = $1 AND tenant_id = $2 AND state IN ('QUEUED', 'RUNNING')
           RETURNING *""",
            uuid.UUID(job_id),
            uuid.UUID(tenant_id),
            now,
        )
        if row is not None and row["state"] == "RUNNING":
            # Delivered at commit: the fetcher running the job hears it without waiting for its
            # next lease renewal (which still reports the flag when a notification is missed).
            await connection.execute("SELECT pg_notify($1, $2)", JOB_CANCEL_CHANNEL, str(row["job_id"]))
    if row is None:
        return await get_job(connection, tenant_id=tenant_id, job_id=job_id)
    return record_from_row(row)


async def claim_job(
    connection: DbConnection,
    *,
    lease_owner: str,
    lease_seconds: float,
    now: datetime,
    max_running_per_tenant: int = 2**31 - 1,
    skip_sources: Collection[str] = (),
) -> JobRecord | None:
    """Claims a queued job, or a running job whose lease expired (its fetcher died), fairly between
    tenants: the oldest claimable job of the tenant with the fewest live (leased) jobs, never one of a
    tenant that already runs `max_running_per_tenant`, nor one of `skip_sources` (external sources
    the caller holds enough jobs of; migration 0016). None when nothing is claimable.

    Guarantees at most one live owner per job: the row is locked with SKIP LOCKED while claimed, and
    the lease must be renewed before it expires (see renew_lease). Claims are serialized in PostgreSQL
    (migration 0010), so the cap holds across every fetcher, not only within one.
    """
    row = await connection.fetchrow(
        "SELECT * FROM apptsync_claim_job($1, $2::timestamptz, $3::double precision, $4::integer, $5::text[])",
        lease_owner,
        now,
        lease_seconds,
        max_running_per_tenant,
        sorted(skip_sources),
    )
    return None if row is None else record_from_row(row)


async def renew_lease(
    connection: DbConnection, *, job_id: str, lease_owner: str, lease_seconds: float, now: datetime
) -> bool:
    """Extends our lease and reports whether cancellation was requested. Raises LeaseLostError."""
    row = await connection.fetchrow(
        "SELECT cancel_requested FROM apptsync_renew_lease($1, $2, $3::timestamptz, $4::double precision)",
        uuid.UUID(job_id),
        lease_owner,
        now,
        lease_seconds,
    )
    if row is None:
        raise LeaseLostError(f"lease on job {job_id} was lost")
    return bool(row["cancel_requested"])


async def save_progress(
    connection: DbConnection,
    *,
    job_id: str,
    lease_owner: str,
    cursor: Any,
    next_page_no: int,
    pages_fetched: int,
    now: datetime,
) -> None:
    """Stores the resume point after a page was handed to Kafka. Raises LeaseLostError."""
    saved = await connection.fetchval(
        "SELECT apptsync_save_progress($1, $2, $3::jsonb, $4, $5, $6::timestamptz)",
        uuid.UUID(job_id),
        lease_owner,
        json.dumps(cursor),
        next_page_no,
        pages_fetched,
        now,
    )
    if not saved:
        raise LeaseLostError(f"lease on job {job_id} was lost")


async def finish_job(
    connection: DbConnection, *, job_id: str, lease_owner: str, state: str, stop_reason: str, error: str, now: datetime
) -> JobRecord:
    """Moves our running job to a terminal state. Raises LeaseLostError if it is not ours any more."""
    if state not in TERMINAL_STATES:
        raise ValueError(f"not a terminal state: {state}")
    row = await connection.fetchrow(
        "SELECT * FROM apptsync_finish_job($1, $2, $3, $4, $5, $6::timestamptz)",
        uuid.UUID(job_id),
        lease_owner,
        state,
        stop_reason,
        error,
        now,
    )
    if row is None:
        raise LeaseLostError(f"lease on job {job_id} was lost")
    return record_from_row(row)


async def release_lease(connection: DbConnection, *, job_id: str, lease_owner: str, now: datetime) -> None:
    """Gives our running job up (on shutdown) so that another fetcher resumes it at once."""
    await connection.execute(
        "SELECT apptsync_release_lease($1, $2, $3::timestamptz)",
        uuid.UUID(job_id),
        lease_owner,
        now,
    )


async def page_results(
    connection: DbConnection, job_id: str, page_nos: list[int] | None = None
) -> dict[int, tuple[int, int, int, int]]:
    """(records_fetched, inserted, updated, unreadable) of the job's recorded pages (all, or those in
    page_nos); `unreadable` counts records the page could not store (invalid or refused)."""
    rows = await connection.fetch(
        "SELECT page_no, records_fetched, inserted, updated, unreadable"
        " FROM apptsync_job_page_results($1, $2::integer[])",
        uuid.UUID(job_id),
        page_nos,
    )
    return {
        row["page_no"]: (row["records_fetched"], row["inserted"], row["updated"], row["unreadable"]) for row in rows
    }


async def reconcile_deletions(connection: DbConnection, *, job_id: str, lease_owner: str, now: datetime) -> int:
    """Marks deleted the rows of our running job's connection, inside its window, that none of its
    pages carried; how many it marked (the job's `deleted` counter grows by as many). Call it only
    for a job that walked its whole window (apptsync.fetcher.progress.JobProgress.walked_whole_window),
    in the transaction that finishes the job. Raises LeaseLostError if the job is not ours any more."""
    marked: int | None = await connection.fetchval(
        "SELECT apptsync_reconcile_job($1, $2, $3::timestamptz)", uuid.UUID(job_id), lease_owner, now
    )
    if marked is None:
        raise LeaseLostError(f"lease on job {job_id} was lost")
    return marked
