"""The frequent sync is fresh where it matters, against real processes.

A tenant whose mirror is up to date (a full import ran) gets the frequent sync's job: what
`apptsync sync-all --policy no-new-records` starts (the gateway's default window, page size, in-flight
window and stop_after_pages = 1). Between two such runs the provider changes: a booking made for
tomorrow, a booking of the coming days rescheduled, another canceled, and a booking made for almost
six months ahead. The next frequent run must carry the first three (the near term is always walked
completely), and the far-future booking waits for the nightly full (NEVER) sync: the documented
trade-off. The provider requests of an up-to-date frequent run are counted at the simulator, for an
account of 2,000 bookings spread over +-180 days.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
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
    put_simulated_acuity,
    put_simulated_calendly,
    running,
    service_set,
    system_env,
    wait_for_job,
)
from tests.hooked_services import hooked_command

pytestmark = pytest.mark.e2e

ACCOUNT_SIZE = 2_000
# An up-to-date frequent run of such an account makes at most this many provider requests (measured:
# see the README's Freshness section); a walk of the whole window would make several times more.
MAX_ACUITY_REQUESTS = 6
MAX_CALENDLY_REQUESTS = 200
FAR_FUTURE = timedelta(days=170)
PROVIDER_REQUESTS_PER_SECOND = 200.0


@dataclass(frozen=True)
class Span:
    """[start, end) of Acuity `datetime` strings."""

    start: datetime
    end: datetime

    def holds(self, text: str) -> bool:
        return self.start <= datetime.fromisoformat(text) < self.end


@dataclass(frozen=True)
class Row:
    status: str
    starts_at: datetime


@pytest.fixture
async def fresh_system(
    database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> AsyncIterator[RunningSystem]:
    """The services with the fetcher's default freshness horizon (14 days) and accounts of 2,000
    bookings; the providers' rate limits are lifted (Calendly's in the simulator, the fetcher's own
    budget through tests/hooked_services.py) so the full imports, with Acuity's payment requests, do
    not wait minutes. What is measured here is the number of requests, not their pace."""
    services = service_set(
        database_url=database_url,
        service_database_url=service_database_url,
        bootstrap_servers=broker.bootstrap_servers,
        tmp_path=tmp_path,
        env=system_env(tmp_path, APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT=str(ACCOUNT_SIZE)),
        command=hooked_command(provider_requests_per_second=PROVIDER_REQUESTS_PER_SECOND),
    )
    faults = {"calendly": {"rate_limit_requests": 1_000_000}}
    async with running(services, database_url=database_url, token=TENANT_TOKEN, simulator_faults=faults) as system:
        yield system


async def sync(system: RunningSystem, connection_id: str, source: int, policy: int) -> imports_pb2.Job:
    """One job as `sync-all` starts it: only the stop policy, everything else the gateway's defaults."""
    response = await system.stub.StartImport(
        imports_pb2.StartImportRequest(
            tenant_id=TENANT_ID,
            source=source,  # type: ignore[arg-type]
            connection_id=connection_id,
            options=imports_pb2.ImportOptions(stop_policy=policy),  # type: ignore[arg-type]
        ),
        metadata=system.metadata,
        timeout=20,
    )
    job = await wait_for_job(
        system, TENANT_ID, response.job.job_id, lambda j: j.state in TERMINAL, timeout_seconds=240, poll_seconds=0.2
    )
    assert job.state == imports_pb2.JOB_STATE_SUCCEEDED, job.error
    assert_counts_add_up(job)
    assert job.counts.pages_written == job.counts.pages_fetched
    return job


def assert_stopped_right_after_the_near_term(job: imports_pb2.Job) -> None:
    """The near-term pages never count; the first page beyond them had nothing new, stopped the job
    and was the last page fetched."""
    stop = re.fullmatch(r"page (\d+) had no new records", job.stop_reason)
    assert stop is not None, job.stop_reason
    assert int(stop[1]) == job.counts.pages_fetched > 1


async def stored(system: RunningSystem, source: str) -> dict[str, Row]:
    connection = await asyncpg.connect(system.database_url)
    try:
        rows = await connection.fetch(
            "SELECT external_id, status, starts_at FROM appointments WHERE tenant_id = $1 AND external_source = $2",
            uuid.UUID(TENANT_ID),
            source,
        )
    finally:
        await connection.close()
    return {row["external_id"]: Row(row["status"], row["starts_at"]) for row in rows}


async def provider_requests(simulator: httpx.AsyncClient, provider: str) -> int:
    response = await simulator.get(f"/_admin/{provider}/counters")
    response.raise_for_status()
    requests: int = response.json()["requests"]
    return requests


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


