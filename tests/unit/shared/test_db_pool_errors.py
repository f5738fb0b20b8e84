"""The one asyncpg translation point: whatever a pooled connection raises reaches the caller as the
project's error, with asyncpg's exception as its cause."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import asyncpg
import pytest

from apptsync.shared.db.pool import acquired, database_errors
from apptsync.shared.errors import NotFoundError, StorageRefusedError, StorageUnavailableError

pytestmark = pytest.mark.unit


class FakePool:
    """Lends one object, or fails to (as asyncpg's pool does when PostgreSQL is gone)."""

    def __init__(self, acquire_error: BaseException | None = None) -> None:
        self.acquire_error = acquire_error
        self.lent = object()
        self.released = 0

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[object]:
        if self.acquire_error is not None:
            raise self.acquire_error
        try:
            yield self.lent
        finally:
            self.released += 1


def as_pool(fake: FakePool) -> asyncpg.Pool:
    return cast(asyncpg.Pool, fake)


async def test_a_failure_inside_the_block_is_translated_and_the_connection_returned() -> None:
    pool = FakePool()
    cause = asyncpg.exceptions.ForeignKeyViolationError("job does not exist")

    lent: list[object] = []

    async def use_the_connection() -> None:
        async with acquired(as_pool(pool)) as connection:
            lent.append(connection)
            raise cause

    with pytest.raises(StorageRefusedError) as raised:
        await use_the_connection()

    assert lent == [pool.lent]
    assert raised.value.__cause__ is cause
    assert pool.released == 1


async def test_a_pool_that_cannot_lend_a_connection_is_unavailable_storage() -> None:
    cause = asyncpg.exceptions.CannotConnectNowError("the database system is starting up")

    async def borrow() -> None:
        async with acquired(as_pool(FakePool(acquire_error=cause))):
            pass

    with pytest.raises(StorageUnavailableError) as raised:
        await borrow()

    assert raised.value.__cause__ is cause


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        (asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"), StorageUnavailableError),
        (asyncpg.InternalClientError("cannot switch to state 15"), StorageUnavailableError),
        (ConnectionResetError("reset by peer"), StorageUnavailableError),
        (asyncpg.exceptions.UndefinedTableError('relation "import_jobs" does not exist'), StorageRefusedError),
    ],
)
def test_database_errors_translates_every_database_failure(cause: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected) as raised, database_errors():
        raise cause

    assert raised.value.__cause__ is cause


def test_the_projects_own_errors_pass_unchanged() -> None:
    own = NotFoundError("job 1")

    with pytest.raises(NotFoundError) as raised, database_errors():
        raise own

    assert raised.value is own
