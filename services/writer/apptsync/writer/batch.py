"""One batch transaction of the writer, decided without I/O: which pages it claims, how it writes
its rows (an ordered list of write strategies) and what it settles (ledger, dead letters, job
counters, the results).

The store (`apptsync.writer.store`) runs one transaction per attempt:

1. claim: `split_claimed` tells the pages this transaction records (first deliveries it claimed)
   from those recorded before; `recorded_pages` tells, of those, the redeliveries (their stored
   result is the answer) from the pages fetched again with other content (written again);
2. plan: `apptsync.writer.accounting.plan_batch` decides from the stored versions what to insert,
   update, cancel or leave;
3. write the rows with a `WriteStrategy`: the first of `WRITE_STRATEGIES` that applies. A strategy
   that cannot finish the batch returns a `Fallback` (never raises it): the store rolls the
   transaction back and `next_strategy` names the strategy that copes with its reason;
4. settle: `settle` turns what the statements wrote into ledger entries, dead letters and job
   totals; `page_outcomes` into one result per delivered page.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

from apptsync.shared.messages.page_results import PageCounts
from apptsync.writer.accounting import (
    BatchPlan,
    DecodedPage,
    JobTotals,
    PageKey,
    PageOutcome,
    RecordKey,
    RefusedRecord,
    RowKey,
    StaleRecord,
    StoredVersion,
    assemble_outcomes,
    count_pages,
    first_deliveries,
    inserted_keys,
    job_totals,
    outcome_by_key,
    recount_rewrite,
)
from apptsync.writer.sql import LedgerEntry

# --------------------------------------------------------------------------- write strategies


class FallbackReason(enum.Enum):
    """Why a write strategy could not finish a batch."""

    CONCURRENT_INSERT = "another writer inserted a key the batch's lookup did not find"
    ROWS_REFUSED = "PostgreSQL refused rows of the batch (a data or constraint error)"


@dataclass(frozen=True, slots=True)
class Fallback:
    """A strategy's outcome when it cannot finish the batch: nothing of its transaction may commit,
    and the batch is written again from the start by the next strategy that copes with `reason`.
    `detail` is the database's message (for the log)."""

    reason: FallbackReason
    detail: str


@dataclass(frozen=True, slots=True)
class WriteStrategy:
    """How a transaction writes the batch's rows.

    `plain_inserts`: when the lookup found none of the keys the batch writes, they are inserted
    without ON CONFLICT (the fast path of a first import); another writer inserting one of them in
    the meantime makes the strategy fall back (CONCURRENT_INSERT). `isolate_refused`: the rows are
    written in a savepoint and a refusal is pinned on records (bisection), which are dead-lettered
    while the rest of their pages lands; without it a refusal makes the strategy fall back
    (ROWS_REFUSED)."""

    name: str
    plain_inserts: bool
    isolate_refused: bool

    def copes_with(self, reason: FallbackReason) -> bool:
        """Whether this strategy cannot fail for `reason` again."""
        if reason is FallbackReason.CONCURRENT_INSERT:
            return not self.plain_inserts
        return self.isolate_refused


PLAIN_INSERTS = WriteStrategy("plain inserts", plain_inserts=True, isolate_refused=False)
UPSERT = WriteStrategy("upsert", plain_inserts=False, isolate_refused=False)
ISOLATE_REFUSED = WriteStrategy("isolate refused records", plain_inserts=False, isolate_refused=True)

# Cheapest first; each later one is slower and copes with more (both fallbacks are rare).
WRITE_STRATEGIES: tuple[WriteStrategy, ...] = (PLAIN_INSERTS, UPSERT, ISOLATE_REFUSED)


def next_strategy(strategies: Sequence[WriteStrategy], tried: int, reason: FallbackReason) -> int | None:
    """The index of the first strategy after `strategies[tried]` that copes with `reason`; None
    when none does (the batch cannot be written)."""
    for index in range(tried + 1, len(strategies)):
        if strategies[index].copes_with(reason):
            return index
    return None


def inserts_plainly(strategy: WriteStrategy, plan: BatchPlan, stored: Mapping[RowKey, StoredVersion]) -> bool:
    """Whether `strategy` writes the rows of `plan` with plain inserts: it may, and the lookup that
    produced `stored` found none of the keys the plan writes."""
    return strategy.plain_inserts and stored.keys().isdisjoint(plan.writes)


# --------------------------------------------------------------------------- claim


@dataclass(frozen=True, slots=True)
class Claim:
    """The first deliveries of a batch, split by the claim on their ledger rows: `fresh` pages this
    transaction records, `recorded` pages someone recorded before."""

    fresh: list[DecodedPage]
    recorded: list[DecodedPage]


