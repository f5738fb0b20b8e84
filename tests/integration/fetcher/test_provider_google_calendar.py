"""The Google Calendar provider against the simulator over real HTTP on 127.0.0.1.

A 5,000-event import across two calendars with quirks on (empty pages mid-listing, all-day events in
DST zones, cancelled events) lands exactly the simulator's set; the next import is incremental by
sync token; admin changes show up, deleted events as cancellation stubs of their keys; an expired
sync token (410) falls back to a full sync; a burst of 429 / 403 rateLimitExceeded / 5xx is retried
and counted; and the sync state persists in PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from apptsync.fetcher.connection_state import PostgresConnectionStateStore
from apptsync.fetcher.providers import (
    ConnectionConfig,
    ConnectionStateStore,
    InMemoryConnectionStateStore,
    JobWindow,
    ProviderHttp,
    ProviderPage,
    RetryPolicy,
    open_session,
)
from apptsync.fetcher.providers.google_calendar import GoogleCalendarSession, SyncState, sync_state_key
from apptsync.shared.appointments import AppointmentStatus, CancellationStub, CanonicalAppointment, PageRecord, Source
from apptsync.shared.credentials import Keyring
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db.migrator import migrate
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
TENANT = "0b6f4a52-91d3-4e0c-8f7a-3c2d1e5b9a80"


@dataclass
class Simulator:
    running: RunningSimulator
    admin: httpx.AsyncClient

    async def set_faults(self, **knobs: object) -> None:
        (await self.admin.put("/_admin/google/faults", json=knobs)).raise_for_status()

    async def call(self, method: str, path: str, body: dict[str, object] | None = None) -> object:
        response = await self.admin.request(method, path, json=body)
        response.raise_for_status()
        answer: object = response.json()
        return answer

    async def account(self) -> dict[str, object]:
        accounts = await self.call("GET", "/_admin/google/accounts")
        assert isinstance(accounts, list)
        account: dict[str, object] = accounts[0]
        return account

    async def statuses(self) -> dict[str, int]:
        counters = await self.call("GET", "/_admin/google/counters")
        assert isinstance(counters, dict)
        statuses: dict[str, int] = counters["statuses"]
        return statuses

    async def data_set(self) -> dict[str, dict[str, object]]:
        """`{calendarId}/{eventId}` -> the simulator's record, for every event starting in the window
        (a deleted event has no start: it is not part of the set)."""
        data = await self.call("GET", "/_admin/google/accounts/1/events")
        assert isinstance(data, list)
        return {f"{r['calendar_id']}/{r['event']['id']}": r for r in data
                if "start" in r["event"] and EVERYTHING.contains(start_of(r))}  # fmt: skip


def start_of(record: dict[str, object]) -> datetime:
    event = record["event"]
    assert isinstance(event, dict)
    start = event["start"]
    if "dateTime" in start:
        return datetime.fromisoformat(start["dateTime"])
    day = date.fromisoformat(start["date"])
    return datetime.combine(day, time.min, ZoneInfo(str(record["calendar_timezone"])))


async def start(events: int) -> AsyncIterator[Simulator]:
    settings = SimulatorSettings(
        listen_address="127.0.0.1:0", seed=5, appointments_per_tenant=events, anchor_date=ANCHOR,
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
    async for simulator in start(400):
        yield simulator


def calendar_ids(account: dict[str, object]) -> list[str]:
    calendars = account["calendars"]
    assert isinstance(calendars, list)
    return [str(c["id"]) for c in calendars]


def simulator_only(simulator: Simulator) -> OutboundPolicy:
    """The outbound policy of a deployment whose only allowed origin is this test's simulator."""
    return OutboundPolicy.allowing(simulator.running.base_url)


def connection(simulator: Simulator, account: dict[str, object]) -> ConnectionConfig:
    return ConnectionConfig(
        base_url=simulator.running.google_base_url,
        credentials={k: str(account[k]) for k in ("access_token", "refresh_token", "client_id", "client_secret")},
        settings={"calendar_ids": ",".join(calendar_ids(account)), "token_url": simulator.running.google_token_url},
    )


