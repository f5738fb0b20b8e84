"""The fetcher's job slots: jobs doing work hold one; a job waiting for a provider does not.

A job spends most of a large import waiting for a provider: a Calendly job for its user's rate window
(500 requests per minute per user), an Acuity job for the per-IP budget every tenant shares (10
requests per 1.1 s), any job for the answers. With one slot per open job, four such jobs filled a
fetcher and every small tenant queued behind them while neither the CPU nor any provider budget was
busy. So two bounds, not one:

- `working_slots` (APPTSYNC_FETCHER_MAX_CONCURRENT_JOBS): jobs doing work at once (normalizing,
  building and sending pages, storing progress, waiting for the writer's results). It bounds CPU.
- `max_open_jobs` (APPTSYNC_FETCHER_MAX_OPEN_JOBS): jobs claimed by this process at all, working or
  waiting. It bounds memory: a waiting job holds its session and at most one provider page under
  construction (see the README's "Many tenants").

A job lends its slot for each wait for a provider (`waiting_for_provider`, entered by ProviderHttp
around an attempt's rate-window pause, budgets, request and answer) and for each sleep of at least
`release_after_seconds` (a Retry-After, a retry backoff; shorter sleeps keep it). After the wait it
asks for a slot again; jobs coming back from a wait go before new claims (first come, first served),
so a started job still finishes; a new claim takes a slot only when nobody waits to resume. The lease
is untouched: the job's renewal task goes on heartbeating while it waits. The claim order across
tenants stays the claim function's.

A provider whose requests all draw on one shared budget (Acuity: per egress IP) gains nothing from
more open jobs than working slots: the claim skips it at that count (`saturated_sources`), or its
long jobs would fill the open-job bound and the other tenants would wait behind them again.

`SlotBook` decides (pure, unit-tested); `JobSlots` is its asyncio adapter: the `sleep` and the
`provider_wait` handed to ProviderHttp, and the contextvars that say which job the waiting task
belongs to.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

# The claim (lease owner token) of the job the current task runs, set around each job's run; the
# tasks a job starts (Calendly's invitee fetches) inherit it.
_CURRENT_JOB: contextvars.ContextVar[str | None] = contextvars.ContextVar("apptsync_slot_job", default=None)
# True inside a wait region of the current task: a wait nested in another (a rate-window pause inside
# a provider request) neither lends again nor takes the slot back before the outer wait ends.
_LENDING: contextvars.ContextVar[bool] = contextvars.ContextVar("apptsync_slot_lending", default=False)


def releases_slot(sleep_seconds: float, *, release_after_seconds: float) -> bool:
    """Whether a sleep this long gives the job's slot to another job while it lasts."""
    return sleep_seconds >= release_after_seconds


@dataclass
class _Job:
    holding: bool = True
    sleepers: int = 0
    source: str = ""


@dataclass
class SlotBook:
    """Which open job holds a working slot (pure; no I/O, no clock).

    A job is claimed holding a slot (`claimed`), gives it up when one of its tasks starts a long sleep
    (`sleep_started`), asks for it again when a sleep ends (`sleep_ended`: granted at once if a slot
    is free and nobody queues before it, else queued), and leaves (`finished`). Methods that free a
    slot return the jobs that were granted one from the queue, in queue order."""

    working_slots: int
    max_open_jobs: int
    _jobs: dict[str, _Job] = field(default_factory=dict)
    _queue: deque[str] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.working_slots < 1 or self.max_open_jobs < 1:
            raise ValueError("working_slots and max_open_jobs are at least 1")

    @property
    def working(self) -> int:
        return sum(1 for job in self._jobs.values() if job.holding)

    @property
    def open_jobs(self) -> int:
        return len(self._jobs)

    @property
    def queued(self) -> tuple[str, ...]:
        return tuple(self._queue)

    def holds(self, job_key: str) -> bool:
        job = self._jobs.get(job_key)
        return job is not None and job.holding

    def may_claim(self) -> bool:
        """A new job may be claimed: a slot is free, no waiting job queues for one, and the process
        holds fewer than `max_open_jobs` jobs."""
        return self.working < self.working_slots and not self._queue and len(self._jobs) < self.max_open_jobs

    def claimed(self, job_key: str, source: str = "") -> bool:
        """Records a claim (made after `may_claim`) of a job of `source`: True when the job holds a
        slot at once, False when a job coming back from a wait took the free slot meanwhile (the claim's
        query is not atomic with the book) and the new job queues behind it. Raises ValueError for a
        key already open."""
        if job_key in self._jobs:
            raise ValueError(f"job {job_key} is already open")
        if not self._queue and self.working < self.working_slots:
            self._jobs[job_key] = _Job(source=source)
            return True
        self._jobs[job_key] = _Job(holding=False, source=source)
        self._queue.append(job_key)
        return False

    def saturated_sources(self, shared_budget_sources: Collection[str]) -> frozenset[str]:
        """The sources of `shared_budget_sources` (providers whose requests all draw on one budget, such
        as Acuity's per-IP limit) with as many open jobs as there are working slots: more jobs of them
        would only split the same budget while holding open-job places other tenants need, so the next
        claim skips them."""
        open_by_source: dict[str, int] = {}
        for job in self._jobs.values():
            open_by_source[job.source] = open_by_source.get(job.source, 0) + 1
        return frozenset(s for s in shared_budget_sources if open_by_source.get(s, 0) >= self.working_slots)

    def sleep_started(self, job_key: str) -> list[str]:
        """One task of the job starts a long sleep: the job gives up its slot (if it held one)."""
        job = self._jobs[job_key]
        job.sleepers += 1
        if not job.holding:
            return []
        job.holding = False
        return self._grant()

    def sleep_ended(self, job_key: str) -> bool:
        """One of the job's sleeps ended: True when the job holds a slot (again), False when it now
        queues for one (it is granted by a later `sleep_started` or `finished` of another job)."""
        job = self._jobs[job_key]
        job.sleepers = max(0, job.sleepers - 1)
        if job.holding:
            return True
        if job_key in self._queue:
            return False
        if not self._queue and self.working < self.working_slots:
            job.holding = True
            return True
        self._queue.append(job_key)
        return False

    def finished(self, job_key: str) -> list[str]:
        """The job ended (whatever its outcome): its slot, if held, goes to the queue's first."""
        job = self._jobs.pop(job_key, None)
        if job_key in self._queue:
            self._queue.remove(job_key)
        if job is None or not job.holding:
            return []
        return self._grant()

    def _grant(self) -> list[str]:
        granted: list[str] = []
        while self._queue and self.working < self.working_slots:
            key = self._queue.popleft()
            self._jobs[key].holding = True
            granted.append(key)
        return granted


