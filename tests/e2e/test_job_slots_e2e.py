"""No tenant waits behind another's large job: a fetcher with ONE job slot runs a small import while a
Calendly import waits out its user's rate window (the simulator's per-user window, announced in
X-RateLimit-* headers as Calendly does), and the waiting job still finishes once the window resets.

Before job slots counted only jobs doing work, the small import queued until the Calendly import had
finished every window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from apptsync.v1 import imports_pb2
from tests.containers.fixtures import BrokerContainer
from tests.e2e.system import (
    TENANT_ID,
    TENANT_TOKEN,
    TERMINAL,
    RunningSystem,
    assert_counts_add_up,
    get_job,
    put_simulated_acuity,
    put_simulated_calendly,
    running,
    service_set,
    system_env,
    wait_for_job,
)

pytestmark = pytest.mark.e2e

ACCOUNT_SIZE = 120
# Calendly's per-user window, shrunk: the Calendly import needs several windows (one request per
# event for its invitees), the Acuity import needs two requests.
CALENDLY_REQUESTS_PER_WINDOW = 25
CALENDLY_WINDOW_SECONDS = 20.0


@pytest.fixture
async def one_slot_system(
    database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> AsyncIterator[RunningSystem]:
    services = service_set(
        database_url=database_url,
        service_database_url=service_database_url,
        bootstrap_servers=broker.bootstrap_servers,
        tmp_path=tmp_path,
        env=system_env(
            tmp_path,
            APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT=str(ACCOUNT_SIZE),
            APPTSYNC_FETCHER_MAX_CONCURRENT_JOBS="1",
        ),
    )
    faults = {
        "calendly": {
            "rate_limit_requests": CALENDLY_REQUESTS_PER_WINDOW,
            "rate_limit_window_seconds": CALENDLY_WINDOW_SECONDS,
        }
    }
    async with running(services, database_url=database_url, token=TENANT_TOKEN, simulator_faults=faults) as system:
        yield system


async def start(system: RunningSystem, connection_id: str, source: int) -> str:
    response = await system.stub.StartImport(
        imports_pb2.StartImportRequest(
            tenant_id=TENANT_ID,
            source=source,  # type: ignore[arg-type]
            connection_id=connection_id,
            options=imports_pb2.ImportOptions(stop_policy=imports_pb2.STOP_POLICY_NEVER),
        ),
        metadata=system.metadata,
        timeout=20,
    )
    return response.job.job_id


async def test_a_small_import_runs_while_a_calendly_import_waits_out_its_rate_window(
    one_slot_system: RunningSystem,
) -> None:
    system = one_slot_system
    simulator_url = system.services.addresses.simulator_url
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as simulator:
        account = next(a for a in (await simulator.get("/_admin/calendly/accounts")).json() if a["account"] == 1)
        await put_simulated_calendly(system, account)
        await put_simulated_acuity(system)
        await simulator.delete("/_admin/calendly/counters")
        large = await start(system, "calendly", imports_pb2.SOURCE_CALENDLY)
        # The Calendly job has spent its user's window (its next request waits for the reset).
        await wait_for_job(
            system, TENANT_ID, large, lambda j: j.state == imports_pb2.JOB_STATE_RUNNING, timeout_seconds=60
        )
        for _ in range(600):
            counters = (await simulator.get("/_admin/calendly/counters")).json()
            if int(counters["requests"]) >= CALENDLY_REQUESTS_PER_WINDOW:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"the calendly job never spent its window: {counters}")

        small = await start(system, "acuity", imports_pb2.SOURCE_ACUITY)
        small_job = await wait_for_job(system, TENANT_ID, small, lambda j: j.state in TERMINAL, timeout_seconds=120)
        large_meanwhile = await get_job(system, TENANT_ID, large)

        assert small_job.state == imports_pb2.JOB_STATE_SUCCEEDED, small_job.error
        assert small_job.counts.inserted > 0
        # The one slot was lent out: the small job ran to the end while the large one still waited.
        assert large_meanwhile.state == imports_pb2.JOB_STATE_RUNNING

        large_job = await wait_for_job(system, TENANT_ID, large, lambda j: j.state in TERMINAL, timeout_seconds=600)
        assert large_job.state == imports_pb2.JOB_STATE_SUCCEEDED, large_job.error
        assert_counts_add_up(large_job)
        assert large_job.counts.inserted > ACCOUNT_SIZE / 2
        counters = (await simulator.get("/_admin/calendly/counters")).json()
        assert int(counters["requests"]) > CALENDLY_REQUESTS_PER_WINDOW  # it did need more than one window
