"""The broker and PostgreSQL failing under a running import (real processes, private servers).

- broker frozen (docker pause: every broker process SIGSTOPped, its port still bound) again and again,
  some pauses longer than the Kafka request timeout;
- broker restarted: Tansu keeps everything in memory, so topics, pages in flight and the writers'
  committed offsets are gone. The import in flight and the next one must each land exactly or fail
  loudly, within their deadline, with every service still running. (Topics come back as they are
  used, invisible to Tansu's metadata, which then refuses offset commits on them; the writer
  re-creates them when a commit fails, after which Tansu still answers some produce requests with
  UNKNOWN_SERVER_ERROR, so both jobs typically end FAILED with "deadline exceeded" or "no result
  for pages ...": loudly, never SUCCEEDED short.)
- PostgreSQL stopped (fast shutdown) and started again mid-import.

After each: zero duplicates; for a SUCCEEDED job every record of the simulator's data set, nothing
else, and counts that add up; a FAILED job says why. Imports are 20,000 appointments (pages of 100)
so that a fault lands mid-import and CI stays fast.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from apptsync.v1 import imports_pb2
from tests.containers.fixtures import BrokerContainer, PostgresServerContainer
from tests.e2e.system import TERMINAL, get_job, wait_for_job
from tests.faults.fault_system import (
    FaultSystem,
    acuity_source_ids,
    assert_failed_loudly,
    assert_landed_exactly,
    fault_env,
    fault_system,
    finished_job,
    new_tenant,
    put_acuity_connection,
    start_import,
)

pytestmark = pytest.mark.e2e
APPOINTMENTS = 20_000
PAGE_SIZE = 100
# Running / frozen seconds, in turn, while the job runs: the 6 s pauses outlast the 5 s Kafka request
# timeout of the fault settings, the 3 s ones do not.
PAUSE_SCHEDULE = ((1.5, 3.0), (1.5, 6.0), (1.5, 3.0), (1.5, 6.0))
POSTGRES_OUTAGES = 2
RESTART_DEADLINE_SECONDS = 20


async def import_started(
    system: FaultSystem, *, pages_written: int, page_size: int = PAGE_SIZE, deadline_seconds: int | None = None
) -> tuple[str, str]:
    """A first import of a new tenant, once `pages_written` of its pages are stored."""
    tenant_id = new_tenant()
    await put_acuity_connection(system, tenant_id)
    job_id = await start_import(system, tenant_id, page_size=page_size, deadline_seconds=deadline_seconds)
    await wait_for_job(
        system,
        tenant_id,
        job_id,
        lambda job: job.counts.pages_written >= pages_written or job.state in TERMINAL,
        timeout_seconds=60,
    )
    return tenant_id, job_id


def assert_every_service_runs(system: FaultSystem) -> None:
    """The services rode the fault out: none of them exited (a crash would be hidden by a job that a
    restarted process finished, or leave jobs nobody resumes)."""
    exited = {name: p.returncode for name, p in system.services.processes.items() if not p.running}
    assert not exited, f"services exited during the fault: {exited}"


async def assert_landed_exactly_or_failed_loudly(
    system: FaultSystem, job: imports_pb2.Job, source_ids: set[str]
) -> None:
    if job.state == imports_pb2.JOB_STATE_SUCCEEDED:
        await assert_landed_exactly(system, job, source_ids)
    else:
        # Pages the broker lost never get a result ("no result for pages ..."), or the deadline ends it.
        await assert_failed_loudly(system, job, source_ids, error_contains="")
        assert "no result for pages" in job.error or "deadline" in job.error, job.error


async def test_an_import_survives_a_broker_frozen_again_and_again(
    broker_factory: Callable[[], BrokerContainer], database_url: str, service_database_url: str, tmp_path: Path
) -> None:
    broker = broker_factory()
    async with fault_system(
        owner_database_url=database_url,
        service_database_url=service_database_url,
        bootstrap_servers=broker.bootstrap_servers,
        tmp_path=tmp_path,
        env=fault_env(tmp_path, appointments=APPOINTMENTS),
    ) as system:
        tenant_id, job_id = await import_started(system, pages_written=5)
        frozen_seconds = 0.0
        for running_seconds, paused_seconds in PAUSE_SCHEDULE:
            await asyncio.sleep(running_seconds)
            if (await get_job(system, tenant_id, job_id)).state in TERMINAL:
                break
            broker.pause()
            try:
                await asyncio.sleep(paused_seconds)
            finally:
                broker.unpause()
            frozen_seconds += paused_seconds
        job = await finished_job(system, tenant_id, job_id, timeout_seconds=180)

        assert frozen_seconds >= 9, "the import ended before the broker was frozen twice"
        await assert_landed_exactly(system, job, await acuity_source_ids(system))
        assert_every_service_runs(system)


async def test_a_broker_restart_mid_import_never_reports_missing_rows_as_success(
    broker_factory: Callable[[], BrokerContainer], database_url: str, service_database_url: str, tmp_path: Path
) -> None:
    broker = broker_factory()
    async with fault_system(
        owner_database_url=database_url,
        service_database_url=service_database_url,
        bootstrap_servers=broker.bootstrap_servers,
        tmp_path=tmp_path,
        env=fault_env(tmp_path, appointments=APPOINTMENTS),
    ) as system:
        # A deadline bounds the job whatever the restart does to it (it must end, one way or the other).
        tenant_id, job_id = await import_started(system, pages_written=10, deadline_seconds=RESTART_DEADLINE_SECONDS)
        await asyncio.to_thread(broker.restart)  # docker stop + start: same port, every topic gone
        job = await finished_job(system, tenant_id, job_id, timeout_seconds=RESTART_DEADLINE_SECONDS * 3)
        source_ids = await acuity_source_ids(system)
        await assert_landed_exactly_or_failed_loudly(system, job, source_ids)

        # The next import after the restart: the same guarantee. (The writer re-creates the lost
        # topics; Tansu still answers some produce requests with UNKNOWN_SERVER_ERROR for a while.)
        tenant_id, job_id = await import_started(
            system, pages_written=0, page_size=1000, deadline_seconds=RESTART_DEADLINE_SECONDS
        )
        job = await finished_job(system, tenant_id, job_id, timeout_seconds=RESTART_DEADLINE_SECONDS * 3)
        await assert_landed_exactly_or_failed_loudly(system, job, source_ids)
        assert_every_service_runs(system)


async def test_an_import_survives_postgresql_stopped_and_started_again(
    postgres_server_factory: Callable[[], PostgresServerContainer], broker: BrokerContainer, tmp_path: Path
) -> None:
    postgres = postgres_server_factory()
    name = f"faults_pg_{uuid.uuid4().hex[:8]}"
    owner_url = postgres.create_database(name)
    async with fault_system(
        owner_database_url=owner_url,
        service_database_url=postgres.service_dsn(name),
        bootstrap_servers=broker.bootstrap_servers,
        tmp_path=tmp_path,
        env=fault_env(tmp_path, appointments=APPOINTMENTS),
    ) as system:
        tenant_id, job_id = await import_started(system, pages_written=10)
        for outage in range(POSTGRES_OUTAGES):
            if outage:
                await asyncio.sleep(2)
            await asyncio.to_thread(postgres.stop_server)
            await asyncio.sleep(3)
            await asyncio.to_thread(postgres.start_server)
        job = await finished_job(system, tenant_id, job_id, timeout_seconds=180)

        await assert_landed_exactly(system, job, await acuity_source_ids(system))
        assert_every_service_runs(system)
