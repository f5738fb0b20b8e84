"""The sending side of the simulated providers' notifications: a task that posts every due delivery
of the state's hub to its (loopback) target with aiohttp, records the answer and lets the hub queue
the retry. aiohttp adapter; what to send, when, and what an answer means live in _webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiohttp

from apptsync.simulator._webhooks import Delivery, WebhookHub, check_loopback_target, signed_headers

# Deliveries in flight at once (a provider sends in parallel; order is not guaranteed, as with them).
MAX_IN_FLIGHT = 8
# Longest sleep of an idle sender between checks (it is woken on every enqueue anyway).
_IDLE_WAIT_SECONDS = 1.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


class WebhookSender:
    """Posts due deliveries until cancelled. `monotonic` and `wall` are its clocks (queue / log)."""

    def __init__(
        self,
        hub: WebhookHub,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._hub = hub
        self._monotonic = monotonic
        self._wall = wall
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            try:
                while True:
                    for delivery in self._hub.take_due(self._monotonic()):
                        await self._slots.acquire()
                        task = asyncio.create_task(self._attempt(session, delivery))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    due = self._hub.next_due()
                    wait = (
                        _IDLE_WAIT_SECONDS
                        if due is None
                        else max(0.0, min(_IDLE_WAIT_SECONDS, due - self._monotonic()))
                    )
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _attempt(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        try:
            notification = delivery.notification
            started = self._wall()
            headers = signed_headers(notification, forged=delivery.forged, unix_seconds=int(started.timestamp()))
            status = 0
            try:
                check_loopback_target(notification.url)  # never send anywhere else, whatever was stored
                async with session.post(
                    notification.url,
                    data=notification.body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self._hub.knobs.timeout_seconds),
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, ValueError):
                status = 0  # no answer: counted as a failed attempt and retried
            self._hub.attempted(
                delivery, status=status, started=started, ended=self._wall(), monotonic=self._monotonic()
            )
            self._wakeup.set()
        finally:
            self._slots.release()


@contextlib.asynccontextmanager
async def sending(hub: WebhookHub) -> AsyncIterator[WebhookSender]:
    """Runs a sender for `hub` while the block runs (the hub's `wake` points at it meanwhile)."""
    sender = WebhookSender(hub)
    hub.wake = sender.wake
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        hub.wake = lambda: None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