def split_claimed(pages: Sequence[DecodedPage], claimed: Set[PageKey]) -> Claim:
    """The first delivery of each page of `pages`, split by whether its key is in `claimed`."""
    unique = first_deliveries(pages)
    return Claim(
        fresh=[page for page in unique if page.key in claimed],
        recorded=[page for page in unique if page.key not in claimed],
    )


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """A page as the ledger recorded it earlier: its counts, content digest and inserted keys."""

    counts: PageCounts
    content_digest: bytes | None
    inserted_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the ledger holds for pages recorded before: their counts and inserted keys, and the
    pages split into those delivered again with the same content (`replayed`: their stored result
    is the answer) and those fetched again with other content (`rewrites`: written again)."""

    counts: dict[PageKey, PageCounts]
    inserted_ids: dict[PageKey, frozenset[str]]
    rewrites: list[DecodedPage]
    replayed: list[DecodedPage]

    @property
    def replayed_counts(self) -> dict[PageKey, PageCounts]:
        """The stored counts of the replayed pages (a page recorded for another tenant has none)."""
        return {page.key: self.counts[page.key] for page in self.replayed if page.key in self.counts}


def recorded_pages(pages: Sequence[DecodedPage], ledger: Iterable[LedgerRow]) -> Recorded:
    """`pages` (recorded before) against their `ledger` rows: a page whose stored digest differs
    from its own is a rewrite; any other (same digest, no digest, no row) is replayed."""
    recorded = Recorded({}, {}, [], [])
    digests: dict[PageKey, bytes | None] = {}
    for row in ledger:
        key = PageKey(row.counts.job_id, row.counts.page_no)
        recorded.counts[key] = row.counts
        digests[key] = row.content_digest
        recorded.inserted_ids[key] = row.inserted_ids
    for page in pages:
        digest = digests.get(page.key)
        if digest is not None and digest != page.content_digest:
            recorded.rewrites.append(page)
        else:
            recorded.replayed.append(page)
    return recorded


# --------------------------------------------------------------------------- settle


@dataclass(frozen=True, slots=True)
class RowsWritten:
    """What a strategy wrote: `pages` as stored (refused records taken out, counted as dead
    letters), their `plan`, the keys `written` (True: inserted, False: updated) and the `refused`
    records with PostgreSQL's error."""

    pages: list[DecodedPage]
    plan: BatchPlan
    written: dict[RowKey, bool]
    refused: dict[RecordKey, str]


@dataclass(frozen=True, slots=True)
class Settlement:
    """What the transaction records once the rows are written: a ledger entry per written page,
    the refused records as dead letters, the job counter increments; and for the results, the
    pages' fresh counts and the records refused as stale."""

    entries: list[LedgerEntry]
    dead_letters: list[tuple[PageKey, RefusedRecord]]
    totals: list[JobTotals]
    stale: list[StaleRecord]

    @property
    def fresh_counts(self) -> dict[PageKey, PageCounts]:
        return {PageKey(entry.counts.job_id, entry.counts.page_no): entry.counts for entry in self.entries}


def settle(
    delivered: Sequence[DecodedPage], rows: RowsWritten, canceled: Set[RowKey], earlier: Recorded
) -> Settlement:
    """The settlement of the pages `delivered` for writing (fresh pages and rewrites, as they
    came), once `rows` were written and the keys `canceled` were canceled. A rewrite keeps the keys
    its earlier version inserted counted as inserted and replaces its earlier counts in the job's."""
    plan, written = rows.plan, rows.written
    # As delivered: refused records taken out of `rows.pages` were still carried (and seen) by the page.
    as_delivered = {page.key: (page.content_digest, page.external_ids) for page in delivered}
    rewritten = {page.key for page in earlier.rewrites}
    inserted_by_page = inserted_keys(plan, written)
    entries = []
    for index, (page, counts) in enumerate(zip(plan.pages, count_pages(plan, written, canceled), strict=True)):
        inserted_ids: list[str] = inserted_by_page.get(page.key, [])
        if page.key in rewritten:
            counts, inserted_ids = recount_rewrite(
                counts, outcome_by_key(plan, index, written, canceled), earlier.inserted_ids[page.key]
            )
        digest, external_ids = as_delivered[page.key]
        entries.append(LedgerEntry(counts, external_ids, inserted_ids, digest))
    totals = job_totals([entry.counts for entry in entries], {key: earlier.counts[key] for key in rewritten})
    dead_letters = [(key, RefusedRecord(external_id, error)) for (key, external_id), error in rows.refused.items()]
    return Settlement(entries, dead_letters, totals, plan.stale)


def unknown_jobs(totals: Sequence[JobTotals], known_job_ids: Iterable[str]) -> set[str]:
    """The jobs of `totals` whose counters the tenant's import_jobs did not have (not the tenant's,
    or not there at all): the batch cannot be recorded."""
    return {total.job_id for total in totals} - set(known_job_ids)


def page_outcomes(
    pages: Sequence[DecodedPage],
    settlement: Settlement | None,
    earlier: Recorded,
    replayed_dead_letters: Sequence[tuple[PageKey, RefusedRecord]] = (),
) -> list[PageOutcome]:
    """One outcome per delivered page of `pages`, in order (see accounting.assemble_outcomes), with
    the refused records of this transaction and the replayed ones; the first delivery of a page
    written here also carries its records refused as stale."""
    refused_by_page: dict[PageKey, list[RefusedRecord]] = {}
    dead_letters = [*(settlement.dead_letters if settlement else ()), *replayed_dead_letters]
    for key, record in dead_letters:
        refused_by_page.setdefault(key, []).append(record)
    fresh_counts = settlement.fresh_counts if settlement else {}
    outcomes = assemble_outcomes(pages, fresh_counts, earlier.replayed_counts, refused_by_page)
    if settlement is None or not settlement.stale:
        return outcomes
    stale_by_page: dict[PageKey, list[StaleRecord]] = {}
    for stale_record in settlement.stale:
        stale_by_page.setdefault(stale_record.page, []).append(stale_record)
    return [
        dataclasses.replace(outcome, stale=tuple(stale_by_page.get(outcome.key, ())))
        if not outcome.redelivered else outcome
        for outcome in outcomes
    ]
