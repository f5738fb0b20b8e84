"""CancelJob against real processes: a running job stops sending pages about as soon as it is asked
to, not at the fetcher's next lease renewal.

The lease is long (renewals 5 s apart) and the provider slow (100 ms a page), so a fetcher that
only heard of the cancellation at its renewal would send dozens of pages more; the fetcher hears
it by notification instead. Timings are printed (`-s` shows them); the only timed assertion is a
generous bound.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2
from tests.containers.fixtures import BrokerContainer
from tests.e2e.system import (
    TERMINAL,
    RunningSystem,
    all_tenants_tokens_file,
    get_job,
    running,
    service_set,
    system_env,
    wait_for_job,
)
from tests.hooked_services import hooked_command

pytestmark = pytest.mark.e2e
ADMIN_TOKEN = "e2e-cancel-admin-token"
LEASE_SECONDS = 15  # renewed every 5 s: the fallback that must not be what ends the job
PROVIDER_LATENCY_MS = 100
# Pages the fetcher may still send after CancelJob returns: the page being fetched when the request
# arrives, and one whose progress was being saved. Hearing it only at the next renewal (up to 5 s
# at 100 ms a page) would send up to ~50.
MAX_PAGES_AFTER_CANCEL = 3
GENEROUS_CANCEL_BOUND_SECONDS = 4.0
POLL_SECONDS = 0.02


@pytest.fixture
async def slow_system(
    database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> AsyncIterator[RunningSystem]:
    tokens_file = all_tenants_tokens_file(tmp_path / "admin-tokens.json", name="admin", token=ADMIN_TOKEN)
    env = system_env(
        tmp_path,
        APPTSYNC_GATEWAY_AUTH_TOKENS_FILE=str(tokens_file),
        APPTSYNC_FETCHER_LEASE_SECONDS=str(LEASE_SECONDS),
        APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT="1200",
    )
    services = service_set(
        database_url=database_url,
        service_database_url=service_database_url,
        bootstrap_servers=broker.bootstrap_servers,
        tmp_path=tmp_path,
        env=env,
        command=hooked_command(provider_requests_per_second=500),
    )
    faults = {"acuity": {"latency_ms": PROVIDER_LATENCY_MS}}
    async with running(services, database_url=database_url, token=ADMIN_TOKEN, simulator_faults=faults) as system:
        yield system


async def start_slow_import(system: RunningSystem, tenant_id: str) -> str:
    await system.stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=tenant_id,
            connection_id="acuity",
            source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{system.services.addresses.simulator_url}/acuity/api/v1",
            credentials={"user_id": "1002", "api_key": "acuity-key-1002"},
        ),
        metadata=system.metadata,
        timeout=10,
    )
    now = datetime.now(UTC)
    request = imports_pb2.StartImportRequest(
        tenant_id=tenant_id,
        source=imports_pb2.SOURCE_ACUITY,
        connection_id="acuity",
        window=imports_pb2.TimeWindow(
            start=timestamp(now - timedelta(days=190)), end=timestamp(now + timedelta(days=190))
        ),
        options=imports_pb2.ImportOptions(page_size=5, max_in_flight_pages=4),
    )
    response = await system.stub.StartImport(request, metadata=system.metadata, timeout=20)
    return response.job.job_id


async def lease_renewed(database_url: str, job_id: str) -> None:
    """Returns right after the fetcher renewed the job's lease (its expiry moved), read as the owner."""
    connection = await asyncpg.connect(database_url)
    try:
        query = "SELECT lease_expires_at FROM import_jobs WHERE job_id = $1"
        claimed = await connection.fetchval(query, uuid.UUID(job_id))
        for _poll in range(int(2 * LEASE_SECONDS / POLL_SECONDS)):  # bounded: two lease lengths
            if await connection.fetchval(query, uuid.UUID(job_id)) != claimed:
                return
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await connection.close()
    raise AssertionError(f"the lease of job {job_id} was not renewed within {2 * LEASE_SECONDS} s")


async def test_a_canceled_job_stops_sending_pages_at_once(slow_system: RunningSystem) -> None:
    tenant = str(uuid.uuid4())
    job_id = await start_slow_import(slow_system, tenant)
    await wait_for_job(slow_system, tenant, job_id, lambda j: j.counts.pages_fetched >= 2, timeout_seconds=60)
    # Just after a lease renewal: the renewal fallback alone would hear the cancel 5 s later.
    await lease_renewed(slow_system.database_url, job_id)
    loop = asyncio.get_running_loop()
    asked_at = loop.time()
    at_cancel = await slow_system.stub.CancelJob(
        imports_pb2.CancelJobRequest(tenant_id=tenant, job_id=job_id), metadata=slow_system.metadata, timeout=10
    )
    pages_at_cancel = at_cancel.counts.pages_fetched
    assert at_cancel.state == imports_pb2.JOB_STATE_RUNNING, "the job ended before it could be canceled"

    last_pages, last_page_at = pages_at_cancel, asked_at
    job = at_cancel
    for _poll in range(int(30 / POLL_SECONDS)):  # bounded: 30 s of polls at most
        job = await get_job(slow_system, tenant, job_id)
        if job.counts.pages_fetched != last_pages:
            last_pages, last_page_at = job.counts.pages_fetched, loop.time()
        if job.state in TERMINAL:
            break
        await asyncio.sleep(POLL_SECONDS)
    canceled_at = loop.time()
    pages_after = job.counts.pages_fetched - pages_at_cancel
    print(  # the measurement this test exists for; shown with -s
        f"\ncancel latency: last page sent {last_page_at - asked_at:.2f} s after CancelJob, "
        f"CANCELED after {canceled_at - asked_at:.2f} s, {pages_after} page(s) sent after the cancel"
    )

    assert job.state == imports_pb2.JOB_STATE_CANCELED, job
    assert job.stop_reason == "canceled by request"
    assert pages_after <= MAX_PAGES_AFTER_CANCEL, pages_after
    assert canceled_at - asked_at < GENEROUS_CANCEL_BOUND_SECONDS
    # Every page it sent was written before the job was declared over.
    assert job.counts.pages_written == job.counts.pages_fetched
