"""Change events for downstream services: the home of the `AppointmentChange` contract (pure).

PostgreSQL records every committed change of an appointment in the outbox table
`appointment_changes` (migration 0013: triggers in the changing transaction, a `row_version` per
row). This module turns one outbox row into its event: the kind and the changed fields
(`classify_change`), the Kafka key (`change_key`) and the protobuf message
(`change_message`, `encode_change`, `decode_change`). The topic is `KafkaSettings.change_events_topic`
(`change_events_topic`); the writer's relay (apptsync.writer.change_relay) publishes the events.

Consumers: protos/apptsync/v1/change_events.proto and README "Change events for downstream services".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apptsync.shared.appointments import AppointmentStatus
from apptsync.shared.messages.appointment_pages import STATUS_TO_PROTO
from apptsync.shared.settings import KafkaSettings
from apptsync.shared.timestamps import timestamp, timestamp_fields
from apptsync.v1 import change_events_pb2


class ChangeKind(enum.Enum):
    INSERTED = "inserted"
    UPDATED = "updated"
    CANCELED = "canceled"
    DELETED = "deleted"
    REVIVED = "revived"


KIND_TO_PROTO: dict[ChangeKind, change_events_pb2.ChangeKind.ValueType] = {
    ChangeKind.INSERTED: change_events_pb2.CHANGE_KIND_INSERTED,
    ChangeKind.UPDATED: change_events_pb2.CHANGE_KIND_UPDATED,
    ChangeKind.CANCELED: change_events_pb2.CHANGE_KIND_CANCELED,
    ChangeKind.DELETED: change_events_pb2.CHANGE_KIND_DELETED,
    ChangeKind.REVIVED: change_events_pb2.CHANGE_KIND_REVIVED,
}

# The state columns (apptsync_appointment_state in migration 0013) a change is reported by, mapped to
# the AppointmentState field that carries them. observed_at, updated_at and last_job_id change with
# every write and say nothing a consumer acts on: they are carried, never reported as changed.
STATE_COLUMN_FIELDS: Mapping[str, str] = {
    "connection_id": "connection_id",
    "starts_at": "starts_at",
    "ends_at": "ends_at",
    "timezone": "timezone",
    "status": "status",
    "title": "title",
    "appointment_type": "appointment_type",
    "calendar": "calendar",
    "contact_name": "contact_name",
    "contact_email": "contact_email",
    "contact_phone": "contact_phone",
    "provider_client_id": "provider_client_id",
    "contact_id": "contact_id",
    "price_minor": "price",
    "price_currency": "price",
    "amount_paid_minor": "amount_paid",
    "amount_paid_currency": "amount_paid",
    "external_url": "external_url",
    "rescheduled_to_external_id": "rescheduled_to_external_id",
    "rescheduled_from_external_id": "rescheduled_from_external_id",
    "deleted_at": "deleted_at",
}
RAW_FIELD = "raw"
_CANCELED = AppointmentStatus.CANCELED.value


@dataclass(frozen=True, slots=True)
class OutboxChange:
    """One row of `appointment_changes`: the state before (None: inserted) and after a change, as the
    JSON objects apptsync_appointment_state builds (timestamps as ISO 8601 text)."""

    change_id: int
    tenant_id: str
    external_source: str
    external_id: str
    row_version: int
    previous: Mapping[str, Any] | None
    state: Mapping[str, Any]
    raw_changed: bool


def _moment(value: Any) -> datetime | None:
    """A state timestamp (ISO 8601 text from jsonb) as an aware datetime; None stays None."""
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a zone in a change state: {value!r}")
    return moment


def _same(column: str, before: Any, after: Any) -> bool:
    """Equal values; timestamps compared as instants (jsonb text of one instant may differ in offset)."""
    if column in ("starts_at", "ends_at", "deleted_at") and before is not None and after is not None:
        return _moment(before) == _moment(after)
    return bool(before == after)


def changed_fields(previous: Mapping[str, Any], state: Mapping[str, Any], *, raw_changed: bool) -> tuple[str, ...]:
    """The AppointmentState fields whose value differs between the two states (sorted), plus "raw"
    when the provider payload changed."""
    names = {
        field
        for column, field in STATE_COLUMN_FIELDS.items()
        if not _same(column, previous.get(column), state.get(column))
    }
    if raw_changed:
        names.add(RAW_FIELD)
    return tuple(sorted(names))


def classify_change(
    previous: Mapping[str, Any] | None, state: Mapping[str, Any], *, raw_changed: bool
) -> tuple[ChangeKind, tuple[str, ...]]:
    """The kind of a change and its changed fields.

    No previous state: INSERTED (no fields). Otherwise, first match wins: marked deleted -> DELETED;
    deletion mark cleared -> REVIVED (a revival as canceled too: `status` is then among the fields);
    status became canceled -> CANCELED; anything else -> UPDATED."""
    if previous is None:
        return ChangeKind.INSERTED, ()
    fields = changed_fields(previous, state, raw_changed=raw_changed)
    was_deleted = previous.get("deleted_at") is not None
    is_deleted = state.get("deleted_at") is not None
    if is_deleted and not was_deleted:
        return ChangeKind.DELETED, fields
    if was_deleted and not is_deleted:
        return ChangeKind.REVIVED, fields
    if state.get("status") == _CANCELED and previous.get("status") != _CANCELED:
        return ChangeKind.CANCELED, fields
    return ChangeKind.UPDATED, fields


def change_key(tenant_id: str, external_source: str, external_id: str) -> bytes:
    """The Kafka key of an appointment's events: one partition per appointment, its events in order."""
    return f"{tenant_id}/{external_source}/{external_id}".encode()


