"""Container-backed test servers (PostgreSQL, a Kafka-compatible broker) via testcontainers.

The machine has no container registry: images are built locally by
``tests/containers/images.sh`` and the engine runs without a bridge
(``tests/containers/engine.sh``). So every container here:

* uses ``network_mode="host"``: no port mappings, servers listen on 127.0.0.1 on a
  port chosen here (bind 127.0.0.1:0, retry with a new one if the container lost
  the race for it);
* carries the label ``apptsync.test.owner=<pid of the test process>``, because
  Ryuk (the testcontainers reaper) cannot be pulled. Fixture teardown removes the
  containers; ``sweep_leftover_containers()`` removes those of dead owners.

Image names are configurable so a machine with a registry can use public images:
``APPTSYNC_TEST_POSTGRES_IMAGE`` (any image with ``/bin/sh``, ``initdb``, ``postgres``,
``psql`` on PATH and a ``postgres`` user, e.g. ``postgres:16``) and
``APPTSYNC_TEST_BROKER_IMAGE`` (an image whose entrypoint is the Tansu CLI).
"""

from __future__ import annotations

import os

# Must happen before testcontainers is imported: its config is read at import time.
os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
os.environ.setdefault("DOCKER_HOST", "unix:///var/run/docker.sock")

import contextlib
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final

import docker
import docker.errors
from docker.models.containers import Container
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer

testcontainers_config.ryuk_disabled = True

__all__ = [
    "BROKER_IMAGE",
    "OWNER_LABEL",
    "POSTGRES_IMAGE",
    "BrokerContainer",
    "ContainerStartError",
    "PostgresServerContainer",
    "free_port",
    "require_engine",
    "sweep_leftover_containers",
]

POSTGRES_IMAGE: Final[str] = os.environ.get("APPTSYNC_TEST_POSTGRES_IMAGE", "apptsync-test/postgres:15")
BROKER_IMAGE: Final[str] = os.environ.get("APPTSYNC_TEST_BROKER_IMAGE", "apptsync-test/tansu:local")

OWNER_LABEL: Final[str] = "apptsync.test.owner"
OWNER_START_LABEL: Final[str] = "apptsync.test.owner-start"
ROLE_LABEL: Final[str] = "apptsync.test.role"

PREPARE_HINT: Final[str] = (
    "run `make test` (it prepares them), or directly: "
    "`bash tests/containers/engine.sh && bash tests/containers/images.sh`"
)

_PORT_IN_USE = re.compile(r"address already in use|addrinuse|address in use", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_DEFAULT_PORT_ATTEMPTS: Final[int] = 5
_POLL_SECONDS: Final[float] = 0.05


class ContainerStartError(RuntimeError):
    """A test container did not become ready; the message carries its log."""


# --------------------------------------------------------------------------- engine


def docker_client() -> docker.DockerClient:
    """A docker-py client for ``DOCKER_HOST`` (short timeout: this is a local socket)."""
    return docker.DockerClient(base_url=os.environ["DOCKER_HOST"], timeout=60)


def require_engine(*images: str) -> None:
    """Raise RuntimeError unless the engine answers and every image exists locally.

    With no argument both default images are required. Never skips: a missing
    engine is a broken setup, not a reason to pass silently.
    """
    wanted = images or (POSTGRES_IMAGE, BROKER_IMAGE)
    host = os.environ["DOCKER_HOST"]
    try:
        client = docker_client()
        client.ping()
    except Exception as exc:
        raise RuntimeError(
            f"No docker engine answers at DOCKER_HOST={host} ({type(exc).__name__}: {exc}); {PREPARE_HINT}"
        ) from exc
    try:
        missing = []
        for image in wanted:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                missing.append(image)
        if missing:
            raise RuntimeError(
                f"Test image(s) missing from the docker engine at {host}: {', '.join(missing)} "
                f"(no registry can be pulled from); {PREPARE_HINT}"
            )
    finally:
        client.close()


def _process_start_ticks(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int, start_ticks: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if start_ticks:
        current = _process_start_ticks(pid)
        if current is not None and current != start_ticks:
            return False  # the pid was reused by another process
    return True


def owner_labels(role: str) -> dict[str, str]:
    """Labels that mark a container as owned by this (pytest) process."""
    pid = os.getpid()
    labels = {OWNER_LABEL: str(pid), ROLE_LABEL: role}
    ticks = _process_start_ticks(pid)
    if ticks is not None:
        labels[OWNER_START_LABEL] = ticks
    return labels


def sweep_leftover_containers() -> list[str]:
    """Remove labelled test containers whose owner process is gone. Returns their names."""
    removed: list[str] = []
    client = docker_client()
    try:
        for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}):
            labels: dict[str, str] = container.labels
            try:
                pid = int(labels.get(OWNER_LABEL, ""))
            except ValueError:
                pid = -1
            if pid > 0 and _pid_alive(pid, labels.get(OWNER_START_LABEL)):
                continue
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                continue  # a parallel session swept it first
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # removal already in progress elsewhere
                    continue
                raise
            removed.append(container.name or container.id or "?")
    finally:
        client.close()
    return removed


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller must cope with races)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- base