def open_google(
    http: ProviderHttp, config: ConnectionConfig, state: ConnectionStateStore, *, page_size: int = 250
) -> GoogleCalendarSession:
    session = open_session(
        Source.GOOGLE_CALENDAR, http=http, connection=config, window=EVERYTHING, page_size=page_size,
        cursor=None, clock=lambda: datetime.now(UTC), state=state,
    )  # fmt: skip
    assert isinstance(session, GoogleCalendarSession)
    return session


async def drain(session: GoogleCalendarSession) -> list[ProviderPage]:
    pages: list[ProviderPage] = []
    for _ in range(MAX_PAGES):
        page = await session.next_page()
        if page is None:
            return pages
        pages.append(page)
    raise AssertionError(f"no end after {MAX_PAGES} pages")


def records(pages: list[ProviderPage]) -> dict[str, PageRecord]:
    """Every appointment and cancellation stub of the pages, by external id."""
    listed = [a for page in pages for a in page.appointments]
    by_id = {a.external_id: a for a in listed}
    assert len(by_id) == len(listed), "an event came in two pages"
    for page in pages:
        assert page.records_fetched == len(page.appointments) + page.skipped_out_of_window + page.skipped_invalid
    return by_id


def imported(pages: list[ProviderPage]) -> dict[str, CanonicalAppointment]:
    """The appointments of a listing in which no event was deleted (so it holds no stub)."""
    by_id = records(pages)
    appointments = {k: a for k, a in by_id.items() if isinstance(a, CanonicalAppointment)}
    assert appointments.keys() == by_id.keys(), "no event was deleted: no stub expected"
    return appointments


def split(by_id: dict[str, PageRecord]) -> tuple[dict[str, CanonicalAppointment], dict[str, CancellationStub]]:
    return (
        {k: a for k, a in by_id.items() if isinstance(a, CanonicalAppointment)},
        {k: a for k, a in by_id.items() if isinstance(a, CancellationStub)},
    )


def assert_matches(appointment: CanonicalAppointment, record: dict[str, object]) -> None:
    event = record["event"]
    assert isinstance(event, dict)
    assert appointment.raw_json == json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    assert appointment.starts_at == start_of(record)
    expected_status = AppointmentStatus.CANCELED if event["status"] == "cancelled" else AppointmentStatus.SCHEDULED
    assert appointment.status is expected_status
    all_day = "date" in event["start"]
    assert appointment.timezone == (record["calendar_timezone"] if all_day else event["start"]["timeZone"])
    assert appointment.observed_at == datetime.fromisoformat(event["updated"])
    assert appointment.calendar == record["calendar_summary"]
    assert appointment.title == event["summary"]
    client = [a for a in event.get("attendees", []) if not a.get("organizer")]
    assert appointment.contact.email == (client[0]["email"].lower() if client else "")


async def test_an_import_of_5000_events_is_exact_and_the_next_one_is_incremental(big_simulator: Simulator) -> None:
    simulator = big_simulator
    # Quirk on: every third page of a listing comes back empty, with a nextPageToken.
    await simulator.set_faults(empty_page_every=3)
    account = await simulator.account()
    state = InMemoryConnectionStateStore()
    http = ProviderHttp(outbound=simulator_only(big_simulator), timeout_seconds=10.0)
    try:
        first = await drain(open_google(http, connection(simulator, account), state))
        requests_of_first = await simulator.call("GET", "/_admin/google/counters")
        again = open_google(http, connection(simulator, account), state)
        second = await drain(again)
    finally:
        await http.aclose()

    expected = await simulator.data_set()
    got = imported(first)
    assert len(expected) == 5_000
    assert got.keys() == expected.keys()
    for key, appointment in got.items():
        assert_matches(appointment, expected[key])
    assert {a.status for a in got.values()} == {AppointmentStatus.SCHEDULED, AppointmentStatus.CANCELED}
    all_day = [a for a in got.values() if "date" in json.loads(a.raw_json)["start"]]
    assert all_day and all(a.starts_at.astimezone(ZoneInfo(a.timezone)).time() == time.min for a in all_day)
    assert len({a.external_id.split("/")[0] for a in got.values()}) == 2
    assert isinstance(requests_of_first, dict)
    assert requests_of_first["statuses"] == {"200": requests_of_first["requests"]}
    assert requests_of_first["requests"] > len(first)  # empty pages were walked past
    # Nothing changed since: the second import asks with the stored sync tokens and gets nothing.
    assert second == []
    assert set(state.values) == {sync_state_key(c) for c in calendar_ids(account)}


