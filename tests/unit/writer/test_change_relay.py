"""The change relay's loop (apptsync.writer.change_relay.ChangeRelay.run): rounds until stopped, then a
bounded drain; retriable failures are retried, permanent ones raised. The rounds themselves (claim,
send, delete against PostgreSQL and a broker) are tested in tests/integration/writer/test_writer_change_events.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any, cast

import pytest

from apptsync.shared.errors import BrokerUnavailableError, PermanentError
from apptsync.writer.change_relay import ChangeRelay

pytestmark = pytest.mark.unit


class ScriptedRelay(ChangeRelay):
    """A relay whose rounds return (or raise) the scripted results in order, then 0 forever."""

    def __init__(self, script: list[int | Exception], *, monotonic: Callable[[], float] = lambda: 0.0,
                 drain_seconds: float = 5.0, on_round: Callable[[int], None] = lambda _n: None) -> None:
        super().__init__(pool=cast(Any, None), producer=cast(Any, None), topic="t", batch_size=10,
                         poll_interval_seconds=0.01, drain_seconds=drain_seconds, rng=random.Random(0),
                         monotonic=monotonic)
        self.script = list(script)
        self.rounds = 0
        self.on_round = on_round

    async def publish_once(self) -> int:
        self.rounds += 1
        self.on_round(self.rounds)
        if not self.script:
            return 0
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


async def test_a_stopped_relay_drains_until_nothing_is_pending() -> None:
    relay = ScriptedRelay([5, 5, 3])
    stop = asyncio.Event()
    stop.set()

    await asyncio.wait_for(relay.run(stop), timeout=5)

    assert relay.rounds == 4  # three with changes, one that found none
    assert relay.script == []


async def test_the_drain_is_bounded_by_its_seconds() -> None:
    clock = [0.0]

    def tick(_round: int) -> None:
        clock[0] += 1.0  # each round takes a second

    relay = ScriptedRelay([1] * 100, monotonic=lambda: clock[0], drain_seconds=3.0, on_round=tick)
    stop = asyncio.Event()
    stop.set()

    await asyncio.wait_for(relay.run(stop), timeout=5)

    assert relay.rounds == 3
    assert len(relay.script) == 97  # left for the next relay: still in the outbox


async def test_a_drain_stops_at_the_first_retriable_failure() -> None:
    relay = ScriptedRelay([2, BrokerUnavailableError("down"), 2])
    stop = asyncio.Event()
    stop.set()

    await asyncio.wait_for(relay.run(stop), timeout=5)

    assert relay.rounds == 2


async def test_retriable_failures_are_retried_and_a_permanent_one_is_raised() -> None:
    stop = asyncio.Event()
    relay = ScriptedRelay([BrokerUnavailableError("broker down"), 4, PermanentError("no such function")])

    with pytest.raises(PermanentError, match="no such function"):
        await asyncio.wait_for(relay.run(stop), timeout=5)

    assert relay.rounds == 3


async def test_a_wake_starts_a_round_before_the_poll_interval() -> None:
    stop = asyncio.Event()
    woken = asyncio.Event()
    relay = ScriptedRelay([])
    relay._poll_interval_seconds = 60.0  # only a wake (or the stop) can end the idle wait

    def on_round(number: int) -> None:
        if number == 2:
            woken.set()
            stop.set()

    relay.on_round = on_round
    running = asyncio.create_task(relay.run(stop))
    for _ in range(100):  # bounded: until the first round ran and the relay idles
        if relay.rounds >= 1:
            break
        await asyncio.sleep(0.01)
    relay.wake()

    await asyncio.wait_for(woken.wait(), timeout=5)
    await asyncio.wait_for(running, timeout=5)
    assert relay.rounds >= 2
