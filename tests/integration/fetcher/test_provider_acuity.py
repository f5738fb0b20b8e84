"""The Acuity provider against the simulator over real HTTP on 127.0.0.1.

Checks the import is complete and exact (quirks on: ignored minDate, silent truncation), that the
shared rate budget holds across concurrent jobs, and that injected faults are retried and counted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from apptsync.fetcher.providers import (
    ConnectionConfig,
    JobWindow,
    ProviderHttp,
    ProviderPage,
    ProviderSession,
    RetryPolicy,
    open_session,
)
from apptsync.shared.appointments import AppointmentStatus, CanonicalAppointment, Money, Source
from apptsync.shared.errors import ProviderAuthError, ProviderUnavailableError
from apptsync.shared.outbound import OutboundPolicy
from apptsync.shared.settings import SimulatorSettings
from apptsync.simulator import DEMO_API_KEY, DEMO_USER_ID, RunningSimulator, account_for, running_simulator
from tests.scale import scaled

pytestmark = pytest.mark.integration

ANCHOR = date(2024, 6, 15)
WINDOW = JobWindow(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 9, 1, tzinfo=UTC))
FAST_RETRIES = RetryPolicy(
    max_attempts=8, max_total_seconds=30.0, initial_backoff_seconds=0.05, max_backoff_seconds=0.2
)
MAX_PAGES = 1_000


@dataclass
class Simulator:
    running: RunningSimulator
    admin: httpx.AsyncClient

    async def set_faults(self, **knobs: object) -> None:
        (await self.admin.put("/_admin/acuity/faults", json=knobs)).raise_for_status()

    async def counters(self) -> dict[str, object]:
        response = await self.admin.get("/_admin/acuity/counters")
        response.raise_for_status()
        counters: dict[str, object] = response.json()
        return counters

    async def data_set(self, user_id: int) -> dict[str, dict[str, object]]:
        response = await self.admin.get(
            f"/_admin/acuity/accounts/{user_id}/appointments", params={"excludeForms": "true"}
        )
        response.raise_for_status()
        return {str(record["id"]): record for record in response.json()}


async def start(appointments: int) -> AsyncIterator[Simulator]:
    settings = SimulatorSettings(
        listen_address="127.0.0.1:0", seed=7, appointments_per_tenant=appointments, anchor_date=ANCHOR
    )
    async with running_simulator(settings) as running, httpx.AsyncClient(base_url=running.base_url) as admin:
        yield Simulator(running, admin)


@pytest.fixture
async def big_simulator() -> AsyncIterator[Simulator]:
    async for simulator in start(5_000):
        yield simulator


@pytest.fixture
async def small_simulator() -> AsyncIterator[Simulator]:
    async for simulator in start(600):
        yield simulator


def simulator_only(simulator: Simulator) -> OutboundPolicy:
    """The outbound policy of a deployment whose only allowed origin is this test's simulator."""
    return OutboundPolicy.allowing(simulator.running.base_url)


def connection(simulator: Simulator, user_id: int = DEMO_USER_ID) -> ConnectionConfig:
    account = account_for(user_id)
    return ConnectionConfig(
        base_url=simulator.running.acuity_base_url,
        credentials={"user_id": str(account.user_id), "api_key": account.api_key},
    )


def open_acuity(
    simulator: Simulator,
    http: ProviderHttp,
    *,
    user_id: int = DEMO_USER_ID,
    window: JobWindow = WINDOW,
    page_size: int = 100,
) -> ProviderSession:
    return open_session(
        Source.ACUITY,
        http=http,
        connection=connection(simulator, user_id),
        window=window,
        page_size=page_size,
        cursor=None,
        clock=lambda: datetime.now(UTC),
    )


async def drain(session: ProviderSession) -> list[ProviderPage]:
    pages: list[ProviderPage] = []
    for _ in range(MAX_PAGES):
        page = await session.next_page()
        if page is None:
            return pages
        pages.append(page)
    raise AssertionError(f"no end after {MAX_PAGES} pages")


def inside(data_set: dict[str, dict[str, object]], window: JobWindow) -> dict[str, dict[str, object]]:
    return {
        key: record
        for key, record in data_set.items()
        if window.contains(datetime.fromisoformat(str(record["datetime"])))
    }


def imported(pages: list[ProviderPage]) -> dict[str, CanonicalAppointment]:
    records = [a for page in pages for a in page.appointments]
    appointments = [a for a in records if isinstance(a, CanonicalAppointment)]
    assert len(appointments) == len(records), "Acuity lists no record without its times"
    by_id = {a.external_id: a for a in appointments}
    assert len(by_id) == len(appointments), "an appointment came in two pages"
    return by_id


