"""The system under end-to-end test: gateway, fetcher, writer and simulator as real processes against
the testcontainers PostgreSQL and broker. Each test gets its own database, topics and consumer group."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import asyncpg
import grpc
import httpx

from apptsync.cli.devstack import SERVICE_NAMES, ServiceSet, apptsync_cli_command, format_dev_keyring
from apptsync.cli.devstack.services import CommandFactory
from apptsync.gateway.auth import token_digest
from apptsync.shared.counts import counts_add_up
from apptsync.v1 import imports_pb2, imports_pb2_grpc

TENANT_ID = "3f2a9c1e-6b7d-4e8f-9a0b-1c2d3e4f5a6b"
OTHER_TENANT_ID = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
TENANT_TOKEN = "e2e-tenant-token"
TERMINAL = frozenset({imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED})


@dataclass
class RunningSystem:
    services: ServiceSet
    stub: imports_pb2_grpc.ImportServiceAsyncStub
    database_url: str
    metadata: tuple[tuple[str, str], ...]


def all_tenants_tokens_file(path: Path, *, name: str, token: str) -> Path:
    """Writes the gateway's token file at `path` with one token allowed for every tenant (what the
    CronJobs and an operator hold); returns `path` (for APPTSYNC_GATEWAY_AUTH_TOKENS_FILE)."""
    path.write_text(json.dumps({"tokens": [{"name": name, "sha256": token_digest(token), "tenants": ["*"]}]}))
    return path


def system_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """Settings that isolate one test: its own topics and consumer group, fast group rejoin."""
    suffix = uuid.uuid4().hex[:8]
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(
        json.dumps(
            {
                "tokens": [
                    {"name": "e2e", "sha256": token_digest(TENANT_TOKEN), "tenants": [TENANT_ID]},
                ]
            }
        )
    )
    env = {
        "APPTSYNC_KAFKA_PAGES_TOPIC": f"e2e-{suffix}.pages",
        "APPTSYNC_KAFKA_PAGE_RESULTS_TOPIC": f"e2e-{suffix}.page-results",
        "APPTSYNC_KAFKA_DEAD_LETTER_TOPIC": f"e2e-{suffix}.dead-letters",
        "APPTSYNC_KAFKA_JOB_EVENTS_TOPIC": f"e2e-{suffix}.job-events",
        "APPTSYNC_KAFKA_CHANGE_EVENTS_TOPIC": f"e2e-{suffix}.appointment-changes",
        "APPTSYNC_KAFKA_WRITER_GROUP_ID": f"e2e-{suffix}.writer",
        "APPTSYNC_KAFKA_SESSION_TIMEOUT_MS": "1000",
        "APPTSYNC_KAFKA_HEARTBEAT_INTERVAL_MS": "200",
        "APPTSYNC_GATEWAY_AUTH_TOKENS_FILE": str(tokens_file),
        "APPTSYNC_FETCHER_POLL_INTERVAL_SECONDS": "0.5",
        "APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": "600",
    }
    env.update(overrides)
    return env


def service_set(
    *,
    database_url: str,
    service_database_url: str,
    bootstrap_servers: str,
    tmp_path: Path,
    env: dict[str, str],
    services: Sequence[str] = SERVICE_NAMES,
    command: CommandFactory = apptsync_cli_command,
) -> ServiceSet:
    """Gateway, fetcher, writer and simulator for one test: the services connect as the role row-level
    security binds (`service_database_url`); migrations and the tests' checks of the truth use the
    owner (`database_url`). A fresh credentials keyring each time; logs under `tmp_path/logs`.
    `command` starts each service (e.g. tests/hooked_services.py's, to inject a test hook)."""
    return ServiceSet(
        command=command,
        database_url=service_database_url,
        migration_database_url=database_url,
        bootstrap_servers=bootstrap_servers,
        log_dir=tmp_path / "logs",
        credentials_keyring=format_dev_keyring(uuid.uuid4().bytes * 2),
        extra_env=env,
        services=services,
    )


@asynccontextmanager
async def running(
    services: ServiceSet,
    *,
    database_url: str,
    token: str,
    simulator_faults: Mapping[str, Mapping[str, object]] | None = None,
) -> AsyncIterator[RunningSystem]:
    """`services` started, the simulator's fault knobs set per provider, and a gateway client that
    sends `token`; everything stopped on exit."""
    async with services, grpc.aio.insecure_channel(services.addresses.gateway_address) as channel:
        if simulator_faults:
            async with httpx.AsyncClient(base_url=services.addresses.simulator_url, timeout=30) as simulator:
                for provider, knobs in simulator_faults.items():
                    (await simulator.put(f"/_admin/{provider}/faults", json=dict(knobs))).raise_for_status()
        yield RunningSystem(
            services=services,
            stub=imports_pb2_grpc.ImportServiceStub(channel),
            database_url=database_url,
            metadata=(("authorization", f"Bearer {token}"),),
        )


async def count_job_and_connection_rows(database_url: str) -> tuple[int, int]:
    """(import_jobs rows, connections rows) of every tenant, read as the owner: a rejected call must
    leave both unchanged."""
    connection = await asyncpg.connect(database_url)
    try:
        jobs = await connection.fetchval("SELECT count(*) FROM import_jobs")
        connections = await connection.fetchval("SELECT count(*) FROM connections")
    finally:
        await connection.close()
    return int(jobs), int(connections)


class GatewayClient(Protocol):
    """What the job helpers below need of a running system (RunningSystem, the fault tests' system)."""

    @property
    def stub(self) -> imports_pb2_grpc.ImportServiceAsyncStub: ...

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]: ...


