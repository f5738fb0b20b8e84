"""The Calendly provider against the simulator over real HTTP on 127.0.0.1.

An import of 5,000 invitees with the per-user rate limit biting lands exactly the simulator's set;
admin changes (additions, cancellations, reschedules) show up in the next full sync; a burst of
faults is retried and counted; and two fetchers refreshing one connection at once (through
PostgreSQL) spend its single-use refresh token exactly once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
import httpx
import pytest

from apptsync.fetcher.connection_state import PostgresConnectionStateStore
from apptsync.fetcher.providers import (
    ConnectionConfig,
    ConnectionStateStore,
    JobWindow,
    ProviderHttp,
    ProviderPage,
    ProviderSession,
    RetryPolicy,
    open_session,
)
from apptsync.shared.appointments import AppointmentStatus, CanonicalAppointment, Money, Source
from apptsync.shared.credentials import Keyring
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db.migrator import migrate
from apptsync.shared.db.pool import tenant_transaction
from apptsync.shared.errors import ProviderAuthError
from apptsync.shared.outbound import OutboundPolicy
from apptsync.shared.settings import SimulatorSettings
from apptsync.simulator import RunningSimulator, running_simulator

pytestmark = pytest.mark.integration

ANCHOR = date(2024, 6, 15)
EVERYTHING = JobWindow(datetime(2023, 12, 1, tzinfo=UTC), datetime(2024, 12, 31, tzinfo=UTC))
FAST_RETRIES = RetryPolicy(
    max_attempts=8, max_total_seconds=30.0, initial_backoff_seconds=0.05, max_backoff_seconds=0.2
)
MAX_PAGES = 1_000
TENANT = "7d3c1e0a-5b2f-4c8e-9a61-2f4b8c0d9e13"


@dataclass
class Simulator:
    running: RunningSimulator
    admin: httpx.AsyncClient

    async def set_faults(self, **knobs: object) -> None:
        (await self.admin.put("/_admin/calendly/faults", json=knobs)).raise_for_status()

    async def get(self, path: str) -> object:
        response = await self.admin.get(path)
        response.raise_for_status()
        body: object = response.json()
        return body

    async def post(self, path: str, body: dict[str, object] | None = None) -> object:
        response = await self.admin.post(path, json=body or {})
        response.raise_for_status()
        answer: object = response.json()
        return answer

    async def account(self, number: int = 1) -> dict[str, str]:
        accounts = await self.get("/_admin/calendly/accounts")
        assert isinstance(accounts, list)
        found: dict[str, str] = next(a for a in accounts if a["account"] == number)
        return found

    async def bookings(self, number: int = 1) -> dict[str, dict[str, dict[str, object]]]:
        """invitee uuid -> {"event": ..., "invitee": ...} of every booking whose event is in the window."""
        data = await self.get(f"/_admin/calendly/accounts/{number}/bookings")
        assert isinstance(data, list)
        return {
            str(b["invitee"]["uri"]).rsplit("/", 1)[1]: b
            for b in data
            if EVERYTHING.contains(datetime.fromisoformat(b["event"]["start_time"]))
        }


async def start(invitees: int) -> AsyncIterator[Simulator]:
    settings = SimulatorSettings(
        listen_address="127.0.0.1:0", seed=11, appointments_per_tenant=invitees, anchor_date=ANCHOR,
        accounts_per_provider=1,
    )  # fmt: skip
    async with running_simulator(settings) as running, httpx.AsyncClient(base_url=running.base_url) as admin:
        yield Simulator(running, admin)


@pytest.fixture
async def big_simulator() -> AsyncIterator[Simulator]:
    async for simulator in start(5_000):
        yield simulator


@pytest.fixture
async def small_simulator() -> AsyncIterator[Simulator]:
    async for simulator in start(300):
        yield simulator


def simulator_only(simulator: Simulator) -> OutboundPolicy:
    """The outbound policy of a deployment whose only allowed origin is this test's simulator."""
    return OutboundPolicy.allowing(simulator.running.base_url)


