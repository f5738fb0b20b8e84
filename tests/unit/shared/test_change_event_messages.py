"""Change events (apptsync.shared.change_events): kind and changed fields of an outbox row, the key, the
message and its codec. The states are shaped as migration 0013's apptsync_appointment_state builds
them (jsonb: timestamps as ISO 8601 text, numbers as numbers)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf.message import DecodeError

from apptsync.shared.change_events import (
    ChangeKind,
    OutboxChange,
    change_key,
    change_message,
    classify_change,
    decode_change,
    encode_change,
)
from apptsync.v1 import change_events_pb2, pages_pb2

pytestmark = pytest.mark.unit

TENANT = "7b0f1a52-3d5e-4f6a-9b1c-2d3e4f5a6b7c"
JOB = "0c9e8d7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"


def state(**overrides: Any) -> dict[str, Any]:
    """A stored Acuity appointment's state as jsonb gives it."""
    base: dict[str, Any] = {
        "connection_id": "acuity-main",
        "starts_at": "2026-03-02T09:00:00+00:00",
        "ends_at": "2026-03-02T09:45:00+00:00",
        "timezone": "America/New_York",
        "status": "scheduled",
        "title": "Initial consultation",
        "appointment_type": "Initial consultation",
        "calendar": "Dr. Hopper",
        "contact_name": "Grace Hopper",
        "contact_email": "grace@example.org",
        "contact_phone": "+1 555 0100",
        "provider_client_id": "",
        "contact_id": 17,
        "price_minor": 4500,
        "price_currency": "USD",
        "amount_paid_minor": None,
        "amount_paid_currency": None,
        "external_url": "https://acuityscheduling.com/appointments/view/1147384",
        "rescheduled_to_external_id": "",
        "rescheduled_from_external_id": "",
        "deleted_at": None,
        "observed_at": "2026-02-20T10:00:00+00:00",
        "updated_at": "2026-02-20T10:00:05.123456+00:00",
        "last_job_id": JOB,
    }
    base.update(overrides)
    return base


def test_no_previous_state_is_an_insert_without_fields() -> None:
    assert classify_change(None, state(), raw_changed=True) == (ChangeKind.INSERTED, ())


def test_a_reschedule_is_an_update_naming_exactly_the_moved_fields() -> None:
    before = state()
    after = state(starts_at="2026-03-03T14:00:00+00:00", ends_at="2026-03-03T14:45:00+00:00",
                  observed_at="2026-02-21T08:00:00+00:00", updated_at="2026-02-21T08:00:01+00:00")

    assert classify_change(before, after, raw_changed=True) == (
        ChangeKind.UPDATED, ("ends_at", "raw", "starts_at"))


def test_bookkeeping_alone_is_not_a_changed_field() -> None:
    # observed_at, updated_at and last_job_id move with every write; a consumer acts on none of them.
    after = state(observed_at="2026-02-25T00:00:00+00:00", updated_at="2026-02-25T00:00:01+00:00",
                  last_job_id="5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716")
    assert classify_change(state(), after, raw_changed=False) == (ChangeKind.UPDATED, ())


def test_the_same_instant_in_another_offset_is_no_change() -> None:
    after = state(starts_at="2026-03-02T04:00:00-05:00")
    assert classify_change(state(), after, raw_changed=False) == (ChangeKind.UPDATED, ())


def test_money_columns_are_reported_by_their_message_field() -> None:
    after = state(price_minor=5000, amount_paid_minor=5000, amount_paid_currency="USD")
    assert classify_change(state(), after, raw_changed=True)[1] == ("amount_paid", "price", "raw")


