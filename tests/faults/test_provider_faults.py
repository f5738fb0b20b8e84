"""Provider faults end to end, through gateway, fetcher, broker and writer as real processes, injected
with the simulator's fault knobs: 429 storms with and without Retry-After, 5xx, connection resets,
slow bodies, empty pages mid-listing and a paging loop. A fault the retry policy outlasts ends in
SUCCEEDED with exactly the provider's records; one it cannot outlast ends in FAILED with the reason.

One system serves the module (its start-up dominates a scenario's cost); each scenario imports into
a tenant of its own and sets its own knobs. Imports are 3,000 appointments per provider account.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio

from apptsync.v1 import imports_pb2
from tests.containers.fixtures import BrokerContainer, PostgresServerContainer
from tests.faults.fault_system import (
    FaultSystem,
    acuity_source_ids,
    assert_failed_loudly,
    assert_landed_exactly,
    fault_env,
    fault_system,
    finished_job,
    job_window,
    new_tenant,
    put_acuity_connection,
    start_import,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
APPOINTMENTS = 3_000
# Every request must finish within this (asyncio.timeout around the whole request, body included).
HTTP_TIMEOUT_SECONDS = 1.0
PAGE_SIZE = 100


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(
    postgres_server: PostgresServerContainer, broker: BrokerContainer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FaultSystem]:
    postgres_server.ensure_running()
    name = f"faults_provider_{uuid.uuid4().hex[:8]}"
    owner_url = postgres_server.create_database(name)
    tmp_path = tmp_path_factory.mktemp("provider-faults")
    env = fault_env(
        tmp_path,
        appointments=APPOINTMENTS,
        providers="acuity,google",
        APPTSYNC_FETCHER_HTTP_TIMEOUT_SECONDS=str(HTTP_TIMEOUT_SECONDS),
    )
    try:
        async with fault_system(
            owner_database_url=owner_url,
            service_database_url=postgres_server.service_dsn(name),
            bootstrap_servers=broker.bootstrap_servers,
            tmp_path=tmp_path,
            env=env,
        ) as running:
            yield running
    finally:
        postgres_server.drop_database(name)


async def import_acuity_under(system: FaultSystem, **knobs: object) -> imports_pb2.Job:
    """A first import of a new tenant with `knobs` set on the Acuity simulator (counters reset)."""
    await system.clear_faults("acuity")
    (await system.simulator.delete("/_admin/acuity/counters")).raise_for_status()
    await system.set_faults("acuity", **knobs)
    tenant_id = new_tenant()
    await put_acuity_connection(system, tenant_id)
    job_id = await start_import(system, tenant_id, page_size=PAGE_SIZE)
    try:
        return await finished_job(system, tenant_id, job_id)
    finally:
        await system.clear_faults("acuity")


async def test_a_429_storm_with_retry_after_is_waited_out(system: FaultSystem) -> None:
    job = await import_acuity_under(system, fail_next_429=4, retry_after="1")
    await assert_landed_exactly(system, job, await acuity_source_ids(system))
    assert (await system.statuses("acuity"))["429"] == 4


async def test_a_429_storm_without_retry_after_is_backed_off(system: FaultSystem) -> None:
    job = await import_acuity_under(system, fail_next_429=4)
    await assert_landed_exactly(system, job, await acuity_source_ids(system))
    assert (await system.statuses("acuity"))["429"] == 4


async def test_a_429_storm_longer_than_the_retry_budget_fails_the_job(system: FaultSystem) -> None:
    job = await import_acuity_under(system, fail_next_429=1_000, retry_after="1")
    await assert_failed_loudly(system, job, await acuity_source_ids(system), error_contains="answered 429")
    assert "provider unavailable after retries" in job.error
    assert "gave up after 6 attempts" in job.error
    assert (await system.statuses("acuity"))["429"] == 6


async def test_server_errors_are_retried(system: FaultSystem) -> None:
    job = await import_acuity_under(system, fail_next_5xx=4, status_5xx=502)
    await assert_landed_exactly(system, job, await acuity_source_ids(system))
    assert (await system.statuses("acuity"))["502"] == 4


async def test_connection_resets_are_retried(system: FaultSystem) -> None:
    job = await import_acuity_under(system, reset_next_connections=4)
    await assert_landed_exactly(system, job, await acuity_source_ids(system))
    assert job.counts.pages_fetched > 1


async def test_slow_bodies_within_the_timeout_land_exactly(system: FaultSystem) -> None:
    # Pages of 100 records are ~80 KiB: 80 pauses of 2 ms, well inside the 1 s request timeout.
    job = await import_acuity_under(system, slow_body_ms=2)
    await assert_landed_exactly(system, job, await acuity_source_ids(system))


async def test_bodies_slower_than_the_timeout_fail_the_job(system: FaultSystem) -> None:
    # 80 pauses of 25 ms: 2 s a body, past the 1 s request timeout on every attempt.
    job = await import_acuity_under(system, slow_body_ms=25)
    await assert_failed_loudly(system, job, await acuity_source_ids(system), error_contains="timeout")
    assert "gave up after 6 attempts" in job.error
    assert job.counts.pages_written == job.counts.pages_fetched == 0


# --------------------------------------------------------------------------- Google Calendar


async def google_account(system: FaultSystem) -> dict[str, object]:
    accounts = (await system.simulator.get("/_admin/google/accounts")).raise_for_status().json()
    account: dict[str, object] = accounts[0]
    return account


async def put_google_connection(system: FaultSystem, tenant_id: str) -> None:
    account = await google_account(system)
    calendars = account["calendars"]
    assert isinstance(calendars, list)
    base_url = system.services.addresses.simulator_url
    await system.stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=tenant_id,
            connection_id="google",
            source=imports_pb2.SOURCE_GOOGLE_CALENDAR,
            base_url=f"{base_url}/google/calendar/v3",
            credentials={k: str(account[k]) for k in ("access_token", "refresh_token", "client_id", "client_secret")},
            settings={
                "calendar_ids": ",".join(str(c["id"]) for c in calendars),
                "token_url": f"{base_url}/google/oauth2/token",
            },
        ),
        metadata=system.metadata,
        timeout=30,
    )


def google_start(record: dict[str, object]) -> datetime:
    event = record["event"]
    assert isinstance(event, dict)
    start = event["start"]
    if "dateTime" in start:
        return datetime.fromisoformat(start["dateTime"])
    return datetime.combine(date.fromisoformat(start["date"]), time.min, ZoneInfo(str(record["calendar_timezone"])))


async def google_source_ids(system: FaultSystem) -> set[str]:
    """`calendarId/eventId` of the simulator's events starting inside job_window()."""
    window = job_window()
    start, end = window.start.ToDatetime(tzinfo=UTC), window.end.ToDatetime(tzinfo=UTC)
    records = (await system.simulator.get("/_admin/google/accounts/1/events")).raise_for_status().json()
    return {f"{r['calendar_id']}/{r['event']['id']}" for r in records if start <= google_start(r) < end}


