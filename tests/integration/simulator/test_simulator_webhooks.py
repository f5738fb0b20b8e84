"""The simulator's change notifications over real HTTP: an in-process simulator and a tiny aiohttp
receiver, both on 127.0.0.1. A subscription made through each provider's API receives a signed
notification for an admin change or a seeded mutation, checked with an HMAC computed here."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from aiohttp import web

from apptsync.shared.settings import SimulatorSettings
from apptsync.simulator import DEMO_API_KEY, DEMO_USER_ID, running_simulator

pytestmark = pytest.mark.integration

NOW = datetime(2024, 6, 15, 10, 0, tzinfo=UTC)
SETTINGS = SimulatorSettings(
    listen_address="127.0.0.1:0", seed=5, appointments_per_tenant=20, accounts_per_provider=1,
    anchor_date=date(2024, 6, 15),
)  # fmt: skip
ACUITY_AUTH = "Basic " + base64.b64encode(f"{DEMO_USER_ID}:{DEMO_API_KEY}".encode()).decode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    received: list[Received] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to answer first, in order; then 200

    async def wait_for(self, count: int) -> list[Received]:
        """Waits (bounded: 200 x 50 ms) until `count` requests arrived."""
        for _ in range(200):
            if len(self.received) >= count:
                break
            await asyncio.sleep(0.05)
        return self.received


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    box: list[Receiver] = []

    async def handle(request: web.Request) -> web.Response:
        box[0].received.append(Received(request.path, dict(request.headers), await request.read()))
        status = box[0].answers.pop(0) if box[0].answers else 200
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    box.append(Receiver(f"http://127.0.0.1:{runner.addresses[0][1]}"))
    try:
        yield box[0]
    finally:
        await runner.cleanup()


async def test_acuity_webhook_is_signed_with_the_api_key_and_logged(receiver: Receiver) -> None:
    async with (
        running_simulator(SETTINGS, clock=lambda: NOW) as simulator,
        httpx.AsyncClient(base_url=simulator.base_url, timeout=30, trust_env=False) as client,
    ):
        api = simulator.acuity_base_url
        made = await client.post(
            f"{api}/webhooks", json={"event": "appointment.scheduled", "target": f"{receiver.url}/acuity"},
            headers={"Authorization": ACUITY_AUTH},
        )  # fmt: skip
        assert made.status_code == 200
        webhook = made.json()
        assert webhook["event"] == "appointment.scheduled" and webhook["status"] == "active"
        listed = await client.get(f"{api}/webhooks", headers={"Authorization": ACUITY_AUTH})
        assert listed.json() == [webhook]
        refused = await client.post(
            f"{api}/webhooks", json={"event": "appointment.scheduled", "target": "https://example.com/hook"},
            headers={"Authorization": ACUITY_AUTH},
        )  # fmt: skip
        assert refused.status_code == 400
        receiver.answers = [503]  # the first attempt fails: the simulator retries
        knobs = await client.put("/_admin/webhooks/faults", json={"retry_backoff_seconds": 0.05})
        assert knobs.json()["retry_backoff_seconds"] == 0.05
        added = await client.post(
            f"/_admin/acuity/accounts/{DEMO_USER_ID}/appointments", json={"datetime": "2024-06-20T09:00:00+0200"}
        )
        appointment = added.json()

        received = await receiver.wait_for(2)

        assert len(received) == 2 and received[0].body == received[1].body
        body = received[1].body
        expected = base64.b64encode(hmac.new(DEMO_API_KEY.encode(), body, hashlib.sha256).digest()).decode()
        assert received[1].headers["X-Acuity-Signature"] == expected
        assert received[1].headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert parse_qs(body.decode()) == {
            "action": ["appointment.scheduled"], "id": [str(appointment["id"])],
            "calendarID": [str(appointment["calendarID"])],
            "appointmentTypeID": [str(appointment["appointmentTypeID"])],
        }  # fmt: skip
        log: Any = (await client.get("/_admin/webhooks/deliveries", params={"provider": "acuity"})).json()
        for _ in range(100):  # the log records the answer right after the receiver sent it
            if log["deliveries"][0]["state"] != "pending":
                break
            await asyncio.sleep(0.02)
            log = (await client.get("/_admin/webhooks/deliveries", params={"provider": "acuity"})).json()
        [entry] = log["deliveries"]
        assert entry["state"] == "delivered" and entry["status"] == 200 and entry["attempts"] == 2
        assert entry["mutation_at"] == NOW.isoformat() and entry["record"] == str(appointment["id"])
        assert log["counts"]["retries"] == 1 and log["counts"]["delivered"] == 1

        deleted = await client.delete(f"{api}/webhooks/{webhook['id']}", headers={"Authorization": ACUITY_AUTH})
        assert deleted.status_code == 204
        assert (await client.get(f"{api}/webhooks", headers={"Authorization": ACUITY_AUTH})).json() == []


async def test_calendly_reschedule_sends_canceled_then_created_signed_with_the_signing_key(receiver: Receiver) -> None:
    async with (
        running_simulator(SETTINGS, clock=lambda: NOW) as simulator,
        httpx.AsyncClient(base_url=simulator.base_url, timeout=30, trust_env=False) as client,
    ):
        account: Any = (await client.get("/_admin/calendly/accounts")).json()[0]
        auth = {"Authorization": f"Bearer {account['access_token']}"}
        api = simulator.calendly_base_url
        made = await client.post(f"{api}/webhook_subscriptions", headers=auth, json={
            "url": f"{receiver.url}/calendly", "events": ["invitee.created", "invitee.canceled"],
            "organization": account["organization"], "user": account["user"], "scope": "user",
            "signing_key": "sim-signing-key",
        })  # fmt: skip
        assert made.status_code == 201
        resource = made.json()["resource"]
        assert resource["state"] == "active" and resource["callback_url"] == f"{receiver.url}/calendly"
        again = await client.post(f"{api}/webhook_subscriptions", headers=auth, json={
            "url": f"{receiver.url}/calendly", "events": ["invitee.created"], "organization": account["organization"],
            "user": account["user"], "scope": "user",
        })  # fmt: skip
        assert again.status_code == 409
        listed = await client.get(
            f"{api}/webhook_subscriptions", headers=auth,
            params={"organization": account["organization"], "user": account["user"], "scope": "user"},
        )  # fmt: skip
        assert [s["uri"] for s in listed.json()["collection"]] == [resource["uri"]]
        bookings: Any = (await client.get("/_admin/calendly/accounts/1/bookings")).json()
        old = next(b["invitee"] for b in bookings if b["invitee"]["status"] == "active")
        old_uuid = old["uri"].rsplit("/", 1)[1]
        start = (NOW + timedelta(days=3)).isoformat()
        moved = await client.post(
            f"/_admin/calendly/accounts/1/invitees/{old_uuid}/reschedule", json={"start_time": start}
        )
        new = moved.json()

        received = await receiver.wait_for(2)

        bodies = [json.loads(r.body) for r in received]
        assert sorted(b["event"] for b in bodies) == ["invitee.canceled", "invitee.created"]
        by_event = {b["event"]: b["payload"] for b in bodies}
        assert by_event["invitee.canceled"]["uri"] == old["uri"] and by_event["invitee.canceled"]["rescheduled"] is True
        assert by_event["invitee.canceled"]["new_invitee"] == new["uri"]
        assert (
            by_event["invitee.created"]["uri"] == new["uri"]
            and by_event["invitee.created"]["old_invitee"] == old["uri"]
        )
        assert by_event["invitee.created"]["scheduled_event"]["uri"] == new["event"]
        assert {b["created_by"] for b in bodies} == {account["user"]}
        for r in received:
            t, v1 = (part.split("=", 1)[1] for part in r.headers["Calendly-Webhook-Signature"].split(","))
            assert v1 == hmac.new(b"sim-signing-key", f"{t}.".encode() + r.body, hashlib.sha256).hexdigest()
        gone = await client.delete(f"{api}/webhook_subscriptions/{resource['uri'].rsplit('/', 1)[1]}", headers=auth)
        assert gone.status_code == 204


async def test_google_channel_gets_sync_then_exists_until_it_expires(receiver: Receiver) -> None:
    async with (
        running_simulator(SETTINGS, clock=lambda: NOW) as simulator,
        httpx.AsyncClient(base_url=simulator.base_url, timeout=30, trust_env=False) as client,
    ):
        account: Any = (await client.get("/_admin/google/accounts")).json()[0]
        auth = {"Authorization": f"Bearer {account['access_token']}"}
        calendar = account["calendars"][0]["id"]
        watched = await client.post(
            f"{simulator.google_base_url}/calendars/{calendar}/events/watch", headers=auth,
            json={"id": "channel-1", "type": "web_hook", "address": f"{receiver.url}/google", "token": "tok-1"},
        )  # fmt: skip
        assert watched.status_code == 200
        channel = watched.json()
        assert channel["kind"] == "api#channel" and channel["id"] == "channel-1" and channel["token"] == "tok-1"
        assert int(channel["expiration"]) == int((NOW + timedelta(hours=1)).timestamp() * 1000)
        await receiver.wait_for(1)
        await client.post(
            f"/_admin/google/accounts/1/calendars/{calendar}/events", json={"start": "2024-06-18T10:00:00Z"}
        )

        received = await receiver.wait_for(2)

        assert [r.headers["X-Goog-Resource-State"] for r in received] == ["sync", "exists"]
        assert [r.headers["X-Goog-Message-Number"] for r in received] == ["1", "2"]
        assert {r.headers["X-Goog-Channel-Token"] for r in received} == {"tok-1"}
        assert {r.headers["X-Goog-Resource-ID"] for r in received} == {channel["resourceId"]}
        assert all(r.body == b"" for r in received)
        assert (await client.post("/_admin/webhooks/google/expire-channels")).json() == {"expired": 1}
        await client.post("/_admin/mutations", json={"seed": 1, "count": 5, "providers": ["google"]})
        log: Any = (await client.get("/_admin/webhooks/deliveries", params={"provider": "google"})).json()
        assert len(log["deliveries"]) == 2  # an expired channel receives nothing
        stopped = await client.post(
            f"{simulator.google_base_url}/channels/stop", headers=auth,
            json={"id": "channel-1", "resourceId": channel["resourceId"]},
        )  # fmt: skip
        assert stopped.status_code == 204


async def test_fault_knobs_forge_and_drop_over_http(receiver: Receiver) -> None:
    async with (
        running_simulator(SETTINGS, clock=lambda: NOW) as simulator,
        httpx.AsyncClient(base_url=simulator.base_url, timeout=30, trust_env=False) as client,
    ):
        await client.post(
            f"{simulator.acuity_base_url}/webhooks", json={"event": "appointment.changed", "target": receiver.url},
            headers={"Authorization": ACUITY_AUTH},
        )  # fmt: skip
        assert (await client.post("/_admin/webhooks/faults", json={"forge_probability": 1.0, "seed": 3})).is_success
        await client.post("/_admin/mutations", json={"seed": 2, "count": 3, "providers": ["acuity"]})

        received = await receiver.wait_for(1)

        genuine = base64.b64encode(hmac.new(DEMO_API_KEY.encode(), received[0].body, hashlib.sha256).digest()).decode()
        assert received[0].headers["X-Acuity-Signature"] != genuine
        await client.put("/_admin/webhooks/faults", json={"forge_probability": 0.0, "drop_probability": 1.0})
        await client.post("/_admin/mutations", json={"seed": 4, "count": 3, "providers": ["acuity"]})
        log: Any = (await client.get("/_admin/webhooks/deliveries")).json()
        assert log["counts"]["dropped"] == 3 and log["counts"]["forged"] == 3
        assert [d["state"] for d in log["deliveries"]][-3:] == ["dropped"] * 3
        assert all(d["forged"] for d in log["deliveries"][:3])
        assert (await client.delete("/_admin/webhooks/faults")).json()["drop_probability"] == 0.0
