"""The system under fault injection: gateway, fetcher, writer and simulator as real processes on
127.0.0.1 against a PostgreSQL and a broker (the session's, or private ones a test may stop, pause or
restart), plus what every fault test checks afterwards against the simulator's own data set.

Settings differ from production only where a fault would otherwise make a test slow: short leases
(an interrupted job is resumed within seconds), a short result timeout (a lost page fails its job in
seconds, not minutes), fast consumer-group rejoins, and a lifted provider rate budget (injected into
the fetcher by tests/hooked_services.py: production settings have no such knob).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf.duration_pb2 import Duration

from apptsync.cli.devstack import ServiceSet
from apptsync.cli.devstack.services import CommandFactory
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2, imports_pb2_grpc
from tests.e2e.system import (
    TERMINAL,
    all_tenants_tokens_file,
    assert_counts_add_up,
    service_set,
    stored_external_ids,
    system_env,
    wait_for_job,
)
from tests.hooked_services import hooked_command

ACUITY_USER_ID = "1001"
ACUITY_API_KEY = "demo-acuity-key"
RESULT_TIMEOUT_SECONDS = 15
LEASE_SECONDS = 3
# The simulator spreads appointments over today +-180 days: this window holds every one of them.
WINDOW_DAYS_EACH_SIDE = 190
ADMIN_TOKEN = "fault-tests-admin-token"
# The fetcher without the providers' published rate limits (Acuity's 10 per 1.1 s would make every
# scenario slow); every other service as `apptsync NAME`.
PROVIDER_REQUESTS_PER_SECOND = 500.0
FAULT_TEST_COMMAND = hooked_command(provider_requests_per_second=PROVIDER_REQUESTS_PER_SECOND)


def fault_env(tmp_path: Path, *, appointments: int, providers: str = "acuity", **overrides: str) -> dict[str, str]:
    """system_env plus the fault-test settings (see the module docstring) and a simulator holding
    `appointments` per account, one account, only `providers` seeded. The gateway token may act for
    every tenant: each scenario imports into a tenant of its own."""
    tokens_file = all_tenants_tokens_file(tmp_path / "fault-tokens.json", name="faults", token=ADMIN_TOKEN)
    return system_env(
        tmp_path,
        APPTSYNC_GATEWAY_AUTH_TOKENS_FILE=str(tokens_file),
        APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT=str(appointments),
        APPTSYNC_SIMULATOR_ACCOUNTS_PER_PROVIDER="1",
        APPTSYNC_SIMULATOR_SEEDED_PROVIDERS=providers,
        APPTSYNC_FETCHER_LEASE_SECONDS=str(LEASE_SECONDS),
        APPTSYNC_FETCHER_POLL_INTERVAL_SECONDS="0.3",
        APPTSYNC_FETCHER_RESULT_TIMEOUT_SECONDS=str(RESULT_TIMEOUT_SECONDS),
        APPTSYNC_KAFKA_REQUEST_TIMEOUT_MS="5000",
        **overrides,
    )


@dataclass
class FaultSystem:
    services: ServiceSet
    stub: imports_pb2_grpc.ImportServiceAsyncStub
    metadata: tuple[tuple[str, str], ...]
    # The tables' owner (a superuser in the test containers): checks the truth, row-level security aside.
    owner_database_url: str
    simulator: httpx.AsyncClient

    async def set_faults(self, provider: str, **knobs: object) -> None:
        (await self.simulator.put(f"/_admin/{provider}/faults", json=knobs)).raise_for_status()

    async def clear_faults(self, provider: str) -> None:
        (await self.simulator.delete(f"/_admin/{provider}/faults")).raise_for_status()

    async def statuses(self, provider: str) -> dict[str, int]:
        """How often the simulated provider answered each HTTP status (resets: status 0)."""
        counters = (await self.simulator.get(f"/_admin/{provider}/counters")).raise_for_status().json()
        statuses: dict[str, int] = counters["statuses"]
        return statuses


@asynccontextmanager
async def fault_system(
    *,
    owner_database_url: str,
    service_database_url: str,
    bootstrap_servers: str,
    tmp_path: Path,
    env: dict[str, str],
    command: CommandFactory = FAULT_TEST_COMMAND,
) -> AsyncIterator[FaultSystem]:
    """Migrates the database, starts the services, yields the system; stops everything on exit.
    `command` says how a service is started (e.g. under a profiler)."""
    services = service_set(
        database_url=owner_database_url,
        service_database_url=service_database_url,
        bootstrap_servers=bootstrap_servers,
        tmp_path=tmp_path,
        env=env,
        command=command,
    )
    async with (
        services,
        grpc.aio.insecure_channel(services.addresses.gateway_address) as channel,
        httpx.AsyncClient(base_url=services.addresses.simulator_url, timeout=60) as simulator,
    ):
        yield FaultSystem(
            services=services,
            stub=imports_pb2_grpc.ImportServiceStub(channel),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            owner_database_url=owner_database_url,
            simulator=simulator,
        )


def job_window() -> imports_pb2.TimeWindow:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return imports_pb2.TimeWindow(
        start=timestamp(today - timedelta(days=WINDOW_DAYS_EACH_SIDE)),
        end=timestamp(today + timedelta(days=WINDOW_DAYS_EACH_SIDE)),
    )


def new_tenant() -> str:
    return str(uuid.uuid4())


async def put_acuity_connection(system: FaultSystem, tenant_id: str, connection_id: str = "acuity") -> None:
    await system.stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=tenant_id,
            connection_id=connection_id,
            source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{system.services.addresses.simulator_url}/acuity/api/v1",
            credentials={"user_id": ACUITY_USER_ID, "api_key": ACUITY_API_KEY},
        ),
        metadata=system.metadata,
        timeout=30,
    )


async def start_import(
    system: FaultSystem,
    tenant_id: str,
    *,
    connection_id: str = "acuity",
    source: imports_pb2.Source.ValueType = imports_pb2.SOURCE_ACUITY,
    deadline_seconds: int | None = None,
    **options: Any,
) -> str:
    """Queues a full import (StopPolicy NEVER unless given) and returns its job id."""
    options.setdefault("stop_policy", imports_pb2.STOP_POLICY_NEVER)
    if deadline_seconds is not None:
        options["deadline"] = Duration(seconds=deadline_seconds)
    response = await system.stub.StartImport(
        imports_pb2.StartImportRequest(
            tenant_id=tenant_id,
            source=source,
            connection_id=connection_id,
            window=job_window(),
            options=imports_pb2.ImportOptions(**options),
        ),
        metadata=system.metadata,
        timeout=30,
    )
    return response.job.job_id


async def finished_job(
    system: FaultSystem, tenant_id: str, job_id: str, *, timeout_seconds: float = 120.0
) -> imports_pb2.Job:
    return await wait_for_job(
        system, tenant_id, job_id, lambda job: job.state in TERMINAL, timeout_seconds=timeout_seconds
    )


async def acuity_source_ids(system: FaultSystem) -> set[str]:
    """Ids of the simulator's appointments (the admin data set) that start inside job_window()."""
    window = job_window()
    start, end = window.start.ToDatetime(tzinfo=UTC), window.end.ToDatetime(tzinfo=UTC)
    path = f"/_admin/acuity/accounts/{ACUITY_USER_ID}/appointments"
    records = (await system.simulator.get(path)).raise_for_status().json()
    return {
        str(record["id"])
        for record in records
        if start <= datetime.strptime(record["datetime"], "%Y-%m-%dT%H:%M:%S%z") < end
    }