def assert_matches(appointment: CanonicalAppointment, record: dict[str, object]) -> None:
    assert appointment.raw_json == json.dumps(record, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    starts_at = datetime.fromisoformat(str(record["datetime"]))
    assert appointment.starts_at == starts_at
    assert appointment.ends_at == starts_at + timedelta(minutes=int(str(record["duration"])))
    expected_status = (
        AppointmentStatus.NO_SHOW
        if record.get("noShow") is True
        else AppointmentStatus.CANCELED
        if record["canceled"]
        else AppointmentStatus.SCHEDULED
    )
    assert appointment.status is expected_status
    assert appointment.timezone == record["timezone"]
    assert appointment.contact.email == str(record["email"]).strip().lower()
    assert appointment.price == Money(int(Decimal(str(record["price"])) * 100), "USD")


async def test_a_full_import_is_exact_and_keeps_the_acuity_budget(big_simulator: Simulator) -> None:
    """At Acuity's real 10 requests/s, where most records ask for their payments too: the walks span
    1 month and 1 week in CI (~400 requests), the whole WINDOW and 1 month under --long (~1,700)."""
    simulator = big_simulator
    await simulator.set_faults(ignore_min_date=True, latency_ms=20)
    http = ProviderHttp(outbound=simulator_only(big_simulator), timeout_seconds=10.0)
    narrow = JobWindow(datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)
                       + timedelta(days=scaled(ci=7, long=30)))
    window = JobWindow(datetime(2024, scaled(ci=8, long=3), 1, tzinfo=UTC), WINDOW.end)
    try:
        main, *others = await asyncio.gather(
            drain(open_acuity(simulator, http, window=window)),
            # Small pages: whole windows come back truncated and must be split.
            drain(open_acuity(simulator, http, user_id=1002, window=narrow, page_size=20)),
            drain(open_acuity(simulator, http, user_id=1003, window=narrow, page_size=20)),
        )
    finally:
        await http.aclose()

    expected = inside(await simulator.data_set(DEMO_USER_ID), window)
    got = imported(main)
    assert len(expected) > scaled(ci=300, long=2_000)
    assert got.keys() == expected.keys()
    for key, appointment in got.items():
        assert_matches(appointment, expected[key])
    statuses = {a.status for a in got.values()}
    assert statuses == {AppointmentStatus.SCHEDULED, AppointmentStatus.CANCELED, AppointmentStatus.NO_SHOW}
    # The quirk really happened: records before minDate came back and were counted, not stored.
    assert sum(page.skipped_out_of_window for page in main) > 0
    for page in main:
        assert page.records_fetched == len(page.appointments) + page.skipped_out_of_window + page.skipped_invalid
    for user_id, pages in zip((1002, 1003), others, strict=True):
        assert imported(pages).keys() == inside(await simulator.data_set(user_id), narrow).keys()

    counters = await simulator.counters()
    assert isinstance(counters["max_requests_per_second"], int)
    assert isinstance(counters["max_concurrent"], int)
    assert counters["max_requests_per_second"] <= 10
    assert counters["max_concurrent"] <= 20
    assert counters["statuses"] == {"200": counters["requests"]}
    page_count = len(main) + sum(len(pages) for pages in others)
    assert isinstance(counters["requests"], int)
    assert counters["requests"] > page_count  # truncated windows were asked again, narrower


async def test_the_concurrency_budget_holds_under_many_slow_jobs(small_simulator: Simulator) -> None:
    simulator = small_simulator
    await simulator.set_faults(latency_ms=2_500)
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=30.0)
    days = [ANCHOR + timedelta(days=offset) for offset in range(-15, 15)]
    windows = [JobWindow(datetime(d.year, d.month, d.day, tzinfo=UTC), datetime(d.year, d.month, d.day, tzinfo=UTC)
                         + timedelta(days=1)) for d in days]  # fmt: skip
    try:
        results = await asyncio.gather(
            *(drain(open_acuity(simulator, http, user_id=1001 + n % 3, window=w)) for n, w in enumerate(windows))
        )
    finally:
        await http.aclose()
    counters = await simulator.counters()
    assert isinstance(counters["max_concurrent"], int)
    assert isinstance(counters["max_requests_per_second"], int)
    assert 10 <= counters["max_concurrent"] <= 20
    assert counters["max_requests_per_second"] <= 10
    for n, (window, pages) in enumerate(zip(windows, results, strict=True)):
        assert imported(pages).keys() == inside(await simulator.data_set(1001 + n % 3), window).keys()


