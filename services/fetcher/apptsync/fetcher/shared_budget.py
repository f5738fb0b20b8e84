"""The provider budget every fetcher replica behind one egress IP shares, kept in PostgreSQL.

Implements providers.SharedBudget over apptsync.shared.db.provider_budgets (the why of PostgreSQL is
in migration 0010). Per request: one statement reserves a slot and a concurrency lease, one ends the
lease; a 429 adds one that pauses the budget for every replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import asyncpg

from apptsync.fetcher.providers import RateBudget
from apptsync.shared.appointments import Source
from apptsync.shared.db import provider_budgets
from apptsync.shared.db.pool import DATABASE_ERRORS, translate_database_error
from apptsync.shared.errors import ProviderUnavailableError

_log = logging.getLogger("apptsync.fetcher.shared_budget")

# A lease outlives its request by this much: the request itself is bounded by the HTTP timeout.
LEASE_MARGIN_SECONDS = 5.0
# A request leaves within this share of one spacing after its slot, or takes a new slot: one that woke
# late (its event loop busy elsewhere) would land closer than a spacing to the next holder's request,
# and ten such gaps eat the budget's margin (10 per 1.1 s: 100 ms).
LATE_WAKE_SPACINGS = 0.75


def shared_sources(setting: str) -> frozenset[Source]:
    """The providers named in APPTSYNC_FETCHER_SHARED_BUDGET_PROVIDERS (comma-separated, blanks
    ignored). Raises ValueError for a name that is no provider."""
    return frozenset(Source(name.strip()) for name in setting.split(",") if name.strip())


class PostgresSharedBudget:
    """The shared budgets of `sources` under `budget_key` (the egress IP's name), as `holder` (the
    worker id, for diagnostics). `http_timeout_seconds` bounds one request, so a lease expires
    LEASE_MARGIN_SECONDS after it; waiting for a lease gives up after as long, when every lease the
    budget holds has expired at the latest. `sleep` and `monotonic` are for tests."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        sources: Iterable[Source],
        budget_key: str,
        holder: str,
        http_timeout_seconds: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._sources = frozenset(sources)
        self._budget_key = budget_key
        self._holder = holder
        # Slots given back because the wake-up came too late for them (see LATE_WAKE_SPACINGS).
        self.late_wakes = 0
        self._lease_seconds = http_timeout_seconds + LEASE_MARGIN_SECONDS
        self._sleep = sleep
        self._monotonic = monotonic

    def covers(self, source: Source) -> bool:
        return source in self._sources

    async def acquire(self, source: Source, budget: RateBudget) -> int:
        """Waits for a lease and then for its slot; returns the lease. Raises ProviderUnavailableError
        (retried like a provider's 503) when no lease frees up within the lease time,
        StorageUnavailableError / PermanentError when PostgreSQL fails."""
        spacing_seconds = budget.period_seconds / budget.requests_per_period
        give_up_at = self._monotonic() + self._lease_seconds
        # Bounded twice: by time (give_up_at) and by count (polls one spacing apart cannot exceed this).
        max_polls = int(self._lease_seconds / spacing_seconds) + 2
        for _poll in range(max_polls):
            try:
                async with self._pool.acquire() as conn:
                    grant = await provider_budgets.acquire(
                        conn,
                        provider=source.value,
                        budget_key=self._budget_key,
                        holder=self._holder,
                        spacing_seconds=spacing_seconds,
                        max_concurrent=budget.max_concurrent,
                        lease_seconds=self._lease_seconds,
                    )
            except DATABASE_ERRORS as exc:
                raise translate_database_error(exc) from exc
            if grant.lease_id is not None:
                if grant.wait_seconds <= 0:
                    return grant.lease_id
                due = self._monotonic() + grant.wait_seconds
                await self._sleep(grant.wait_seconds)
                if self._monotonic() - due <= spacing_seconds * LATE_WAKE_SPACINGS:
                    return grant.lease_id
                self.late_wakes += 1
                await self.release(grant.lease_id)
                continue
            if self._monotonic() + grant.wait_seconds > give_up_at:
                break
            await self._sleep(grant.wait_seconds)
        raise ProviderUnavailableError(
            f"{source.value}: the shared request budget {self._budget_key!r} had no free connection "
            f"for {self._lease_seconds:.0f} s"
        )

    async def release(self, lease_id: int) -> None:
        try:
            async with self._pool.acquire() as conn:
                await provider_budgets.release(conn, lease_id=lease_id)
        except DATABASE_ERRORS as exc:
            # The request is done; its lease expires on its own after the lease time.
            _log.warning("releasing shared budget lease %d failed (%s); it expires", lease_id, type(exc).__name__)

    async def pause(self, source: Source, pause_seconds: float) -> None:
        try:
            async with self._pool.acquire() as conn:
                await provider_budgets.pause(
                    conn, provider=source.value, budget_key=self._budget_key, pause_seconds=pause_seconds
                )
        except DATABASE_ERRORS as exc:
            # This request still backs off (its retry honours the 429); only the others are not told.
            _log.warning("pausing shared budget %s failed (%s)", source.value, type(exc).__name__)
