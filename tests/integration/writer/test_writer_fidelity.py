"""The writer keeps the mirror equal to the provider: cancellation stubs, revivals, pages fetched
again with other content, and counts that are final once a job ended (real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import asyncpg
import pytest

from apptsync.fetcher.providers import JsonValue
from apptsync.fetcher.providers.google_calendar import google_page
from apptsync.shared.messages.appointment_pages import build_page
from apptsync.writer.accounting import DecodedPage, decode_page
from apptsync.writer.store import write_pages
from tests.integration.writer.writer_database import job_counters, padded
from tests.unit.fetcher.test_provider_google_normalizer import (
    CANCELLED_INSTANCE,
    DELETED,
    FETCHED_AT,
    LISTING,
    WINDOW,
    variant,
)
from tests.unit.writer.page_builders import T0, TENANT, page, with_stubs

pytestmark = pytest.mark.integration

CreateJob = Callable[..., Awaitable[str]]  # the `create_job` fixture


def stubs(job_id: str, external_ids: list[str], *, page_no: int) -> DecodedPage:
    base = page([], page_no=page_no, job_id=job_id)
    return decode_page(with_stubs(base, external_ids, observed_at=T0 + timedelta(minutes=5)).SerializeToString())


def one_page(job_id: str, external_ids: list[str], *, page_no: int, version: int = 0) -> DecodedPage:
    rows = [padded(external_id, version=version) for external_id in external_ids]
    return decode_page(page(rows, page_no=page_no, job_id=job_id).SerializeToString())


async def status_of(connection: asyncpg.Connection) -> dict[str, tuple[str, bool]]:
    rows = await connection.fetch("SELECT external_id, status, deleted_at IS NOT NULL AS deleted FROM appointments")
    return {row["external_id"]: (row["status"], row["deleted"]) for row in rows}


async def test_a_stub_cancels_the_stored_row_whatever_its_times_and_never_inserts(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    job = await create_job(TENANT)
    await write_pages(connection, [one_page(job, ["ev1", "ev2"], page_no=1)])
    starts = await connection.fetchval("SELECT starts_at FROM appointments WHERE external_id = 'ev1'")

    (outcome,) = await write_pages(connection, [stubs(job, ["ev1", "never-stored"], page_no=2)])

    assert (outcome.counts.updated, outcome.counts.skipped.unknown_deletion) == (1, 1)
    assert await status_of(connection) == {"ev1": ("canceled", False), "ev2": ("scheduled", False)}
    assert await connection.fetchval("SELECT starts_at FROM appointments WHERE external_id = 'ev1'") == starts
    (again,) = await write_pages(connection, [stubs(job, ["ev1"], page_no=3)])
    assert (again.counts.updated, again.counts.unchanged) == (0, 1)  # already canceled: untouched
    counters = await job_counters(connection, job)
    assert counters["records_fetched"] == 2 + 2 + 1


async def test_a_row_marked_deleted_is_revived_when_seen_again(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    job = await create_job(TENANT)
    await write_pages(connection, [one_page(job, ["a1"], page_no=1)])
    await connection.execute("UPDATE appointments SET deleted_at = now()")

    (outcome,) = await write_pages(connection, [one_page(job, ["a1"], page_no=2)])

    assert (outcome.counts.updated, outcome.counts.unchanged) == (1, 0)
    assert await status_of(connection) == {"a1": ("scheduled", False)}


async def test_a_page_fetched_again_with_other_content_is_written_and_counted_once(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    job = await create_job(TENANT)
    await write_pages(connection, [one_page(job, ["a", "b"], page_no=1)])

    # The same page again, same content: a replay. Then fetched again after the provider changed.
    (replay,) = await write_pages(connection, [one_page(job, ["a", "b"], page_no=1)])
    (rewrite,) = await write_pages(connection, [one_page(job, ["a", "b", "c"], page_no=1, version=1)])

    assert replay.redelivered
    assert not rewrite.redelivered
    # a and b did not exist before the job: still inserted; c is new.
    assert (rewrite.counts.inserted, rewrite.counts.updated, rewrite.counts.records_fetched) == (3, 0, 3)
    versions = await connection.fetch("SELECT raw->>'version' AS v FROM appointments ORDER BY external_id")
    assert [row["v"] for row in versions] == ["1", "1", "1"]
    counters = await job_counters(connection, job)
    assert (counters["pages_written"], counters["records_fetched"], counters["inserted"]) == (1, 3, 3)


async def test_a_result_that_arrives_after_the_job_ended_leaves_its_counts_alone(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    job = await create_job(TENANT)
    await write_pages(connection, [one_page(job, ["a"], page_no=1)])
    await connection.execute("UPDATE import_jobs SET state = 'FAILED' WHERE job_id = $1", job)

    (late,) = await write_pages(connection, [one_page(job, ["b"], page_no=2)])

    assert late.counts.inserted == 1  # the rows land and the ledger records the page...
    assert await connection.fetchval("SELECT count(*) FROM import_job_pages WHERE job_id = $1", job) == 2
    counters = await job_counters(connection, job)  # ...but the ended job keeps its final counts
    assert (counters["pages_written"], counters["inserted"]) == (1, 1)


async def test_googles_documented_deletion_payloads_cancel_the_stored_rows(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """From the provider's payload to the row: Google's deleted event (id and status only) and its
    cancelled recurring instance (id, recurringEventId, originalStartTime) go through the real
    normalizer, page encoding and writer, and cancel the rows their full versions stored."""
    job = await create_job(TENANT)
    instance = variant(id=CANCELLED_INSTANCE["id"], recurringEventId=CANCELLED_INSTANCE["recurringEventId"],
                       start=CANCELLED_INSTANCE["originalStartTime"],
                       end={"dateTime": "2024-03-15T10:30:00+01:00", "timeZone": "Europe/Berlin"})
    full = [variant(id=DELETED["id"]), instance]

    def google(items: Sequence[JsonValue], page_no: int) -> DecodedPage:
        provider_page = google_page(items, listing=LISTING, window=WINDOW, fetched_at=FETCHED_AT)
        message = build_page(job_id=job, tenant_id=TENANT, external_source="google_calendar", connection_id="conn-1",
                             page_no=page_no, fetched_at=FETCHED_AT, records_fetched=provider_page.records_fetched,
                             appointments=provider_page.appointments,
                             skipped_out_of_window=provider_page.skipped_out_of_window,
                             skipped_invalid=provider_page.skipped_invalid)
        return decode_page(message.SerializeToString())

    (stored,) = await write_pages(connection, [google(full, 1)])
    (deleted,) = await write_pages(connection, [google([DELETED, CANCELLED_INSTANCE], 2)])

    assert stored.counts.inserted == 2
    assert (deleted.counts.updated, deleted.counts.skipped.invalid) == (2, 0)
    calendar = LISTING.calendar_id
    assert await status_of(connection) == {
        f"{calendar}/{DELETED['id']}": ("canceled", False),
        f"{calendar}/{CANCELLED_INSTANCE['id']}": ("canceled", False),
    }
