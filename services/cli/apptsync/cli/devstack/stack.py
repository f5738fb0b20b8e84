"""`apptsync dev up`: PostgreSQL, the broker and every service on one machine, no Docker, no accounts."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from apptsync.cli.devstack.broker import EmbeddedBroker
from apptsync.cli.devstack.environment import (
    DEFAULT_GATEWAY_PORT,
    SERVICE_NAMES,
    StackAddresses,
    dev_stack_env_defaults,
    format_address_table,
)
from apptsync.cli.devstack.errors import DevStackError
from apptsync.cli.devstack.keyring import load_or_create_dev_keyring
from apptsync.cli.devstack.postgres import EmbeddedPostgres, server_settings_for
from apptsync.cli.devstack.process import ChildProcess, wait_for_first_exit
from apptsync.cli.devstack.restart import GiveUp, Restart, RestartPolicy, RestartTracker
from apptsync.cli.devstack.services import (
    CommandFactory,
    ServiceSet,
    apptsync_cli_command,
    run_to_end_despite_cancellation,
    stop_all,
)

KEYRING_FILE: Final[str] = "credentials.keyring"
DEFAULT_RESTART_POLICY: Final[RestartPolicy] = RestartPolicy()


class DevStack:
    """`async with DevStack(state_dir) as stack:` everything running; `stack.addresses` says where.

    Start order: PostgreSQL, broker, `migrate` (to completion), simulator, writer, fetcher, gateway,
    each waited for. Leaving the context (also by an exception or a cancellation) stops it all in
    reverse: services (SIGTERM, bounded), broker, PostgreSQL (SIGINT, fast shutdown). The data
    directory and the credentials keyring persist in `state_dir` between runs; broker contents do not.
    PostgreSQL runs durable (DURABLE_SERVER_SETTINGS) unless `fast_unsafe_postgres` (fsync,
    synchronous_commit and full_page_writes off: a crash of the machine can corrupt its data).
    Raises ProcessStartError / ProcessExitError / DataDirectoryInUseError from start-up.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        gateway_port: int | None = DEFAULT_GATEWAY_PORT,
        services: Sequence[str] = SERVICE_NAMES,
        extra_env: Mapping[str, str] | None = None,
        inherited_env: Mapping[str, str] | None = None,
        command: CommandFactory = apptsync_cli_command,
        ready_timeout_seconds: float = 60.0,
        stop_timeout_seconds: float = 15.0,
        fast_unsafe_postgres: bool = False,
    ) -> None:
        self.state_dir = state_dir.absolute()
        self.log_dir = self.state_dir / "logs"
        self.postgres = EmbeddedPostgres(
            self.state_dir, inherited_env=inherited_env,
            server_settings=server_settings_for(fast_unsafe=fast_unsafe_postgres),
        )
        self.broker = EmbeddedBroker(self.log_dir, inherited_env=inherited_env)
        self._gateway_port = gateway_port
        self._service_names = tuple(services)
        self._extra_env = extra_env
        self._inherited_env = inherited_env
        self._command = command
        self._ready_timeout_seconds = ready_timeout_seconds
        self._stop_timeout_seconds = stop_timeout_seconds
        self._services: ServiceSet | None = None

    @property
    def services(self) -> ServiceSet:
        if self._services is None:
            raise DevStackError("the dev stack has not been started")
        return self._services

    @property
    def addresses(self) -> StackAddresses:
        return self.services.addresses

    @property
    def service_env(self) -> dict[str, str]:
        """The variables the services were given on top of the inherited environment."""
        return self.services.service_env

    async def __aenter__(self) -> DevStack:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await run_to_end_despite_cancellation(self.stop())

    async def start(self) -> None:
        try:
            keyring = await asyncio.to_thread(load_or_create_dev_keyring, self.state_dir / KEYRING_FILE)
            await self.postgres.start()
            await self.broker.start()
            self._services = ServiceSet(
                database_url=self.postgres.service_database_url,
                migration_database_url=self.postgres.database_url,
                bootstrap_servers=self.broker.bootstrap_servers,
                log_dir=self.log_dir,
                credentials_keyring=keyring,
                gateway_port=self._gateway_port,
                services=self._service_names,
                extra_env={**dev_stack_env_defaults(), **(self._extra_env or {})},
                inherited_env=self._inherited_env,
                command=self._command,
                ready_timeout_seconds=self._ready_timeout_seconds,
                stop_timeout_seconds=self._stop_timeout_seconds,
            )
            await self._services.start()
        except BaseException:
            await run_to_end_despite_cancellation(self.stop())
            raise

    def processes(self) -> list[ChildProcess]:
        """Every running child: PostgreSQL, the broker, the services."""
        children = [self.postgres.process, self.broker.process, *self.services.processes.values()]
        return [child for child in children if child.running]

    async def stop(self) -> None:
        """Idempotent; stops what was started, in reverse order, even when one stop fails."""
        services = self._services
        await stop_all(
            [
                *([services.stop] if services is not None else []),
                self.broker.stop,
                self.postgres.stop,
            ]
        )


