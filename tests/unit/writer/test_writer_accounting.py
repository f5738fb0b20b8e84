"""The writer's pure core: decoding, duplicate collapse, classification, batch planning, counts."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import pytest

from apptsync.shared.appointments import CanonicalAppointment, Contact
from apptsync.shared.errors import PoisonMessageError
from apptsync.shared.messages.page_results import (
    AccountingError,
    PageCounts,
    PageResult,
    SkipCounts,
    decode_page_result,
    encode_page_result,
)
from apptsync.v1 import pages_pb2
from apptsync.writer.accounting import (
    Decision,
    DecodedPage,
    PageKey,
    StoredVersion,
    assemble_outcomes,
    classify,
    count_pages,
    decode_page,
    first_deliveries,
    job_totals,
    outcome_by_key,
    plan_batch,
    recount_rewrite,
)
from tests.unit.writer.page_builders import JOB, OTHER_TENANT, T0, TENANT, appointment, page, with_stubs

pytestmark = pytest.mark.unit


def decoded(appointments: list[CanonicalAppointment], **kwargs: Any) -> DecodedPage:
    return decode_page(page(appointments, **kwargs).SerializeToString())


def test_decode_page_carries_ids_rows_and_fetcher_skips() -> None:
    page = decoded([appointment("a"), appointment("b")], page_no=3,
                   skipped_out_of_window=2, skipped_invalid=1)

    assert (page.job_id, page.tenant_id, page.page_no, page.records_fetched) == (JOB, TENANT, 3, 5)
    assert [row.external_id for row in page.rows] == ["a", "b"]
    assert page.skipped == SkipCounts(out_of_window=2, invalid=1)
    row = page.rows[0]
    assert row.status == "scheduled"
    assert row.price_minor == 4500 and row.price_currency == "EUR"
    assert row.amount_paid_minor is None and row.amount_paid_currency is None
    assert row.content_hash == appointment("a").content_hash
    assert row.starts_at == T0 + timedelta(days=1)


def test_duplicate_in_page_keeps_the_last_copy_and_counts_the_rest() -> None:
    page = decoded([appointment("a", version=1), appointment("b"),
                               appointment("a", version=2), appointment("a", version=3)])

    assert [row.external_id for row in page.rows] == ["a", "b"]
    assert page.rows[0].content_hash == appointment("a", version=3).content_hash
    assert page.skipped.duplicate_in_page == 2
    assert len(page.rows) + page.skipped.total == page.records_fetched == 4


@pytest.mark.parametrize("value", [b"\xff\xff\xff garbage", None])
def test_undecodable_bytes_are_poison(value: bytes | None) -> None:
    with pytest.raises(PoisonMessageError):
        decode_page(value)


def test_malformed_ids_and_broken_page_accounting_are_poison() -> None:
    bad_tenant = page([appointment("a")])
    bad_tenant.tenant_id = "tenant-a"
    lying_count = page([appointment("a")])
    lying_count.records_fetched = 5
    no_hash = page([appointment("a")])
    no_hash.appointments[0].content_hash = b""
    unknown_source = page([appointment("a")])
    unknown_source.external_source = "outlook"

    for message, reason in [(bad_tenant, "not a UUID"), (lying_count, "page accounting"),
                            (no_hash, "content hash"), (unknown_source, "external_source")]:
        with pytest.raises(PoisonMessageError, match=reason):
            decode_page(message.SerializeToString())


def test_contacts_unmatched_counts_rows_without_email_phone_client_id_or_name() -> None:
    page = decoded([
        appointment("a", contact=Contact(name=" ", email="not-an-email")),
        appointment("b", contact=Contact(phone="+4930123")),
        appointment("c", contact=Contact(provider_client_id="cl-9")),
        appointment("d", contact=Contact()),
    ])

    assert page.contacts_unmatched == 2


def test_classify_new_changed_unchanged_stale() -> None:
    row = decoded([appointment("a", version=2)]).rows[0]
    older_hash = appointment("a", version=1).content_hash

    assert classify(row, None) is Decision.NEW
    assert classify(row, StoredVersion(row.content_hash, T0)) is Decision.UNCHANGED
    assert classify(row, StoredVersion(older_hash, T0 - timedelta(hours=1))) is Decision.CHANGED
    assert classify(row, StoredVersion(older_hash, T0)) is Decision.CHANGED  # same instant: ours wins
    assert classify(row, StoredVersion(older_hash, T0 + timedelta(hours=1))) is Decision.STALE
    assert [d.writes for d in Decision] == [True, True, False, False, True, False]


def test_plan_batch_applies_pages_in_order_and_keeps_one_final_version_per_key() -> None:
    later = T0 + timedelta(hours=1)
    pages = [
        decoded([appointment("a", version=1), appointment("kept")], page_no=1),
        decoded([appointment("a", version=2, observed_at=later)], page_no=2),
        decoded([appointment("a", version=0)], page_no=3),  # older copy: stale
    ]
    kept = pages[0].rows[1]
    plan = plan_batch(pages, {("acuity", "kept"): StoredVersion(kept.content_hash, T0)})

    assert list(plan.writes) == [("acuity", "a")]
    assert plan.writes[("acuity", "a")].page.page_no == 2
    assert plan.writers_by_key == {("acuity", "a"): [0, 1]}
    assert plan.unchanged_by_page == [1, 0, 0]
    assert plan.stale_by_page == [0, 0, 1]


def test_plan_batch_writes_exactly_what_classify_says_writes() -> None:
    """plan_batch inlines classify: the two must agree on every stored version."""
    row = decoded([appointment("a", version=2)]).rows[0]
    older_hash = appointment("a", version=1).content_hash
    for stored in (None, StoredVersion(row.content_hash, T0), StoredVersion(older_hash, T0 - timedelta(hours=1)),
                   StoredVersion(older_hash, T0), StoredVersion(older_hash, T0 + timedelta(hours=1)),
                   StoredVersion(row.content_hash, T0 + timedelta(hours=1))):
        plan = plan_batch([decoded([appointment("a", version=2)])], {} if stored is None else {("acuity", "a"): stored})

        assert (("acuity", "a") in plan.writes) is classify(row, stored).writes, stored
        not_written = plan.unchanged_by_page[0] + plan.stale_by_page[0]
        assert not_written == (0 if classify(row, stored).writes else 1)
        assert plan.stale_by_page[0] == (1 if classify(row, stored) is Decision.STALE else 0)


def test_plan_batch_refuses_two_tenants() -> None:
    pages = [decoded([appointment("a")]),
             decoded([appointment("a")], tenant_id=OTHER_TENANT)]

    with pytest.raises(ValueError, match="one tenant"):
        plan_batch(pages, {})


def test_count_pages_credits_insert_to_first_writer_and_updates_to_later_ones() -> None:
    later = T0 + timedelta(hours=1)
    pages = [
        decoded([appointment("a", version=1), appointment("b"), appointment("c")],
                page_no=1, skipped_out_of_window=1),
        decoded([appointment("a", version=2, observed_at=later)], page_no=2),
    ]
    plan = plan_batch(pages, {})

    # "a" inserted, "b" updated (it appeared concurrently), "c" lost a race to a newer row.
    counts = count_pages(plan, {("acuity", "a"): True, ("acuity", "b"): False})

    assert [(c.inserted, c.updated, c.unchanged) for c in counts] == [(1, 1, 1), (0, 1, 0)]
    assert [c.skipped.out_of_window for c in counts] == [1, 0]
    for c in counts:
        assert c.inserted + c.updated + c.unchanged + c.skipped.total == c.records_fetched


def test_count_pages_all_unchanged_when_nothing_was_written() -> None:
    pages = [decoded([appointment("a"), appointment("b")])]
    plan = plan_batch(pages, {})

    (counts,) = count_pages(plan, {})

    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 0, 2)


def test_page_counts_refuse_to_break_the_accounting_identity() -> None:
    with pytest.raises(AccountingError, match="!= records fetched 10"):
        PageCounts(job_id=JOB, page_no=1, records_fetched=10, inserted=5, updated=2, unchanged=2,
                   skipped=SkipCounts(duplicate_in_page=0), contacts_unmatched=0)
    with pytest.raises(AccountingError, match="negative"):
        PageCounts(job_id=JOB, page_no=1, records_fetched=0, inserted=1, updated=-1, unchanged=0,
                   skipped=SkipCounts(), contacts_unmatched=0)


def test_job_totals_sum_pages_per_job() -> None:
    def counts(job: str, page_no: int, inserted: int) -> PageCounts:
        return PageCounts(job_id=job, page_no=page_no, records_fetched=inserted + 1, inserted=inserted,
                          updated=0, unchanged=0, skipped=SkipCounts(invalid=1), contacts_unmatched=1)

    totals = job_totals([counts("j1", 1, 3), counts("j2", 1, 5), counts("j1", 2, 4)])

    assert [(t.job_id, t.pages_written, t.records_fetched, t.inserted, t.skipped.invalid,
             t.contacts_unmatched) for t in totals] == [("j1", 2, 9, 7, 2, 2), ("j2", 1, 6, 5, 1, 1)]


def test_assemble_outcomes_replays_repeats_and_stored_pages_in_delivery_order() -> None:
    first = decoded([appointment("a")], page_no=1)
    stored = decoded([appointment("b")], page_no=2)
    delivered = [first, stored, first]
    fresh_counts = {first.key: count_pages(plan_batch([first], {}), {("acuity", "a"): True})[0]}
    stored_counts = {stored.key: dataclasses.replace(fresh_counts[first.key], page_no=2)}

    outcomes = assemble_outcomes(delivered, fresh_counts, stored_counts)

    assert [(o.counts.page_no, o.redelivered) for o in outcomes] == [(1, False), (2, True), (1, True)]
    assert first_deliveries(delivered) == [first, stored]
    with pytest.raises(PoisonMessageError, match="another tenant"):
        assemble_outcomes([first], {}, {PageKey(JOB, 9): fresh_counts[first.key]})


# --------------------------------------------------------------------------- stubs, stale, revival, rewrites


def stub_page(external_ids: list[str], *, observed_at: datetime = T0, page_no: int = 1) -> DecodedPage:
    return decode_page(with_stubs(page([], page_no=page_no), external_ids, observed_at=observed_at).SerializeToString())


def test_a_stub_decodes_without_times_and_without_a_contact() -> None:
    row = stub_page(["cal/ev1"]).rows[0]

    assert row.stub and row.starts_at is None and row.ends_at is None
    assert row.status == "canceled" and row.contact_key is None
    assert stub_page(["cal/ev1"]).contacts_unmatched == 0  # a stub is not a booking without a contact


def test_a_stub_that_is_not_canceled_is_poison() -> None:
    message = with_stubs(page([]), ["cal/ev1"])
    message.appointments[0].status = pages_pb2.APPOINTMENT_STATUS_SCHEDULED

    with pytest.raises(PoisonMessageError, match="stub"):
        decode_page(message.SerializeToString())


def test_classify_stubs_cancel_stored_rows_and_count_unknown_keys() -> None:
    stub = stub_page(["a"]).rows[0]
    full = decoded([appointment("a")]).rows[0]

    assert classify(stub, None) is Decision.UNKNOWN_STUB
    assert classify(stub, StoredVersion(full.content_hash, T0 - timedelta(hours=1))) is Decision.CANCEL
    assert classify(stub, StoredVersion(full.content_hash, T0, "canceled")) is Decision.UNCHANGED
    assert classify(stub, StoredVersion(full.content_hash, T0, "canceled", deleted=True)) is Decision.CANCEL
    assert classify(stub, StoredVersion(full.content_hash, T0 + timedelta(hours=1))) is Decision.STALE


def test_a_row_marked_deleted_is_revived_even_with_the_same_content() -> None:
    row = decoded([appointment("a")]).rows[0]

    assert classify(row, StoredVersion(row.content_hash, T0, deleted=True)) is Decision.CHANGED
    deleted = StoredVersion(row.content_hash, T0, deleted=True)
    plan = plan_batch([decoded([appointment("a")])], {("acuity", "a"): deleted})
    assert list(plan.writes) == [("acuity", "a")]


def test_plan_batch_cancels_stored_keys_and_counts_stubs_for_unknown_keys() -> None:
    stored_row = decoded([appointment("known")]).rows[0]
    stubs = stub_page(["known", "never-stored"], observed_at=T0 + timedelta(minutes=5))

    plan = plan_batch([stubs], {("acuity", "known"): StoredVersion(stored_row.content_hash, T0)})
    counts = count_pages(plan, {}, {("acuity", "known")})

    assert list(plan.cancels) == [("acuity", "known")] and not plan.writes
    assert (counts[0].updated, counts[0].skipped.unknown_deletion, counts[0].records_fetched) == (1, 1, 2)


def test_a_stub_after_a_full_record_in_the_same_batch_inserts_then_cancels() -> None:
    pages = [decoded([appointment("a")], page_no=1), stub_page(["a"], page_no=2, observed_at=T0 + timedelta(minutes=1))]

    plan = plan_batch(pages, {})
    counts = count_pages(plan, {("acuity", "a"): True}, {("acuity", "a")})

    assert list(plan.writes) == [("acuity", "a")] and list(plan.cancels) == [("acuity", "a")]
    assert [(c.inserted, c.updated) for c in counts] == [(1, 0), (0, 1)]


def test_stale_records_are_counted_on_their_own_with_both_times() -> None:
    newer = T0 + timedelta(hours=2)
    stored = StoredVersion(decoded([appointment("a", version=5)]).rows[0].content_hash, newer)

    plan = plan_batch([decoded([appointment("a", version=1)])], {("acuity", "a"): stored})
    counts = count_pages(plan, {})

    assert (counts[0].stale, counts[0].unchanged) == (1, 0)
    assert [(r.external_id, r.stored_observed_at, r.offered_observed_at) for r in plan.stale] == [("a", newer, T0)]
    assert decode_page_result(encode_page_result(PageResult(counts[0], redelivered=False))).counts.stale == 1


def test_the_content_digest_ignores_fetch_time_and_follows_content() -> None:
    same = decoded([appointment("a")]).content_digest

    assert decoded([appointment("a", observed_at=T0 + timedelta(days=1))]).content_digest == same
    assert decoded([appointment("a", version=2)]).content_digest != same
    assert decoded([appointment("a"), appointment("b")]).content_digest != same


def test_a_rewritten_page_keeps_crediting_what_its_earlier_version_inserted() -> None:
    # Version 1 of page 1 inserted a and b; after a resume the provider shows a changed, b as it was, c new.
    first = decoded([appointment("a"), appointment("b")])
    stored = {("acuity", row.external_id): StoredVersion(row.content_hash, T0) for row in first.rows}
    again = decoded([appointment("a", version=2), appointment("b"), appointment("c")])

    plan = plan_batch([again], stored)
    written = {("acuity", "a"): False, ("acuity", "c"): True}
    counts = count_pages(plan, written)[0]
    recounted, credited = recount_rewrite(counts, outcome_by_key(plan, 0, written), frozenset({"a", "b"}))

    assert (counts.inserted, counts.updated, counts.unchanged) == (1, 1, 1)
    assert (recounted.inserted, recounted.updated, recounted.unchanged) == (3, 0, 0)
    assert sorted(credited) == ["a", "b", "c"]


def test_job_totals_replace_the_earlier_counts_of_a_rewritten_page() -> None:
    earlier = PageCounts(job_id=JOB, page_no=1, records_fetched=2, inserted=2, updated=0, unchanged=0,
                         skipped=SkipCounts(), contacts_unmatched=0)
    now = PageCounts(job_id=JOB, page_no=1, records_fetched=3, inserted=3, updated=0, unchanged=0,
                     skipped=SkipCounts(), contacts_unmatched=0)

    (totals,) = job_totals([now], {PageKey(JOB, 1): earlier})

    assert (totals.pages_written, totals.records_fetched, totals.inserted) == (0, 1, 1)
