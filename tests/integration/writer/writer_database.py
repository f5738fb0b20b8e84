"""Helpers of the writer's integration tests (imported as tests.integration.writer.writer_database)."""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg

from apptsync.shared.appointments import CanonicalAppointment
from tests.unit.writer.page_builders import appointment

PADDING = "x" * 900  # ~1 KB of provider JSON per row, as in performance.md


def padded(external_id: str, version: int = 0, **kwargs: object) -> CanonicalAppointment:
    """`appointment(...)` with ~1 KB of raw JSON."""
    base = appointment(external_id, version=version, **kwargs)  # type: ignore[arg-type]
    return dataclasses.replace(
        base, raw_json=f'{{"id": "{external_id}", "version": {version}, "notes": "{PADDING}"}}'
    )


async def insert_job(connection: asyncpg.Connection, tenant_id: str, job_id: str | None = None) -> str:
    """A QUEUED import_jobs row (the pages' foreign key) for `tenant_id`; returns its job id. Each job
    gets its own connection id: only one job per connection may be active."""
    job_id = job_id or str(uuid.uuid4())
    await connection.execute(
        """INSERT INTO import_jobs (job_id, tenant_id, external_source, connection_id, window_start,
               window_end, page_size, max_pages, max_in_flight_pages, stop_policy, stop_after_pages,
               deadline_at, first_import)
           VALUES ($1::uuid, $2, 'acuity', 'conn-' || $1::text, now() - interval '30 days',
                   now() + interval '30 days', 100, 1000, 8, 'NEVER', 1, now() + interval '1 hour', true)""",
        job_id, tenant_id,
    )
    return job_id


async def job_counters(connection: asyncpg.Connection, job_id: str) -> dict[str, int]:
    """The page counters of an import job."""
    row = await connection.fetchrow(
        """SELECT pages_written, records_fetched, inserted, updated, unchanged, skipped_out_of_window,
                  skipped_duplicate_in_page, contacts_unmatched FROM import_jobs WHERE job_id = $1""",
        job_id,
    )
    assert row is not None, f"no import job {job_id}"
    return dict(row)