async def dev_up(
    state_dir: Path,
    *,
    print_fn: Callable[[str], object] = print,
    gateway_port: int | None = DEFAULT_GATEWAY_PORT,
    command: CommandFactory = apptsync_cli_command,
    fast_unsafe_postgres: bool = False,
    restart_policy: RestartPolicy = DEFAULT_RESTART_POLICY,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Runs the dev stack until SIGINT or SIGTERM, then stops it all; returns the exit code.

    A service that exits on its own is restarted with backoff (see `supervise`). 0 after a
    requested stop (also one during start-up, which aborts the start); 1 when start-up failed, a
    service kept crashing, or PostgreSQL or the broker exited (its log tail is printed). No child
    outlives this call.
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    stack = DevStack(
        state_dir, gateway_port=gateway_port, command=command, fast_unsafe_postgres=fast_unsafe_postgres
    )
    starting = asyncio.ensure_future(stack.start())

    def on_signal() -> None:
        stop_requested.set()
        starting.cancel()  # a no-op once started: then the wait below sees the event

    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal)
    try:
        try:
            await starting
        except asyncio.CancelledError:
            if not stop_requested.is_set():
                raise
            print_fn("Interrupted during start-up; everything that had started is stopped.")
            return 0
        except DevStackError as exc:
            print_fn(f"The dev stack did not start: {exc}")
            return 1
        try:
            for line in format_address_table(stack.addresses, log_dir=str(stack.log_dir)):
                print_fn(line)
            exited = await supervise(stack, stop_requested, print_fn=print_fn, policy=restart_policy, clock=clock)
            if exited is not None:
                print_fn(
                    f"{exited.name} exited on its own with code {exited.returncode}; stopping everything. "
                    f"Log {exited.log_path}:\n{exited.log_tail()}"
                )
            print_fn("Stopping the dev stack...")
        finally:
            await run_to_end_despite_cancellation(stack.stop())
        print_fn("Stopped.")
        return 0 if exited is None else 1
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def supervise(
    stack: DevStack,
    stop_requested: asyncio.Event,
    *,
    print_fn: Callable[[str], object] = print,
    policy: RestartPolicy = DEFAULT_RESTART_POLICY,
    clock: Callable[[], float] = time.monotonic,
) -> ChildProcess | None:
    """Keeps the started stack running until `stop_requested` (then returns None).

    A service that exits on its own is started again after the policy's delay, each restart said on
    the console with the exit code; `policy.max_attempts` crashes in a row (a failed restart counts)
    end the supervision: the service is returned. PostgreSQL or the broker exiting is returned at
    once: the services would only fail against it, and the broker keeps its topics in memory.
    """
    tracker = RestartTracker(policy)
    services = stack.services.processes
    for name in services:
        tracker.started(name, now_seconds=clock())
    while True:
        exited = await _wait_for_stop_or_exit(stack, stop_requested)
        if exited is None:
            return None
        service = services.get(exited.name)
        if service is None or service is not exited:
            return exited
        decision = tracker.crashed(service.name, now_seconds=clock())
        while isinstance(decision, Restart):
            print_fn(
                f"{service.name} exited on its own with code {service.returncode}; restarting it in "
                f"{decision.delay_seconds:g} s (attempt {decision.attempt} of {decision.max_attempts}). "
                f"Log {service.log_path}:\n{service.log_tail()}"
            )
            try:
                restarted = await _unless_stopped(_start_after(service, decision.delay_seconds), stop_requested)
            except DevStackError as exc:
                print_fn(f"{service.name} did not come back: {exc}")
                decision = tracker.start_failed(service.name, now_seconds=clock())
                continue
            if not restarted:
                return None
            tracker.started(service.name, now_seconds=clock())
            print_fn(f"{service.name} restarted (pid {service.pid}).")
            break
        if isinstance(decision, GiveUp):
            print_fn(f"{service.name} crashed {decision.attempts + 1} times in a row; giving up.")
            return service


async def _start_after(process: ChildProcess, delay_seconds: float) -> None:
    await asyncio.sleep(delay_seconds)
    await process.start()


async def _unless_stopped(work: Coroutine[Any, Any, None], stop_requested: asyncio.Event) -> bool:
    """Runs `work` unless a stop is requested first (then cancels it and returns False)."""
    working = asyncio.ensure_future(work)
    stop_wait = asyncio.ensure_future(stop_requested.wait())
    try:
        await asyncio.wait({working, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_wait.cancel()
        if not working.done():
            working.cancel()
        await asyncio.gather(stop_wait, return_exceptions=True)
    if working.cancelled() or not working.done():
        await asyncio.gather(working, return_exceptions=True)
        return False
    working.result()  # raises what the start raised
    return True


async def _wait_for_stop_or_exit(stack: DevStack, stop_requested: asyncio.Event) -> ChildProcess | None:
    """None once a stop is requested; the process that exited when one exits first."""
    stop_wait = asyncio.ensure_future(stop_requested.wait())
    exit_wait = asyncio.ensure_future(wait_for_first_exit(stack.processes()))
    try:
        await asyncio.wait({stop_wait, exit_wait}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stop_wait, exit_wait):
            task.cancel()
        await asyncio.gather(stop_wait, exit_wait, return_exceptions=True)
    if stop_requested.is_set() or exit_wait.cancelled() or exit_wait.exception() is not None:
        return None
    return exit_wait.result()
