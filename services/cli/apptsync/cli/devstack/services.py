"""The apptsync services as supervised processes against any PostgreSQL and Kafka (embedded or not).

`DevStack` uses this over its embedded servers; end-to-end tests use it over testcontainers' servers:

    async with ServiceSet(database_url=..., bootstrap_servers=..., log_dir=tmp_path / "logs",
                          credentials_keyring=format_dev_keyring(bytes(32))) as services:
        services.addresses.gateway_address
        services.process("writer").kill()
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from apptsync.cli.devstack.environment import (
    KNOWN_SERVICE_NAMES,
    SERVICE_NAMES,
    WEBHOOK_RECEIVER,
    ServicePorts,
    StackAddresses,
    build_service_env,
    env_var,
    plan_addresses,
)
from apptsync.cli.devstack.errors import DevStackError
from apptsync.cli.devstack.ports import pick_free_ports, port_is_free
from apptsync.cli.devstack.probes import GrpcHealthProbe, HttpGetProbe
from apptsync.cli.devstack.process import (
    ReadinessProbe,
    ServiceProcess,
    child_environment,
    wait_for_first_exit,
)
from apptsync.shared.settings import DatabaseSettings

MIGRATE: Final[str] = "migrate"
_PORTS_PER_SET: Final[int] = 8

# name -> argv of the process to run for that service (the default is `python -m apptsync.cli NAME`).
CommandFactory = Callable[[str], Sequence[str]]


def apptsync_cli_command(name: str, *, python_executable: str = sys.executable) -> tuple[str, ...]:
    return (python_executable, "-m", "apptsync.cli", name)


def assign_service_ports(
    free_ports: Sequence[int], *, preferred_gateway_port: int | None, preferred_gateway_port_is_free: bool
) -> ServicePorts:
    """Pure: the gateway gets its preferred port when free (and not among `free_ports`), else the first
    free port; the rest take the following free ports. Raises ValueError with too few ports."""
    if len(free_ports) < _PORTS_PER_SET:
        raise ValueError(f"need {_PORTS_PER_SET} free ports, got {len(free_ports)}")
    if (
        preferred_gateway_port
        and preferred_gateway_port_is_free
        and preferred_gateway_port not in free_ports[1:_PORTS_PER_SET]
    ):
        gateway = preferred_gateway_port
    else:
        gateway = free_ports[0]
    rest = free_ports[1:_PORTS_PER_SET]
    return ServicePorts(
        gateway=gateway,
        gateway_metrics=rest[0],
        fetcher_health=rest[1],
        fetcher_metrics=rest[2],
        writer_health=rest[3],
        writer_metrics=rest[4],
        simulator=rest[5],
        webhook_receiver=rest[6],
    )


def pick_service_ports(*, preferred_gateway_port: int | None) -> ServicePorts:
    """Free loopback ports for one service set; the gateway gets `preferred_gateway_port` when free."""
    return assign_service_ports(
        pick_free_ports(_PORTS_PER_SET),
        preferred_gateway_port=preferred_gateway_port,
        preferred_gateway_port_is_free=bool(preferred_gateway_port) and port_is_free(preferred_gateway_port or 0),
    )


def readiness_probe_for(name: str, addresses: StackAddresses) -> ReadinessProbe:
    """How to tell that service `name` is ready. Raises KeyError for an unknown service."""
    probes: dict[str, ReadinessProbe] = {
        "gateway": GrpcHealthProbe(addresses.gateway_address),
        "fetcher": GrpcHealthProbe(addresses.fetcher_health_address),
        "writer": GrpcHealthProbe(addresses.writer_health_address),
        "simulator": HttpGetProbe(addresses.simulator_health_url),
        WEBHOOK_RECEIVER: HttpGetProbe(addresses.webhook_receiver_url + "/readyz"),
    }
    return probes[name]


async def run_to_end_despite_cancellation(work: Coroutine[Any, Any, None]) -> None:
    """Awaits `work` to its end even when the caller is cancelled meanwhile (then re-raises the
    cancellation). For bounded clean-up such as stopping children: a half-done stop leaks processes."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()


async def stop_all(stops: Sequence[Callable[[], Awaitable[object]]]) -> None:
    """Runs every stop in order even when one fails; re-raises the first failure afterwards."""
    first_error: Exception | None = None
    for stop in stops:
        try:
            await stop()
        except Exception as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