class JobSlots:
    """SlotBook over asyncio: `sleep` is ProviderHttp's sleep (rate-window pauses, Retry-After waits
    and retry backoffs all pass through it); `claimed(job_key)` records a claim, `running(job_key)`
    runs it in its slot and marks the current task as the job's.

    `on_slot_freed` is called whenever a slot may have become claimable (a job lent its slot out or
    ended); `on_job_finished` only when a job ended, which may also make a queued job claimable that
    was held back before (its tenant's cap of running jobs, its source's saturation) while a lent slot
    changes nothing for those. `sleep_for` is the real sleep (tests pass a fake)."""

    def __init__(
        self,
        *,
        working_slots: int,
        max_open_jobs: int,
        release_after_seconds: float = 1.0,
        on_slot_freed: Callable[[], None] = lambda: None,
        on_job_finished: Callable[[], None] = lambda: None,
        sleep_for: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.book = SlotBook(working_slots=working_slots, max_open_jobs=max_open_jobs)
        self._release_after_seconds = release_after_seconds
        self._on_slot_freed = on_slot_freed
        self._on_job_finished = on_job_finished
        self._sleep_for = sleep_for
        self._granted: dict[str, asyncio.Event] = {}
        self.slot_releases = 0

    def may_claim(self) -> bool:
        return self.book.may_claim()

    def claimed(self, job_key: str, source: str = "") -> None:
        """Records a claim the moment it is made (before its task starts: the claim loop asks
        `may_claim` again right away)."""
        granted = asyncio.Event()
        if self.book.claimed(job_key, source):
            granted.set()
        self._granted[job_key] = granted

    @asynccontextmanager
    async def running(self, job_key: str) -> AsyncIterator[None]:
        """Around the run of a job `claimed` recorded: waits until it holds a slot, marks the current
        task (and the tasks it starts) as the job's, and takes the job out of the book on exit."""
        token = _CURRENT_JOB.set(job_key)
        try:
            await self._granted[job_key].wait()
            yield
        finally:
            _CURRENT_JOB.reset(token)
            del self._granted[job_key]
            self._wake(self.book.finished(job_key))
            self._on_job_finished()
            self._on_slot_freed()

    async def sleep(self, seconds: float) -> None:
        """Sleeps `seconds`; a long sleep of a job's task lends the job's slot out meanwhile and comes
        back only once the job holds a slot again."""
        if releases_slot(seconds, release_after_seconds=self._release_after_seconds):
            async with self.waiting_for_provider():
                await self._sleep_for(seconds)
            return
        await self._sleep_for(seconds)
        job_key = _CURRENT_JOB.get()
        if job_key is not None and job_key in self._granted and not _LENDING.get():
            # A short sleep keeps the slot, but a task of a job that lent its slot out waits for it.
            await self._granted[job_key].wait()

    @asynccontextmanager
    async def waiting_for_provider(self) -> AsyncIterator[None]:
        """Around a wait for a provider (its rate budget and answer, a long sleep): the current job
        lends its slot for the wait and, after it, comes back only once it holds a slot again. Outside
        a job, or nested in another wait of the same task, it changes nothing."""
        job_key = _CURRENT_JOB.get()
        if job_key is None or job_key not in self._granted or _LENDING.get():
            yield
            return
        was_holding = self.book.holds(job_key)
        granted = self.book.sleep_started(job_key)
        if was_holding:
            self.slot_releases += 1
            self._granted[job_key].clear()
            self._wake(granted)
            self._on_slot_freed()
        lending = _LENDING.set(True)
        try:
            yield
        finally:
            _LENDING.reset(lending)
            if self.book.sleep_ended(job_key):
                self._granted[job_key].set()
        await self._granted[job_key].wait()

    def _wake(self, granted: list[str]) -> None:
        for key in granted:
            event = self._granted.get(key)
            if event is not None:
                event.set()