async def test_changes_reach_the_incremental_sync_and_a_full_sync(small_simulator: Simulator) -> None:
    simulator = small_simulator
    account = await simulator.account()
    state = InMemoryConnectionStateStore()
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0)
    try:
        before = imported(await drain(open_google(http, connection(simulator, account), state)))
        confirmed = sorted(k for k, a in before.items() if a.status is AppointmentStatus.SCHEDULED)
        to_cancel, to_move, to_delete = confirmed[:5], confirmed[5:10], confirmed[10:13]
        calendar = str(to_cancel[0]).split("/")[0]
        added = []
        for n in range(5):
            event = await simulator.call(
                "POST", f"/_admin/google/accounts/1/calendars/{calendar}/events",
                {"start": f"2024-07-0{n + 1}T09:30:00+02:00", "summary": "Neu \u2013 Termin"}
                if n else {"date": "2024-07-10", "summary": "Ganzt\u00e4gig"},
            )  # fmt: skip
            assert isinstance(event, dict)
            added.append(f"{calendar}/{event['id']}")
        for key in to_cancel:
            cal, event_id = key.split("/")
            await simulator.call("POST", f"/_admin/google/accounts/1/calendars/{cal}/events/{event_id}/cancel")
        for key in to_delete:
            cal, event_id = key.split("/")
            await simulator.call(
                "POST", f"/_admin/google/accounts/1/calendars/{cal}/events/{event_id}/cancel", {"delete": True}
            )
        for n, key in enumerate(to_move):
            cal, event_id = key.split("/")
            await simulator.call(
                "POST", f"/_admin/google/accounts/1/calendars/{cal}/events/{event_id}/reschedule",
                {"start": f"2024-09-1{n}T16:00:00Z"},
            )  # fmt: skip
        incremental_session = open_google(http, connection(simulator, account), state)
        incremental, deleted = split(records(await drain(incremental_session)))
        full_listing = open_google(http, connection(simulator, account), InMemoryConnectionStateStore())
        full, deleted_in_full = split(records(await drain(full_listing)))
    finally:
        await http.aclose()

    changed = set(added) | set(to_cancel) | set(to_move)
    assert incremental.keys() == changed  # exactly the 15 changes, nothing else
    # Deleted events come as stubs of the keys they were stored under: id and status only.
    assert deleted.keys() == deleted_in_full.keys() == set(to_delete)
    for key, stub in deleted.items():
        assert stub.status is AppointmentStatus.CANCELED
        assert set(json.loads(stub.raw_json)) == {"kind", "etag", "id", "status"}
        assert stub.content_hash == deleted_in_full[key].content_hash
    expected = await simulator.data_set()
    assert full.keys() == expected.keys() == (before.keys() | set(added)) - set(to_delete)
    for key, appointment in full.items():
        assert_matches(appointment, expected[key])
        assert incremental.get(key, appointment).content_hash == appointment.content_hash
    assert all(full[k].status is AppointmentStatus.CANCELED for k in to_cancel)
    assert all(full[k].starts_at.month == 9 for k in to_move)
    assert full[added[0]].timezone == "Europe/Berlin"  # all-day: midnight in the calendar's zone
    assert full[added[0]].starts_at == datetime(2024, 7, 9, 22, 0, tzinfo=UTC)


async def test_an_expired_sync_token_leads_to_a_full_sync_not_a_failure(small_simulator: Simulator) -> None:
    simulator = small_simulator
    account = await simulator.account()
    state = InMemoryConnectionStateStore()
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0)
    try:
        first = imported(await drain(open_google(http, connection(simulator, account), state)))
        tokens_before = dict(state.values)
        await simulator.call("POST", "/_admin/google/sync-tokens/expire")
        session = open_google(http, connection(simulator, account), state)
        again = imported(await drain(session))
    finally:
        await http.aclose()
    assert session.full_syncs_after_gone == 2  # one 410 per calendar, each followed by a full listing
    assert again.keys() == first.keys() == (await simulator.data_set()).keys()
    assert set(state.values) == set(tokens_before) and state.values != tokens_before  # fresh tokens stored
    statuses = await simulator.statuses()
    assert statuses["410"] == 2


