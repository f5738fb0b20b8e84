"""The job system against real processes: idempotent StartImport under concurrency, fetcher death and
resume, lease takeover from a paused fetcher, cancellation, deadlines, stop policies, and rejected
calls that write nothing."""

from __future__ import annotations

import asyncio
import os
import random
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from apptsync.cli.devstack import ServiceProcess, ServiceSet, format_dev_keyring, pick_free_port
from apptsync.cli.devstack.probes import GrpcHealthProbe
from apptsync.shared.messages.appointment_pages import parse_appointment_page
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2
from tests.containers.fixtures import BrokerContainer
from tests.e2e.system import (
    TERMINAL,
    RunningSystem,
    all_tenants_tokens_file,
    assert_counts_add_up,
    count_job_and_connection_rows,
    get_job,
    running,
    stored_external_ids,
    system_env,
    wait_for_job,
)
from tests.hooked_services import hooked_command
from tests.scale import scaled

pytestmark = pytest.mark.e2e
ADMIN_TOKEN = "e2e-admin-token"
ACUITY_SECRET = "canary-acuity-key-7f3e"
PROVIDER_REQUESTS_PER_SECOND = 200.0


@pytest.fixture
async def jobs_system(
    database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> AsyncIterator[RunningSystem]:
    """The system with a token for every tenant, short leases and a provider that answers slowly
    enough (20 ms a request) for a job to be interrupted mid-way. The fetcher runs without Acuity's
    published rate (tests/hooked_services.py): these tests are about jobs, not the budget, and at 10
    requests/s every job would wait on its payment requests (the budget has its own tests)."""
    tokens_file = all_tenants_tokens_file(tmp_path / "admin-tokens.json", name="admin", token=ADMIN_TOKEN)
    env = system_env(
        tmp_path,
        APPTSYNC_GATEWAY_AUTH_TOKENS_FILE=str(tokens_file),
        APPTSYNC_FETCHER_LEASE_SECONDS="2",
        APPTSYNC_FETCHER_POLL_INTERVAL_SECONDS="0.3",
        APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT="400",
    )
    # The services log in as the role row-level security binds; migrations and the tests' checks use the owner.
    services = ServiceSet(
        database_url=service_database_url,
        migration_database_url=database_url,
        bootstrap_servers=broker.bootstrap_servers,
        log_dir=tmp_path / "logs",
        credentials_keyring=format_dev_keyring(uuid.uuid4().bytes * 2),
        extra_env=env,
        command=hooked_command(provider_requests_per_second=PROVIDER_REQUESTS_PER_SECOND),
    )
    faults = {"acuity": {"latency_ms": 20}}
    async with running(services, database_url=database_url, token=ADMIN_TOKEN, simulator_faults=faults) as system:
        yield system


def window() -> imports_pb2.TimeWindow:
    now = datetime.now(UTC)
    return imports_pb2.TimeWindow(start=timestamp(now - timedelta(days=150)), end=timestamp(now + timedelta(days=150)))


async def connect_tenant(system: RunningSystem, tenant_id: str, connection_id: str = "acuity") -> None:
    await system.stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=tenant_id,
            connection_id=connection_id,
            source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{system.services.addresses.simulator_url}/acuity/api/v1",
            credentials={"user_id": "1002", "api_key": "acuity-key-1002"},
        ),
        metadata=system.metadata,
        timeout=10,
    )


def start_request(tenant_id: str, connection_id: str = "acuity", **options: object) -> imports_pb2.StartImportRequest:
    return imports_pb2.StartImportRequest(
        tenant_id=tenant_id,
        source=imports_pb2.SOURCE_ACUITY,
        connection_id=connection_id,
        window=window(),
        options=imports_pb2.ImportOptions(**options),  # type: ignore[arg-type]
    )


async def finished(system: RunningSystem, tenant_id: str, job_id: str) -> imports_pb2.Job:
    return await wait_for_job(system, tenant_id, job_id, lambda j: j.state in TERMINAL, timeout_seconds=90)


