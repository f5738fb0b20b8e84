"""Provider notifications end to end: simulator mutation -> signed notification -> webhook receiver ->
targeted job -> fetcher -> writer -> row; and a Google channel renewed before it expires.

The real processes (simulator, writer, fetcher, webhook receiver, gateway) run with the receiver's
loopback URL as the public base URL, so PutConnection subscribes each connection at the simulator,
which then notifies for every change the way the provider does (signature, form or JSON body, headers).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from apptsync.cli.devstack import WITH_WEBHOOKS
from apptsync.v1 import imports_pb2
from tests.containers.fixtures import BrokerContainer
from tests.e2e.otlp_receiver import SPAN_KIND_SERVER, trace_receiver
from tests.e2e.system import (
    TENANT_ID,
    TENANT_TOKEN,
    RunningSystem,
    put_simulated_acuity,
    put_simulated_calendly,
    running,
    service_set,
    system_env,
)

pytestmark = pytest.mark.e2e
WAIT_SECONDS = 60.0


@pytest.fixture
async def system(
    database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> AsyncIterator[RunningSystem]:
    services = service_set(
        database_url=database_url,
        service_database_url=service_database_url,
        bootstrap_servers=broker.bootstrap_servers,
        tmp_path=tmp_path,
        env=system_env(tmp_path, APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT="50"),
        services=WITH_WEBHOOKS,
    )
    async with running(services, database_url=database_url, token=TENANT_TOKEN) as running_system:
        yield running_system


async def row(database_url: str, source: str, external_id: str) -> asyncpg.Record | None:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchrow(
            "SELECT status, starts_at, last_job_id FROM appointments WHERE tenant_id = $1 AND external_source = $2"
            " AND external_id = $3",
            uuid.UUID(TENANT_ID), source, external_id,
        )  # fmt: skip
    finally:
        await connection.close()


async def wait_for_row(
    database_url: str, source: str, external_id: str, *, status: str, starts_at: datetime | None = None
) -> asyncpg.Record:
    """Polls the tenant's row until it has `status` (and `starts_at`); bounded in time and count."""
    found = None
    for _poll in range(int(WAIT_SECONDS / 0.1)):
        found = await row(database_url, source, external_id)
        if found is not None and found["status"] == status and starts_at in (None, found["starts_at"]):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{source} {external_id} not stored as {status} {starts_at}: {found}")


async def job_row(database_url: str, job_id: uuid.UUID) -> asyncpg.Record:
    connection = await asyncpg.connect(database_url)
    try:
        found = await connection.fetchrow("SELECT * FROM import_jobs WHERE job_id = $1", job_id)
    finally:
        await connection.close()
    assert found is not None
    return found


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


async def test_an_acuity_change_reaches_the_table_through_a_notification(system: RunningSystem) -> None:
    simulator_url = system.services.addresses.simulator_url
    connection = await put_simulated_acuity(system)
    assert connection.webhooks.state == imports_pb2.WebhookStatus.ACTIVE, connection.webhooks.last_error
    admin = "/_admin/acuity/accounts/1001/appointments"
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as simulator:
        tomorrow = minute(datetime.now(UTC) + timedelta(days=1))
        new = (await simulator.post(admin, json={"datetime": tomorrow.isoformat()})).json()
        stored = await wait_for_row(system.database_url, "acuity", str(new["id"]), status="scheduled")
        assert stored["starts_at"] == tomorrow
        job = await job_row(system.database_url, stored["last_job_id"])
        assert (job["kind"], job["stop_policy"]) == ("targeted", "NEVER")
        moved_to = tomorrow + timedelta(hours=3)
        (await simulator.post(f"{admin}/{new['id']}/reschedule", json={"datetime": moved_to.isoformat()})
         ).raise_for_status()  # fmt: skip
        await wait_for_row(system.database_url, "acuity", str(new["id"]), status="scheduled", starts_at=moved_to)
        (await simulator.post(f"{admin}/{new['id']}/cancel", json={})).raise_for_status()
        await wait_for_row(system.database_url, "acuity", str(new["id"]), status="canceled")
        deliveries = (await simulator.get("/_admin/webhooks/deliveries", params={"provider": "acuity"})).json()
    assert deliveries["deliveries"], "the simulator delivered nothing"
    assert {d["status"] for d in deliveries["deliveries"] if d["status"] is not None} == {200}
    # Every targeted job of the connection finished and none reconciled (marked rows deleted).
    owner = await asyncpg.connect(system.database_url)
    try:
        jobs = await owner.fetch("SELECT state, deleted, records_fetched FROM import_jobs WHERE kind = 'targeted'")
        deleted_rows = await owner.fetchval("SELECT count(*) FROM appointments WHERE deleted_at IS NOT NULL")
    finally:
        await owner.close()
    assert jobs and all(j["state"] in ("SUCCEEDED", "RUNNING", "QUEUED") for j in jobs)
    assert deleted_rows == 0
    got = await system.stub.GetConnection(
        imports_pb2.GetConnectionRequest(tenant_id=TENANT_ID, connection_id="acuity"),
        metadata=system.metadata, timeout=10,
    )  # fmt: skip
    assert got.webhooks.notifications_accepted >= 3


