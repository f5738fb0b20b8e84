"""Fan-out of job change notifications to WatchJob streams.

One LISTEN connection per gateway process receives `apptsync_job_changed` notifications (a trigger
fires them on every import_jobs change) and wakes the watchers of that job. Watchers also re-read the
job on a slow fallback interval, because a notification sent while the listening connection was
being re-established is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

import asyncpg

from apptsync.shared.db.jobs import JOB_CHANGED_CHANNEL

_log = logging.getLogger("apptsync.gateway.watch")


class JobChangeHub:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._listener: Any = None
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)

    async def start(self) -> None:
        """Starts listening. Raises asyncpg/OS errors when PostgreSQL is unreachable."""
        self._listener = await self._pool.acquire()
        await self._listener.add_listener(JOB_CHANGED_CHANNEL, self._on_notification)

    async def stop(self) -> None:
        """Stops listening. Never raises for a listening connection PostgreSQL already dropped (a
        restart): asyncpg calls that one released (InterfaceError), and there is nothing to undo."""
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await listener.remove_listener(JOB_CHANGED_CHANNEL, self._on_notification)
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._pool.release(listener)

    def _on_notification(self, _connection: object, _pid: int, _channel: str, job_id: str) -> None:
        for event in self._watchers.get(job_id, ()):
            event.set()

    def watch(self, job_id: str) -> asyncio.Event:
        """An event set whenever the job changes; call `unwatch` with it when done."""
        event = asyncio.Event()
        self._watchers[job_id].add(event)
        return event

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._watchers[job_id]