async def import_google_under(system: FaultSystem, **knobs: object) -> imports_pb2.Job:
    await system.clear_faults("google")
    await system.set_faults("google", **knobs)
    tenant_id = new_tenant()
    await put_google_connection(system, tenant_id)
    job_id = await start_import(system, tenant_id, connection_id="google", source=imports_pb2.SOURCE_GOOGLE_CALENDAR,
                                page_size=PAGE_SIZE)  # fmt: skip
    try:
        return await finished_job(system, tenant_id, job_id)
    finally:
        await system.clear_faults("google")


async def test_empty_pages_mid_listing_do_not_end_the_job(system: FaultSystem) -> None:
    # Acuity has no cursor (its pager walks date windows; empty windows are walked past in every
    # Acuity scenario above): Google's listing is the one that hands out empty pages mid-way.
    job = await import_google_under(system, empty_page_every=2)
    await assert_landed_exactly(system, job, await google_source_ids(system))
    assert job.counts.pages_fetched >= APPOINTMENTS // PAGE_SIZE


async def test_a_provider_repeating_its_page_token_fails_the_job_with_a_pagination_loop(system: FaultSystem) -> None:
    job = await import_google_under(system, repeat_page_token=True)
    await assert_failed_loudly(system, job, await google_source_ids(system), error_contains="pagination loop")
    # The first page landed (its token was new); the loop was caught on the second.
    assert job.counts.pages_written == job.counts.pages_fetched == 1