@pytest.mark.parametrize(
    ("before", "after", "kind", "fields"),
    [
        (state(), state(status="canceled"), ChangeKind.CANCELED, ("status",)),
        (state(), state(deleted_at="2026-03-05T02:00:00+00:00"), ChangeKind.DELETED, ("deleted_at",)),
        # deleted wins over canceled in the same change: the row is gone at the provider
        (state(), state(status="canceled", deleted_at="2026-03-05T02:00:00+00:00"), ChangeKind.DELETED,
         ("deleted_at", "status")),
        (state(deleted_at="2026-03-05T02:00:00+00:00"), state(), ChangeKind.REVIVED, ("deleted_at",)),
        # revived as canceled (a Google deletion notice for a row marked deleted): revived, status named
        (state(deleted_at="2026-03-05T02:00:00+00:00"), state(status="canceled"), ChangeKind.REVIVED,
         ("deleted_at", "status")),
        # already canceled, changed again: an update
        (state(status="canceled"), state(status="canceled", title="x"), ChangeKind.UPDATED, ("title",)),
        # un-canceled (booked again under the same id): an update of the status
        (state(status="canceled"), state(), ChangeKind.UPDATED, ("status",)),
        (state(), state(contact_id=None), ChangeKind.UPDATED, ("contact_id",)),
    ],
)
def test_kind_precedence_deleted_revived_canceled_updated(
    before: dict[str, Any], after: dict[str, Any], kind: ChangeKind, fields: tuple[str, ...]
) -> None:
    assert classify_change(before, after, raw_changed=False) == (kind, fields)


def outbox_row(previous: dict[str, Any] | None, after: dict[str, Any], version: int = 2) -> OutboxChange:
    return OutboxChange(change_id=41, tenant_id=TENANT, external_source="acuity", external_id="1147384",
                        row_version=version, previous=previous, state=after, raw_changed=True)


def test_the_key_names_tenant_source_and_external_id() -> None:
    assert change_key(TENANT, "google_calendar", "primary/evt1") == f"{TENANT}/google_calendar/primary/evt1".encode()


def test_the_message_carries_identity_kind_version_fields_and_the_new_state() -> None:
    after = state(status="canceled", updated_at="2026-02-21T08:00:01.5+00:00")
    message = change_message(outbox_row(state(), after, version=4))

    assert (message.tenant_id, message.external_source, message.external_id) == (TENANT, "acuity", "1147384")
    assert message.kind == change_events_pb2.CHANGE_KIND_CANCELED
    assert message.row_version == 4
    assert list(message.changed_fields) == ["raw", "status"]
    assert message.job_id == JOB
    assert message.occurred_at.ToDatetime(tzinfo=UTC) == datetime(2026, 2, 21, 8, 0, 1, 500000, tzinfo=UTC)
    s = message.state
    assert s.status == pages_pb2.APPOINTMENT_STATUS_CANCELED
    assert s.starts_at.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert (s.price.amount_minor, s.price.currency) == (4500, "USD")
    assert not s.HasField("amount_paid")  # NULL money is absent, not zero
    assert not s.HasField("deleted_at")
    assert (s.contact_name, s.contact_email, s.contact_id) == ("Grace Hopper", "grace@example.org", 17)


def test_a_deleted_state_carries_deleted_at_and_no_contact_is_zero() -> None:
    after = state(deleted_at="2026-03-05T02:00:00+00:00", contact_id=None)
    message = change_message(outbox_row(state(), after))
    assert message.kind == change_events_pb2.CHANGE_KIND_DELETED
    assert message.state.deleted_at.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 5, 2, 0, tzinfo=UTC)
    assert message.state.contact_id == 0


def test_encode_then_decode_round_trips() -> None:
    row = outbox_row(None, state(), version=1)
    key, value = encode_change(row)
    assert key == change_key(TENANT, "acuity", "1147384")
    assert decode_change(value) == change_message(row)


def test_decode_refuses_what_is_not_a_change_event() -> None:
    with pytest.raises(DecodeError):
        decode_change(b"\xff\xff\xff")


def test_a_state_without_its_times_is_a_contract_mismatch() -> None:
    broken = state()
    del broken["starts_at"]
    with pytest.raises(ValueError, match="starts_at"):
        change_message(outbox_row(None, broken, version=1))
