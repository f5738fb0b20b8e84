"""Records and pages PostgreSQL refuses: the rest lands, the skip is counted, the counts stay honest.

Each test names the mechanism it guards; removing that mechanism makes it fail.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from apptsync.shared.appointments import CanonicalAppointment
from apptsync.shared.errors import PoisonMessageError
from apptsync.writer.accounting import DecodedPage, decode_page
from apptsync.writer.store import record_refused_page, write_pages
from tests.integration.writer.writer_database import job_counters, padded
from tests.unit.writer.page_builders import TENANT, page

pytestmark = pytest.mark.integration

CreateJob = Callable[..., Awaitable[str]]


def one_page(job_id: str, appointments: list[CanonicalAppointment], page_no: int = 1) -> DecodedPage:
    return decode_page(page(appointments, page_no=page_no, job_id=job_id).SerializeToString())


def malformed_json(external_id: str) -> CanonicalAppointment:
    return dataclasses.replace(padded(external_id), raw_json="{not json")


def nul_in_title(external_id: str) -> CanonicalAppointment:
    return dataclasses.replace(padded(external_id), title="bad\x00title")


async def test_refused_records_are_taken_out_and_the_rest_of_the_batch_lands(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards record isolation (retry with savepoints, bisection, refused records dropped and counted):
    without it one bad record loses its whole page, or the counts miss it."""
    job = await create_job(TENANT)
    first = one_page(job, [padded("a1"), malformed_json("bad-json"), padded("a2")], page_no=1)
    second = one_page(job, [padded(f"b{i}") for i in range(20)] + [nul_in_title("bad-nul")], page_no=2)

    outcomes = await write_pages(connection, [first, second])

    assert [(o.counts.inserted, o.counts.skipped.dead_letter) for o in outcomes] == [(2, 1), (20, 1)]
    assert [[r.external_id for r in o.refused] for o in outcomes] == [["bad-json"], ["bad-nul"]]
    assert "json" in outcomes[0].refused[0].error
    stored = {row["external_id"] for row in await connection.fetch("SELECT external_id FROM appointments")}
    assert stored == {"a1", "a2"} | {f"b{i}" for i in range(20)}
    counters = await job_counters(connection, job)
    assert (counters["records_fetched"], counters["inserted"], counters["pages_written"]) == (24, 22, 2)
    assert await connection.fetchval("SELECT skipped_dead_letter FROM import_jobs WHERE job_id = $1", job) == 2


async def test_a_redelivered_page_reports_its_refused_records_again(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards the stored dead letters (import_job_dead_letters): a crash after the commit must not
    lose the dead-letter copies; the replay names the records again and counts nothing twice."""
    job = await create_job(TENANT)
    delivered = one_page(job, [padded("ok"), malformed_json("bad")])
    await write_pages(connection, [delivered])

    (replay,) = await write_pages(connection, [delivered])

    assert replay.redelivered
    assert [r.external_id for r in replay.refused] == ["bad"]
    assert (replay.counts.inserted, replay.counts.skipped.dead_letter) == (1, 1)
    assert (await job_counters(connection, job))["records_fetched"] == 2


async def test_a_page_refused_as_a_whole_is_recorded_with_every_record_dead_lettered(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards record_refused_page: the job's counters must account for a page it could not store
    (inserted + updated + unchanged + skipped == records fetched), once, however often delivered."""
    job = await create_job(TENANT)
    refused = one_page(job, [padded("x1"), padded("x2")], page_no=4)

    outcome = await record_refused_page(connection, refused)
    again = await record_refused_page(connection, refused)

    assert (outcome.counts.records_fetched, outcome.counts.skipped.dead_letter, outcome.redelivered) == (2, 2, False)
    assert again.redelivered and again.counts == outcome.counts
    counters = await job_counters(connection, job)
    assert (counters["records_fetched"], counters["pages_written"]) == (2, 1)
    assert await connection.fetchval("SELECT count(*) FROM appointments") == 0


async def test_a_page_of_no_job_cannot_be_recorded_and_leaves_nothing(connection: asyncpg.Connection) -> None:
    """Guards the foreign key of the ledger: a page of a job that does not exist is poison, even as a
    refused page (the writer then only reports it; see the service test)."""
    orphan = one_page(str(uuid.uuid4()), [padded("o1")])

    with pytest.raises(PoisonMessageError):
        await record_refused_page(connection, orphan)

    assert await connection.fetchval("SELECT count(*) FROM import_job_pages") == 0