async def source_ids(system: RunningSystem, job: imports_pb2.Job) -> set[str]:
    start, end = job.window.start.ToDatetime(tzinfo=UTC), job.window.end.ToDatetime(tzinfo=UTC)
    async with httpx.AsyncClient(base_url=system.services.addresses.simulator_url, timeout=30) as client:
        records = (await client.get("/_admin/acuity/accounts/1002/appointments")).json()
    return {str(r["id"]) for r in records if start <= datetime.strptime(r["datetime"], "%Y-%m-%dT%H:%M:%S%z") < end}


def assert_honest(job: imports_pb2.Job) -> None:
    assert_counts_add_up(job)
    assert job.counts.pages_written == job.counts.pages_fetched


async def test_twenty_concurrent_start_imports_make_one_job(jobs_system: RunningSystem) -> None:
    tenant = str(uuid.uuid4())
    await connect_tenant(jobs_system, tenant)
    responses = await asyncio.gather(
        *(
            jobs_system.stub.StartImport(start_request(tenant), metadata=jobs_system.metadata, timeout=20)
            for _ in range(20)
        )
    )
    assert len({r.job.job_id for r in responses}) == 1
    assert sum(not r.already_exists for r in responses) == 1
    job = await finished(jobs_system, tenant, responses[0].job.job_id)
    assert job.state == imports_pb2.JOB_STATE_SUCCEEDED
    again = await jobs_system.stub.StartImport(start_request(tenant), metadata=jobs_system.metadata, timeout=20)
    assert again.job.job_id != job.job_id  # the first one is no longer active


async def test_the_same_idempotency_key_returns_the_same_job(jobs_system: RunningSystem) -> None:
    tenant = str(uuid.uuid4())
    await connect_tenant(jobs_system, tenant)
    request = start_request(tenant)
    request.idempotency_key = "cron-2026-11-23T03:00"
    first = await jobs_system.stub.StartImport(request, metadata=jobs_system.metadata, timeout=20)
    await finished(jobs_system, tenant, first.job.job_id)
    second = await jobs_system.stub.StartImport(request, metadata=jobs_system.metadata, timeout=20)
    assert second.already_exists
    assert second.job.job_id == first.job.job_id


async def count_page_messages(system: RunningSystem, job_id: str) -> dict[int, int]:
    """How often each page of the job was produced to the pages topic (a re-fetched page appears twice)."""
    topic = system.services.service_env["APPTSYNC_KAFKA_PAGES_TOPIC"]
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=system.services.addresses.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    counts: dict[int, int] = {}
    try:
        for _ in range(40):
            batch = await consumer.getmany(timeout_ms=250)
            if not batch and counts:
                break
            for records in batch.values():
                for record in records:
                    page = parse_appointment_page(record.value or b"")
                    if page.job_id == job_id:
                        counts[page.page_no] = counts.get(page.page_no, 0) + 1
    finally:
        await consumer.stop()
    return counts


async def test_a_fetcher_killed_mid_job_is_replaced_and_the_job_resumes_exactly(jobs_system: RunningSystem) -> None:
    """Seeded runs (3 in CI, 10 under --long), each a fresh tenant's first import: SIGKILL the fetcher
    after a random page, start a new one; the job resumes from its stored cursor with at most one page
    fetched twice."""
    for seed in range(scaled(ci=3, long=10)):
        rng = random.Random(seed)
        tenant = str(uuid.uuid4())
        await connect_tenant(jobs_system, tenant)
        response = await jobs_system.stub.StartImport(
            start_request(tenant, page_size=10), metadata=jobs_system.metadata, timeout=20
        )
        kill_after_pages = rng.randint(1, 12)
        job_id = response.job.job_id

        def fetched_enough(job: imports_pb2.Job, pages: int = kill_after_pages) -> bool:
            return job.counts.pages_fetched >= pages or job.state in TERMINAL

        await wait_for_job(jobs_system, tenant, job_id, fetched_enough)
        jobs_system.services.process("fetcher").kill()
        await jobs_system.services.restart("fetcher")

        job = await finished(jobs_system, tenant, job_id)

        assert job.state == imports_pb2.JOB_STATE_SUCCEEDED, (seed, job.error)
        stored = await stored_external_ids(jobs_system.database_url, tenant)
        assert len(stored) == len(set(stored)), seed
        assert set(stored) == await source_ids(jobs_system, job), seed
        assert job.counts.inserted == len(stored), seed
        assert_honest(job)
        produced = await count_page_messages(jobs_system, job_id)
        assert sorted(produced) == list(range(1, job.counts.pages_fetched + 1)), seed
        assert sum(n - 1 for n in produced.values()) <= 1, f"seed {seed}: more than one page re-fetched: {produced}"


