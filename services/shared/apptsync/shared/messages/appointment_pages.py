"""AppointmentPage: one provider page of canonical records, from the fetcher to the writer.

Topic `KafkaSettings.pages_topic` (`pages_topic`), key: the job id. The fetcher encodes it
(`build_page`, then the message's own serialization) from canonical appointments and cancellation
stubs; the writer parses it (`parse_appointment_page`, then `apptsync.writer.accounting.decode_page`
validates the records and reads the people in them) and copies one refused record into a page of
its own for the dead-letter topic (`single_record_page`). Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from apptsync.shared.appointments import (
    AppointmentStatus,
    CancellationStub,
    Contact,
    Money,
    PageRecord,
    Payment,
    content_hash,
    stub_content_hash,
)
from apptsync.shared.errors import PoisonMessageError
from apptsync.shared.messages.wire import parse_message
from apptsync.shared.settings import KafkaSettings
from apptsync.shared.timestamps import timestamp, timestamp_fields
from apptsync.v1 import pages_pb2


def pages_topic(kafka: KafkaSettings) -> str:
    return kafka.pages_topic


STATUS_TO_PROTO: dict[AppointmentStatus, pages_pb2.AppointmentStatus.ValueType] = {
    AppointmentStatus.SCHEDULED: pages_pb2.APPOINTMENT_STATUS_SCHEDULED,
    AppointmentStatus.CANCELED: pages_pb2.APPOINTMENT_STATUS_CANCELED,
    AppointmentStatus.COMPLETED: pages_pb2.APPOINTMENT_STATUS_COMPLETED,
    AppointmentStatus.NO_SHOW: pages_pb2.APPOINTMENT_STATUS_NO_SHOW,
}
STATUS_FROM_PROTO: dict[int, AppointmentStatus] = {v: k for k, v in STATUS_TO_PROTO.items()}


def _appointment_fields(record: PageRecord) -> dict[str, Any]:
    """The keywords of `pages_pb2.Appointment` for `record` (its times are aware: CanonicalAppointment
    and CancellationStub guarantee it). Money is set only when present, as a message it would be sent
    even when zero. A stub sets `stub` and no times (the contract: only external_id, status, raw_json,
    content_hash and observed_at)."""
    if isinstance(record, CancellationStub):
        return _stub_fields(record)
    a = record
    contact = a.contact
    fields: dict[str, Any] = {
        "external_id": a.external_id,
        "starts_at": timestamp_fields(a.starts_at),
        "ends_at": timestamp_fields(a.ends_at),
        "timezone": a.timezone,
        "status": STATUS_TO_PROTO[a.status],
        "title": a.title,
        "appointment_type": a.appointment_type,
        "calendar": a.calendar,
        "contact": {
            "name": contact.name,
            "email": contact.email,
            "phone": contact.phone,
            "provider_client_id": contact.provider_client_id,
        },
        "external_url": a.external_url,
        "raw_json": a.raw_json,
        "content_hash": content_hash(a),
        "observed_at": timestamp_fields(a.observed_at),
    }
    if a.price is not None:
        fields["price"] = _money_fields(a.price)
    if a.amount_paid is not None:
        fields["amount_paid"] = _money_fields(a.amount_paid)
    # Empty is the proto default: set only when known, which keeps the keywords of most records short.
    if a.rescheduled_to_external_id:
        fields["rescheduled_to_external_id"] = a.rescheduled_to_external_id
    if a.rescheduled_from_external_id:
        fields["rescheduled_from_external_id"] = a.rescheduled_from_external_id
    if a.payments_known:
        fields["payments_known"] = True
        fields["payments"] = [_payment_fields(payment) for payment in a.payments]
    return fields


def _payment_fields(payment: Payment) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "transaction_id": payment.transaction_id,
        "amount": _money_fields(payment.amount),
        "processor": payment.processor,
        "successful": payment.successful,
        "refunded": payment.refunded,
    }
    if payment.paid_at is not None:
        fields["paid_at"] = timestamp_fields(payment.paid_at)
    return fields


def _stub_fields(stub: CancellationStub) -> dict[str, Any]:
    return {
        "external_id": stub.external_id,
        "status": STATUS_TO_PROTO[stub.status],
        "raw_json": stub.raw_json,
        "content_hash": stub_content_hash(stub),
        "observed_at": timestamp_fields(stub.observed_at),
        "stub": True,
    }


def _money_fields(money: Money) -> dict[str, Any]:
    return {"amount_minor": money.amount_minor, "currency": money.currency}


def build_page(
    *,
    job_id: str,
    tenant_id: str,
    external_source: str,
    connection_id: str,
    page_no: int,
    fetched_at: datetime,
    records_fetched: int,
    appointments: Iterable[PageRecord],
    skipped_out_of_window: int,
    skipped_invalid: int,
    contacts: Iterable[Contact] = (),
    default_phone_region: str = "",
) -> pages_pb2.AppointmentPage:
    """The AppointmentPage for one provider page, its records (appointments and cancellation stubs)
    in the given order, and the clients (`contacts`, the clients stream) it carries. Guarantees
    records_fetched equals the records plus the skips decided here, or raises ValueError."""
    page = pages_pb2.AppointmentPage(
        job_id=job_id,
        tenant_id=tenant_id,
        external_source=external_source,
        connection_id=connection_id,
        page_no=page_no,
        fetched_at=timestamp(fetched_at),
        records_fetched=records_fetched,
        skipped=pages_pb2.SkipCounts(out_of_window=skipped_out_of_window, invalid=skipped_invalid),
        default_phone_region=default_phone_region,
    )
    add_contact = page.contacts.add
    for contact in contacts:
        add_contact(name=contact.name, email=contact.email, phone=contact.phone,
                    provider_client_id=contact.provider_client_id)
    # Each appointment is built in place in the page (a list of messages would be copied in).
    add = page.appointments.add
    for appointment in appointments:
        add(**_appointment_fields(appointment))
    if len(page.appointments) + skipped_out_of_window + skipped_invalid != records_fetched:
        raise ValueError("page accounting: appointments + skips must equal records fetched")
    return page


def parse_appointment_page(value: bytes | None) -> pages_pb2.AppointmentPage:
    """The AppointmentPage in a Kafka message value, as sent (its records are not checked here).

    Raises PoisonMessageError when there is no value or the bytes are not an AppointmentPage."""
    return parse_message(pages_pb2.AppointmentPage(), value)


def single_record_page(page_value: bytes | None, external_id: str) -> bytes:
    """An AppointmentPage holding only the record `external_id` of the page in `page_value` (its
    last copy), with the rest of the page's header: records_fetched 1, no skips.

    Raises PoisonMessageError when `page_value` is not a page holding that record."""
    page = parse_appointment_page(page_value or b"")
    copies = [a for a in page.appointments if a.external_id == external_id]
    if not copies:
        raise PoisonMessageError(f"page has no record {external_id!r}")
    single = pages_pb2.AppointmentPage()
    single.CopyFrom(page)
    del single.appointments[:]
    single.appointments.append(copies[-1])
    single.records_fetched = 1
    single.ClearField("skipped")
    return single.SerializeToString()
