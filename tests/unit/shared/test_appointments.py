"""The canonical model: content hashes of appointments (unchanged by the reschedule links unless they
are set) and of cancellation stubs, and the timezone guarantees."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from apptsync.shared.appointments import (
    AppointmentStatus,
    CancellationStub,
    CanonicalAppointment,
    Contact,
    Money,
    content_hash,
    stub_content_hash,
)

pytestmark = pytest.mark.unit

OLD_INVITEE = "ABCDABCDABCDABCD"
NEW_INVITEE = "NEWNEWNEWNEWNEW1"
APPOINTMENT = CanonicalAppointment(
    external_id=OLD_INVITEE,
    starts_at=datetime(2019, 8, 24, 14, 15, 22, 123456, tzinfo=UTC),
    ends_at=datetime(2019, 8, 24, 14, 30, 22, 123456, tzinfo=UTC),
    timezone="America/New_York",
    status=AppointmentStatus.CANCELED,
    observed_at=datetime(2019, 8, 7, 6, 5, 4, tzinfo=UTC),
    raw_json='{"invitee":{"rescheduled":true},"name":"Zoë"}',
    title="15 Minute Meeting",
    appointment_type="15 Minute Meeting",
    calendar="John Smith",
    contact=Contact(name="John Doe", email="test@example.com", phone="+1 404-555-1234"),
    price=Money(123456, "USD"),
    amount_paid=Money(0, "USD"),
    external_url=f"https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/{OLD_INVITEE}",
)
# Computed by the content hash before the reschedule links existed: stored rows keep their hash.
PINNED_HASH = "2db773fd0d8cde69e00c55108fb204b762269fc7be6ccde4369fa17d0d993b55"


def test_an_appointment_without_reschedule_links_hashes_as_before_they_existed() -> None:
    assert APPOINTMENT.content_hash.hex() == content_hash(APPOINTMENT).hex() == PINNED_HASH


def test_reschedule_links_are_content_and_each_direction_hashes_differently() -> None:
    to_new = replace(APPOINTMENT, rescheduled_to_external_id=NEW_INVITEE)
    from_new = replace(APPOINTMENT, rescheduled_from_external_id=NEW_INVITEE)
    both = replace(to_new, rescheduled_from_external_id=NEW_INVITEE)
    hashes = {a.content_hash for a in (APPOINTMENT, to_new, from_new, both)}
    assert len(hashes) == 4
    assert replace(to_new, observed_at=datetime(2030, 1, 1, tzinfo=UTC)).content_hash == to_new.content_hash


def test_a_stub_hashes_its_key_and_payload_but_not_its_observation_time() -> None:
    stub = CancellationStub(
        external_id="primary/7cbh8rpc10lrc0ckih9tafss99",
        observed_at=datetime(2024, 3, 20, tzinfo=UTC),
        raw_json='{"etag":"\\"3181161784712000\\"","id":"7cbh8rpc10lrc0ckih9tafss99","kind":"calendar#event",'
        '"status":"cancelled"}',
    )
    assert stub.status is AppointmentStatus.CANCELED
    assert stub.content_hash == stub_content_hash(stub) and len(stub.content_hash) == 32
    assert replace(stub, observed_at=datetime(2025, 1, 1, tzinfo=UTC)).content_hash == stub.content_hash
    assert replace(stub, external_id="primary/other").content_hash != stub.content_hash
    assert replace(stub, raw_json="{}").content_hash != stub.content_hash
    # Never the hash of an appointment with the same key and payload.
    same_key = replace(APPOINTMENT, external_id=stub.external_id, raw_json=stub.raw_json)
    assert same_key.content_hash != stub.content_hash


def test_times_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        replace(APPOINTMENT, starts_at=datetime(2019, 8, 24, 14, 15))
    with pytest.raises(ValueError, match="timezone-aware"):
        CancellationStub(external_id="x", observed_at=datetime(2024, 3, 20), raw_json="{}")