async def test_a_paused_fetcher_loses_its_lease_and_cannot_corrupt_the_job(
    jobs_system: RunningSystem, tmp_path: Path
) -> None:
    tenant = str(uuid.uuid4())
    await connect_tenant(jobs_system, tenant)
    first_fetcher = jobs_system.services.process("fetcher")
    response = await jobs_system.stub.StartImport(
        start_request(tenant, page_size=10), metadata=jobs_system.metadata, timeout=20
    )
    job_id = response.job.job_id
    await wait_for_job(jobs_system, tenant, job_id, lambda j: j.counts.pages_fetched >= 3)
    first_fetcher.pause()
    health_address = f"127.0.0.1:{pick_free_port()}"
    second = ServiceProcess.apptsync(
        "fetcher",
        env={
            **os.environ,
            **jobs_system.services.service_env,
            "APPTSYNC_FETCHER_HEALTH_ADDRESS": health_address,
            "APPTSYNC_FETCHER_METRICS_PORT": "0",
        },
        log_dir=tmp_path / "logs-second-fetcher",
        readiness=GrpcHealthProbe(health_address),
    )
    try:
        await second.start()
        job = await finished(jobs_system, tenant, job_id)
    finally:
        first_fetcher.resume()
    await asyncio.sleep(1.0)  # the resumed fetcher notices it lost the lease
    await second.stop()
    assert job.state == imports_pb2.JOB_STATE_SUCCEEDED, job.error
    stored = await stored_external_ids(jobs_system.database_url, tenant)
    assert len(stored) == len(set(stored))
    assert set(stored) == await source_ids(jobs_system, job)
    final = await get_job(jobs_system, tenant, job_id)
    assert final.state == imports_pb2.JOB_STATE_SUCCEEDED
    assert final.counts == job.counts


async def test_cancel_stops_sending_pages_and_writes_what_was_sent(jobs_system: RunningSystem) -> None:
    tenant = str(uuid.uuid4())
    await connect_tenant(jobs_system, tenant)
    response = await jobs_system.stub.StartImport(
        start_request(tenant, page_size=10, max_in_flight_pages=2), metadata=jobs_system.metadata, timeout=20
    )
    job_id = response.job.job_id
    await wait_for_job(jobs_system, tenant, job_id, lambda j: j.counts.pages_written >= 2)
    await jobs_system.stub.CancelJob(
        imports_pb2.CancelJobRequest(tenant_id=tenant, job_id=job_id), metadata=jobs_system.metadata, timeout=10
    )
    job = await finished(jobs_system, tenant, job_id)
    assert job.state == imports_pb2.JOB_STATE_CANCELED
    assert job.stop_reason == "canceled by request"
    assert_honest(job)
    assert job.counts.inserted == len(await stored_external_ids(jobs_system.database_url, tenant))
    assert job.counts.inserted < len(await source_ids(jobs_system, job))


async def test_a_job_past_its_deadline_fails_with_a_clear_error(jobs_system: RunningSystem) -> None:
    tenant = str(uuid.uuid4())
    await connect_tenant(jobs_system, tenant)
    request = start_request(tenant, page_size=5, max_in_flight_pages=1)
    request.options.deadline.FromSeconds(1)
    response = await jobs_system.stub.StartImport(request, metadata=jobs_system.metadata, timeout=20)
    job = await finished(jobs_system, tenant, response.job.job_id)
    assert job.state == imports_pb2.JOB_STATE_FAILED
    assert job.stop_reason == "deadline exceeded"
    assert "deadline" in job.error
    assert_honest(job)