async def test_a_google_channel_is_renewed_and_the_new_one_notifies(system: RunningSystem, tmp_path: Path) -> None:
    simulator_url = system.services.addresses.simulator_url
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as simulator:
        account = (await simulator.get("/_admin/google/accounts")).json()[0]
        calendar = account["calendars"][0]["id"]
        connection = await system.stub.PutConnection(
            imports_pb2.PutConnectionRequest(
                tenant_id=TENANT_ID, connection_id="google", source=imports_pb2.SOURCE_GOOGLE_CALENDAR,
                base_url=f"{simulator_url}/google/calendar/v3",
                credentials={k: account[k] for k in ("access_token", "refresh_token", "client_id", "client_secret")},
                settings={"calendar_ids": calendar, "token_url": f"{simulator_url}/google/oauth2/token"},
            ),
            metadata=system.metadata, timeout=10,
        )  # fmt: skip
        assert connection.webhooks.state == imports_pb2.WebhookStatus.ACTIVE, connection.webhooks.last_error
        assert connection.webhooks.HasField("expires_at")
        before = {c["id"] for c in (await simulator.get("/_admin/webhooks/subscriptions")).json()["google"]}
        assert len(before) == 1

        # Every channel counts as expiring: the renewal replaces it and stops the old one.
        env = {**os.environ, **system.services.service_env,
               "APPTSYNC_DATABASE_URL": system.services.addresses.database_url,
               "APPTSYNC_WEBHOOK_RENEW_BEFORE_SECONDS": str(30 * 24 * 3600)}  # fmt: skip
        renewal = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "apptsync.cli", "renew-subscriptions"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert renewal.returncode == 0, renewal.stderr
        assert '"renewed": 1' in renewal.stdout
        after = {c["id"] for c in (await simulator.get("/_admin/webhooks/subscriptions")).json()["google"]}
        assert len(after) == 1 and after.isdisjoint(before)

        start = minute(datetime.now(UTC) + timedelta(days=2))
        added = await simulator.post(
            f"/_admin/google/accounts/{account['account']}/calendars/{calendar}/events",
            json={"start": start.isoformat()},
        )
        added.raise_for_status()
        event_id = added.json()["id"]
        key = f"{calendar}/{event_id}"
        stored = await wait_for_row(system.database_url, "google_calendar", key, status="scheduled")
        assert stored["starts_at"] == start
        deliveries = (await simulator.get("/_admin/webhooks/deliveries", params={"provider": "google"})).json()
    # The change was delivered on the new channel.
    changed = [d for d in deliveries["deliveries"] if d["kind"] != "sync"]
    assert changed and all(d["subscription"] in after for d in changed)


async def test_a_calendly_booking_arrives_by_notification_and_delete_removes_the_subscription(
    system: RunningSystem,
) -> None:
    simulator_url = system.services.addresses.simulator_url
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as simulator:
        account = next(a for a in (await simulator.get("/_admin/calendly/accounts")).json() if a["account"] == 1)
        connection = await put_simulated_calendly(system, account)
        assert connection.webhooks.state == imports_pb2.WebhookStatus.ACTIVE, connection.webhooks.last_error
        start = minute(datetime.now(UTC) + timedelta(days=3))
        booked = await simulator.post(
            "/_admin/calendly/accounts/1/events", json={"start_time": start.strftime("%Y-%m-%dT%H:%M:%S.000000Z")}
        )
        booked.raise_for_status()
        invitee = str(booked.json()[0]["uri"]).rsplit("/", 1)[1]
        stored = await wait_for_row(system.database_url, "calendly", invitee, status="scheduled")
        assert stored["starts_at"] == start
        (await simulator.post(f"/_admin/calendly/accounts/1/invitees/{invitee}/cancel")).raise_for_status()
        await wait_for_row(system.database_url, "calendly", invitee, status="canceled")

        deleted = await system.stub.DeleteConnection(
            imports_pb2.DeleteConnectionRequest(tenant_id=TENANT_ID, connection_id="calendly"),
            metadata=system.metadata, timeout=10,
        )  # fmt: skip
        assert deleted.deleted
        assert (await simulator.get("/_admin/webhooks/subscriptions")).json()["calendly"] == []


