"""Fan-out of job change notifications to WatchJob streams.

One LISTEN subscription per gateway process (kept across PostgreSQL restarts) receives
`apptsync_job_changed` notifications (a trigger fires them on every import_jobs change) and wakes the
watchers of that job; a re-subscription wakes every watcher, since changes made meanwhile were not
heard. Watchers also re-read the job on a slow fallback interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import asyncpg

from apptsync.shared.db.jobs import JOB_CHANGED_CHANNEL
from apptsync.shared.db.listen import NotificationListener

_log = logging.getLogger("apptsync.gateway.watch")


class JobChangeHub:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._listener = NotificationListener(
            pool, JOB_CHANGED_CHANNEL, on_notification=self._job_changed, on_resubscribed=self._wake_all
        )
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)

    async def start(self) -> None:
        """Starts listening (and keeps listening across PostgreSQL restarts). Raises asyncpg/OS
        errors when PostgreSQL is unreachable now."""
        await self._listener.start()

    async def stop(self) -> None:
        """Stops listening. Never raises."""
        await self._listener.stop()

    def _job_changed(self, job_id: str) -> None:
        for event in self._watchers.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        # Changes made while the subscription was down sent notifications nobody heard.
        for events in self._watchers.values():
            for event in events:
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