async def test_a_burst_of_429s_5xx_resets_and_broken_bodies_is_retried_and_counted(
    small_simulator: Simulator,
) -> None:
    simulator = small_simulator
    await simulator.set_faults(
        fail_next_429=3, retry_after="0", fail_next_5xx=2, reset_next_connections=1, malformed_next_bodies=1
    )
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0, retry=FAST_RETRIES)
    session = open_acuity(simulator, http)
    try:
        pages = await drain(session)
    finally:
        await http.aclose()
    assert session.retries == 7
    assert imported(pages).keys() == inside(await simulator.data_set(DEMO_USER_ID), WINDOW).keys()
    statuses = (await simulator.counters())["statuses"]
    assert isinstance(statuses, dict)
    assert (statuses["429"], statuses["503"], statuses["0"]) == (3, 2, 1)


async def test_malformed_records_are_skipped_as_invalid_and_the_rest_imported(small_simulator: Simulator) -> None:
    simulator = small_simulator
    await simulator.set_faults(malformed_record_every=5)
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0)
    try:
        pages = await drain(open_acuity(simulator, http))
    finally:
        await http.aclose()
    expected = inside(await simulator.data_set(DEMO_USER_ID), WINDOW)
    healthy = {key for key in expected if int(key) % 5 != 0}
    assert imported(pages).keys() == healthy
    assert sum(page.skipped_invalid for page in pages) >= len(expected) - len(healthy)


async def test_admin_changes_show_up_in_the_next_import(small_simulator: Simulator) -> None:
    simulator = small_simulator
    before = inside(await simulator.data_set(DEMO_USER_ID), WINDOW)
    scheduled = next(key for key, record in before.items() if not record["canceled"])
    base = f"/_admin/acuity/accounts/{DEMO_USER_ID}/appointments"
    (await simulator.admin.post(f"{base}/{scheduled}/cancel", json={"no_show": True})).raise_for_status()
    added = await simulator.admin.post(base, json={"datetime": "2024-06-20T09:30:00+0545", "firstName": "Zoë"})
    added.raise_for_status()
    moved_key = next(key for key in before if key != scheduled)
    moved = await simulator.admin.post(f"{base}/{moved_key}/reschedule", json={"datetime": "2025-01-01T10:00:00+0000"})
    moved.raise_for_status()

    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0)
    try:
        got = imported(await drain(open_acuity(simulator, http)))
    finally:
        await http.aclose()
    assert got[scheduled].status is AppointmentStatus.NO_SHOW
    assert got[str(added.json()["id"])].contact.name == "Zoë Client"
    assert moved_key not in got
    assert got.keys() == inside(await simulator.data_set(DEMO_USER_ID), WINDOW).keys()


async def test_wrong_credentials_need_reauthorization_and_stay_secret(small_simulator: Simulator) -> None:
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=10.0)
    wrong = ConnectionConfig(
        base_url=small_simulator.running.acuity_base_url,
        credentials={"user_id": str(DEMO_USER_ID), "api_key": "canary-wrong-key"},
    )
    session = open_session(
        Source.ACUITY, http=http, connection=wrong, window=WINDOW, page_size=100, cursor=None,
        clock=lambda: datetime.now(UTC),
    )  # fmt: skip
    try:
        with pytest.raises(ProviderAuthError) as caught:
            await session.next_page()
    finally:
        await http.aclose()
    assert "canary" not in str(caught.value)
    assert DEMO_API_KEY not in str(caught.value)


async def test_slowly_streamed_bodies_are_read_whole(small_simulator: Simulator) -> None:
    simulator = small_simulator
    await simulator.set_faults(slow_body_ms=2)
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=20.0)
    try:
        pages = await drain(open_acuity(simulator, http))
    finally:
        await http.aclose()
    assert imported(pages).keys() == inside(await simulator.data_set(DEMO_USER_ID), WINDOW).keys()


async def test_a_provider_slower_than_the_timeout_is_unavailable_after_retries(small_simulator: Simulator) -> None:
    simulator = small_simulator
    await simulator.set_faults(latency_ms=1_500)
    policy = RetryPolicy(max_attempts=2, max_total_seconds=10.0, initial_backoff_seconds=0.01, max_backoff_seconds=0.01)
    http = ProviderHttp(outbound=simulator_only(small_simulator), timeout_seconds=0.3, retry=policy)
    session = open_acuity(simulator, http)
    try:
        with pytest.raises(ProviderUnavailableError, match="gave up after 2 attempts"):
            await session.next_page()
    finally:
        await http.aclose()
    assert (await simulator.counters())["requests"] == 2
