"""Fixtures of the writer's integration tests: a migrated database and import jobs to write into."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from apptsync.shared.db.migrator import migrate
from tests.integration.writer.writer_database import insert_job


@pytest.fixture
async def connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a fresh, migrated database."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def create_job(connection: asyncpg.Connection) -> Callable[..., Awaitable[str]]:
    """`await create_job(tenant_id)` inserts an import job and returns its id."""

    async def create(tenant_id: str, job_id: str | None = None) -> str:
        return await insert_job(connection, tenant_id, job_id)

    return create