def connection(simulator: Simulator, account: dict[str, str], **overrides: str) -> ConnectionConfig:
    credentials = {k: account[k] for k in ("access_token", "refresh_token", "client_id", "client_secret")}
    return ConnectionConfig(
        base_url=simulator.running.calendly_base_url,
        credentials={**credentials, **overrides},
        settings={"organization": account["organization"]},
        scope_key=f"{TENANT}/calendly",
    )


def open_calendly(
    http: ProviderHttp, config: ConnectionConfig, *, state: ConnectionStateStore | None = None
) -> ProviderSession:
    return open_session(
        Source.CALENDLY, http=http, connection=config, window=EVERYTHING, page_size=100, cursor=None,
        clock=lambda: datetime.now(UTC), state=state,
    )  # fmt: skip


async def drain(session: ProviderSession) -> list[ProviderPage]:
    pages: list[ProviderPage] = []
    for _ in range(MAX_PAGES):
        page = await session.next_page()
        if page is None:
            return pages
        pages.append(page)
    raise AssertionError(f"no end after {MAX_PAGES} pages")


def imported(pages: list[ProviderPage]) -> dict[str, CanonicalAppointment]:
    records = [a for page in pages for a in page.appointments]
    appointments = [a for a in records if isinstance(a, CanonicalAppointment)]
    assert len(appointments) == len(records), "Calendly lists no record without its times"
    by_id = {a.external_id: a for a in appointments}
    assert len(by_id) == len(appointments), "an invitee came in two pages"
    for page in pages:
        assert page.records_fetched == len(page.appointments) + page.skipped_out_of_window + page.skipped_invalid
    return by_id