async def test_a_burst_of_429_403_rate_limits_5xx_and_resets_is_retried_and_counted(small_simulator: Simulator) -> None:
    simulator = small_simulator
    await simulator.set_faults(fail_next_429=2, fail_next_403_rate_limit=2, fail_next_5xx=2, reset_next_connections=1)
    account = await simulator.account()
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0, retry=FAST_RETRIES)
    session = open_google(http, connection(simulator, account), InMemoryConnectionStateStore(), page_size=50)
    try:
        pages = await drain(session)
    finally:
        await http.aclose()
    assert session.retries == 7
    assert imported(pages).keys() == (await simulator.data_set()).keys()
    statuses = await simulator.statuses()
    assert (statuses["429"], statuses["403"], statuses["503"], statuses["0"]) == (2, 2, 2, 1)


async def test_sync_tokens_and_refreshed_credentials_persist_in_postgresql(
    small_simulator: Simulator, database_url: str, service_database_url: str
) -> None:
    simulator = small_simulator
    account = await simulator.account()
    owner = await asyncpg.connect(database_url)
    try:
        await migrate(owner)
    finally:
        await owner.close()
    keyring = Keyring([("k1", bytes(range(32)))])
    config = connection(simulator, account)
    pool = await asyncpg.create_pool(service_database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await connections_db.put_connection(
                conn, keyring=keyring, tenant_id=TENANT, connection_id="google", external_source="google_calendar",
                base_url=config.base_url, credentials=config.credentials, settings=config.settings,
                now=datetime.now(UTC),
            )  # fmt: skip
        store = PostgresConnectionStateStore(
            pool=pool, keyring=keyring, tenant_id=TENANT, connection_id="google", clock=lambda: datetime.now(UTC),
            refresh_owner="fetcher-1",
        )
        await simulator.call("POST", "/_admin/google/oauth/expire-access-tokens")
        http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0)
        try:
            first_session = open_google(http, config, store)
            first = imported(await drain(first_session))
            async with pool.acquire() as conn:
                loaded = await connections_db.load_connection_secrets(
                    conn, keyring=keyring, tenant_id=TENANT, connection_id="google"
                )
            assert loaded is not None
            # A later job starts from the stored (refreshed) credentials and the stored sync tokens.
            later = ConnectionConfig(base_url=config.base_url, credentials=loaded[1], settings=config.settings)
            second_session = open_google(http, later, store)
            second = await drain(second_session)
        finally:
            await http.aclose()
        tokens = [await store.load(sync_state_key(c)) for c in calendar_ids(account)]
    finally:
        await pool.close()
    assert first.keys() == (await simulator.data_set()).keys()
    assert first_session.refreshes == 1 and second_session.refreshes == 0
    assert loaded[1]["access_token"] != account["access_token"]
    assert second == []
    assert all(isinstance(t, dict) and t["sync_token"] for t in tokens)


async def test_a_rolling_window_is_synced_incrementally_plus_a_full_listing_of_its_new_days(
    small_simulator: Simulator,
) -> None:
    simulator = small_simulator
    account = await simulator.account()
    state = InMemoryConnectionStateStore()
    first_window = JobWindow(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 9, 1, tzinfo=UTC))
    rolled = JobWindow(datetime(2024, 3, 15, tzinfo=UTC), datetime(2024, 9, 15, tzinfo=UTC))
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0)

    def windowed(window: JobWindow) -> GoogleCalendarSession:
        session = open_session(
            Source.GOOGLE_CALENDAR, http=http, connection=connection(simulator, account), window=window,
            page_size=100, cursor=None, clock=lambda: datetime.now(UTC), state=state,
        )  # fmt: skip
        assert isinstance(session, GoogleCalendarSession)
        return session

    try:
        await drain(windowed(first_window))
        got = imported(await drain(windowed(rolled)))
    finally:
        await http.aclose()
    everything = await simulator.call("GET", "/_admin/google/accounts/1/events")
    assert isinstance(everything, list)
    new_days = {f"{r['calendar_id']}/{r['event']['id']}" for r in everything
                if datetime(2024, 9, 1, tzinfo=UTC) <= start_of(r) < rolled.end}  # fmt: skip
    assert new_days and got.keys() == new_days  # only the new days came, by their bounded full listing
    stored = [SyncState.from_json(v) for v in state.values.values()]
    assert all(s is not None and (s.window_start, s.window_end) == (rolled.start, rolled.end) for s in stored)
