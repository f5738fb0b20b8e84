"""From consumed messages to units of work; dead-letter headers; retry pacing."""

from __future__ import annotations

import random

import pytest

from apptsync.writer.intake import (
    DeadLetter,
    InboundMessage,
    PageBatch,
    dead_letter_headers,
    plan_work,
    retry_delay_seconds,
)
from tests.unit.writer.page_builders import JOB, OTHER_TENANT, TENANT, appointment, page

pytestmark = pytest.mark.unit


def message(offset: int, value: bytes | None, key: bytes | None = JOB.encode()) -> InboundMessage:
    return InboundMessage(topic="apptsync.pages", partition=2, offset=offset, key=key, value=value)


def page_message(offset: int, page_no: int, tenant_id: str = TENANT) -> InboundMessage:
    built = page([appointment(f"a{page_no}")], page_no=page_no, tenant_id=tenant_id)
    return message(offset, built.SerializeToString())


def test_consecutive_pages_are_batched_up_to_the_cap() -> None:
    messages = [page_message(10 + i, page_no=i + 1) for i in range(7)]

    units = plan_work(messages, max_batch_pages=3)

    assert [[d.page.page_no for d in u.pages] for u in units if isinstance(u, PageBatch)] == [
        [1, 2, 3], [4, 5, 6], [7]]
    assert [(u.first_offset, u.last_offset) for u in units] == [(10, 12), (13, 15), (16, 16)]


def test_a_poison_message_splits_batches_and_keeps_partition_order() -> None:
    messages = [page_message(0, 1), page_message(1, 2), message(2, b"\x08\x96\x01 not a page at all \xff"),
                page_message(3, 3)]

    units = plan_work(messages, max_batch_pages=8)

    assert [type(u).__name__ for u in units] == ["PageBatch", "DeadLetter", "PageBatch"]
    letter = units[1]
    assert isinstance(letter, DeadLetter)
    assert letter.job_id == JOB
    assert letter.message.offset == 2
    covered = [m.offset for u in units for m in ([d.message for d in u.pages] if isinstance(u, PageBatch)
                                                 else [u.message])]
    assert covered == [0, 1, 2, 3]


def test_a_batch_holds_one_tenant() -> None:
    messages = [page_message(0, 1), page_message(1, 2, tenant_id=OTHER_TENANT), page_message(2, 3)]

    units = plan_work(messages, max_batch_pages=8)

    assert [len(u.pages) for u in units if isinstance(u, PageBatch)] == [1, 1, 1]


def test_plan_work_refuses_a_zero_cap() -> None:
    with pytest.raises(ValueError, match="max_batch_pages"):
        plan_work([], max_batch_pages=0)


def test_dead_letter_headers_say_what_why_and_where() -> None:
    letter = DeadLetter(message(41, b"junk"), "not an AppointmentPage: truncated", job_id=JOB, page_no=7)

    headers = dict(dead_letter_headers(letter, service_version="0.1.0"))

    assert headers == {
        "apptsync-error": b"not an AppointmentPage: truncated",
        "apptsync-job-id": JOB.encode(),
        "apptsync-page-no": b"7",
        "apptsync-service-version": b"0.1.0",
        "apptsync-source-topic": b"apptsync.pages",
        "apptsync-source-partition": b"2",
        "apptsync-source-offset": b"41",
    }


def test_dead_letter_headers_omit_what_is_unknown() -> None:
    letter = DeadLetter(message(0, b"junk", key=None), "x" * 5000)

    headers = dict(dead_letter_headers(letter, service_version="0.1.0"))

    assert "apptsync-job-id" not in headers
    assert "apptsync-page-no" not in headers
    assert len(headers["apptsync-error"]) == 2000


def test_retry_delay_grows_with_failures_and_stays_within_bounds() -> None:
    rng = random.Random(7)

    delays = [retry_delay_seconds(n, rng, base_seconds=0.2, cap_seconds=5.0) for n in range(1, 12)]

    assert 0.1 <= delays[0] <= 0.2
    assert 0.4 <= delays[2] <= 0.8
    assert all(2.5 <= d <= 5.0 for d in delays[6:])