async def test_stop_policies_no_changes_and_never(jobs_system: RunningSystem) -> None:
    tenant = str(uuid.uuid4())
    await connect_tenant(jobs_system, tenant)
    full = await jobs_system.stub.StartImport(
        start_request(tenant, page_size=25), metadata=jobs_system.metadata, timeout=20
    )
    first = await finished(jobs_system, tenant, full.job.job_id)
    assert first.stop_reason == "provider exhausted"

    never = await jobs_system.stub.StartImport(
        start_request(tenant, page_size=25, stop_policy=imports_pb2.STOP_POLICY_NEVER),
        metadata=jobs_system.metadata,
        timeout=20,
    )
    resync = await finished(jobs_system, tenant, never.job.job_id)
    assert resync.stop_reason == "provider exhausted"
    assert resync.counts.inserted == 0
    assert resync.counts.unchanged == first.counts.inserted
    assert resync.counts.pages_fetched == first.counts.pages_fetched

    no_changes = await jobs_system.stub.StartImport(
        start_request(tenant, page_size=25, stop_policy=imports_pb2.STOP_POLICY_NO_CHANGES, stop_after_pages=2),
        metadata=jobs_system.metadata,
        timeout=20,
    )
    stopped = await finished(jobs_system, tenant, no_changes.job.job_id)
    assert stopped.state == imports_pb2.JOB_STATE_SUCCEEDED
    # Near-term pages (page 1 at least: the coming days hold bookings) never count toward the streak.
    streak = re.fullmatch(r"pages (\d+)-(\d+) had no changes", stopped.stop_reason)
    assert streak is not None, stopped.stop_reason
    assert 1 < int(streak[1]) == int(streak[2]) - 1 <= stopped.counts.pages_fetched - 1
    assert stopped.counts.pages_fetched < first.counts.pages_fetched
    assert_honest(stopped)


async def test_rejected_calls_write_nothing_and_responses_never_carry_credentials(jobs_system: RunningSystem) -> None:
    system = jobs_system
    tenant = str(uuid.uuid4())
    put = await system.stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=tenant,
            connection_id="acuity",
            source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{system.services.addresses.simulator_url}/acuity/api/v1",
            credentials={"user_id": "1002", "api_key": ACUITY_SECRET},
            # The canary is no key of the simulator's: stored unverified, as the provider would refuse it.
            skip_verification=True,
        ),
        metadata=system.metadata,
        timeout=10,
    )
    got = await system.stub.GetConnection(
        imports_pb2.GetConnectionRequest(tenant_id=tenant, connection_id="acuity"), metadata=system.metadata, timeout=10
    )
    listed = await system.stub.ListConnections(
        imports_pb2.ListConnectionsRequest(tenant_id=tenant), metadata=system.metadata, timeout=10
    )
    for message in (put, got, listed):
        assert ACUITY_SECRET.encode() not in message.SerializeToString()
    assert sorted(got.credential_fields) == ["api_key", "user_id"]

    before = await count_job_and_connection_rows(system.database_url)
    bad_requests = [
        start_request("not-a-uuid"),
        start_request(tenant, connection_id=""),
        start_request(tenant, page_size=100_000),
        start_request(tenant, connection_id="does-not-exist"),
        imports_pb2.StartImportRequest(tenant_id=tenant, source=imports_pb2.SOURCE_UNSPECIFIED, connection_id="acuity"),
    ]
    inverted = start_request(tenant)
    inverted.window.end.CopyFrom(inverted.window.start)
    bad_requests.append(inverted)
    codes = []
    for request in bad_requests:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await system.stub.StartImport(request, metadata=system.metadata, timeout=10)
        codes.append(caught.value.code())
    assert (
        codes
        == [grpc.StatusCode.INVALID_ARGUMENT] * 3 + [grpc.StatusCode.NOT_FOUND] + [grpc.StatusCode.INVALID_ARGUMENT] * 2
    )
    with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
        await system.stub.StartImport(start_request(tenant), metadata=(("authorization", "Bearer wrong"),), timeout=10)
    assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await count_job_and_connection_rows(system.database_url) == before


