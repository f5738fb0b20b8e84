"""One import end to end through real processes: rows equal the source, counts are honest, the
second run stops early (right after the near term), and the gateway refuses calls without a valid
token."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from apptsync.shared.change_events import decode_change
from apptsync.shared.counts import counts_add_up
from apptsync.shared.messages.job_events import decode_job_finished
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import change_events_pb2, imports_pb2
from tests.e2e.system import OTHER_TENANT_ID, TENANT_ID, TERMINAL, RunningSystem

pytestmark = pytest.mark.e2e
CONNECTION_ID = "acuity-main"


async def put_demo_connection(system: RunningSystem) -> None:
    await system.stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=TENANT_ID,
            connection_id=CONNECTION_ID,
            source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{system.services.addresses.simulator_url}/acuity/api/v1",
            credentials={"user_id": "1001", "api_key": "demo-acuity-key"},
        ),
        metadata=system.metadata,
        timeout=10,
    )


async def run_import(
    system: RunningSystem, window: imports_pb2.TimeWindow, options: imports_pb2.ImportOptions
) -> imports_pb2.Job:
    response = await system.stub.StartImport(
        imports_pb2.StartImportRequest(
            tenant_id=TENANT_ID,
            source=imports_pb2.SOURCE_ACUITY,
            connection_id=CONNECTION_ID,
            window=window,
            options=options,
        ),
        metadata=system.metadata,
        timeout=10,
    )
    job = response.job
    stream = system.stub.WatchJob(
        imports_pb2.WatchJobRequest(tenant_id=TENANT_ID, job_id=job.job_id), metadata=system.metadata, timeout=120
    )
    async for snapshot in stream:
        job = snapshot
    assert job.state in TERMINAL, "WatchJob ended before the job did"
    return job


async def source_ids_in_window(simulator_url: str, start: datetime, end: datetime) -> set[str]:
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as client:
        records = (await client.get("/_admin/acuity/accounts/1001/appointments")).json()
    return {str(r["id"]) for r in records if start <= datetime.strptime(r["datetime"], "%Y-%m-%dT%H:%M:%S%z") < end}


async def stored_rows(database_url: str) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT external_id FROM appointments WHERE tenant_id = $1", uuid.UUID(TENANT_ID))
    finally:
        await connection.close()
    return [row["external_id"] for row in rows]


async def job_finished_event(system: RunningSystem, job_id: str) -> imports_pb2.JobFinished:
    """The JobFinished event of the job on the job-events topic (bounded wait)."""
    consumer = AIOKafkaConsumer(
        system.services.service_env["APPTSYNC_KAFKA_JOB_EVENTS_TOPIC"],
        bootstrap_servers=system.services.addresses.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        for _ in range(40):
            for records in (await consumer.getmany(timeout_ms=250)).values():
                for record in records:
                    event = decode_job_finished(record.value or b"")
                    if event.job.job_id == job_id:
                        return event
    finally:
        await consumer.stop()
    raise AssertionError(f"no JobFinished event for job {job_id}")


async def row_versions(database_url: str) -> dict[str, int]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT external_id, row_version FROM appointments WHERE tenant_id = $1", uuid.UUID(TENANT_ID))
    finally:
        await connection.close()
    return {row["external_id"]: row["row_version"] for row in rows}


async def change_events_of(system: RunningSystem, expected: set[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(external id, row version, kind) of every change event of the tenant, read until every expected
    (external id, version) arrived and two polls were quiet (bounded)."""
    consumer = AIOKafkaConsumer(
        system.services.service_env["APPTSYNC_KAFKA_CHANGE_EVENTS_TOPIC"],
        bootstrap_servers=system.services.addresses.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    events: list[tuple[str, int, int]] = []
    try:
        quiet = 0
        for _ in range(120):
            batch = await consumer.getmany(timeout_ms=250)
            for records in batch.values():
                for record in records:
                    change = decode_change(record.value or b"")
                    if change.tenant_id == TENANT_ID:
                        events.append((change.external_id, change.row_version, change.kind))
            quiet = 0 if batch else quiet + 1
            if expected <= {(e[0], e[1]) for e in events} and quiet >= 2:
                break
    finally:
        await consumer.stop()
    return events


async def test_import_lands_the_source_exactly_and_a_rerun_stops_after_the_near_term(
    running_system: RunningSystem,
) -> None:
    system = running_system
    await put_demo_connection(system)
    now = datetime.now(UTC)
    start, end = now - timedelta(days=120), now + timedelta(days=120)
    window = imports_pb2.TimeWindow(start=timestamp(start), end=timestamp(end))

    first = await run_import(system, window, imports_pb2.ImportOptions(page_size=50))

    expected = await source_ids_in_window(system.services.addresses.simulator_url, start, end)
    stored = await stored_rows(system.database_url)
    assert first.state == imports_pb2.JOB_STATE_SUCCEEDED, first.error
    assert first.first_import
    assert first.stop_reason == "provider exhausted"
    assert len(stored) == len(set(stored)), "duplicate rows"
    assert set(stored) == expected
    c = first.counts
    assert c.inserted == len(expected)
    assert c.pages_written == c.pages_fetched > 1
    assert counts_add_up(c)

    event = await job_finished_event(system, first.job_id)
    assert event.job.state == imports_pb2.JOB_STATE_SUCCEEDED
    assert event.job.counts == first.counts
    # One change event per stored row: inserted, version 1 (the writer's relay published the outbox).
    inserted = {(external_id, 1) for external_id in stored}
    changes = await change_events_of(system, inserted)
    assert {(e[0], e[1]) for e in changes} == inserted
    assert {e[2] for e in changes} == {change_events_pb2.CHANGE_KIND_INSERTED}

    second = await run_import(system, window, imports_pb2.ImportOptions(page_size=50))
    assert second.state == imports_pb2.JOB_STATE_SUCCEEDED, second.error
    assert not second.first_import
    assert second.counts.inserted == 0
    # The near term is walked whatever it holds; the first page beyond it had nothing new and stopped
    # the job (it is the last page fetched), long before the provider was exhausted.
    assert second.stop_reason == f"page {second.counts.pages_fetched} had no new records"
    assert second.counts.pages_fetched < first.counts.pages_fetched
    assert second.counts.pages_written == second.counts.pages_fetched
    assert sorted(await stored_rows(system.database_url)) == sorted(stored)
    # The re-run changed nothing it saw unchanged: one more event per row it updated, none for the rest.
    versions = await row_versions(system.database_url)
    every_version = {(key, version) for key, last in versions.items() for version in range(1, last + 1)}
    assert len(every_version) == len(stored) + second.counts.updated
    assert {(e[0], e[1]) for e in await change_events_of(system, every_version)} == every_version


async def test_gateway_rejects_missing_tokens_and_other_tenants(running_system: RunningSystem) -> None:
    system = running_system
    request = imports_pb2.GetJobRequest(tenant_id=TENANT_ID, job_id=str(uuid.uuid4()))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await system.stub.GetJob(request, timeout=10)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    other = imports_pb2.GetJobRequest(tenant_id=OTHER_TENANT_ID, job_id=str(uuid.uuid4()))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await system.stub.GetJob(other, metadata=system.metadata, timeout=10)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await system.stub.GetJob(request, metadata=system.metadata, timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
