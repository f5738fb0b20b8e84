"""The names of a job's counters, once, and the accounting identity every layer checks.

`JobCounts` in protos/apptsync/v1/imports.proto, the `import_jobs` columns, the job record, the CLI,
the metrics and the tests all name these counters; they take the names from here, so adding a
counter means this module, the proto and a migration.

Every fetched record ends in exactly one of `RECORD_OUTCOMES`:
`sum(RECORD_OUTCOMES) == records_fetched`. `deleted` (rows a complete walk no longer found) and
`contacts_unmatched` (a property of stored rows) are not outcomes of fetched records, nor are the
other streams of a job (`STREAM_COUNTERS`: clients and payments).
"""

from __future__ import annotations

from typing import Protocol

SKIP_COUNTERS = (
    "skipped_out_of_window",
    "skipped_invalid",
    "skipped_dead_letter",
    "skipped_duplicate_in_page",
    "skipped_unknown_deletion",
)
RECORD_OUTCOMES = ("inserted", "updated", "unchanged", "stale", *SKIP_COUNTERS)
JOB_COUNTERS = (
    "pages_fetched",
    "pages_written",
    "records_fetched",
    *RECORD_OUTCOMES,
    "contacts_unmatched",
    "deleted",
    "contacts_fetched",
    "payments_fetched",
)
# The streams beside the appointment records (not outcomes of fetched records either): client
# records of the clients stream and payments carried by appointments. Counted per page by the writer.
STREAM_COUNTERS = ("contacts_fetched", "payments_fetched")


class _HasCounters(Protocol):
    """A JobCounts message (or anything with the counters as int attributes)."""

    records_fetched: int


def skipped_total(counts: _HasCounters) -> int:
    """All skipped records, whatever the reason."""
    return sum(int(getattr(counts, name)) for name in SKIP_COUNTERS)


def records_accounted(counts: _HasCounters) -> int:
    """The records `counts` accounts for: equals `counts.records_fetched` when the identity holds."""
    return sum(int(getattr(counts, name)) for name in RECORD_OUTCOMES)


def counts_add_up(counts: _HasCounters) -> bool:
    """The accounting identity: every fetched record inserted, updated, unchanged, stale or skipped."""
    return records_accounted(counts) == counts.records_fetched
