"""The gateway's credential probe against the provider simulator's identity endpoints (in process, on
127.0.0.1): each source's right credentials pass, wrong ones are the provider's 401."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date

import pytest
from aiohttp import web

from apptsync.gateway.translate import ConnectionInput
from apptsync.gateway.verify import CredentialProbe
from apptsync.shared.appointments import Source
from apptsync.shared.errors import ProviderAuthError, ProviderRejectedError
from apptsync.shared.outbound import OutboundPolicy
from apptsync.simulator._server import build_app
from apptsync.simulator._state import SimulatorState

pytestmark = pytest.mark.integration


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[str, SimulatorState]]:
    state = SimulatorState.seeded(seed=3, accounts=2, appointments_per_account=5, anchor=date(2024, 6, 15))
    runner = web.AppRunner(build_app(state), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", state
    finally:
        await runner.cleanup()


def connection(source: Source, base_url: str, credentials: dict[str, str], **settings: str) -> ConnectionInput:
    return ConnectionInput(tenant_id="t", connection_id="c", external_source=source.value, base_url=base_url,
                           credentials=credentials, settings=settings)  # fmt: skip


async def test_each_sources_identity_read_accepts_the_right_credentials_and_refuses_wrong_ones(
    simulator: tuple[str, SimulatorState],
) -> None:
    url, state = simulator
    probe = CredentialProbe(outbound=OutboundPolicy.allowing(url), timeout_seconds=5.0)
    try:
        acuity = next(iter(state.acuity.accounts.values()))
        calendly = state.calendly.tokens.current(1).access_token
        google = state.google.accounts[1]
        google_token = state.google.tokens.current(1).access_token
        calendars = ",".join(c.id for c in google.calendars)
        basic = {"user_id": str(acuity.user_id), "api_key": acuity.api_key}
        good = [
            connection(Source.ACUITY, f"{url}/acuity/api/v1", basic),
            connection(Source.ACUITY, f"{url}/acuity/api/v1", {"access_token": acuity.access_token}),
            connection(Source.CALENDLY, f"{url}/calendly", {"access_token": calendly}),
            connection(Source.GOOGLE_CALENDAR, f"{url}/google/calendar/v3", {"access_token": google_token},
                       calendar_ids=calendars),
        ]  # fmt: skip
        for given in good:
            await probe.verify(given)
        wrong = [
            (connection(Source.ACUITY, f"{url}/acuity/api/v1", {"user_id": str(acuity.user_id), "api_key": "nope"}),
             "acuity answered GET /me with 401: unauthorized: Unauthorized"),
            (connection(Source.CALENDLY, f"{url}/calendly", {"access_token": "nope"}),
             "calendly answered GET /users/me with 401: Unauthenticated: The access token is invalid or expired."),
            (connection(Source.GOOGLE_CALENDAR, f"{url}/google/calendar/v3", {"access_token": "nope"},
                        calendar_ids=calendars),
             "google_calendar answered GET /calendars/"),
        ]  # fmt: skip
        for given, message in wrong:
            with pytest.raises(ProviderAuthError, match="credentials refused") as caught:
                await probe.verify(given)
            assert message in str(caught.value)
            assert "nope" not in str(caught.value)
        unknown = connection(Source.GOOGLE_CALENDAR, f"{url}/google/calendar/v3", {"access_token": google_token},
                             calendar_ids="not-a-calendar")  # fmt: skip
        with pytest.raises(ProviderRejectedError, match="GET /calendars/not-a-calendar with 404: Not Found"):
            await probe.verify(unknown)
    finally:
        await probe.aclose()


async def test_the_identity_reads_are_not_counted_as_provider_requests(simulator: tuple[str, SimulatorState]) -> None:
    url, state = simulator
    probe = CredentialProbe(outbound=OutboundPolicy.allowing(url), timeout_seconds=5.0)
    acuity = next(iter(state.acuity.accounts.values()))
    try:
        await probe.verify(connection(Source.ACUITY, f"{url}/acuity/api/v1",
                                      {"user_id": str(acuity.user_id), "api_key": acuity.api_key}))  # fmt: skip
    finally:
        await probe.aclose()
    # An import's request counts (which suites assert) stay the listing traffic's alone.
    assert state.providers["acuity"].counters.requests == 0