async def get_job(system: GatewayClient, tenant_id: str, job_id: str) -> imports_pb2.Job:
    """GetJob; while the gateway cannot reach PostgreSQL it answers UNAVAILABLE: asked again (bounded)."""
    for _attempt in range(60):
        try:
            return await system.stub.GetJob(
                imports_pb2.GetJobRequest(tenant_id=tenant_id, job_id=job_id), metadata=system.metadata, timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        await asyncio.sleep(0.5)
    raise AssertionError(f"GetJob of {job_id} kept failing")


async def wait_for_job(
    system: GatewayClient,
    tenant_id: str,
    job_id: str,
    done: Callable[[imports_pb2.Job], bool],
    *,
    timeout_seconds: float = 60.0,
    poll_seconds: float = 0.05,
) -> imports_pb2.Job:
    """Polls GetJob until `done(job)`; fails after `timeout_seconds` (bounded in time and count)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    for _poll in range(int(timeout_seconds / poll_seconds) + 1):
        job = await get_job(system, tenant_id, job_id)
        if done(job):
            return job
        if loop.time() > deadline:
            break
        await asyncio.sleep(poll_seconds)
    raise AssertionError(f"job {job_id} did not reach the expected state within {timeout_seconds} s: {job}")


async def stored_external_ids(database_url: str, tenant_id: str) -> list[str]:
    """Every stored row's external id of the tenant, read as the owner (a duplicate appears twice)."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT external_id FROM appointments WHERE tenant_id = $1", uuid.UUID(tenant_id))
    finally:
        await connection.close()
    return [row["external_id"] for row in rows]


def assert_counts_add_up(job: imports_pb2.Job) -> None:
    """Every fetched record is inserted, updated, unchanged or skipped for a counted reason."""
    c = job.counts
    assert counts_add_up(c), f"counts do not add up: {c}"


# The simulator's demo Acuity account (user 1001) and the credential fields of its OAuth accounts.
SIMULATED_ACUITY_CREDENTIALS = {"user_id": "1001", "api_key": "demo-acuity-key"}
OAUTH_CREDENTIAL_FIELDS = ("access_token", "refresh_token", "client_id", "client_secret")


async def put_simulated_acuity(system: RunningSystem, *, connection_id: str = "acuity") -> imports_pb2.Connection:
    """The test tenant's connection to the simulator's demo Acuity account, as stored."""
    stored: imports_pb2.Connection = await system.stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=TENANT_ID, connection_id=connection_id, source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{system.services.addresses.simulator_url}/acuity/api/v1",
            credentials=SIMULATED_ACUITY_CREDENTIALS,
        ),
        metadata=system.metadata, timeout=10,
    )  # fmt: skip
    return stored


async def put_simulated_calendly(
    system: RunningSystem, account: Mapping[str, str], *, connection_id: str = "calendly"
) -> imports_pb2.Connection:
    """The test tenant's connection to the simulated Calendly `account` (an entry of
    `/_admin/calendly/accounts`), as stored."""
    stored: imports_pb2.Connection = await system.stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=TENANT_ID, connection_id=connection_id, source=imports_pb2.SOURCE_CALENDLY,
            base_url=f"{system.services.addresses.simulator_url}/calendly",
            credentials={field: account[field] for field in OAUTH_CREDENTIAL_FIELDS},
            settings={"organization": account["organization"]},
        ),
        metadata=system.metadata, timeout=10,
    )  # fmt: skip
    return stored