async def test_list_jobs_pages_newest_first(jobs_system: RunningSystem) -> None:
    tenant = str(uuid.uuid4())
    job_ids = []
    for index in range(3):
        await connect_tenant(jobs_system, tenant, connection_id=f"acuity-{index}")
        response = await jobs_system.stub.StartImport(
            start_request(tenant, connection_id=f"acuity-{index}"), metadata=jobs_system.metadata, timeout=20
        )
        job_ids.append(response.job.job_id)
    seen: list[str] = []
    token = ""
    for _ in range(5):
        page = await jobs_system.stub.ListJobs(
            imports_pb2.ListJobsRequest(tenant_id=tenant, page_size=2, page_token=token),
            metadata=jobs_system.metadata,
            timeout=10,
        )
        seen.extend(j.job_id for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(job_ids))
    for job_id in job_ids:
        await finished(jobs_system, tenant, job_id)


HOSTILE_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "https://169.254.169.254",
    "http://127.0.0.1:5432",
    "http://localhost:9092",
    "http://[::1]/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "https://api.calendly.com@evil.example/",
    "https://api.calendly.com.evil.example/",
    "https://acuityscheduling.com:8443/api/v1",
]


async def test_put_connection_refuses_urls_outside_the_outbound_policy_and_stores_nothing(
    jobs_system: RunningSystem,
) -> None:
    """The gateway allows the providers' hosts and the deployment's simulator origin; any other
    base_url or token_url is INVALID_ARGUMENT with a field violation, and nothing is written (an
    existing connection keeps its URL)."""
    system = jobs_system
    tenant = str(uuid.uuid4())
    await connect_tenant(system, tenant)
    before = await count_job_and_connection_rows(system.database_url)
    attempts: list[tuple[str, imports_pb2.Source.ValueType, str, dict[str, str]]] = [
        ("base_url", imports_pb2.SOURCE_ACUITY, url, {}) for url in HOSTILE_URLS
    ]
    attempts.append(
        ("settings.token_url", imports_pb2.SOURCE_GOOGLE_CALENDAR, "",
         {"token_url": "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token"})
    )  # fmt: skip
    for field, source, base_url, settings in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await system.stub.PutConnection(
                imports_pb2.PutConnectionRequest(
                    tenant_id=tenant,
                    connection_id="acuity",
                    source=source,
                    base_url=base_url,
                    # Credentials that fit each source's schema: the URL is the only violation.
                    credentials=(
                        {"user_id": "1002", "api_key": ACUITY_SECRET}
                        if source == imports_pb2.SOURCE_ACUITY
                        else {"access_token": ACUITY_SECRET}
                    ),
                    settings=settings,
                ),
                metadata=system.metadata,
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, base_url
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None
        bad_request = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad_request)
        assert [v.field for v in bad_request.field_violations] == [field]
        assert "not allowed" in bad_request.field_violations[0].description
        assert ACUITY_SECRET not in (caught.value.details() or "")
    assert await count_job_and_connection_rows(system.database_url) == before
    kept = await system.stub.GetConnection(
        imports_pb2.GetConnectionRequest(tenant_id=tenant, connection_id="acuity"), metadata=system.metadata, timeout=10
    )
    assert kept.base_url == f"{system.services.addresses.simulator_url}/acuity/api/v1"


async def test_a_connection_stored_before_the_policy_fails_its_job_and_is_never_called(
    jobs_system: RunningSystem,
) -> None:
    """Defence in depth: a connection whose base_url predates the policy (written here behind the
    gateway's back) points at a loopback port the deployment does not allow. The fetcher refuses it:
    the job fails with the policy's reason and the port never sees a connection."""
    system = jobs_system
    tenant = str(uuid.uuid4())
    await connect_tenant(system, tenant)
    accepted = 0

    def count(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    listener = await asyncio.start_server(count, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        owner = await asyncpg.connect(system.database_url)
        try:
            await owner.execute(
                "UPDATE connections SET base_url = $1 WHERE tenant_id = $2 AND connection_id = 'acuity'",
                f"http://127.0.0.1:{port}/acuity/api/v1",
                uuid.UUID(tenant),
            )
        finally:
            await owner.close()
        response = await system.stub.StartImport(start_request(tenant), metadata=system.metadata, timeout=20)
        job = await finished(system, tenant, response.job.job_id)
    finally:
        listener.close()
        await listener.wait_closed()
    assert job.state == imports_pb2.JOB_STATE_FAILED
    assert "outbound request refused" in job.error, job.error
    assert accepted == 0
    assert job.counts.pages_fetched == 0
