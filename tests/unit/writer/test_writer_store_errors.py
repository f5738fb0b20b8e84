"""What a database failure means for the writer: retry, dead-letter, or stop."""

from __future__ import annotations

import asyncpg
import pytest

from apptsync.shared.db.pool import is_transient_database_error, translate_database_error
from apptsync.shared.errors import PermanentError, PoisonMessageError, StorageUnavailableError
from apptsync.writer.store import translate_store_error

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError("refused"),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
        # The protocol of a connection PostgreSQL dropped while a statement started (a fault test
        # saw it crash the writer when PostgreSQL shut down under load).
        asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    ],
)
def test_transient_failures_mean_retry(exc: BaseException) -> None:
    assert is_transient_database_error(exc)
    assert isinstance(translate_database_error(exc), StorageUnavailableError)
    assert isinstance(translate_store_error(exc), StorageUnavailableError)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.ForeignKeyViolationError("job does not exist"),
        asyncpg.exceptions.InvalidTextRepresentationError("invalid input syntax for type json"),
        asyncpg.exceptions.CheckViolationError("status"),
    ],
)
def test_a_page_postgresql_refuses_is_dead_lettered(exc: BaseException) -> None:
    assert not is_transient_database_error(exc)
    assert isinstance(translate_database_error(exc), PermanentError)
    assert isinstance(translate_store_error(exc), PoisonMessageError)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.UndefinedTableError('relation "appointments" does not exist'),
        asyncpg.exceptions.InsufficientPrivilegeError("permission denied"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    ],
)
def test_a_broken_deployment_stops_the_writer(exc: BaseException) -> None:
    translated = translate_store_error(exc)

    assert type(translated) is PermanentError
    assert type(exc).__name__ in str(translated)