class ServiceSet:
    """Runs `migrate` (to completion), then the services in SERVICE_NAMES order, each until ready.

    Guarantees: when `start()` raises, everything it started is stopped; `stop()` stops the services
    in reverse order (SIGTERM, SIGKILL after `stop_timeout_seconds`) and is idempotent. Raises
    ProcessStartError (a service not ready, with its log tail) or ProcessExitError (migrate failed).
    """

    def __init__(
        self,
        *,
        database_url: str,
        bootstrap_servers: str,
        log_dir: Path,
        migration_database_url: str | None = None,
        credentials_keyring: str,
        gateway_port: int | None = None,
        ports: ServicePorts | None = None,
        services: Sequence[str] = SERVICE_NAMES,
        run_migrations: bool = True,
        extra_env: Mapping[str, str] | None = None,
        inherited_env: Mapping[str, str] | None = None,
        command: CommandFactory = apptsync_cli_command,
        ready_timeout_seconds: float = 60.0,
        migrate_timeout_seconds: float = 120.0,
        stop_timeout_seconds: float = 15.0,
    ) -> None:
        unknown = set(services) - set(KNOWN_SERVICE_NAMES)
        if unknown:
            raise DevStackError(f"unknown services {sorted(unknown)}; known: {', '.join(KNOWN_SERVICE_NAMES)}")
        self.log_dir = log_dir
        self.ports = ports or pick_service_ports(preferred_gateway_port=gateway_port)
        self.addresses = plan_addresses(
            database_url=database_url, bootstrap_servers=bootstrap_servers, ports=self.ports
        )
        self.service_env: dict[str, str] = build_service_env(
            self.addresses,
            self.ports,
            credentials_keyring=credentials_keyring,
            runs_simulator="simulator" in services,
            runs_webhook_receiver=WEBHOOK_RECEIVER in services,
            extra=extra_env,
        )
        self._child_env = child_environment(self.service_env, inherited_env)
        # Only `migrate` gets the owner's DSN: the services run as a role that owns no table.
        self._migrate_env = dict(self._child_env)
        if migration_database_url is not None:
            self._migrate_env[env_var(DatabaseSettings, "migration_url")] = migration_database_url
        self._command = command
        self._run_migrations = run_migrations
        self._stop_timeout_seconds = stop_timeout_seconds
        self._migrate_timeout_seconds = migrate_timeout_seconds
        # In start order: iteration order of the dict is the order we start and (reversed) stop.
        self.processes: dict[str, ServiceProcess] = {
            name: ServiceProcess.apptsync(
                name,
                env=self._child_env,
                log_dir=log_dir,
                readiness=readiness_probe_for(name, self.addresses),
                ready_timeout_seconds=ready_timeout_seconds,
                argv=command(name),
            )
            for name in KNOWN_SERVICE_NAMES
            if name in services
        }

    def process(self, name: str) -> ServiceProcess:
        """The supervised process of service `name`. Raises KeyError when it is not part of this set."""
        return self.processes[name]

    async def __aenter__(self) -> ServiceSet:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await run_to_end_despite_cancellation(self.stop())

    async def start(self) -> None:
        try:
            if self._run_migrations:
                await self.migrate()
            for process in self.processes.values():
                await process.start()
        except BaseException:
            await run_to_end_despite_cancellation(self.stop())
            raise

    async def migrate(self) -> None:
        """Runs `migrate` to completion. Raises ProcessExitError with its log tail on failure."""
        migrate = ServiceProcess.apptsync(
            MIGRATE, env=self._migrate_env, log_dir=self.log_dir, readiness=None, argv=self._command(MIGRATE)
        )
        await migrate.run_to_completion(timeout_seconds=self._migrate_timeout_seconds)

    async def stop(self) -> None:
        await stop_all(
            [
                functools.partial(process.stop, self._stop_timeout_seconds)
                for process in reversed(self.processes.values())
            ]
        )

    async def restart(self, name: str) -> None:
        """Stops service `name` gracefully and starts it again (same ports, same env), until ready."""
        process = self.process(name)
        await process.stop(self._stop_timeout_seconds)
        await process.start()

    async def wait_for_any_exit(self) -> ServiceProcess:
        """Waits until any running service exits; returns it. Raises DevStackError when none runs."""
        running = [process for process in self.processes.values() if process.running]
        exited = await wait_for_first_exit(running)
        assert isinstance(exited, ServiceProcess)  # noqa: S101 -- narrows the type for mypy; wait_for_first_exit returns one of `running`
        return exited
