"""`apptsync sync-all`, run as the CronJobs run it (a subprocess with an all-tenants token), against
real processes: a tenant with three connections on two providers gets one job per connection in a
slot; a second run in the same slot starts nothing and gets the same three jobs back, though they
have ended; and a StartImport reusing one connection's key for another connection is refused
with ALREADY_EXISTS naming the job that holds the key, and writes nothing.

The fetcher is stopped first: the jobs stay QUEUED until the test cancels them, which ends them at
once. Ended jobs leave no connection with an active job, so only the idempotency key can hand them
back to the second run; and what is tested does not wait on imports (other e2e tests run those)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

from apptsync.cli.client import sync_all_key
from apptsync.v1 import imports_pb2
from tests.containers.fixtures import BrokerContainer
from tests.e2e.system import (
    TENANT_ID,
    RunningSystem,
    all_tenants_tokens_file,
    count_job_and_connection_rows,
    running,
    service_set,
    system_env,
)

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]
SYNC_TOKEN = "e2e-sync-token"
# Long slots: both runs of the test fall in one slot unless it straddles a boundary (a 1 in ~30,000
# chance for a half-minute test; the assertion then says so).
SLOT_SECONDS = 1_000_000
CLI_TIMEOUT_SECONDS = 60


@pytest.fixture
async def sync_system(
    database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> AsyncIterator[RunningSystem]:
    """The system with the CronJobs' kind of token (one for every tenant)."""
    tokens_file = all_tenants_tokens_file(tmp_path / "sync-tokens.json", name="sync", token=SYNC_TOKEN)
    env = system_env(
        tmp_path,
        APPTSYNC_GATEWAY_AUTH_TOKENS_FILE=str(tokens_file),
    )
    services = service_set(
        database_url=database_url,
        service_database_url=service_database_url,
        bootstrap_servers=broker.bootstrap_servers,
        tmp_path=tmp_path,
        env=env,
    )
    async with running(services, database_url=database_url, token=SYNC_TOKEN) as system:
        yield system


async def put_three_connections(system: RunningSystem) -> None:
    """Two Acuity accounts and one Calendly account of the simulator, all of one tenant."""
    simulator = system.services.addresses.simulator_url
    async with httpx.AsyncClient(base_url=simulator, timeout=10) as admin:
        accounts = (await admin.get("/_admin/calendly/accounts")).raise_for_status().json()
    calendly = next(a for a in accounts if a["account"] == 1)
    requests = [
        imports_pb2.PutConnectionRequest(
            tenant_id=TENANT_ID,
            connection_id="front-desk",
            source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{simulator}/acuity/api/v1",
            credentials={"user_id": "1001", "api_key": "demo-acuity-key"},
        ),
        imports_pb2.PutConnectionRequest(
            tenant_id=TENANT_ID,
            connection_id="back-office",
            source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{simulator}/acuity/api/v1",
            credentials={"user_id": "1002", "api_key": "acuity-key-1002"},
        ),
        imports_pb2.PutConnectionRequest(
            tenant_id=TENANT_ID,
            connection_id="front-desk-calendly",
            source=imports_pb2.SOURCE_CALENDLY,
            base_url=f"{simulator}/calendly",
            credentials={k: calendly[k] for k in ("access_token", "refresh_token", "client_id", "client_secret")},
            settings={"organization": calendly["organization"]},
        ),
    ]
    for request in requests:
        await system.stub.PutConnection(request, metadata=system.metadata, timeout=10)


async def run_sync_all(system: RunningSystem, *extra: str) -> tuple[int, str, str]:
    """`apptsync sync-all --policy no-new-records` as a subprocess: (exit code, stdout, stderr)."""
    env = {
        **os.environ,
        "APPTSYNC_CLI_GATEWAY_ADDRESS": system.services.addresses.gateway_address,
        "APPTSYNC_CLI_TOKEN": SYNC_TOKEN,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apptsync.cli",
        "sync-all",
        "--policy",
        "no-new-records",
        "--idempotency-window-seconds",
        str(SLOT_SECONDS),
        *extra,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=CLI_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def stored_keys(database_url: str) -> dict[str, tuple[str, str]]:
    """job id -> (connection id, idempotency key) of every job, read as the owner."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT job_id, connection_id, idempotency_key FROM import_jobs")
    finally:
        await connection.close()
    return {str(row["job_id"]): (row["connection_id"], row["idempotency_key"]) for row in rows}


async def test_sync_all_starts_one_job_per_connection_per_slot_and_a_reused_key_is_refused(
    sync_system: RunningSystem,
) -> None:
    system = sync_system
    await system.services.process("fetcher").stop()
    await put_three_connections(system)

    # What the CronJob runs: one line per connection, all started.
    code, stdout, stderr = await run_sync_all(system)
    assert code == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    lines = [line for line in stdout.splitlines() if line.startswith(f"{TENANT_ID}/")]
    assert len(lines) == 3, stdout
    assert all(line.endswith(" started") for line in lines), stdout
    assert "3 connections: 3 started, 0 already running, 0 already finished, 0 refused, 0 failed" in stdout
    job_ids = {line.split(":")[0].split("/")[1]: line.split()[2] for line in lines}
    assert set(job_ids) == {"front-desk", "back-office", "front-desk-calendly"}
    assert len(set(job_ids.values())) == 3

    keys = await stored_keys(system.database_url)
    assert set(keys) == set(job_ids.values())
    slot = int(keys[job_ids["front-desk"]][1].split(".")[2])
    for connection_id, job_id in job_ids.items():
        source = "calendly" if connection_id.endswith("calendly") else "acuity"
        assert keys[job_id] == (connection_id, sync_all_key("no-new-records", slot, source, connection_id))

    # Ended jobs: only the key can hand them back now (no connection has an active job).
    for job_id in job_ids.values():
        canceled = await system.stub.CancelJob(
            imports_pb2.CancelJobRequest(tenant_id=TENANT_ID, job_id=job_id), metadata=system.metadata, timeout=10
        )
        assert canceled.state == imports_pb2.JOB_STATE_CANCELED, canceled

    rows_before = await count_job_and_connection_rows(system.database_url)
    code, stdout, stderr = await run_sync_all(system, "--json")
    assert code == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    outcomes = json.loads(stdout)
    assert {o["connection_id"]: o["job"]["job_id"] for o in outcomes} == job_ids, (
        f"a second run in slot {slot} did not get the same jobs (did the test straddle a slot boundary?)"
    )
    assert {o["result"] for o in outcomes} == {"already finished"}
    assert {o["job"]["state"] for o in outcomes} == {"JOB_STATE_CANCELED"}
    assert await count_job_and_connection_rows(system.database_url) == rows_before

    # Another connection with front-desk's key (and sync-all's options) is another request: refused.
    taken_key = keys[job_ids["front-desk"]][1]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.stub.StartImport(
            imports_pb2.StartImportRequest(
                tenant_id=TENANT_ID,
                source=imports_pb2.SOURCE_ACUITY,
                connection_id="back-office",
                options=imports_pb2.ImportOptions(stop_policy=imports_pb2.STOP_POLICY_NO_NEW_RECORDS),
                idempotency_key=taken_key,
            ),
            metadata=system.metadata,
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert job_ids["front-desk"] in (caught.value.details() or "")
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None and status.code == code_pb2.ALREADY_EXISTS
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert dict(info.metadata) == {
        "idempotency_key": taken_key,
        "job_id": job_ids["front-desk"],
        "differences": "connection_id",
    }
    assert await count_job_and_connection_rows(system.database_url) == rows_before
