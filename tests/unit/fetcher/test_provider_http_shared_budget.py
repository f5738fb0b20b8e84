"""ProviderHttp with a shared budget: every attempt of a covered provider takes and returns one lease,
a 429 pauses the budget for every replica, other providers never touch it (an in-memory fake)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import httpx
import pytest

from apptsync.fetcher.providers import ProviderHttp, RateBudget, RetryPolicy, shared_pause_seconds
from apptsync.fetcher.shared_budget import shared_sources
from apptsync.shared.appointments import Source
from apptsync.shared.errors import ProviderRejectedError
from apptsync.shared.outbound import OutboundPolicy

pytestmark = pytest.mark.unit

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
URL = "https://provider.test/api"
BUDGET = RateBudget(requests_per_period=10, period_seconds=1.1, max_concurrent=20)
POLICY = RetryPolicy(max_attempts=3, max_total_seconds=60.0, initial_backoff_seconds=0.01, max_backoff_seconds=0.01)


class FakeSharedBudget:
    def __init__(self, *covered: Source) -> None:
        self.covered = frozenset(covered)
        self.events: list[str] = []
        self.budgets: list[RateBudget] = []
        self.pauses: list[float] = []
        self._next_lease = 0

    def covers(self, source: Source) -> bool:
        return source in self.covered

    async def acquire(self, source: Source, budget: RateBudget) -> int:
        self._next_lease += 1
        self.events.append(f"acquire {source.value} {self._next_lease}")
        self.budgets.append(budget)
        return self._next_lease

    async def release(self, lease_id: int) -> None:
        self.events.append(f"release {lease_id}")

    async def pause(self, source: Source, pause_seconds: float) -> None:
        self.events.append(f"pause {source.value}")
        self.pauses.append(pause_seconds)


async def no_sleep(_seconds: float) -> None:
    return None


def make_http(shared: FakeSharedBudget, *replies: httpx.Response) -> tuple[ProviderHttp, list[httpx.Request]]:
    script = list(replies)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return script.pop(0)

    http = ProviderHttp(
        outbound=OutboundPolicy.allowing(["https://provider.test"]),
        timeout_seconds=5.0,
        transport=httpx.MockTransport(handler),
        retry=POLICY,
        sleep=no_sleep,
        clock=lambda: NOW,
        rng=random.Random(3),
        shared_budget=shared,
    )
    return http, seen


async def test_every_attempt_takes_and_returns_one_lease_and_a_429_pauses_everyone() -> None:
    shared = FakeSharedBudget(Source.ACUITY)
    http, seen = make_http(
        shared,
        httpx.Response(429, headers={"Retry-After": "3"}, json={"message": "too many"}),
        httpx.Response(200, json={"ok": True}),
    )
    try:
        response = await http.get_json(source=Source.ACUITY, budget=BUDGET, url=URL, params={}, headers={})
    finally:
        await http.aclose()
    assert response.body == {"ok": True}
    assert len(seen) == 2
    assert shared.events == ["acquire acuity 1", "release 1", "pause acuity", "acquire acuity 2", "release 2"]
    assert shared.pauses == [3.0]
    assert shared.budgets == [BUDGET, BUDGET]


async def test_the_lease_is_returned_when_the_request_fails_for_good() -> None:
    shared = FakeSharedBudget(Source.ACUITY)
    http, _seen = make_http(shared, httpx.Response(404, json={"message": "no such thing"}))
    try:
        with pytest.raises(ProviderRejectedError):
            await http.get_json(source=Source.ACUITY, budget=BUDGET, url=URL, params={}, headers={})
    finally:
        await http.aclose()
    assert shared.events == ["acquire acuity 1", "release 1"]


async def test_a_provider_the_shared_budget_does_not_cover_never_touches_it() -> None:
    shared = FakeSharedBudget(Source.ACUITY)
    http, seen = make_http(shared, httpx.Response(429), httpx.Response(200, json=[]))
    try:
        await http.get_json(source=Source.CALENDLY, budget=BUDGET, url=URL, params={}, headers={})
    finally:
        await http.aclose()
    assert len(seen) == 2
    assert shared.events == []


def test_a_429_pauses_for_its_retry_after_else_one_second_and_never_beyond_five_minutes() -> None:
    assert shared_pause_seconds(httpx.Headers({"Retry-After": "7"}), now=NOW) == 7.0
    assert shared_pause_seconds(httpx.Headers({}), now=NOW) == 1.0
    assert shared_pause_seconds(httpx.Headers({"retry-after": "soon"}), now=NOW) == 1.0
    assert shared_pause_seconds(httpx.Headers({"Retry-After": "86400"}), now=NOW) == 300.0


def test_the_shared_providers_setting_names_sources() -> None:
    assert shared_sources("acuity") == {Source.ACUITY}
    assert shared_sources(" acuity , calendly,") == {Source.ACUITY, Source.CALENDLY}
    assert shared_sources("") == frozenset()
    with pytest.raises(ValueError, match="nope"):
        shared_sources("acuity,nope")
