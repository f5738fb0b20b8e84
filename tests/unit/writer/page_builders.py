"""Builders of AppointmentPages for the writer's tests (pure; imported as tests.unit.writer.page_builders)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from apptsync.shared.appointments import AppointmentStatus, CanonicalAppointment, Contact, Money, Payment
from apptsync.shared.messages.appointment_pages import build_page
from apptsync.v1 import pages_pb2

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
TENANT = "7b0f1a52-3d5e-4f6a-9b1c-2d3e4f5a6b7c"
JOB = "0c9e8d7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"

def appointment(
    external_id: str,
    *,
    version: int = 0,
    observed_at: datetime = T0,
    contact: Contact | None = None,
    payments: Sequence[tuple[str, int]] | None = None,
    source_currency: str = "USD",
) -> CanonicalAppointment:
    """An appointment whose content (and hash) changes with `version`; `payments` (transaction id,
    signed amount in minor units): its known payment list (None: not asked for)."""
    return CanonicalAppointment(
        external_id=external_id,
        starts_at=T0 + timedelta(days=1),
        ends_at=T0 + timedelta(days=1, minutes=30),
        timezone="Europe/Berlin",
        status=AppointmentStatus.SCHEDULED,
        observed_at=observed_at,
        raw_json=f'{{"id": "{external_id}", "version": {version}}}',
        title=f"Session v{version}",
        contact=contact if contact is not None else Contact(name="Ada", email=f"{external_id}@example.org"),
        price=Money(4500, "EUR"),
        payments=tuple(Payment(transaction_id, Money(amount, source_currency), "stripe")
                       for transaction_id, amount in payments or ()),
        payments_known=payments is not None,
    )


def page(
    appointments: Sequence[CanonicalAppointment],
    *,
    page_no: int = 1,
    job_id: str = JOB,
    tenant_id: str = TENANT,
    external_source: str = "acuity",
    skipped_out_of_window: int = 0,
    skipped_invalid: int = 0,
    contacts: Sequence[Contact] = (),
) -> pages_pb2.AppointmentPage:
    return build_page(
        job_id=job_id,
        tenant_id=tenant_id,
        external_source=external_source,
        connection_id="conn-1",
        page_no=page_no,
        fetched_at=T0,
        records_fetched=len(appointments) + skipped_out_of_window + skipped_invalid,
        appointments=appointments,
        skipped_out_of_window=skipped_out_of_window,
        skipped_invalid=skipped_invalid,
        contacts=contacts,
    )



OTHER_TENANT = "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716"


def with_stubs(
    base: pages_pb2.AppointmentPage, external_ids: Sequence[str], *, observed_at: datetime = T0
) -> pages_pb2.AppointmentPage:
    """`base` plus a cancellation stub per id (as a Google deleted event arrives: no times)."""
    extended = pages_pb2.AppointmentPage()
    extended.CopyFrom(base)
    for external_id in external_ids:
        stub = extended.appointments.add(
            external_id=external_id,
            status=pages_pb2.APPOINTMENT_STATUS_CANCELED,
            raw_json=f'{{"id": "{external_id}", "status": "cancelled"}}',
            content_hash=hashlib.sha256(f"stub:{external_id}".encode()).digest(),
            stub=True,
        )
        stub.observed_at.FromDatetime(observed_at)
        extended.records_fetched += 1
    return extended
