"""Bounded fan-out of one page's follow-up requests (Acuity payments, Calendly invitees).

A page's follow-up requests are independent, and one at a time they spend most of their time waiting
on the network: at a real provider's round trip (100-400 ms) a sequential walk uses a fraction of the
rate budget ProviderHttp would grant. The budget (rate and connections) still bounds every attempt;
`at_once` only keeps one job from taking all of a process's connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def first_error(grouped: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure inside `grouped`, however deeply nested. asyncio.TaskGroup wraps its tasks'
    failures in an exception group; a session's callers expect the error tree (a ProviderRejectedError,
    not a group holding one), and the first failure is the one that cancelled the rest."""
    first = grouped.exceptions[0]
    return first_error(first) if isinstance(first, BaseExceptionGroup) else first


async def fan_out(
    items: Sequence[_Item], call: Callable[[_Item], Awaitable[_Result]], *, at_once: int
) -> list[_Result]:
    """`call` on every item, at most `at_once` running together; the results in the items' order.
    The first failure cancels the rest and is raised as itself (not as an exception group)."""
    if at_once < 1:
        raise ValueError("at_once must be at least 1")
    slots = asyncio.Semaphore(at_once)

    async def bounded(item: _Item) -> _Result:
        async with slots:
            return await call(item)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(bounded(item)) for item in items]
    except BaseExceptionGroup as grouped:
        raise first_error(grouped) from None
    return [task.result() for task in tasks]