async def test_one_trace_runs_from_the_notification_to_the_written_row(
    database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> None:
    """The receiver's span is the parent of the targeted job's span, whose pages the writer consumes in
    the same trace."""
    async with trace_receiver(tmp_path) as receiver:
        env = system_env(
            tmp_path, APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT="20", OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
            OTEL_EXPORTER_OTLP_INSECURE="true", OTEL_TRACES_SAMPLER="parentbased_always_on",
            OTEL_BSP_SCHEDULE_DELAY="200",
        )  # fmt: skip
        services = service_set(
            database_url=database_url, service_database_url=service_database_url,
            bootstrap_servers=broker.bootstrap_servers, tmp_path=tmp_path, env=env, services=WITH_WEBHOOKS,
        )  # fmt: skip
        async with running(services, database_url=database_url, token=TENANT_TOKEN) as system:
            simulator_url = system.services.addresses.simulator_url
            await put_simulated_acuity(system)
            async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as simulator:
                start = minute(datetime.now(UTC) + timedelta(days=2))
                added = await simulator.post("/_admin/acuity/accounts/1001/appointments",
                                             json={"datetime": start.isoformat()})  # fmt: skip
                added.raise_for_status()
            stored = await wait_for_row(system.database_url, "acuity", str(added.json()["id"]), status="scheduled")
            job_id = str(stored["last_job_id"])

            wanted = {("apptsync-webhook-receiver", "webhook notification"), ("apptsync-fetcher", "import job")}
            for _poll in range(300):  # the job span is exported when the job ends (bounded wait)
                about = [s for s in receiver.spans() if s.attributes.get("apptsync.job_id") == job_id]
                if wanted <= {(s.service, s.name) for s in about}:
                    break
                await asyncio.sleep(0.1)
            about_job = [s for s in receiver.spans() if s.attributes.get("apptsync.job_id") == job_id]
            notified = [s for s in about_job if s.name == "webhook notification"]
            assert notified, "no receiver span names the job"
            (job_span,) = [s for s in about_job if s.name == "import job"]
            assert notified[0].kind == SPAN_KIND_SERVER
            # The first notification queued the job: its span is the job span's parent, one trace.
            assert job_span.parent_span_id in {s.span_id for s in notified}
            assert job_span.attributes.get("apptsync.job_kind") == "targeted"
            trace = [s for s in receiver.spans() if s.trace_id == job_span.trace_id]
            assert any(s.service == "apptsync-writer" for s in trace), "the writer's spans are in the trace"


async def test_duplicated_reordered_and_forged_notifications_leave_the_right_rows(system: RunningSystem) -> None:
    """The simulator's fault knobs: duplicates and reordering change nothing (each targeted job asks
    Acuity for the appointment as it is now); forged notifications are refused (401) and their change
    waits for the polling sync, which brings it."""
    simulator_url = system.services.addresses.simulator_url
    await put_simulated_acuity(system)
    admin = "/_admin/acuity/accounts/1001/appointments"
    now = datetime.now(UTC)
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as simulator:
        faults = {"duplicate_probability": 0.5, "reorder": True, "reorder_hold_seconds": 0.5, "seed": 3}
        (await simulator.put("/_admin/webhooks/faults", json=faults)).raise_for_status()
        booked = []
        for day in range(1, 7):
            start = minute(now + timedelta(days=day, hours=day))
            booked.append(((await simulator.post(admin, json={"datetime": start.isoformat()})).json(), start))
        moved_to = minute(now + timedelta(days=8))
        first = booked[0][0]
        (await simulator.post(f"{admin}/{first['id']}/reschedule", json={"datetime": moved_to.isoformat()})
         ).raise_for_status()  # fmt: skip
        for appointment, start in booked[1:]:
            await wait_for_row(system.database_url, "acuity", str(appointment["id"]), status="scheduled",
                               starts_at=start)  # fmt: skip
        await wait_for_row(system.database_url, "acuity", str(first["id"]), status="scheduled", starts_at=moved_to)

        (await simulator.put("/_admin/webhooks/faults", json={"forge_probability": 1.0, "duplicate_probability": 0,
                                                             "reorder": False})).raise_for_status()  # fmt: skip
        forged_start = minute(now + timedelta(days=3, hours=7))
        forged = (await simulator.post(admin, json={"datetime": forged_start.isoformat()})).json()
        attempts = []
        for _poll in range(300):
            log = (await simulator.get("/_admin/webhooks/deliveries", params={"provider": "acuity"})).json()
            attempts = [d for d in log["deliveries"] if d["record"] == str(forged["id"])]
            if attempts and all(d["state"] != "pending" for d in attempts):
                break
            await asyncio.sleep(0.1)
        assert attempts and all(d["forged"] and d["state"] == "failed" and d["status"] == 401 for d in attempts)
        assert await row(system.database_url, "acuity", str(forged["id"])) is None
        (await simulator.delete("/_admin/webhooks/faults")).raise_for_status()

    # The reconciliation: the frequent sync (what the every-15-minutes CronJob starts) brings it.
    response = await system.stub.StartImport(
        imports_pb2.StartImportRequest(
            tenant_id=TENANT_ID, source=imports_pb2.SOURCE_ACUITY, connection_id="acuity",
            options=imports_pb2.ImportOptions(stop_policy=imports_pb2.STOP_POLICY_NO_NEW_RECORDS),
        ),
        metadata=system.metadata, timeout=10,
    )  # fmt: skip
    assert response.job.job_id
    await wait_for_row(system.database_url, "acuity", str(forged["id"]), status="scheduled", starts_at=forged_start)
