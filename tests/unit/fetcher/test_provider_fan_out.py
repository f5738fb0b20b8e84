"""fan_out: every item's call, at most `at_once` together, results in the items' order, and the first
failure raised as itself (callers expect the error tree, not an exception group)."""

from __future__ import annotations

import asyncio

import pytest

from apptsync.fetcher.providers._fan_out import fan_out, first_error
from apptsync.shared.errors import ProviderRejectedError


async def test_results_keep_the_items_order_whatever_order_the_calls_finish_in() -> None:
    async def slower_for_smaller(item: int) -> str:
        await asyncio.sleep(0.001 * (5 - item))
        return f"r{item}"

    assert await fan_out([1, 2, 3, 4], slower_for_smaller, at_once=4) == ["r1", "r2", "r3", "r4"]


async def test_no_more_than_at_once_calls_run_together() -> None:
    running = 0
    most = 0

    async def call(item: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running -= 1
        return item

    assert await fan_out(list(range(20)), call, at_once=3) == list(range(20))
    assert most == 3


async def test_the_first_failure_is_raised_as_itself_and_cancels_the_rest() -> None:
    cancelled: list[int] = []

    async def call(item: int) -> int:
        if item == 2:
            raise ProviderRejectedError("acuity payments of 2: 500", status_code=500)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(item)
            raise
        return item

    with pytest.raises(ProviderRejectedError, match="payments of 2"):
        await fan_out([1, 2, 3], call, at_once=3)
    assert sorted(cancelled) == [1, 3]


async def test_nothing_to_do_is_an_empty_list() -> None:
    async def never(item: int) -> int:
        raise AssertionError("called")

    assert await fan_out([], never, at_once=2) == []


async def test_at_once_below_one_is_refused() -> None:
    async def call(item: int) -> int:
        return item

    with pytest.raises(ValueError, match="at least 1"):
        await fan_out([1], call, at_once=0)


def test_the_first_error_of_nested_groups_is_the_one_raised() -> None:
    inner = ProviderRejectedError("calendly answered 404", status_code=404)
    grouped = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [inner, ValueError("later")])])
    assert first_error(grouped) is inner
