"""A LISTEN subscription that outlives its connection.

PostgreSQL drops every connection when it restarts or fails over, and a dropped connection's
LISTEN is gone with it: a service that listened once would fall back to its slow polling for the
rest of its life. `NotificationListener` holds one pooled connection, notices when PostgreSQL
drops it (asyncpg's termination callback) and subscribes again on a new one, with jittered
exponential backoff (tenacity) while PostgreSQL is away. Notifications sent in between are lost,
so the owner is told (`on_resubscribed`) and re-reads whatever it was waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from apptsync.shared.db.pool import DATABASE_ERRORS

_log = logging.getLogger("apptsync.db.listen")


class NotificationListener:
    """LISTENs on `channel` and calls `on_notification(payload)` for every notification, across
    PostgreSQL restarts.

    Guarantees: after `start()` returns, a subscription exists or is being re-established (retried
    until `stop()`, `retry_cap_seconds` apart at most); `on_resubscribed()` is called after every
    re-subscription; `stop()` never raises. Callbacks run on the event loop and must not block.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        channel: str,
        *,
        on_notification: Callable[[str], None],
        on_resubscribed: Callable[[], None] = lambda: None,
        retry_base_seconds: float = 0.2,
        retry_cap_seconds: float = 5.0,
    ) -> None:
        self._pool = pool
        self._channel = channel
        self._on_notification = on_notification
        self._on_resubscribed = on_resubscribed
        self._retry_base_seconds = retry_base_seconds
        self._retry_cap_seconds = retry_cap_seconds
        self._connection: Any = None
        self._dropped = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self.resubscriptions = 0

    async def start(self) -> None:
        """Subscribes. Raises asyncpg/OS errors when PostgreSQL cannot be reached now (start-up
        should fail loudly); later losses are recovered in the background."""
        await self._subscribe()
        self._keeper = asyncio.create_task(self._keep_subscribed(), name=f"listen {self._channel}")

    async def stop(self) -> None:
        """Unsubscribes and returns the connection to the pool. Never raises."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        await self._release()

    async def _subscribe(self) -> None:
        connection = await self._pool.acquire()
        try:
            self._dropped.clear()
            connection.add_termination_listener(self._terminated)
            await connection.add_listener(self._channel, self._notified)
        except BaseException:
            with contextlib.suppress(*DATABASE_ERRORS):
                await self._pool.release(connection)
            raise
        self._connection = connection

    async def _keep_subscribed(self) -> None:
        while True:
            await self._dropped.wait()
            _log.warning("the LISTEN connection for %s was dropped; subscribing again", self._channel)
            await self._release()
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(DATABASE_ERRORS),
                wait=wait_random_exponential(multiplier=self._retry_base_seconds, max=self._retry_cap_seconds),
                reraise=True,
            )
            async for attempt in retrying:  # until PostgreSQL is back (stop() cancels)
                with attempt:
                    await self._subscribe()
            self.resubscriptions += 1
            _log.info("listening on %s again", self._channel)
            self._on_resubscribed()

    async def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        # A connection PostgreSQL dropped is already closed and detached from its pool: asyncpg
        # refuses these calls (InterfaceError), and there is nothing left to undo.
        with contextlib.suppress(*DATABASE_ERRORS):
            connection.remove_termination_listener(self._terminated)
        with contextlib.suppress(*DATABASE_ERRORS):
            await connection.remove_listener(self._channel, self._notified)
        with contextlib.suppress(*DATABASE_ERRORS):
            await self._pool.release(connection)

    def _terminated(self, _connection: object) -> None:
        self._dropped.set()

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: object) -> None:
        self._on_notification(str(payload))
