"""What `apptsync prune` removes and when it stops: pure decisions, no I/O.

Raw provider payloads (`appointments.raw`, personal data) of rows not changed since
`raw_payload_before` are replaced by `{}`; the page ledger, dead-letter records and import jobs of
jobs finished before `ledger_before` are deleted (apptsync.shared.db.retention executes this). A run
works in batches of bounded size, each its own transaction, within a budget of batches and seconds:
an interrupted or over-budget run leaves a consistent database, and the next run finishes the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# The stored stand-in of a pruned payload: a JSON object like every payload, never one a provider sends.
PRUNED_RAW_PAYLOAD = "{}"


@dataclass(frozen=True, slots=True)
class RetentionCutoffs:
    """Rows older than these instants are pruned (strictly older: a row at the instant is kept)."""

    raw_payload_before: datetime
    ledger_before: datetime


def retention_cutoffs(now: datetime, *, raw_payload_days: int, ledger_days: int) -> RetentionCutoffs:
    """The cutoffs of a run at `now` (timezone-aware). Raises ValueError for a naive `now` or an age
    below one day: a zero age would prune what a running import is writing."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if raw_payload_days < 1 or ledger_days < 1:
        raise ValueError("retention ages are at least one day")
    return RetentionCutoffs(
        raw_payload_before=now - timedelta(days=raw_payload_days),
        ledger_before=now - timedelta(days=ledger_days),
    )


@dataclass(slots=True)
class PruneBudget:
    """How many batches a run may still execute and until when (a monotonic clock's reading)."""

    max_batches: int
    deadline_monotonic: float
    batches: int = 0

    def allows_another(self, now_monotonic: float) -> bool:
        """True while both the batch count and the time are left."""
        return self.batches < self.max_batches and now_monotonic < self.deadline_monotonic

    def spend(self) -> None:
        """Counts one executed batch."""
        self.batches += 1


@dataclass(slots=True)
class PruneReport:
    """What a run did. `complete` is False when the budget ran out before every tenant was done."""

    tenants: int = 0
    raw_payloads_pruned: int = 0
    appointments_read: int = 0
    dead_letters_deleted: int = 0
    pages_deleted: int = 0
    jobs_deleted: int = 0
    batches: int = 0
    complete: bool = True

    def as_dict(self) -> dict[str, int | bool]:
        """The counts, for the command's JSON line (no tenant ids: a log line names no tenant's data)."""
        return {
            "tenants": self.tenants,
            "raw_payloads_pruned": self.raw_payloads_pruned,
            "appointments_read": self.appointments_read,
            "dead_letters_deleted": self.dead_letters_deleted,
            "pages_deleted": self.pages_deleted,
            "jobs_deleted": self.jobs_deleted,
            "batches": self.batches,
            "complete": self.complete,
        }


def batch_exhausted(rows_in_batch: int, batch_rows: int) -> bool:
    """True when a batch that asked for `batch_rows` rows got fewer: nothing is left to read."""
    return rows_in_batch < batch_rows