def assert_matches(appointment: CanonicalAppointment, booking: dict[str, dict[str, object]]) -> None:
    event, invitee = booking["event"], booking["invitee"]
    assert appointment.raw_json == json.dumps(booking, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    assert appointment.starts_at == datetime.fromisoformat(str(event["start_time"]))
    assert appointment.ends_at == datetime.fromisoformat(str(event["end_time"]))
    assert appointment.timezone == invitee["timezone"]
    assert appointment.title == event["name"]
    assert appointment.external_url == invitee["uri"]
    assert appointment.contact.email == str(invitee["email"]).strip().lower()
    assert appointment.contact.name == invitee["name"]
    canceled = invitee["status"] == "canceled" or event["status"] == "canceled"
    expected = (
        AppointmentStatus.CANCELED if canceled
        else AppointmentStatus.NO_SHOW if invitee["no_show"] is not None
        else AppointmentStatus.SCHEDULED
    )  # fmt: skip
    assert appointment.status is expected
    for link, uri in (("rescheduled_to_external_id", invitee["new_invitee"]),
                      ("rescheduled_from_external_id", invitee["old_invitee"])):  # fmt: skip
        assert getattr(appointment, link) == (str(uri).rsplit("/", 1)[1] if uri else "")
    payment = invitee["payment"]
    if isinstance(payment, dict):
        digits = 0 if payment["currency"] == "JPY" else 2
        price = Money(round(float(payment["amount"]) * 10**digits), str(payment["currency"]))
        assert appointment.price == price
        assert appointment.amount_paid == (price if payment["successful"] else Money(0, price.currency))
    else:
        assert appointment.price is None and appointment.amount_paid is None


async def test_an_import_of_5000_invitees_under_the_rate_limit_is_exact(big_simulator: Simulator) -> None:
    simulator = big_simulator
    # Quirk on: a small per-user budget, so X-RateLimit-Remaining hits 0 again and again.
    await simulator.set_faults(rate_limit_requests=120, rate_limit_window_seconds=1.0)
    account = await simulator.account()
    http = ProviderHttp(outbound=simulator_only(big_simulator), timeout_seconds=10.0, retry=FAST_RETRIES)
    session = open_calendly(http, connection(simulator, account))
    try:
        pages = await drain(session)
    finally:
        await http.aclose()

    expected = await simulator.bookings()
    got = imported(pages)
    assert len(expected) == 5_000
    assert got.keys() == expected.keys()
    for key, appointment in got.items():
        assert_matches(appointment, expected[key])
    statuses = {a.status for a in got.values()}
    assert statuses == {AppointmentStatus.SCHEDULED, AppointmentStatus.CANCELED, AppointmentStatus.NO_SHOW}
    group_events = {json.loads(a.raw_json)["event"]["uri"] for a in got.values()}
    assert len(group_events) < len(got)  # group events: several bookings share one event
    assert http.rate_limit_pauses > 0  # the client waited for X-RateLimit-Reset
    counters = await simulator.get("/_admin/calendly/counters")
    assert isinstance(counters, dict)
    statuses_seen = counters["statuses"]
    # Requests already in flight when the budget ran out may see a 429; each one was retried.
    assert set(statuses_seen) <= {"200", "429"}
    assert session.retries == statuses_seen.get("429", 0)


async def test_additions_cancellations_and_reschedules_show_up_in_the_next_full_sync(
    small_simulator: Simulator,
) -> None:
    simulator = small_simulator
    account = await simulator.account()
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0)
    try:
        before = imported(await drain(open_calendly(http, connection(simulator, account))))
        active = sorted(k for k, a in before.items() if a.status is AppointmentStatus.SCHEDULED)
        to_cancel, to_move = active[:5], active[5:10]
        base = "/_admin/calendly/accounts/1"
        added = []
        for n in range(5):
            start = (datetime(2024, 7, 1, 9, tzinfo=UTC) + timedelta(days=n)).isoformat()
            answer = await simulator.post(f"{base}/events", {"start_time": start, "first_name": "Zoë"})
            assert isinstance(answer, list)
            added.append(str(answer[0]["uri"]).rsplit("/", 1)[1])
        for key in to_cancel:
            await simulator.post(f"{base}/invitees/{key}/cancel")
        moved = {}
        for n, key in enumerate(to_move):
            new = await simulator.post(
                f"{base}/invitees/{key}/reschedule", {"start_time": f"2024-08-0{n + 1}T15:30:00Z"}
            )
            assert isinstance(new, dict)
            moved[key] = str(new["uri"]).rsplit("/", 1)[1]
        after = imported(await drain(open_calendly(http, connection(simulator, account))))
    finally:
        await http.aclose()

    expected = await simulator.bookings()
    assert after.keys() == expected.keys() == before.keys() | set(added) | set(moved.values())
    for key, appointment in after.items():
        assert_matches(appointment, expected[key])
    assert all(
        after[k].status is AppointmentStatus.SCHEDULED and after[k].contact.name.startswith("Zoë") for k in added
    )
    assert all(after[k].status is AppointmentStatus.CANCELED for k in to_cancel)
    for old, new in moved.items():
        old_invitee = json.loads(after[old].raw_json)["invitee"]
        new_invitee = json.loads(after[new].raw_json)["invitee"]
        assert after[old].status is AppointmentStatus.CANCELED and old_invitee["rescheduled"] is True
        assert old_invitee["new_invitee"] == new_invitee["uri"] and new_invitee["old_invitee"] == old_invitee["uri"]
        assert after[new].status is AppointmentStatus.SCHEDULED
        assert (after[old].rescheduled_to_external_id, after[new].rescheduled_from_external_id) == (new, old)
        assert after[new].starts_at.day == int(list(moved).index(old)) + 1 and after[new].starts_at.month == 8
    changed = {k for k in after if k not in before or after[k].content_hash != before[k].content_hash}
    touched = set(added) | set(to_cancel) | set(moved) | set(moved.values())
    assert touched <= changed
    # Beyond those, only fellow invitees of a group event changed (its invitees_counter moved).
    touched_events = {json.loads(after[k].raw_json)["event"]["uri"] for k in touched}
    assert all(json.loads(after[k].raw_json)["event"]["uri"] in touched_events for k in changed - touched)


async def test_a_burst_of_429s_5xx_and_resets_is_retried_and_counted(small_simulator: Simulator) -> None:
    simulator = small_simulator
    await simulator.set_faults(fail_next_429=3, retry_after="0", fail_next_5xx=2, reset_next_connections=1)
    account = await simulator.account()
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0, retry=FAST_RETRIES)
    session = open_calendly(http, connection(simulator, account))
    try:
        pages = await drain(session)
    finally:
        await http.aclose()
    assert session.retries == 6
    assert imported(pages).keys() == (await simulator.bookings()).keys()
    counters = await simulator.get("/_admin/calendly/counters")
    assert isinstance(counters, dict)
    assert (counters["statuses"]["429"], counters["statuses"]["503"], counters["statuses"]["0"]) == (3, 2, 1)


