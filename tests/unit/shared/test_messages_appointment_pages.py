"""Canonical records -> the Kafka AppointmentPage: a cancellation stub carries only what the contract
allows (no times), reschedule links travel on the records that have them, and the page accounting
counts stubs as records."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from apptsync.shared.appointments import AppointmentStatus, CancellationStub, CanonicalAppointment, PageRecord
from apptsync.shared.errors import PoisonMessageError
from apptsync.shared.messages.appointment_pages import (
    build_page,
    pages_topic,
    parse_appointment_page,
    single_record_page,
)
from apptsync.shared.settings import KafkaSettings
from apptsync.shared.timestamps import from_timestamp
from apptsync.v1 import pages_pb2

pytestmark = pytest.mark.unit

FETCHED_AT = datetime(2024, 4, 1, tzinfo=UTC)
APPOINTMENT = CanonicalAppointment(
    external_id="NEWNEWNEWNEWNEW1",
    starts_at=datetime(2019, 8, 28, 9, tzinfo=UTC),
    ends_at=datetime(2019, 8, 28, 9, 15, tzinfo=UTC),
    timezone="America/New_York",
    status=AppointmentStatus.SCHEDULED,
    observed_at=datetime(2019, 8, 20, tzinfo=UTC),
    raw_json="{}",
)
STUB = CancellationStub(
    external_id="primary/7cbh8rpc10lrc0ckih9tafss99",
    observed_at=datetime(2024, 3, 20, 8, 9, 10, 123000, tzinfo=UTC),
    raw_json='{"id":"7cbh8rpc10lrc0ckih9tafss99","status":"cancelled"}',
)


def page_of(records: list[PageRecord], *, records_fetched: int | None = None) -> pages_pb2.AppointmentPage:
    return build_page(
        job_id="job-1", tenant_id="tenant-a", external_source="google_calendar", connection_id="conn-1", page_no=1,
        fetched_at=FETCHED_AT, records_fetched=len(records) if records_fetched is None else records_fetched,
        appointments=records, skipped_out_of_window=0, skipped_invalid=0,
    )  # fmt: skip


def encoded(record: PageRecord) -> pages_pb2.Appointment:
    """`record` as the page carries it."""
    return page_of([record]).appointments[0]


def test_a_stub_carries_its_key_status_payload_hash_and_observation_and_no_times() -> None:
    message = encoded(STUB)
    assert message.stub is True
    assert (message.external_id, message.status, message.raw_json) == (
        STUB.external_id, pages_pb2.APPOINTMENT_STATUS_CANCELED, STUB.raw_json,
    )  # fmt: skip
    assert message.content_hash == STUB.content_hash
    assert from_timestamp(message.observed_at) == STUB.observed_at
    assert not message.HasField("starts_at") and not message.HasField("ends_at")
    assert not message.HasField("contact") and not message.HasField("price")
    assert (message.timezone, message.title, message.rescheduled_to_external_id) == ("", "", "")


def test_a_full_record_is_no_stub_and_carries_its_reschedule_links() -> None:
    plain = encoded(APPOINTMENT)
    assert plain.stub is False and plain.HasField("starts_at")
    assert (plain.rescheduled_to_external_id, plain.rescheduled_from_external_id) == ("", "")
    linked = encoded(
        replace(APPOINTMENT, rescheduled_from_external_id="ABCDABCDABCDABCD", rescheduled_to_external_id="LATER")
    )
    assert (linked.rescheduled_from_external_id, linked.rescheduled_to_external_id) == ("ABCDABCDABCDABCD", "LATER")
    # Unset links add nothing to the wire: pages of records without them keep their bytes.
    assert plain.SerializeToString(deterministic=True) == pages_pb2.Appointment(
        external_id=plain.external_id, starts_at=plain.starts_at, ends_at=plain.ends_at, timezone=plain.timezone,
        status=plain.status, contact=plain.contact, raw_json=plain.raw_json, content_hash=plain.content_hash,
        observed_at=plain.observed_at,
    ).SerializeToString(deterministic=True)  # fmt: skip


def test_stubs_are_records_of_the_page_in_their_order() -> None:
    page = page_of([APPOINTMENT, STUB])
    assert [(a.external_id, a.stub) for a in page.appointments] == [
        (APPOINTMENT.external_id, False), (STUB.external_id, True),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="page accounting"):
        page_of([APPOINTMENT, STUB], records_fetched=1)


def test_a_built_page_parses_back_and_a_single_record_copy_keeps_the_header() -> None:
    sent = page_of([APPOINTMENT, STUB])

    parsed = parse_appointment_page(sent.SerializeToString())
    single = parse_appointment_page(single_record_page(sent.SerializeToString(), STUB.external_id))

    assert parsed == sent
    assert [a.external_id for a in single.appointments] == [STUB.external_id]
    assert (single.job_id, single.page_no, single.records_fetched) == ("job-1", 1, 1)


@pytest.mark.parametrize("value", [None, b"\xff\xff\xff"])
def test_what_is_not_an_appointment_page_is_poison(value: bytes | None) -> None:
    with pytest.raises(PoisonMessageError):
        parse_appointment_page(value)


def test_a_single_record_copy_of_a_record_the_page_lacks_is_poison() -> None:
    with pytest.raises(PoisonMessageError):
        single_record_page(page_of([APPOINTMENT]).SerializeToString(), "absent")
    assert pages_topic(KafkaSettings(pages_topic="pages-x")) == "pages-x"