class _HostNetworkServer:
    """One long-running server process in a host-network container, ready on a log line.

    Subclasses give the command for a port, the readiness line and the role name.
    """

    role: str = "server"
    ready_marker: str = ""
    stop_signal: str = "SIGTERM"

    def __init__(
        self,
        image: str,
        *,
        startup_timeout: float = 60.0,
        port_attempts: int = _DEFAULT_PORT_ATTEMPTS,
        name_prefix: str = "apptsync-test",
    ) -> None:
        self.image = image
        self.startup_timeout = startup_timeout
        self.port_attempts = port_attempts
        self.name_prefix = name_prefix
        self._port: int | None = None
        self._tc: DockerContainer | None = None
        self.startup_seconds: float | None = None

    # -- to override
    def _entrypoint(self) -> list[str] | None:
        return None

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _environment(self, port: int) -> dict[str, str]:
        return {}

    def _container_kwargs(self) -> dict[str, Any]:
        return {}

    # -- common API
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def container(self) -> Container:
        """The docker-py container (for anything not wrapped here)."""
        if self._tc is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._tc.get_wrapped_container()

    @property
    def container_id(self) -> str:
        cid = self.container.id
        assert cid is not None
        return cid

    def logs(self) -> str:
        """The container's whole log (stdout and stderr), ANSI colours removed."""
        raw: bytes = self.container.logs(stdout=True, stderr=True)
        return _ANSI.sub("", raw.decode("utf-8", errors="replace"))

    def status(self) -> str:
        c = self.container
        c.reload()
        status: str = c.status
        return status

    def start(self) -> _HostNetworkServer:
        if self._tc is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        began = time.monotonic()
        last_error: ContainerStartError | None = None
        for _attempt in range(max(1, self.port_attempts)):
            port = free_port()
            self._tc = self._make_container(port)
            self._port = port
            try:
                self._tc.start()
                self._wait_ready(previous_markers=0)
            except _PortLost as exc:
                last_error = exc
                self._remove_quietly()
                continue
            except BaseException:
                self._remove_quietly()
                raise
            self.startup_seconds = time.monotonic() - began
            return self
        raise ContainerStartError(
            f"{self.role}: gave up after {self.port_attempts} port attempts; last error: {last_error}"
        )

    def stop(self) -> None:
        """Remove the container (and its data). Safe to call twice."""
        self._remove_quietly()

    def __enter__(self) -> _HostNetworkServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- fault helpers shared by both servers
    def pause(self) -> None:
        """Freeze every process of the container (docker pause): the port stays bound, nothing answers."""
        self.container.pause()

    def unpause(self) -> None:
        self.container.unpause()

    def ensure_running(self) -> None:
        """Undo a pause or a stop left behind by an earlier test (cheap when running)."""
        status = self.status()
        if status == "paused":
            self.unpause()
        elif status in {"exited", "created"}:
            self._start_container_again()
        elif status != "running":
            raise ContainerStartError(self._describe(f"unexpected container status {status!r}", self.logs()))

    def _stop_container(self, timeout: int = 10) -> None:
        self.container.stop(timeout=timeout)
        self._wait_status({"exited", "dead"}, timeout=timeout + 10)

    def _start_container_again(self) -> None:
        before = self._count_markers()
        self.container.start()
        self._wait_ready(previous_markers=before)

    # -- internals
    def _make_container(self, port: int) -> DockerContainer:
        name = f"{self.name_prefix}-{self.role}-{os.getpid()}-{port}"
        tc = DockerContainer(self.image, env=self._environment(port), name=name)
        tc.with_command(self._command(port))
        kwargs: dict[str, Any] = dict(tc._kwargs)  # with_kwargs() replaces the dict: merge into it
        kwargs.update(self._container_kwargs())
        entrypoint = self._entrypoint()
        if entrypoint is not None:
            kwargs["entrypoint"] = entrypoint
        labels = dict(kwargs.get("labels") or {})
        labels.update(owner_labels(self.role))
        kwargs.update(network_mode="host", labels=labels, stop_signal=self.stop_signal)
        tc.with_kwargs(**kwargs)
        return tc

    def _count_markers(self) -> int:
        return self.logs().count(self.ready_marker)

    def _wait_status(self, wanted: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status() in wanted:
                return
            time.sleep(_POLL_SECONDS)
        raise ContainerStartError(
            f"{self.role}: status {self.status()!r} not in {sorted(wanted)} after {timeout}s"
        )

    def _wait_ready(self, previous_markers: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            log = self.logs()
            if log.count(self.ready_marker) > previous_markers:
                if _PORT_IN_USE.search(log[-4000:]):
                    raise _PortLost(self._describe("lost the race for its port", log))
                return
            status = self.status()
            if status in {"exited", "dead"}:
                log = self.logs()
                if _PORT_IN_USE.search(log):
                    raise _PortLost(self._describe("lost the race for its port", log))
                raise ContainerStartError(self._describe(f"container {status} before ready", log))
            if time.monotonic() > deadline:
                raise ContainerStartError(
                    self._describe(f"not ready within {self.startup_timeout:.0f}s (status {status})", log)
                )
            time.sleep(_POLL_SECONDS)

    def _describe(self, what: str, log: str) -> str:
        tail = "\n".join(log.splitlines()[-40:])
        cid = self.container_id[:12] if self._tc is not None else "-"
        return (
            f"{self.role} container {cid} ({self.image}, port {self._port}): "
            f"{what}; waited for log line {self.ready_marker!r}. Container log (tail):\n{tail}"
        )

    def _remove_quietly(self) -> None:
        tc, self._tc = self._tc, None
        if tc is None:
            return
        with contextlib.suppress(Exception):
            c = tc.get_wrapped_container()
            c.reload()
            if c.status == "paused":
                c.unpause()
        with contextlib.suppress(Exception):
            tc.stop(force=True, delete_volume=True)


class _PortLost(ContainerStartError):
    pass


# --------------------------------------------------------------------------- PostgreSQL

_PG_SCRIPT: Final[str] = r"""
set -eu
PGDATA=/tmp/apptsync-pgdata
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    umask 077
    printf '%s\n' "$APPTSYNC_PG_PASSWORD" > /tmp/apptsync-pwfile
    initdb -D "$PGDATA" -U postgres --pwfile=/tmp/apptsync-pwfile --no-sync \
        --auth=scram-sha-256 --encoding=UTF8 --locale=C >/tmp/apptsync-initdb.log 2>&1 \
        || { cat /tmp/apptsync-initdb.log; exit 1; }
    rm -f /tmp/apptsync-pwfile
    echo "apptsync: initdb done"
fi
# fsync, synchronous_commit and full_page_writes off: these servers check correctness on throwaway
# data and no figure is taken from them; the benchmarks run durable (see benchmarks/).
exec postgres -D "$PGDATA" -h 127.0.0.1 -p "$APPTSYNC_PG_PORT" -k /tmp \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c max_connections=200
"""


class PostgresServerContainer(_HostNetworkServer):
    """A PostgreSQL server in a host-network container, listening on 127.0.0.1:``port``.

    The cluster lives inside the container's filesystem: ``stop_server()`` /
    ``start_server()`` (docker stop/start of the same container) keep data and port;
    ``stop()`` removes everything.
    """

    role = "postgres"
    ready_marker = "database system is ready to accept connections"
    # Fast shutdown (SIGTERM would be "smart": wait for every client to disconnect).
    stop_signal = "SIGINT"

    def __init__(self, image: str = POSTGRES_IMAGE, *, startup_timeout: float = 60.0, **kw: Any) -> None:
        super().__init__(image, startup_timeout=startup_timeout, **kw)
        self.user = "postgres"
        self.password = secrets.token_hex(16)
        # The services' login role: a member of apptsync_service that owns no table, so row-level
        # security (migration 0004) binds it, as in production. Created on first use.
        self.service_user = "apptsync_app"
        self.service_password = secrets.token_hex(16)
        self._service_user_ready = False

    def _entrypoint(self) -> list[str]:
        return ["/bin/sh", "-c"]

    def _command(self, port: int) -> list[str]:
        return [_PG_SCRIPT]

    def _environment(self, port: int) -> dict[str, str]:
        return {"APPTSYNC_PG_PASSWORD": self.password, "APPTSYNC_PG_PORT": str(port)}

    def _container_kwargs(self) -> dict[str, Any]:
        return {"user": "postgres", "shm_size": "256m"}

    def start(self) -> PostgresServerContainer:
        super().start()
        return self

    def __enter__(self) -> PostgresServerContainer:
        return self.start()

    # -- DSNs
    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    @property
    def superuser_dsn(self) -> str:
        return self.dsn("postgres")

    def service_dsn(self, database: str) -> str:
        """DSN of `database` for the services' role (created on the server if missing); the
        database's tables come from the migrations, run with ``dsn()`` (the owner)."""
        if not self._service_user_ready:
            self.psql(
                f"""DO $$ BEGIN
                    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'apptsync_service') THEN
                        CREATE ROLE apptsync_service NOLOGIN;
                    END IF;
                    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{self.service_user}') THEN
                        CREATE ROLE {self.service_user} LOGIN IN ROLE apptsync_service;
                    END IF;
                    ALTER ROLE {self.service_user} PASSWORD '{self.service_password}';
                END $$"""
            )
            self._service_user_ready = True
        return f"postgresql://{self.service_user}:{self.service_password}@{self.host}:{self.port}/{database}"

    # -- SQL through psql inside the container (no client library or event loop needed)
    def psql(self, *statements: str, database: str = "postgres") -> str:
        """Run SQL with psql inside the container as the superuser, one ``-c`` per statement.

        Each statement runs in its own transaction (so CREATE/DROP DATABASE work).
        Returns stdout (unaligned, tuples only). Raises RuntimeError on failure.
        """
        conn = ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database]
        commands = [arg for sql in statements for arg in ("-c", sql)]
        code, output = self.container.exec_run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *conn, *commands],
            environment={"PGPASSWORD": self.password},
            user="postgres",
        )
        text = output.decode("utf-8", errors="replace") if isinstance(output, bytes) else str(output)
        if code != 0:
            raise RuntimeError(f"psql failed (exit {code}) for {statements!r}: {text.strip()}")
        return text

    def create_database(self, name: str, *, owner: str | None = None) -> str:
        """Create a fresh database (dropping one of the same name) and return its DSN."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"unsafe database name {name!r}")
        self.psql(
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""),
        )
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"unsafe database name {name!r}")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- faults
    def stop_server(self, timeout: int = 10) -> None:
        """Stop PostgreSQL (docker stop, fast shutdown). Data and port are kept for start_server()."""
        self._stop_container(timeout=timeout)

    def start_server(self) -> None:
        """Start the stopped container again and wait until PostgreSQL accepts connections."""
        self._start_container_again()

    def restart_server(self) -> None:
        self.stop_server()
        self.start_server()


# --------------------------------------------------------------------------- broker


class BrokerContainer(_HostNetworkServer):
    """A Kafka-compatible broker (Tansu, in memory) in a host-network container.

    Tansu keeps topics and messages in memory: ``restart()`` loses them.
    """

    role = "broker"
    ready_marker = "ready in"

    def __init__(self, image: str = BROKER_IMAGE, *, startup_timeout: float = 30.0, **kw: Any) -> None:
        super().__init__(image, startup_timeout=startup_timeout, **kw)

    def _command(self, port: int) -> list[str]:
        url = f"tcp://127.0.0.1:{port}"
        return ["broker", "--listener-url", url, "--advertised-listener-url", url]

    def start(self) -> BrokerContainer:
        super().start()
        return self

    def __enter__(self) -> BrokerContainer:
        return self.start()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def stop_broker(self, timeout: int = 10) -> None:
        """Stop the broker process (docker stop); start_broker() brings it back empty on the same port."""
        self._stop_container(timeout=timeout)

    def start_broker(self) -> None:
        self._start_container_again()

    def restart(self, timeout: int = 10) -> None:
        """docker stop + start on the same port, then wait for readiness. Loses all topics (in-memory)."""
        self.stop_broker(timeout=timeout)
        self.start_broker()


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def paused(server: _HostNetworkServer) -> Iterator[None]:
    """Context manager: the server is frozen (docker pause) inside the block."""
    server.pause()
    try:
        yield
    finally:
        server.unpause()


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true, bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        time.sleep(interval)
