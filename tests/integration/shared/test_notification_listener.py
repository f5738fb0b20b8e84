"""NotificationListener against a real PostgreSQL that is stopped and started again: the LISTEN
subscription comes back by itself, and the owner is told that notifications may have been missed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from apptsync.shared.db.listen import NotificationListener
from tests.containers.fixtures import PostgresServerContainer

pytestmark = pytest.mark.integration
CHANNEL = "apptsync_listener_test"


async def notify_until_heard(dsn: str, heard: asyncio.Queue[str], payload: str, *, timeout_seconds: float) -> None:
    """NOTIFY every 0.2 s (bounded) until the listener hears `payload`."""
    connection = await asyncpg.connect(dsn)
    try:
        for _attempt in range(int(timeout_seconds / 0.2)):
            await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
            try:
                if await asyncio.wait_for(heard.get(), timeout=0.2) == payload:
                    return
            except TimeoutError:
                continue
    finally:
        await connection.close()
    raise AssertionError(f"{payload!r} was not heard within {timeout_seconds} s")


async def test_the_subscription_survives_postgresql_restarts(
    postgres_server_factory: Callable[[], PostgresServerContainer],
) -> None:
    postgres = postgres_server_factory()
    dsn = postgres.dsn()
    heard: asyncio.Queue[str] = asyncio.Queue()
    resubscribed = asyncio.Event()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    listener = NotificationListener(
        pool, CHANNEL, on_notification=heard.put_nowait, on_resubscribed=resubscribed.set, retry_cap_seconds=0.5
    )
    await listener.start()
    try:
        await notify_until_heard(dsn, heard, "before", timeout_seconds=10)
        for restart in range(2):
            resubscribed.clear()
            await asyncio.to_thread(postgres.restart_server)
            await asyncio.wait_for(resubscribed.wait(), timeout=30)
            assert listener.resubscriptions == restart + 1
            await notify_until_heard(dsn, heard, f"after restart {restart + 1}", timeout_seconds=10)
    finally:
        await listener.stop()
        await pool.close()


async def test_stop_while_postgresql_is_away_returns_at_once(
    postgres_server_factory: Callable[[], PostgresServerContainer],
) -> None:
    postgres = postgres_server_factory()
    pool = await asyncpg.create_pool(postgres.dsn(), min_size=1, max_size=2)
    listener = NotificationListener(pool, CHANNEL, on_notification=lambda _payload: None, retry_cap_seconds=0.5)
    await listener.start()
    try:
        await asyncio.to_thread(postgres.stop_server)
        await asyncio.sleep(1)  # the listener is retrying now
    finally:
        await asyncio.wait_for(listener.stop(), timeout=5)
        pool.terminate()
    assert listener.resubscriptions == 0
