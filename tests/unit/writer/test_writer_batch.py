"""The writer's batch decisions without a database: which strategy writes next, which pages a
transaction records, what it settles and what it answers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from apptsync.shared.appointments import CanonicalAppointment
from apptsync.shared.messages.page_results import PageCounts, SkipCounts
from apptsync.writer.accounting import (
    DecodedPage,
    JobTotals,
    PageKey,
    RefusedRecord,
    StoredVersion,
    decode_page,
    drop_refused_records,
    plan_batch,
)
from apptsync.writer.batch import (
    ISOLATE_REFUSED,
    PLAIN_INSERTS,
    UPSERT,
    WRITE_STRATEGIES,
    FallbackReason,
    LedgerRow,
    RowsWritten,
    inserts_plainly,
    next_strategy,
    page_outcomes,
    recorded_pages,
    settle,
    split_claimed,
    unknown_jobs,
)
from tests.unit.writer.page_builders import JOB, T0, appointment, page

pytestmark = pytest.mark.unit


def decoded(appointments: list[CanonicalAppointment], **kwargs: Any) -> DecodedPage:
    return decode_page(page(appointments, **kwargs).SerializeToString())


def stored_of(*pages: DecodedPage) -> dict[tuple[str, str], StoredVersion]:
    return {
        (p.external_source, row.external_id): StoredVersion(row.content_hash, row.observed_at)
        for p in pages for row in p.rows
    }


def ledger_row(source: DecodedPage, *, inserted: int, inserted_ids: frozenset[str] = frozenset()) -> LedgerRow:
    counts = PageCounts(job_id=source.job_id, page_no=source.page_no, records_fetched=source.records_fetched,
                        inserted=inserted, updated=0, unchanged=source.records_fetched - inserted,
                        skipped=SkipCounts(), contacts_unmatched=0)
    return LedgerRow(counts, source.content_digest, inserted_ids)


def test_strategies_run_cheapest_first_and_each_fallback_moves_to_one_that_copes() -> None:
    assert WRITE_STRATEGIES == (PLAIN_INSERTS, UPSERT, ISOLATE_REFUSED)
    concurrent, refused = FallbackReason.CONCURRENT_INSERT, FallbackReason.ROWS_REFUSED

    # Another writer inserted a key since the lookup: the upsert counts what it finds.
    assert next_strategy(WRITE_STRATEGIES, 0, concurrent) == 1
    # A refusal skips the upsert (it would be refused too) and pins it on records.
    assert next_strategy(WRITE_STRATEGIES, 0, refused) == 2
    assert next_strategy(WRITE_STRATEGIES, 1, refused) == 2
    assert next_strategy(WRITE_STRATEGIES, 1, concurrent) == 2
    # Nothing comes after the last one.
    assert next_strategy(WRITE_STRATEGIES, 2, refused) is None
    assert next_strategy(WRITE_STRATEGIES, 2, concurrent) is None


def test_plain_inserts_only_when_the_strategy_allows_and_the_lookup_found_no_written_key() -> None:
    first = decoded([appointment("a"), appointment("b")])
    changed = decoded([appointment("a", version=2, observed_at=T0 + timedelta(hours=1))], page_no=2)
    nothing_stored = plan_batch([first], {})
    a_stored = plan_batch([changed], stored_of(first))
    unrelated = {("acuity", "zzz"): StoredVersion(first.rows[0].content_hash, T0)}

    assert inserts_plainly(PLAIN_INSERTS, nothing_stored, {})
    assert inserts_plainly(PLAIN_INSERTS, plan_batch([first], unrelated), unrelated)
    assert not inserts_plainly(PLAIN_INSERTS, a_stored, stored_of(first))
    assert not inserts_plainly(UPSERT, nothing_stored, {})
    assert not inserts_plainly(ISOLATE_REFUSED, nothing_stored, {})


def test_split_claimed_keeps_first_deliveries_and_splits_them_by_the_claim() -> None:
    one, two = decoded([appointment("a")], page_no=1), decoded([appointment("b")], page_no=2)

    claim = split_claimed([one, two, one], {one.key})

    assert [p.key for p in claim.fresh] == [one.key]
    assert [p.key for p in claim.recorded] == [two.key]


def test_recorded_pages_tell_redeliveries_from_rewrites_by_their_digest() -> None:
    same = decoded([appointment("a")], page_no=1)
    rewritten = decoded([appointment("b", version=2)], page_no=2)
    earlier_two = decoded([appointment("b")], page_no=2)
    unknown = decoded([appointment("c")], page_no=3)  # recorded for another tenant: no ledger row

    recorded = recorded_pages(
        [same, rewritten, unknown],
        [ledger_row(same, inserted=1), ledger_row(earlier_two, inserted=1, inserted_ids=frozenset({"b"}))],
    )

    assert [p.key for p in recorded.rewrites] == [rewritten.key]
    assert [p.key for p in recorded.replayed] == [same.key, unknown.key]
    assert recorded.inserted_ids[rewritten.key] == frozenset({"b"})
    assert list(recorded.replayed_counts) == [same.key]


def test_settle_records_what_was_written_with_dead_letters_and_job_totals() -> None:
    delivered = decoded([appointment("a"), appointment("bad"), appointment("c")])
    refused = {(delivered.key, "bad"): "CheckViolationError: status"}
    stored_pages = drop_refused_records([delivered], refused)
    plan = plan_batch(stored_pages, {})
    written = {("acuity", "a"): True, ("acuity", "c"): True}

    settlement = settle([delivered], RowsWritten(stored_pages, plan, written, refused), set(),
                        recorded_pages([], ()))

    (entry,) = settlement.entries
    assert (entry.counts.inserted, entry.counts.skipped.dead_letter) == (2, 1)
    # The ledger keeps the page as delivered: the refused record was carried and seen.
    assert list(entry.external_ids) == ["a", "bad", "c"]
    assert entry.content_digest == delivered.content_digest
    assert sorted(entry.inserted_ids) == ["a", "c"]
    assert settlement.dead_letters == [(delivered.key, RefusedRecord("bad", "CheckViolationError: status"))]
    assert [(t.job_id, t.pages_written, t.inserted) for t in settlement.totals] == [(JOB, 1, 2)]
    assert settlement.fresh_counts == {delivered.key: entry.counts}


def test_settle_a_rewrite_credits_its_earlier_inserts_and_replaces_its_earlier_counts() -> None:
    earlier_page = decoded([appointment("a")])
    again = decoded([appointment("a", version=2, observed_at=T0 + timedelta(hours=1)), appointment("b")])
    earlier = recorded_pages([again], [ledger_row(earlier_page, inserted=1, inserted_ids=frozenset({"a"}))])
    plan = plan_batch([again], stored_of(earlier_page))
    written = {("acuity", "a"): False, ("acuity", "b"): True}

    settlement = settle([again], RowsWritten([again], plan, written, {}), set(), earlier)

    (entry,) = settlement.entries
    assert (entry.counts.inserted, entry.counts.updated) == (2, 0)
    (totals,) = settlement.totals
    assert (totals.pages_written, totals.records_fetched, totals.inserted) == (0, 1, 1)


def test_unknown_jobs_are_those_the_counters_statement_did_not_find() -> None:
    totals = [JobTotals(job_id=job, pages_written=1, records_fetched=1, inserted=1, updated=0, unchanged=0,
                        stale=0, skipped=SkipCounts(), contacts_unmatched=0) for job in ("j1", "j2")]

    assert unknown_jobs(totals, ["j1"]) == {"j2"}
    assert unknown_jobs(totals, ["j1", "j2"]) == set()


def test_page_outcomes_answer_fresh_and_replayed_pages_with_their_refused_and_stale_records() -> None:
    newer = T0 + timedelta(hours=2)
    fresh = decoded([appointment("a"), appointment("old")], page_no=1)
    replayed = decoded([appointment("r")], page_no=2)
    stored = {("acuity", "old"): StoredVersion(b"\x01" * 32, newer)}
    plan = plan_batch([fresh], stored)
    settlement = settle([fresh], RowsWritten([fresh], plan, {("acuity", "a"): True}, {}), set(),
                        recorded_pages([], ()))
    earlier = recorded_pages([replayed], [ledger_row(replayed, inserted=1)])
    replayed_refused = [(replayed.key, RefusedRecord("x", "refused before"))]

    first, second, again = page_outcomes([fresh, replayed, fresh], settlement, earlier, replayed_refused)

    assert (first.redelivered, first.counts.inserted, first.counts.stale) == (False, 1, 1)
    assert [(r.external_id, r.stored_observed_at) for r in first.stale] == [("old", newer)]
    assert (second.redelivered, second.refused) == (True, (RefusedRecord("x", "refused before"),))
    # A repeat of a page in the same batch replays its counts and carries no stale records.
    assert (again.redelivered, again.counts, again.stale) == (True, first.counts, ())
    assert PageKey(JOB, 2) == second.key
