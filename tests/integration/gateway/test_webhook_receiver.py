"""The webhook receiver against real PostgreSQL: forged, replayed, unknown, oversized, duplicate, bursts.

The receiver runs as its aiohttp application on a loopback port with the services' login role (row-level
security applies); requests carry the providers' documented shapes and signatures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from apptsync.gateway.webhooks import build_receiver_app
from apptsync.shared.credentials import Keyring
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db import jobs as jobs_db
from apptsync.shared.db import webhooks as webhooks_db
from apptsync.shared.db.migrator import migrate
from apptsync.shared.db.pool import tenant_transaction
from apptsync.shared.settings import WebhookSettings
from apptsync.shared.webhooks import (
    acuity_signature,
    calendly_signature,
    new_path_token,
    token_digest,
)

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
API_KEY = "acuity-api-key-canary"
SIGNING_KEY = "calendly-signing-key-canary"
CHANNEL_TOKEN = "google-channel-token-canary"
SIM = "http://127.0.0.1:8710"
KEYRING = Keyring.parse(f"k1:{base64.b64encode(os.urandom(32)).decode()}")


def acuity_body(appointment_id: int, action: str = "appointment.changed") -> bytes:
    return f"action={action}&id={appointment_id}&calendarID=2063291&appointmentTypeID=7512210".encode()


def calendly_body(invitee: str) -> bytes:
    base = f"{SIM}/calendly/scheduled_events/GBGBDCAADAEDCRZ2"
    return json.dumps(
        {
            "created_at": "2026-12-07T02:59:19.000000Z",
            "created_by": f"{SIM}/calendly/users/AAAAAAAAAAAAAAAA",
            "event": "invitee.created",
            "payload": {
                "uri": f"{base}/invitees/{invitee}",
                "event": base,
                "email": "test@example.com",
                "name": "John Doe",
                "status": "active",
                "rescheduled": False,
                "questions_and_answers": [],
                "updated_at": "2026-12-07T02:59:18.341657Z",
                "scheduled_event": {
                    "uri": base, "name": "15 Minute Meeting", "status": "active",
                    "start_time": "2026-12-09T15:00:00.000000Z", "end_time": "2026-12-09T15:15:00.000000Z",
                },
            },
        }
    ).encode()


class Receiver:
    def __init__(self, url: str, pool: asyncpg.Pool, tenant: str, tokens: dict[str, str]) -> None:
        self.url, self.pool, self.tenant, self.tokens = url, pool, tenant, tokens
        self.http = ClientSession()

    async def post(self, source: str, body: bytes, headers: dict[str, str], token: str | None = None) -> int:
        path = f"{self.url}/webhooks/{source}/{token if token is not None else self.tokens[source]}"
        async with self.http.post(path, data=body, headers=headers) as response:
            await response.read()
            return response.status

    async def acuity(self, appointment_id: int, *, key: str = API_KEY) -> int:
        body = acuity_body(appointment_id)
        return await self.post("acuity", body, {"X-Acuity-Signature": acuity_signature(body, key)})

    async def jobs(self, connection_id: str) -> list[jobs_db.JobRecord]:
        async with self.pool.acquire() as conn, tenant_transaction(conn, self.tenant):
            rows = await conn.fetch(
                "SELECT * FROM import_jobs WHERE connection_id = $1 ORDER BY created_at", connection_id
            )
        return [jobs_db.record_from_row(row) for row in rows]


@pytest.fixture
async def receiver(database_url: str, service_database_url: str) -> AsyncIterator[Receiver]:
    owner = await asyncpg.connect(database_url)
    await migrate(owner)
    await owner.close()
    pool = await asyncpg.create_pool(service_database_url, min_size=1, max_size=8)
    tenant = str(uuid.uuid4())
    tokens: dict[str, str] = {}
    async with pool.acquire() as conn:
        for source, connection_id, credentials, secrets in (
            ("acuity", "acuity-main", {"user_id": "1001", "api_key": API_KEY}, {}),
            ("calendly", "calendly-main", {"access_token": "pat"}, {"signing_key": SIGNING_KEY}),
            ("google_calendar", "google-main", {"access_token": "at"}, {"channel_token": CHANNEL_TOKEN}),
        ):
            base = {"acuity": f"{SIM}/acuity/api/v1", "calendly": f"{SIM}/calendly", "google_calendar": ""}[source]
            await connections_db.put_connection(
                conn, keyring=KEYRING, tenant_id=tenant, connection_id=connection_id, external_source=source,
                base_url=base, credentials=credentials, settings={}, now=NOW,
            )
            tokens[source] = new_path_token()
            await webhooks_db.put_subscription(
                conn, keyring=KEYRING, tenant_id=tenant, connection_id=connection_id, external_source=source,
                token_sha256=token_digest(tokens[source]), secrets=secrets, provider_refs={}, state="ACTIVE",
                last_error="", expires_at=None, now=NOW,
            )
    app = build_receiver_app(pool, KEYRING, WebhookSettings(max_body_bytes=4096), clock=lambda: NOW)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = Receiver(str(server.make_url("")).rstrip("/"), pool, tenant, tokens)
    try:
        yield client
    finally:
        await client.http.close()
        await server.close()
        await pool.close()


async def test_a_verified_acuity_notification_queues_a_targeted_job(receiver: Receiver) -> None:
    assert await receiver.acuity(102370318) == 200
    [job] = await receiver.jobs("acuity-main")
    assert (job.kind, job.state, job.targets) == ("targeted", "QUEUED", ("102370318",))
    assert job.options.stop_policy == "NEVER"


async def test_forged_notifications_are_refused_and_write_nothing(receiver: Receiver) -> None:
    assert await receiver.acuity(1, key="not-the-api-key") == 401
    assert await receiver.post("acuity", acuity_body(1), {}) == 401
    body = calendly_body("a1")
    forged = calendly_signature(body, "not-the-signing-key", int(NOW.timestamp()))
    assert await receiver.post("calendly", body, {"Calendly-Webhook-Signature": forged}) == 401
    google = {"X-Goog-Channel-ID": "c1", "X-Goog-Channel-Token": "wrong", "X-Goog-Resource-State": "exists",
              "X-Goog-Message-Number": "2"}
    assert await receiver.post("google_calendar", b"", google) == 401
    for connection_id in ("acuity-main", "calendly-main", "google-main"):
        assert await receiver.jobs(connection_id) == []


async def test_a_replayed_calendly_notification_is_refused(receiver: Receiver) -> None:
    body = calendly_body("a1")
    stale = calendly_signature(body, SIGNING_KEY, int((NOW - timedelta(minutes=10)).timestamp()))
    assert await receiver.post("calendly", body, {"Calendly-Webhook-Signature": stale}) == 403
    assert await receiver.jobs("calendly-main") == []
    fresh = calendly_signature(body, SIGNING_KEY, int(NOW.timestamp()))
    assert await receiver.post("calendly", body, {"Calendly-Webhook-Signature": fresh}) == 200
    [job] = await receiver.jobs("calendly-main")
    [target] = job.targets
    assert json.loads(target)["key"] == "GBGBDCAADAEDCRZ2/a1"


async def test_unknown_connection_and_source_are_not_found(receiver: Receiver) -> None:
    body = acuity_body(1)
    headers = {"X-Acuity-Signature": acuity_signature(body, API_KEY)}
    assert await receiver.post("acuity", body, headers, token=new_path_token()) == 404
    # A token of another source's connection does not route either.
    assert await receiver.post("acuity", body, headers, token=receiver.tokens["calendly"]) == 404
    assert await receiver.post("zoom", body, headers, token=receiver.tokens["acuity"]) == 404
    assert await receiver.jobs("acuity-main") == []


async def test_an_oversized_body_is_refused_before_it_is_read(receiver: Receiver) -> None:
    body = acuity_body(1) + b"&padding=" + b"x" * 5000
    assert await receiver.post("acuity", body, {"X-Acuity-Signature": acuity_signature(body, API_KEY)}) == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    # Without a Content-Length (chunked), the read stops one byte past the limit.
    path = f"{receiver.url}/webhooks/acuity/{receiver.tokens['acuity']}"
    async with receiver.http.post(path, data=chunks(), headers={"X-Acuity-Signature": "x"}) as response:
        assert response.status == 413
    assert await receiver.jobs("acuity-main") == []


async def test_a_duplicate_delivery_joins_the_queued_job(receiver: Receiver) -> None:
    assert await receiver.acuity(7) == 200
    assert await receiver.acuity(7) == 200
    [job] = await receiver.jobs("acuity-main")
    assert job.targets == ("7",)


async def test_a_burst_of_100_notifications_becomes_one_job(receiver: Receiver) -> None:
    statuses = await asyncio.gather(*(receiver.acuity(1000 + n) for n in range(100)))
    assert statuses == [200] * 100
    [job] = await receiver.jobs("acuity-main")
    assert sorted(job.targets) == sorted(str(1000 + n) for n in range(100))
    async with receiver.pool.acquire() as conn, tenant_transaction(conn, receiver.tenant):
        accepted = await conn.fetchval(
            "SELECT notifications_accepted FROM webhook_subscriptions WHERE connection_id = 'acuity-main'"
        )
    assert accepted == 100


async def test_once_claimed_the_next_notification_queues_the_next_job_which_waits(receiver: Receiver) -> None:
    assert await receiver.acuity(1) == 200
    async with receiver.pool.acquire() as conn:
        first = await jobs_db.claim_job(conn, lease_owner="f1", lease_seconds=30, now=NOW)
    assert first is not None and first.targets == ("1",)
    assert await receiver.acuity(2) == 200
    assert await receiver.acuity(3) == 200
    jobs = await receiver.jobs("acuity-main")
    assert sorted((job.state, job.targets) for job in jobs) == [("QUEUED", ("2", "3")), ("RUNNING", ("1",))]
    async with receiver.pool.acquire() as conn:
        # At most one targeted job in flight per connection: the queued one waits for the running one.
        assert await jobs_db.claim_job(conn, lease_owner="f2", lease_seconds=30, now=NOW) is None
        await jobs_db.finish_job(conn, job_id=first.job_id, lease_owner="f1", state="SUCCEEDED",
                                 stop_reason="provider exhausted", error="", now=NOW)
        second = await jobs_db.claim_job(conn, lease_owner="f2", lease_seconds=30, now=NOW)
    assert second is not None and second.targets == ("2", "3")


async def test_a_targeted_job_runs_beside_a_sync_job_of_the_connection(receiver: Receiver) -> None:
    async with receiver.pool.acquire() as conn:
        _sync, existed = await jobs_db.create_job(conn, jobs_db.NewJob(
            tenant_id=receiver.tenant, external_source="acuity", connection_id="acuity-main",
            window_start=NOW - timedelta(days=1), window_end=NOW + timedelta(days=1),
            options=jobs_db.JobOptions(100, 10, 4, "NO_NEW_RECORDS", 1, 600), idempotency_key=None,
        ), now=NOW)
    assert not existed
    assert await receiver.acuity(5) == 200
    kinds = sorted(job.kind for job in await receiver.jobs("acuity-main"))
    assert kinds == ["sync", "targeted"]


async def test_google_duplicates_by_message_number_are_acknowledged_but_not_handed_on(receiver: Receiver) -> None:
    def headers(number: int, state: str = "exists") -> dict[str, str]:
        return {"X-Goog-Channel-ID": "chan-1", "X-Goog-Channel-Token": CHANNEL_TOKEN,
                "X-Goog-Resource-State": state, "X-Goog-Resource-ID": "res-1",
                "X-Goog-Message-Number": str(number)}

    assert await receiver.post("google_calendar", b"", headers(1, "sync")) == 200
    assert await receiver.jobs("google-main") == []  # the handshake names nothing
    assert await receiver.post("google_calendar", b"", headers(2)) == 200
    async with receiver.pool.acquire() as conn:
        claimed = await jobs_db.claim_job(conn, lease_owner="f1", lease_seconds=30, now=NOW)
    assert claimed is not None
    # Delivered again after the job was claimed: a duplicate, so no second job.
    assert await receiver.post("google_calendar", b"", headers(2)) == 200
    assert await receiver.post("google_calendar", b"", headers(1)) == 200
    assert len(await receiver.jobs("google-main")) == 1
    assert await receiver.post("google_calendar", b"", headers(3)) == 200
    assert len(await receiver.jobs("google-main")) == 2


async def test_a_succeeded_targeted_job_does_not_make_the_next_import_a_resync(receiver: Receiver) -> None:
    """The connection's first StartImport still walks everything after notifications were synced."""
    assert await receiver.acuity(1) == 200
    async with receiver.pool.acquire() as conn:
        targeted = await jobs_db.claim_job(conn, lease_owner="f1", lease_seconds=30, now=NOW)
        assert targeted is not None and targeted.kind == "targeted"
        await jobs_db.finish_job(conn, job_id=targeted.job_id, lease_owner="f1", state="SUCCEEDED",
                                 stop_reason="provider exhausted", error="", now=NOW)  # fmt: skip
        first, _existed = await jobs_db.create_job(conn, jobs_db.NewJob(
            tenant_id=receiver.tenant, external_source="acuity", connection_id="acuity-main",
            window_start=NOW - timedelta(days=1), window_end=NOW + timedelta(days=1),
            options=jobs_db.JobOptions(100, 10, 4, "NO_NEW_RECORDS", 1, 600), idempotency_key=None,
        ), now=NOW)  # fmt: skip
    assert first.first_import
