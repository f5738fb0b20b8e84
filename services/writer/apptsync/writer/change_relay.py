"""The change relay: publishes the change outbox (`appointment_changes`) to the change-events topic.

One transaction per round: claim one shard's oldest changes (apptsync.shared.db.change_outbox), send
them in order, wait for the broker's acknowledgement of every one, delete them, commit. So:

- nothing is published that was not committed (the outbox row exists only after the change's commit);
- nothing is lost: a crash or failure before the commit leaves the rows, the next round sends them
  again (at least once; a duplicate carries the same row_version, consumers drop it);
- per-key order holds across writer replicas: a shard is held by one relay at a time (an advisory
  lock for the claim's transaction) and a key always falls in the same shard, sent oldest first, as
  Kafka keeps the order of one producer's messages per partition.

It runs in the writer process beside the page writer (same lifecycle: SIGTERM stops it after a bounded
drain). The page writer wakes it after each commit; changes committed by other processes (the
fetcher's reconciliation, other writers) are found by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence

import asyncpg
from aiokafka import AIOKafkaProducer

from apptsync.shared.change_events import OutboxChange, classify_change, encode_change
from apptsync.shared.db.change_outbox import SHARDS, claim_changes, delete_changes, pending_changes
from apptsync.shared.db.pool import DATABASE_ERRORS, translate_database_error
from apptsync.shared.errors import RetriableError
from apptsync.shared.kafka import send_keyed
from apptsync.shared.telemetry.metrics import METRICS

log = logging.getLogger(__name__)

_RETRY_BASE_SECONDS = 0.2
_RETRY_CAP_SECONDS = 5.0


class ChangeRelay:
    """Publishes committed changes until stopped; see the module docstring for the guarantees."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        topic: str,
        batch_size: int,
        poll_interval_seconds: float,
        drain_seconds: float,
        rng: random.Random,
        monotonic: Callable[[], float],
        after_send: Callable[[], None] = lambda: None,
    ) -> None:
        """`after_send` runs between the broker's acknowledgement and the outbox commit: the crash
        tests' fault hook (a kill there must lead to a duplicate, never a loss); production: a no-op."""
        self._pool = pool
        self._producer = producer
        self._topic = topic
        self._batch_size = batch_size
        self._poll_interval_seconds = poll_interval_seconds
        self._drain_seconds = drain_seconds
        self._rng = rng
        self._monotonic = monotonic
        self._wake = asyncio.Event()
        self._failures = 0
        self._after_send = after_send

    def wake(self) -> None:
        """Look for changes now (called after this process committed some)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publishes until `stop` is set, then drains what is pending for up to `drain_seconds` and
        returns. Retriable failures (PostgreSQL, broker) are retried with backoff; a PermanentError
        is raised."""
        while not stop.is_set():
            # Cleared before the round, not after: a commit during the round wakes the next one.
            self._wake.clear()
            published = await self._round_or_backoff(stop)
            if published == 0:
                await self._idle(stop)
        drain_until = self._monotonic() + self._drain_seconds
        while self._monotonic() < drain_until:
            try:
                if await self.publish_once() == 0:
                    break
            except RetriableError as exc:
                log.warning("change relay: drain stopped by %s; the rows stay for the next relay", exc)
                break

    async def _round_or_backoff(self, stop: asyncio.Event) -> int:
        try:
            published = await self.publish_once()
        except RetriableError as exc:
            self._failures += 1
            delay_seconds = min(_RETRY_CAP_SECONDS, _RETRY_BASE_SECONDS * 2 ** (self._failures - 1))
            log.warning("change relay: %s; retrying in %.2f s", exc, delay_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay_seconds)
            return -1
        self._failures = 0
        return published

    async def _idle(self, stop: asyncio.Event) -> None:
        """Until woken, stopped, or the poll interval passed."""
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=self._poll_interval_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def publish_once(self) -> int:
        """One round: claims, publishes and deletes one shard's oldest changes; returns how many (0:
        nothing to claim). Raises StorageUnavailableError / BrokerUnavailableError (nothing deleted:
        the changes are published again later) or PermanentError."""
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                changes = await claim_changes(
                    connection, limit=self._batch_size, first_shard=self._rng.randrange(SHARDS)
                )
                if not changes:
                    METRICS.change_outbox_pending.set(await pending_changes(connection))
                    return 0
                await self._send(changes)
                self._after_send()
                await delete_changes(connection, [change.change_id for change in changes])
        except DATABASE_ERRORS as exc:
            raise translate_database_error(exc) from exc
        for change in changes:
            kind, _fields = classify_change(change.previous, change.state, raw_changed=change.raw_changed)
            METRICS.change_events_published.labels(kind.value).inc()
        return len(changes)

    async def _send(self, changes: Sequence[OutboxChange]) -> None:
        """Sends the changes in order and waits until the broker acknowledged every one."""
        await send_keyed(self._producer, self._topic, [encode_change(change) for change in changes])