async def assert_landed_exactly(system: FaultSystem, job: imports_pb2.Job, source_ids: set[str]) -> None:
    """A SUCCEEDED first import: every source record stored once, nothing else, counts exact."""
    assert job.state == imports_pb2.JOB_STATE_SUCCEEDED, f"{imports_pb2.JobState.Name(job.state)}: {job.error}"
    stored = await stored_external_ids(system.owner_database_url, job.tenant_id)
    assert len(stored) == len(set(stored)), "duplicate rows"
    missing, extra = source_ids - set(stored), set(stored) - source_ids
    assert not missing and not extra, f"{len(missing)} source records missing, {len(extra)} rows not in the source"
    assert_counts_add_up(job)
    assert job.counts.pages_written == job.counts.pages_fetched
    assert job.counts.inserted == len(source_ids)
    assert job.stop_reason == "provider exhausted"


async def assert_failed_loudly(
    system: FaultSystem, job: imports_pb2.Job, source_ids: set[str], *, error_contains: str
) -> None:
    """A FAILED job says why; whatever it stored is a duplicate-free part of the source, and the
    counts of the pages it got results for add up."""
    assert job.state == imports_pb2.JOB_STATE_FAILED, f"{imports_pb2.JobState.Name(job.state)}: {job.counts}"
    assert error_contains in job.error, job.error
    stored = await stored_external_ids(system.owner_database_url, job.tenant_id)
    assert len(stored) == len(set(stored)), "duplicate rows"
    assert set(stored) <= source_ids
    assert_counts_add_up(job)
    assert job.counts.inserted <= len(stored)
