"""The two-phase OAuth refresh against real PostgreSQL, with a token endpoint that refuses a reused
refresh token (the simulator's OAuthTokenBook, Calendly's behaviour): a store transaction that fails
after the provider rotated the token loses nothing, and a refresher that died holding the marker is
taken over once the marker expires."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime

import asyncpg
import pytest

from apptsync.fetcher.connection_state import PostgresConnectionStateStore
from apptsync.fetcher.providers import CredentialRefresh
from apptsync.shared.credentials import Keyring
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db.migrator import migrate
from apptsync.simulator._oauth_tokens import SIMULATOR_CLIENT_ID, SIMULATOR_CLIENT_SECRET, OAuthTokenBook

pytestmark = pytest.mark.integration

TENANT = "5b0f7a52-3c1d-4e8f-9a2b-6c7d8e9f0a1b"
CONNECTION = "calendly"
ACCOUNT = 1
KEYRING = Keyring([("k1", bytes(range(32)))])
# A blocked row lock fails the statement quickly instead of waiting (lock_timeout, milliseconds).
LOCK_TIMEOUT_MS = "300"


@pytest.fixture
async def database(database_url: str, service_database_url: str) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """(the services' DSN, an owner connection) over a migrated database holding one connection."""
    owner = await asyncpg.connect(database_url)
    try:
        await migrate(owner)
        yield service_database_url, owner
    finally:
        await owner.close()


async def put_credentials(dsn: str, credentials: Mapping[str, str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await connections_db.put_connection(
            conn, keyring=KEYRING, tenant_id=TENANT, connection_id=CONNECTION, external_source="calendly",
            base_url="", credentials=credentials, settings={}, now=datetime.now(UTC),
        )  # fmt: skip
    finally:
        await conn.close()


async def stored_row(owner: asyncpg.Connection) -> tuple[dict[str, str], str | None]:
    row = await owner.fetchrow(
        "SELECT credentials_ciphertext, refresh_owner FROM connections WHERE tenant_id = $1 AND connection_id = $2",
        uuid.UUID(TENANT),
        CONNECTION,
    )
    assert row is not None
    credentials = KEYRING.decrypt(bytes(row["credentials_ciphertext"]), tenant_id=TENANT, connection_id=CONNECTION)
    return credentials, row["refresh_owner"]


def credentials_of(book: OAuthTokenBook) -> dict[str, str]:
    pair = book.current(ACCOUNT)
    return {
        "access_token": pair.access_token,
        "refresh_token": pair.refresh_token,
        "client_id": SIMULATOR_CLIENT_ID,
        "client_secret": SIMULATOR_CLIENT_SECRET,
    }


def token_endpoint(book: OAuthTokenBook) -> CredentialRefresh:
    async def refresh(credentials: Mapping[str, str]) -> Mapping[str, str]:
        form = {"grant_type": "refresh_token"}
        form.update({k: credentials[k] for k in ("refresh_token", "client_id", "client_secret")})
        _, pair = book.refresh(form)  # raises OAuthError(invalid_grant) for a spent token
        return {**credentials, "access_token": pair.access_token, "refresh_token": pair.refresh_token}

    return refresh


async def test_a_store_that_fails_after_the_token_was_rotated_retries_and_the_connection_keeps_working(
    database: tuple[str, asyncpg.Connection],
) -> None:
    dsn, owner = database
    book = OAuthTokenBook("calendly")
    book.issue(ACCOUNT)
    original = credentials_of(book)
    await put_credentials(dsn, original)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, server_settings={"lock_timeout": LOCK_TIMEOUT_MS})
    assert pool is not None
    blocker = await asyncpg.connect(dsn)  # another session that takes the row lock
    blocker_tx = blocker.transaction()
    sleeps: list[float] = []

    async def rotate_then_block_the_store(credentials: Mapping[str, str]) -> Mapping[str, str]:
        fresh = await token_endpoint(book)(credentials)
        # The provider has spent the old token; now the transaction that stores the new one fails.
        await blocker_tx.start()
        await blocker.execute(f"SELECT set_config('app.tenant_id', '{TENANT}', true)")
        await blocker.execute(
            "SELECT 1 FROM connections WHERE tenant_id = $1 AND connection_id = $2 FOR UPDATE",
            uuid.UUID(TENANT),
            CONNECTION,
        )
        return fresh

    async def sleep_releasing_the_lock(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            await blocker_tx.rollback()

    try:
        store = PostgresConnectionStateStore(
            pool=pool, keyring=KEYRING, tenant_id=TENANT, connection_id=CONNECTION,
            clock=lambda: datetime.now(UTC), refresh_owner="fetcher-a", sleep=sleep_releasing_the_lock,
        )  # fmt: skip
        fresh = await store.refresh_credentials(rejected=original, refresh=rotate_then_block_the_store)
    finally:
        await pool.close()
        await blocker.close()

    assert len(sleeps) == 1  # the first store attempt failed on the lock, the second stored
    assert fresh == credentials_of(book) != original
    stored, marker = await stored_row(owner)
    assert stored == fresh
    assert marker is None

    # Another fetcher, later: the access token expired, and the stored refresh token still works.
    book.expire_access_tokens()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    assert pool is not None
    try:
        later = PostgresConnectionStateStore(
            pool=pool, keyring=KEYRING, tenant_id=TENANT, connection_id=CONNECTION,
            clock=lambda: datetime.now(UTC), refresh_owner="fetcher-b",
        )  # fmt: skip
        again = await later.refresh_credentials(rejected=stored, refresh=token_endpoint(book))
    finally:
        await pool.close()
    assert again == credentials_of(book)
    assert (book.refreshes, book.invalid_grants) == (2, 0)
    assert (await stored_row(owner))[0] == again


async def test_a_refresher_that_died_holding_the_marker_is_taken_over_after_the_timeout(
    database: tuple[str, asyncpg.Connection],
) -> None:
    dsn, owner = database
    book = OAuthTokenBook("calendly")
    book.issue(ACCOUNT)
    original = credentials_of(book)
    await put_credentials(dsn, original)
    # What a fetcher killed during its token request leaves behind: its committed marker, the old credentials.
    await owner.execute(
        """UPDATE connections SET refresh_owner = 'fetcher-dead', refresh_started_at = $3
           WHERE tenant_id = $1 AND connection_id = $2""",
        uuid.UUID(TENANT),
        CONNECTION,
        datetime.now(UTC),
    )
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    clock_readings = iter([datetime.now(UTC)] * 3 + [datetime(2100, 1, 1, tzinfo=UTC)] * 10)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    assert pool is not None
    try:
        store = PostgresConnectionStateStore(
            pool=pool, keyring=KEYRING, tenant_id=TENANT, connection_id=CONNECTION,
            clock=lambda: next(clock_readings), refresh_owner="fetcher-alive", sleep=fake_sleep,
            refresh_marker_timeout_seconds=60.0, refresh_poll_seconds=1.0,
        )  # fmt: skip
        fresh = await store.refresh_credentials(rejected=original, refresh=token_endpoint(book))
    finally:
        await pool.close()
    # It waited while the marker was live (three clock readings), then took over.
    assert waits == [1.0, 1.0, 1.0]
    assert fresh == credentials_of(book) != original
    assert (book.refreshes, book.invalid_grants) == (1, 0)
    assert await stored_row(owner) == (fresh, None)
