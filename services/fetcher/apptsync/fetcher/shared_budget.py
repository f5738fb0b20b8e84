"""The provider budget every fetcher replica behind one egress IP shares, kept in PostgreSQL.

Implements providers.SharedBudget over apptsync.shared.db.provider_budgets (the why of PostgreSQL is
in migration 0010). Per request: one statement reserves a slot and a concurrency lease and, in the same
statement, ends the leases of the requests this process finished since its previous one (migration
0017). A finished lease no acquire carries within RELEASE_FLUSH_DELAY_SECONDS is ended by a flush, one
statement for all leases pending then. While a request of this process waits for a lease (every lease
of the budget is held), a release ends at once with a statement of its own, so that the freed lease
goes to whichever replica asks first (see `release`). A 429 adds one statement that pauses the budget
for every replica.
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
from apptsync.shared.db.provider_budgets import BudgetGrant
from apptsync.shared.errors import ProviderUnavailableError

_log = logging.getLogger("apptsync.fetcher.shared_budget")

# A lease outlives its request by this much: the request itself is bounded by the HTTP timeout.
LEASE_MARGIN_SECONDS = 5.0
# A request leaves within this share of one spacing after its slot, or takes a new slot: one that woke
# late (its event loop busy elsewhere) would land closer than a spacing to the next holder's request,
# and ten such gaps eat the budget's margin (10 per 1.1 s: 100 ms).
LATE_WAKE_SPACINGS = 0.75
# A finished request's lease is ended by this process's next acquire, in the same statement, or, when
# no acquire comes within this delay, by a flush of its own. Until then the lease still counts against
# the budget's concurrency for every replica: a request holds it up to this much longer. 50 ms is small
# next to the requests that make the concurrency bound bind (Acuity: 20 leases, a slot every 110 ms, so
# only requests lasting 2.2 s or more fill it; 50 ms more each is under 2.5 % of the bound). Where the
# statements cost, at high request rates, the next acquire comes well within it: at 1,000 requests/s
# (the benchmarks' lifted budget) 1.1 statements per request instead of 2. At Acuity's own pace, one
# acquire per 110 ms, most releases still wait out the delay and take a flush (measured 1.9-2.0
# statements per request; 1.4-1.5 with a 120 ms delay), which at 10 requests/s PostgreSQL does not feel.
RELEASE_FLUSH_DELAY_SECONDS = 0.05


def shared_sources(setting: str) -> frozenset[Source]:
    """The providers named in APPTSYNC_FETCHER_SHARED_BUDGET_PROVIDERS (comma-separated, blanks
    ignored). Raises ValueError for a name that is no provider."""
    return frozenset(Source(name.strip()) for name in setting.split(",") if name.strip())


class PostgresSharedBudget:
    """The shared budgets of `sources` under `budget_key` (the egress IP's name), as `holder` (the
    worker id, for diagnostics). `http_timeout_seconds` bounds one request, so a lease expires
    LEASE_MARGIN_SECONDS after it; waiting for a lease gives up after as long, when every lease the
    budget holds has expired at the latest. `sleep` (also the flush's delay) and `monotonic` are for
    tests. Call `close()` before the pool closes: it ends the finished leases still pending."""

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
        # Leases of finished requests (of any of the budgets) that PostgreSQL still counts: the next
        # acquire's statement ends them, else the flush task. Only ever one statement carries a lease.
        self._finished: list[int] = []
        # The flush task (kept referenced: the event loop holds tasks weakly); None when none runs.
        self._flush: asyncio.Task[None] | None = None
        self._flush_sleeping = False
        self._closed = False
        # Requests of this process now waiting for a lease because the budget's leases are all held.
        self._waiting_for_lease = 0

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
        waiting_for_lease = False
        try:
            for _poll in range(max_polls):
                grant = await self._acquire_once(source, budget, spacing_seconds)
                if grant.lease_id is not None:
                    if grant.wait_seconds <= 0:
                        return grant.lease_id
                    due = self._monotonic() + grant.wait_seconds
                    try:
                        await self._sleep(grant.wait_seconds)
                    except BaseException:
                        # Cancelled while waiting for the slot: the caller never gets the lease to release.
                        self._keep_finished([grant.lease_id])
                        raise
                    if self._monotonic() - due <= spacing_seconds * LATE_WAKE_SPACINGS:
                        return grant.lease_id
                    self.late_wakes += 1
                    # Given back by the next poll's statement, which comes at once.
                    self._finished.append(grant.lease_id)
                    continue
                if not waiting_for_lease:
                    waiting_for_lease = True
                    self._waiting_for_lease += 1
                if self._monotonic() + grant.wait_seconds > give_up_at:
                    break
                await self._sleep(grant.wait_seconds)
        finally:
            if waiting_for_lease:
                self._waiting_for_lease -= 1
        # A lease given back by the last poll rides on no statement of this call.
        self._keep_finished([])
        raise ProviderUnavailableError(
            f"{source.value}: the shared request budget {self._budget_key!r} had no free connection "
            f"for {self._lease_seconds:.0f} s"
        )

    async def _acquire_once(self, source: Source, budget: RateBudget, spacing_seconds: float) -> BudgetGrant:
        """One statement: ends every pending finished lease (whichever budget it was of) and asks for a
        lease and a slot."""
        finished, self._finished = self._finished, []
        try:
            async with self._pool.acquire() as conn:
                return await provider_budgets.acquire(
                    conn,
                    provider=source.value,
                    budget_key=self._budget_key,
                    holder=self._holder,
                    spacing_seconds=spacing_seconds,
                    max_concurrent=budget.max_concurrent,
                    lease_seconds=self._lease_seconds,
                    finished_leases=finished,
                )
        except BaseException as exc:
            # Whether the statement ended them is unknown (ending them again is harmless): they stay
            # pending for the next statement or the flush, rather than holding their share until they
            # expire.
            self._keep_finished(finished)
            if isinstance(exc, DATABASE_ERRORS):
                raise translate_database_error(exc) from exc
            raise

    async def release(self, lease_id: int) -> None:
        """Ends the lease of a finished request. Usually without a statement of its own: the next
        acquire ends it in its statement, or a flush RELEASE_FLUSH_DELAY_SECONDS later when none comes.
        At once, together with the other pending leases, while a request of this process waits for a
        lease (the budget is full) and after `close()`. Never raises: a lease whose end fails expires."""
        self._finished.append(lease_id)
        if self._waiting_for_lease or self._closed:
            # A full budget: carried by this process's next poll, the freed lease would go to this
            # process's waiting request in the same statement, every time, so a replica holding the
            # leases would keep them while the other replicas' requests wait (each up to the lease
            # time, then failing). Measured: a replica that started asking second got 17 % of the
            # grants instead of 36-66 %. Ended now, the lease goes to whichever replica asks first, as
            # before. The statements of a full budget are mostly its polls (one per waiting request and
            # spacing), so this one costs little.
            await self._release_finished()
        else:
            self._keep_finished([])

    async def close(self) -> None:
        """Ends the finished leases still pending (one statement) and stops the flush task; a flush in
        its statement is waited for. Call it before the pool closes. Never raises."""
        self._closed = True
        flush = self._flush
        if flush is not None:
            if self._flush_sleeping:
                flush.cancel()
            await asyncio.gather(flush, return_exceptions=True)
        await self._release_finished()

    async def pause(self, source: Source, pause_seconds: float) -> None:
        try:
            async with self._pool.acquire() as conn:
                await provider_budgets.pause(
                    conn, provider=source.value, budget_key=self._budget_key, pause_seconds=pause_seconds
                )
        except DATABASE_ERRORS as exc:
            # This request still backs off (its retry honours the 429); only the others are not told.
            _log.warning("pausing shared budget %s failed (%s)", source.value, type(exc).__name__)

    def _keep_finished(self, lease_ids: list[int]) -> None:
        """Adds `lease_ids` to the pending finished leases and makes sure a flush will end them."""
        self._finished.extend(lease_ids)
        if self._finished and self._flush is None and not self._closed:
            self._flush = asyncio.get_running_loop().create_task(
                self._flush_after_delay(), name=f"shared budget flush {self._budget_key}"
            )

    async def _flush_after_delay(self) -> None:
        try:
            # Leases finished during a flush's statement wait for the next round (no await between the
            # check and `self._flush = None` below, so a release either is seen here or starts a task).
            while self._finished and not self._closed:
                self._flush_sleeping = True
                try:
                    await self._sleep(RELEASE_FLUSH_DELAY_SECONDS)
                finally:
                    self._flush_sleeping = False
                await self._release_finished()
        finally:
            self._flush = None

    async def _release_finished(self) -> None:
        """Ends every pending finished lease in one statement. Never raises: the leases of a failed
        statement expire on their own after the lease time, as they would if this process died."""
        lease_ids, self._finished = self._finished, []
        if not lease_ids:
            return
        try:
            async with self._pool.acquire() as conn:
                await provider_budgets.release_many(conn, lease_ids=lease_ids)
        except DATABASE_ERRORS as exc:
            _log.warning(
                "releasing %d shared budget lease(s) failed (%s); they expire", len(lease_ids), type(exc).__name__
            )