def change_events_topic(settings: KafkaSettings) -> str:
    """The topic change events are published to (APPTSYNC_KAFKA_CHANGE_EVENTS_TOPIC)."""
    return settings.change_events_topic


def _money(state: Mapping[str, Any], prefix: str) -> dict[str, Any] | None:
    amount = state.get(f"{prefix}_minor")
    if amount is None:
        return None
    return {"amount_minor": int(amount), "currency": state.get(f"{prefix}_currency") or ""}


def _state_message(state: Mapping[str, Any]) -> change_events_pb2.AppointmentState:
    fields: dict[str, Any] = {
        "connection_id": state["connection_id"],
        "starts_at": timestamp_fields(_required_moment(state, "starts_at")),
        "ends_at": timestamp_fields(_required_moment(state, "ends_at")),
        "timezone": state["timezone"],
        "status": STATUS_TO_PROTO[AppointmentStatus(state["status"])],
        "title": state["title"],
        "appointment_type": state["appointment_type"],
        "calendar": state["calendar"],
        "contact_name": state["contact_name"],
        "contact_email": state["contact_email"],
        "contact_phone": state["contact_phone"],
        "provider_client_id": state["provider_client_id"],
        "contact_id": int(state.get("contact_id") or 0),
        "external_url": state["external_url"],
        "rescheduled_to_external_id": state.get("rescheduled_to_external_id") or "",
        "rescheduled_from_external_id": state.get("rescheduled_from_external_id") or "",
        "observed_at": timestamp_fields(_required_moment(state, "observed_at")),
    }
    for prefix, name in (("price", "price"), ("amount_paid", "amount_paid")):
        money = _money(state, prefix)
        if money is not None:
            fields[name] = money
    deleted_at = _moment(state.get("deleted_at"))
    if deleted_at is not None:
        fields["deleted_at"] = timestamp_fields(deleted_at)
    return change_events_pb2.AppointmentState(**fields)


def _required_moment(state: Mapping[str, Any], column: str) -> datetime:
    moment = _moment(state.get(column))
    if moment is None:
        raise ValueError(f"change state without {column}")
    return moment


def change_message(change: OutboxChange) -> change_events_pb2.AppointmentChange:
    """The AppointmentChange of an outbox row. Raises ValueError (or KeyError) for a state that lacks
    a column the message needs: a mismatch between this module and migration 0013."""
    kind, fields = classify_change(change.previous, change.state, raw_changed=change.raw_changed)
    return change_events_pb2.AppointmentChange(
        tenant_id=change.tenant_id,
        external_source=change.external_source,
        external_id=change.external_id,
        kind=KIND_TO_PROTO[kind],
        row_version=change.row_version,
        changed_fields=list(fields),
        state=_state_message(change.state),
        occurred_at=timestamp(_required_moment(change.state, "updated_at")),
        job_id=str(change.state.get("last_job_id") or ""),
    )


def encode_change(change: OutboxChange) -> tuple[bytes, bytes]:
    """(key, value) of the Kafka message for an outbox row."""
    return (
        change_key(change.tenant_id, change.external_source, change.external_id),
        change_message(change).SerializeToString(),
    )


def decode_change(value: bytes) -> change_events_pb2.AppointmentChange:
    """The AppointmentChange of a message value. Raises google.protobuf.message.DecodeError."""
    message = change_events_pb2.AppointmentChange()
    message.ParseFromString(value)
    return message
