"""PageResult: the writer's encoding and the fetcher's decoding are one module's, and agree."""

from __future__ import annotations

import pytest

from apptsync.shared.errors import PoisonMessageError
from apptsync.shared.messages.page_results import (
    AccountingError,
    PageCounts,
    PageResult,
    SkipCounts,
    decode_page_result,
    encode_page_result,
    page_results_topic,
)
from apptsync.shared.settings import KafkaSettings
from apptsync.v1 import pages_pb2

pytestmark = pytest.mark.unit

JOB = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
COUNTS = PageCounts(
    job_id=JOB, page_no=4, records_fetched=12, inserted=3, updated=2, unchanged=1,
    skipped=SkipCounts(out_of_window=1, invalid=1, dead_letter=1, duplicate_in_page=1, unknown_deletion=1),
    contacts_unmatched=2, stale=1,
)  # fmt: skip


def test_every_count_and_the_redelivery_flag_survive_the_round_trip() -> None:
    for redelivered in (False, True):
        result = PageResult(COUNTS, redelivered=redelivered)

        assert decode_page_result(encode_page_result(result)) == result


def test_the_wire_fields_are_the_protos() -> None:
    message = pages_pb2.PageResult.FromString(encode_page_result(PageResult(COUNTS, redelivered=True)))

    assert (message.job_id, message.page_no, message.records_fetched) == (JOB, 4, 12)
    assert (message.inserted, message.updated, message.unchanged, message.stale) == (3, 2, 1, 1)
    assert (message.skipped.out_of_window, message.skipped.invalid, message.skipped.dead_letter,
            message.skipped.duplicate_in_page, message.skipped.unknown_deletion) == (1, 1, 1, 1, 1)  # fmt: skip
    assert message.contacts_unmatched == 2 and message.redelivered


def test_unreadable_records_are_the_invalid_and_dead_lettered_ones() -> None:
    assert PageResult(COUNTS, redelivered=False).unreadable == 2


def test_bytes_that_are_no_page_result_or_break_the_identity_are_poison() -> None:
    with pytest.raises(PoisonMessageError, match="not a PageResult"):
        decode_page_result(b"\xff\xff\xff")
    broken = pages_pb2.PageResult(job_id=JOB, page_no=1, records_fetched=5, inserted=1).SerializeToString()
    with pytest.raises(PoisonMessageError, match="!= records fetched 5"):
        decode_page_result(broken)


def test_counts_that_do_not_add_up_are_refused_on_construction() -> None:
    with pytest.raises(AccountingError, match="!= records fetched 10"):
        PageCounts(job_id=JOB, page_no=1, records_fetched=10, inserted=1, updated=0, unchanged=0,
                   skipped=SkipCounts(), contacts_unmatched=0)  # fmt: skip


def test_the_topic_is_the_configured_one() -> None:
    assert page_results_topic(KafkaSettings(page_results_topic="results-x")) == "results-x"
