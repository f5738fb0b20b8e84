"""Which running jobs were asked to cancel: the fetcher's side of CancelJob.

CancelJob sets the job's `cancel_requested` and notifies the job id on
`jobs_db.JOB_CANCEL_CHANNEL`; the fetcher's listener hands the payload to `CancelSignals.notified`,
which sets the watch of every run of that job in this process. A notification can be missed (while
the listening connection reconnects): then `recheck_all` asks every run to renew its lease now,
and the renewal reports `cancel_requested` from the row (the renewal every third of the lease is
the fallback for everything else).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class CancelWatch:
    """One run of a job: `requested` once its cancellation is known, `recheck` when the run should
    look at the job row now instead of at its next scheduled renewal."""

    job_id: str
    requested: asyncio.Event = field(default_factory=asyncio.Event)
    recheck: asyncio.Event = field(default_factory=asyncio.Event)


class CancelSignals:
    """The watches of the runs of this process, by job id (a job can have two runs in one process
    for a moment: a run whose lease was taken over, and the claim that took it)."""

    def __init__(self) -> None:
        self._watches: dict[str, list[CancelWatch]] = {}

    @contextmanager
    def watch(self, job_id: str) -> Iterator[CancelWatch]:
        """The watch of one run of `job_id`, forgotten when the block ends."""
        run = CancelWatch(job_id)
        self._watches.setdefault(job_id, []).append(run)
        try:
            yield run
        finally:
            runs = self._watches.get(job_id, [])
            if run in runs:
                runs.remove(run)
            if not runs:
                self._watches.pop(job_id, None)

    def notified(self, job_id: str) -> int:
        """A cancellation notification: sets every run of `job_id` here; returns how many (0 when
        the job runs in another process, the common case with several fetchers)."""
        runs = self._watches.get(job_id.strip(), [])
        for run in runs:
            run.requested.set()
        return len(runs)

    def recheck_all(self) -> None:
        """Notifications may have been missed: every run re-reads its job row now."""
        for runs in self._watches.values():
            for run in runs:
                run.recheck.set()

    @property
    def watched_jobs(self) -> frozenset[str]:
        return frozenset(self._watches)
