"""Running the simulator: the aiohttp application, `serve` (until cancelled) and `running_simulator`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime

from aiohttp import web

from apptsync.shared.errors import InvalidArgumentError
from apptsync.shared.settings import SimulatorSettings
from apptsync.simulator._acuity_api import API_PREFIX, add_acuity_routes
from apptsync.simulator._admin_api import add_admin_routes
from apptsync.simulator._calendly_api import API_PREFIX as CALENDLY_PREFIX
from apptsync.simulator._calendly_api import add_calendly_routes
from apptsync.simulator._fidelity_api import add_fidelity_routes
from apptsync.simulator._fleet import add_fleet_routes
from apptsync.simulator._google_api import API_PREFIX as GOOGLE_PREFIX
from apptsync.simulator._google_api import TOKEN_PATH as GOOGLE_TOKEN_PATH
from apptsync.simulator._google_api import add_google_routes
from apptsync.simulator._state import SimulatorState
from apptsync.simulator._webhook_delivery import sending
from apptsync.simulator._webhooks_api import add_webhook_routes


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    """A simulator listening in this process. `base_url` is e.g. `http://127.0.0.1:41234`."""

    base_url: str
    state: SimulatorState

    @property
    def acuity_base_url(self) -> str:
        """What an Acuity connection's `base_url` must be to talk to this simulator."""
        return self.base_url + API_PREFIX

    @property
    def calendly_base_url(self) -> str:
        """A Calendly connection's `base_url` (its token endpoint is `<base_url>/oauth/token`)."""
        return self.base_url + CALENDLY_PREFIX

    @property
    def google_base_url(self) -> str:
        """A Google Calendar connection's `base_url`."""
        return self.base_url + GOOGLE_PREFIX

    @property
    def google_token_url(self) -> str:
        """A Google Calendar connection's `token_url` setting."""
        return self.base_url + GOOGLE_TOKEN_PATH


def _utc_now() -> datetime:
    return datetime.now(UTC)


def build_state(
    settings: SimulatorSettings, *, today: date, clock: Callable[[], datetime] | None = None
) -> SimulatorState:
    """The seeded data set: anchored at `settings.anchor_date`, else at `today`; `clock` is the
    stores' now (no record is stamped later than it)."""
    return SimulatorState.seeded(
        seed=settings.seed,
        accounts=settings.accounts_per_provider,
        appointments_per_account=settings.appointments_per_tenant,
        anchor=settings.anchor_date or today,
        seeded_providers={name.strip() for name in settings.seeded_providers.split(",")},
        acuity_spread_days=settings.acuity_spread_days,
        clock=clock,
        legacy_acuity_account=settings.legacy_acuity_account,
        acuity_paid_share=settings.acuity_paid_share,
    )


def build_app(state: SimulatorState, *, clock: Callable[[], datetime] = _utc_now) -> web.Application:
    """The simulator's routes and the task sending its change notifications; `clock` stamps admin
    changes (Calendly `updated_at`, Google `updated`) and webhook subscriptions."""
    app = web.Application()
    add_webhook_routes(app, state, clock=clock)
    add_admin_routes(app, state)
    add_acuity_routes(app, state)
    add_calendly_routes(app, state, clock=clock)
    add_google_routes(app, state, clock=clock)
    add_fidelity_routes(app, state, clock=clock)
    add_fleet_routes(app, state, clock=clock)

    async def webhook_sender(app: web.Application) -> AsyncIterator[None]:
        async with sending(state.webhooks):
            yield

    app.cleanup_ctx.append(webhook_sender)
    return app


def _host_and_port(listen_address: str) -> tuple[str, int]:
    host, separator, port = listen_address.rpartition(":")
    if not separator or not port.isdigit():
        raise InvalidArgumentError("listen_address", f"expected host:port, got {listen_address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


@asynccontextmanager
async def running_simulator(
    settings: SimulatorSettings, *, clock: Callable[[], datetime] = _utc_now
) -> AsyncIterator[RunningSimulator]:
    """Serves the simulator on `settings.listen_address` (port 0: any free port) while the block runs.

    Raises InvalidArgumentError for a malformed listen address, OSError if it cannot bind."""
    host, port = _host_and_port(settings.listen_address)
    state = build_state(settings, today=clock().astimezone(UTC).date(), clock=clock)
    runner = web.AppRunner(build_app(state, clock=clock), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        yield RunningSimulator(base_url=f"http://{url_host}:{bound_port}", state=state)
    finally:
        await runner.cleanup()


async def serve(
    settings: SimulatorSettings,
    *,
    ready: Callable[[str], None] | None = None,
    clock: Callable[[], datetime] = _utc_now,
) -> None:
    """Runs the simulator until cancelled; calls `ready(base_url)` once it is listening.

    Raises InvalidArgumentError for a malformed listen address, OSError if it cannot bind."""
    async with running_simulator(settings, clock=clock) as simulator:
        if ready is not None:
            ready(simulator.base_url)
        await asyncio.Event().wait()