async def test_an_expired_token_is_refreshed_once_and_a_refused_one_needs_reauthorization(
    small_simulator: Simulator,
) -> None:
    simulator = small_simulator
    account = await simulator.account()
    await simulator.post("/_admin/calendly/oauth/expire-access-tokens")
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0)
    try:
        pages = await drain(open_calendly(http, connection(simulator, account)))
        # The refresh token above is spent now: reusing it is invalid_grant, so reauthorization.
        await simulator.post("/_admin/calendly/oauth/expire-access-tokens")
        with pytest.raises(ProviderAuthError, match="reauthorization required") as caught:
            await drain(open_calendly(http, connection(simulator, account)))
    finally:
        await http.aclose()
    assert imported(pages).keys() == (await simulator.bookings()).keys()
    assert account["refresh_token"] not in str(caught.value)
    oauth = await simulator.get("/_admin/calendly/oauth")
    assert oauth == {"refreshes": 1, "invalid_grants": 1, "rate_limited": 0}


@pytest.fixture
async def database(database_url: str, service_database_url: str) -> str:
    """A migrated database; yields the services' DSN (row-level security applies to it)."""
    owner = await asyncpg.connect(database_url)
    try:
        await migrate(owner)
    finally:
        await owner.close()
    return service_database_url


async def test_two_fetchers_refreshing_one_connection_spend_its_refresh_token_once(
    small_simulator: Simulator, database: str
) -> None:
    simulator = small_simulator
    account = await simulator.account()
    keyring = Keyring([("k1", bytes(range(32)))])
    config = connection(simulator, account)
    pools = [await asyncpg.create_pool(database, min_size=1, max_size=2) for _ in range(2)]
    try:
        async with pools[0].acquire() as conn:
            await connections_db.put_connection(
                conn, keyring=keyring, tenant_id=TENANT, connection_id="calendly", external_source="calendly",
                base_url=config.base_url, credentials=config.credentials, settings=config.settings,
                now=datetime.now(UTC),
            )  # fmt: skip
        await simulator.post("/_admin/calendly/oauth/expire-access-tokens")
        # Two fetcher processes (two pools), each with its own HTTP client, both holding the expired token.
        https = [ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0) for _ in pools]
        stores = [
            PostgresConnectionStateStore(
                pool=pool,
                keyring=keyring,
                tenant_id=TENANT,
                connection_id="calendly",
                clock=lambda: datetime.now(UTC),
                refresh_owner=f"fetcher-{number}",
                refresh_poll_seconds=0.05,
            )
            for number, pool in enumerate(pools)
        ]
        try:
            results = await asyncio.gather(
                *(drain(open_calendly(http, config, state=store)) for http, store in zip(https, stores, strict=True))
            )
        finally:
            for http in https:
                await http.aclose()
        async with pools[0].acquire() as conn, tenant_transaction(conn, TENANT):
            ciphertext = await conn.fetchval(
                "SELECT credentials_ciphertext FROM connections WHERE tenant_id = $1 AND connection_id = 'calendly'",
                uuid.UUID(TENANT),
            )
    finally:
        for pool in pools:
            await pool.close()

    oauth = await simulator.get("/_admin/calendly/oauth")
    assert oauth == {"refreshes": 1, "invalid_grants": 0, "rate_limited": 0}
    expected = (await simulator.bookings()).keys()
    assert all(imported(pages).keys() == expected for pages in results)
    stored = keyring.decrypt(bytes(ciphertext), tenant_id=TENANT, connection_id="calendly")
    current = await simulator.account()
    assert stored["access_token"] == current["access_token"] != account["access_token"]
    assert stored["refresh_token"] == current["refresh_token"] != account["refresh_token"]
    assert stored["client_secret"] == account["client_secret"]
