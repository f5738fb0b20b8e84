"""The canonical appointment: one shape for every provider, and its content hash.

Normalizers (in the fetcher) produce `CanonicalAppointment`s, and `CancellationStub`s for records the
provider reports canceled or deleted without their times; `apptsync.shared.messages.appointment_pages` turns both into
the Kafka `AppointmentPage`; the writer stores them. Everything here is pure.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar, TypeAlias

# Bump when the hashed content changes shape: every stored row then counts as updated once.
CONTENT_HASH_VERSION = b"apptsync.content.v1"


class AppointmentStatus(enum.Enum):
    SCHEDULED = "scheduled"
    CANCELED = "canceled"
    COMPLETED = "completed"
    NO_SHOW = "no_show"


class Source(enum.Enum):
    """A scheduling provider; the value is what `external_source` stores."""

    ACUITY = "acuity"
    CALENDLY = "calendly"
    GOOGLE_CALENDAR = "google_calendar"


@dataclass(frozen=True, slots=True)
class Contact:
    """Who the appointment is for; every field may be empty (never a reason to drop a booking)."""

    name: str = ""
    email: str = ""
    phone: str = ""
    provider_client_id: str = ""

    @property
    def is_empty(self) -> bool:
        return not (self.email or self.phone or self.provider_client_id)


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units (cents) of an ISO 4217 currency."""

    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class Payment:
    """One payment or refund the provider recorded for an appointment (docs/design.md invariant 13).

    `amount` is positive for money received and negative for a refund entry; `successful` False means
    attempted but not collected; `refunded` means the money was returned in full. Only a successful,
    not refunded entry counts toward revenue (`Payment.revenue_minor`)."""

    transaction_id: str
    amount: Money
    processor: str = ""
    paid_at: datetime | None = None
    successful: bool = True
    refunded: bool = False

    @property
    def revenue_minor(self) -> int:
        """What this entry adds to revenue: its amount, or 0 when not collected or refunded."""
        return self.amount.amount_minor if self.successful and not self.refunded else 0


@dataclass(frozen=True, slots=True)
class CanonicalAppointment:
    """One appointment as apptsync stores it.

    Guarantees: `starts_at` and `ends_at` are timezone-aware; `raw_json` is the provider's record as
    JSON text. `observed_at` is when this version was seen (provider updated-at, else fetch time).
    A rescheduled booking names the booking that replaced it (`rescheduled_to_external_id`, on the
    old one) and the one it replaced (`rescheduled_from_external_id`, on the new one); "" when none.
    """

    external_id: str
    starts_at: datetime
    ends_at: datetime
    timezone: str
    status: AppointmentStatus
    observed_at: datetime
    raw_json: str
    title: str = ""
    appointment_type: str = ""
    calendar: str = ""
    contact: Contact = field(default_factory=Contact)
    price: Money | None = None
    amount_paid: Money | None = None
    external_url: str = ""
    rescheduled_to_external_id: str = ""
    rescheduled_from_external_id: str = ""
    # The complete list of the appointment's payments when `payments_known`; otherwise they were not
    # asked for and the stored ones stay (see pages.proto Appointment.payments_known).
    payments: tuple[Payment, ...] = ()
    payments_known: bool = False

    def __post_init__(self) -> None:
        if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None or self.observed_at.tzinfo is None:
            raise ValueError("appointment times must be timezone-aware")

    @property
    def content_hash(self) -> bytes:
        return content_hash(self)


@dataclass(frozen=True, slots=True)
class CancellationStub:
    """A provider's notice that a record is canceled or deleted, carrying no times (Google Calendar
    lists a deleted event as `{"kind", "etag", "id", "status": "cancelled"}`).

    Guarantees: `observed_at` is timezone-aware; the status is always canceled. It is not subject to
    any job window (it has no time): the writer cancels the stored row of `external_id` wherever it
    lies, and never inserts one. A separate type rather than an appointment with optional times, so
    that every `CanonicalAppointment` keeps its times and no code has to ask whether it has them.
    """

    status: ClassVar[AppointmentStatus] = AppointmentStatus.CANCELED

    external_id: str
    observed_at: datetime
    raw_json: str

    def __post_init__(self) -> None:
        if self.observed_at.tzinfo is None:
            raise ValueError("observed_at must be timezone-aware")

    @property
    def content_hash(self) -> bytes:
        return stub_content_hash(self)


# What a provider page carries: full records and cancellation stubs, in the provider's order (the
# order matters: of two copies of a key in one page the later wins).
PageRecord: TypeAlias = CanonicalAppointment | CancellationStub


def _money_text(money: Money | None) -> str:
    return "" if money is None else f"{money.amount_minor}:{money.currency}"


def content_hash(appointment: CanonicalAppointment) -> bytes:
    """SHA-256 over everything stored except the observation time.

    Two observations of the same provider record hash equal, so a re-import writes nothing
    (docs/design.md invariant 4). Fields are length-prefixed, so no two field lists frame alike. The
    reschedule links are appended only when set: a record without them hashes exactly as it did
    before they existed, so stored rows do not all count as updated once.
    """
    a = appointment
    parts: tuple[str, ...] = (
        CONTENT_HASH_VERSION.decode(),
        a.external_id,
        a.starts_at.astimezone(UTC).isoformat(),
        a.ends_at.astimezone(UTC).isoformat(),
        a.timezone,
        a.status.value,
        a.title,
        a.appointment_type,
        a.calendar,
        a.contact.name,
        a.contact.email,
        a.contact.phone,
        a.contact.provider_client_id,
        _money_text(a.price),
        _money_text(a.amount_paid),
        a.external_url,
        a.raw_json,
    )
    if a.rescheduled_to_external_id:
        parts += ("rescheduled_to", a.rescheduled_to_external_id)
    if a.rescheduled_from_external_id:
        parts += ("rescheduled_from", a.rescheduled_from_external_id)
    # `payments` are not hashed: whether they were asked for varies between syncs of the same record
    # (Acuity's are fetched only when amountPaid moved), and every change to them shows in the raw
    # record anyway (Acuity's amountPaid is the sum of the entries; Calendly's payment is the invitee's).
    return _framed_sha256(parts)


def stub_content_hash(stub: CancellationStub) -> bytes:
    """SHA-256 over what a cancellation stub carries except its observation time. Its field list is
    shorter than an appointment's and starts with its own tag, so no stub hashes like an appointment."""
    return _framed_sha256(
        (CONTENT_HASH_VERSION.decode(), "stub", stub.external_id, stub.status.value, stub.raw_json)
    )


def _framed_sha256(parts: tuple[str, ...]) -> bytes:
    """SHA-256 of the parts, each prefixed by its UTF-8 length (8 bytes, big-endian)."""
    # One update of the whole length-prefixed text: the same digest as one update per piece, at a
    # fraction of the calls (this runs for every record of every page).
    framed = []
    for part in parts:
        encoded = part.encode("utf-8", "surrogatepass")
        framed.append(len(encoded).to_bytes(8, "big"))
        framed.append(encoded)
    return hashlib.sha256(b"".join(framed)).digest()


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    """A provider record that did not become an appointment, and why (e.g. "invalid: no start time")."""

    reason: str
    detail: str = ""