async def test_an_acuity_frequent_sync_carries_the_coming_days_changes(fresh_system: RunningSystem) -> None:
    system = fresh_system
    simulator_url = system.services.addresses.simulator_url
    await put_simulated_acuity(system)
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as simulator:
        admin = "/_admin/acuity/accounts/1001/appointments"
        now = datetime.now(UTC)
        soon = Span(now + timedelta(days=2), now + timedelta(days=6))
        coming = [r for r in (await simulator.get(admin)).json() if not r["canceled"] and soon.holds(r["datetime"])]
        to_move, to_cancel = coming[0], coming[1]

        full = await sync(system, "acuity", imports_pb2.SOURCE_ACUITY, imports_pb2.STOP_POLICY_NEVER)
        assert full.first_import and full.counts.inserted > ACCOUNT_SIZE / 2

        await simulator.delete("/_admin/acuity/counters")
        idle = await sync(system, "acuity", imports_pb2.SOURCE_ACUITY, imports_pb2.STOP_POLICY_NO_NEW_RECORDS)
        idle_requests = await provider_requests(simulator, "acuity")
        assert idle.counts.inserted == idle.counts.updated == 0
        assert_stopped_right_after_the_near_term(idle)
        print(f"acuity: an up-to-date frequent sync made {idle_requests} requests, {idle.counts.pages_fetched} pages")
        assert idle_requests <= MAX_ACUITY_REQUESTS

        tomorrow = minute(now + timedelta(days=1))
        new = (await simulator.post(admin, json={"datetime": tomorrow.isoformat()})).json()
        moved_to = minute(datetime.fromisoformat(to_move["datetime"]) + timedelta(hours=26))
        moved = await simulator.post(f"{admin}/{to_move['id']}/reschedule", json={"datetime": moved_to.isoformat()})
        moved.raise_for_status()
        (await simulator.post(f"{admin}/{to_cancel['id']}/cancel", json={})).raise_for_status()
        far = (await simulator.post(admin, json={"datetime": minute(now + FAR_FUTURE).isoformat()})).json()

        frequent = await sync(system, "acuity", imports_pb2.SOURCE_ACUITY, imports_pb2.STOP_POLICY_NO_NEW_RECORDS)
        rows = await stored(system, "acuity")
        assert rows[str(new["id"])] == Row("scheduled", tomorrow)
        assert rows[str(to_move["id"])].starts_at == moved_to
        assert rows[str(to_cancel["id"])].status == "canceled"
        assert (frequent.counts.inserted, frequent.counts.updated) == (1, 2)
        assert_stopped_right_after_the_near_term(frequent)
        # The trade-off: a booking made now for months ahead waits for the nightly full sync.
        assert str(far["id"]) not in rows

        nightly = await sync(system, "acuity", imports_pb2.SOURCE_ACUITY, imports_pb2.STOP_POLICY_NEVER)
        assert nightly.stop_reason == "provider exhausted"
        assert nightly.counts.inserted == 1
        assert (await stored(system, "acuity"))[str(far["id"])] == Row("scheduled", minute(now + FAR_FUTURE))


async def test_a_calendly_frequent_sync_carries_the_coming_days_changes(fresh_system: RunningSystem) -> None:
    system = fresh_system
    simulator_url = system.services.addresses.simulator_url
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as simulator:
        account = next(a for a in (await simulator.get("/_admin/calendly/accounts")).json() if a["account"] == 1)
        await put_simulated_calendly(system, account)
        admin = "/_admin/calendly/accounts/1"
        now = datetime.now(UTC)

        async def book(start: datetime) -> str:
            response = await simulator.post(f"{admin}/events", json={"start_time": calendly_time(start)})
            response.raise_for_status()
            return str(response.json()[0]["uri"]).rsplit("/", 1)[1]

        # Bookings of the coming days made before the full import. (Seeded Calendly bookings carry an
        # updated_at of a day before their start, in the future for upcoming ones: a change made now
        # would be older than that, and newer-wins would rightly refuse it.)
        to_move = await book(minute(now + timedelta(days=3)))
        to_cancel = await book(minute(now + timedelta(days=4)))

        full = await sync(system, "calendly", imports_pb2.SOURCE_CALENDLY, imports_pb2.STOP_POLICY_NEVER)
        assert full.first_import and full.counts.inserted > ACCOUNT_SIZE / 2

        await simulator.delete("/_admin/calendly/counters")
        idle = await sync(system, "calendly", imports_pb2.SOURCE_CALENDLY, imports_pb2.STOP_POLICY_NO_NEW_RECORDS)
        idle_requests = await provider_requests(simulator, "calendly")
        assert idle.counts.inserted == idle.counts.updated == 0
        assert_stopped_right_after_the_near_term(idle)
        print(f"calendly: an up-to-date frequent sync made {idle_requests} requests, {idle.counts.pages_fetched} pages")
        assert idle_requests <= MAX_CALENDLY_REQUESTS

        tomorrow = minute(now + timedelta(days=1))
        new = await book(tomorrow)
        moved_to = minute(now + timedelta(days=5))
        moved = await simulator.post(
            f"{admin}/invitees/{to_move}/reschedule", json={"start_time": calendly_time(moved_to)}
        )
        moved.raise_for_status()
        replacement = str(moved.json()["uri"]).rsplit("/", 1)[1]
        (await simulator.post(f"{admin}/invitees/{to_cancel}/cancel")).raise_for_status()
        far = await book(minute(now + FAR_FUTURE))

        frequent = await sync(system, "calendly", imports_pb2.SOURCE_CALENDLY, imports_pb2.STOP_POLICY_NO_NEW_RECORDS)
        rows = await stored(system, "calendly")
        assert rows[new] == Row("scheduled", tomorrow)
        # Calendly's reschedule: the old booking is canceled, a new one holds the new time.
        assert rows[to_move].status == "canceled"
        assert rows[replacement] == Row("scheduled", moved_to)
        assert rows[to_cancel].status == "canceled"
        assert (frequent.counts.inserted, frequent.counts.updated) == (2, 2)
        assert_stopped_right_after_the_near_term(frequent)
        # The trade-off: a booking made now for months ahead waits for the nightly full sync.
        assert far not in rows

        nightly = await sync(system, "calendly", imports_pb2.SOURCE_CALENDLY, imports_pb2.STOP_POLICY_NEVER)
        assert nightly.stop_reason == "provider exhausted"
        assert nightly.counts.inserted == 1
        assert (await stored(system, "calendly"))[far] == Row("scheduled", minute(now + FAR_FUTURE))


def calendly_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
