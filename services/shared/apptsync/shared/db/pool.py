"""PostgreSQL connections for every apptsync process (asyncpg), and what their failures mean.

The one place asyncpg's exceptions become the project's error tree: `create_pool` / `connect` open
connections (a failure to connect raises `StorageUnavailableError`); `acquired(pool)` lends a pooled
connection and `database_errors()` wraps any other database call, both raising
`StorageUnavailableError` (transient) or `StorageRefusedError` (permanent) `from` asyncpg's exception,
so callers above the adapters never name an asyncpg class. `is_transient_database_error` /
`translate_database_error` tell a failure that may go away (connection lost, server restarting,
serialization failure, deadlock, timeout) from one that will not (constraint violation, bad SQL), so
callers retry only what a retry can fix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from apptsync.shared.errors import ApptsyncError, StorageRefusedError, StorageUnavailableError
from apptsync.shared.settings import DatabaseSettings

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    from apptsync.shared.db import DbConnection

# Row-level security (migration 0004) compares every tenant table's tenant_id with this setting.
SET_TENANT = "SELECT set_config('app.tenant_id', $1, true)"

# SQLSTATEs after which the same transaction may succeed when tried again:
# 40001 serialization failure, 40P01 deadlock, 55P03 lock not available, 57014 statement timeout,
# 57P01-57P03 administrator/crash shutdown and "cannot connect now" (server starting up).
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03"})
# SQLSTATE classes: 08 connection exception, 53 insufficient resources (e.g. too many connections).
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53"})
# What a database call can raise: socket errors, server errors, use of a closed connection, and
# asyncpg's protocol losing track of a connection the server dropped mid-operation ("cannot switch
# to state ...; another operation is in progress", seen when PostgreSQL shuts down under load).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def is_transient_database_error(exc: BaseException) -> bool:
    """True when `exc` (from asyncpg or the socket below it) may not happen again on a retry.

    Covers lost or refused connections (OSError, including timeouts), a closed or broken connection,
    server shutdown or start-up, serialization failures, deadlocks, lock and statement timeouts, and too
    many connections. Everything else (constraint violations, data errors, SQL errors) is permanent.
    """
    if isinstance(exc, OSError):  # includes ConnectionRefusedError and TimeoutError
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        return sqlstate in _TRANSIENT_SQLSTATES or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
    if isinstance(exc, asyncpg.InterfaceError):
        # asyncpg reports use of a connection the server dropped as an InterfaceError.
        return "connection is closed" in str(exc) or "connection was closed" in str(exc)
    # A connection whose protocol state broke when the server went away; the pool discards it.
    return isinstance(exc, asyncpg.InternalClientError)


def translate_database_error(exc: BaseException) -> ApptsyncError:
    """The apptsync error for a database failure: StorageUnavailableError when transient, else
    StorageRefusedError (a PermanentError). Use as `raise translate_database_error(exc) from exc`."""
    if isinstance(exc, ApptsyncError):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    if is_transient_database_error(exc):
        return StorageUnavailableError(message)
    return StorageRefusedError(message)


@contextmanager
def database_errors() -> Iterator[None]:
    """Translates what asyncpg (or the socket below it) raises inside the block via
    `translate_database_error`; the project's own errors pass unchanged."""
    try:
        yield
    except DATABASE_ERRORS as exc:
        raise translate_database_error(exc) from exc


@asynccontextmanager
async def acquired(pool: asyncpg.Pool) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
    """A connection from `pool` for the block. A database failure while acquiring it or inside the
    block raises StorageUnavailableError / StorageRefusedError (see `database_errors`)."""
    with database_errors():
        async with pool.acquire() as connection:
            yield connection


async def _end_of_loan(connection: asyncpg.Connection) -> None:
    """What a pooled connection needs when it comes back, beyond asyncpg's own rollback of a
    transaction left open (done before this runs): nothing. Our statements keep no session state (the
    tenant and plan settings are transaction-local `set_config`, locks are transaction locks, a LISTEN
    is undone by its owner, apptsync.shared.db.listen), so asyncpg's default reset query (RESET ALL,
    UNLISTEN *, advisory unlocks, CLOSE ALL) only added a round trip to every loan: 11 % of the
    fetcher's CPU, whose shared provider budget borrows a connection twice per provider request."""


async def create_pool(settings: DatabaseSettings, *, application_name: str = "apptsync") -> asyncpg.Pool:
    """An open connection pool sized by `settings`.

    Raises StorageUnavailableError when PostgreSQL cannot be reached (retry later), PermanentError
    when it refuses us for good (e.g. bad credentials or database name).
    """
    try:
        pool = await asyncpg.create_pool(
            dsn=settings.url.get_secret_value(),
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            command_timeout=settings.command_timeout_seconds,
            server_settings={"application_name": application_name},
            reset=_end_of_loan,
        )
    except DATABASE_ERRORS as exc:
        raise translate_database_error(exc) from exc
    assert pool is not None  # noqa: S101 -- asyncpg's stub allows None only for a pool that was never awaited
    return pool


async def connect(settings: DatabaseSettings, *, application_name: str = "apptsync") -> asyncpg.Connection:
    """One connection for a one-off task (migrations, tests); the caller closes it.

    Raises StorageUnavailableError / PermanentError like `create_pool`.
    """
    try:
        return await asyncpg.connect(
            dsn=settings.url.get_secret_value(),
            command_timeout=settings.command_timeout_seconds,
            server_settings={"application_name": application_name},
        )
    except DATABASE_ERRORS as exc:
        raise translate_database_error(exc) from exc


@dataclass(slots=True)
class TransactionEnd:
    """How a `tenant_transaction` ends when its block exits normally: committed, unless the block
    called `roll_back` (it ran into a state it answers with a value, not an exception)."""

    rolled_back: bool = False

    def roll_back(self) -> None:
        """Roll the transaction back at the end of the block instead of committing it."""
        self.rolled_back = True


@asynccontextmanager
async def tenant_transaction(
    connection: DbConnection, tenant_id: str, *, scope: str = SET_TENANT
) -> AsyncIterator[TransactionEnd]:
    """A transaction (a savepoint inside one) in which row-level security sees `tenant_id` only.

    The setting is transaction-local (SET LOCAL), so a pooled connection never carries it into the
    next transaction; without it every tenant table looks empty and refuses writes. `scope` is the
    statement that makes the transaction-local settings, with the tenant as $1 (`SET_TENANT`, or one
    that sets more, like the writer's). Commits when the block exits normally (unless it asked for
    `TransactionEnd.roll_back`), rolls back when it raises."""
    transaction = connection.transaction()
    await transaction.start()
    end = TransactionEnd()
    try:
        await connection.execute(scope, tenant_id)
        yield end
    except BaseException:
        await transaction.rollback()
        raise
    if end.rolled_back:
        await transaction.rollback()
    else:
        await transaction.commit()
