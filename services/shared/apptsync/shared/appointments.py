"""The canonical appointment: one shape for every provider, and its content hash.

Normalizers (in the fetcher) produce `CanonicalAppointment`s; `apptsync.shared.pages` turns them into
the Kafka `AppointmentPage`; the writer stores them. Everything here is pure.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

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
class CanonicalAppointment:
    """One appointment as apptsync stores it.

    Guarantees: `starts_at` and `ends_at` are timezone-aware; `raw_json` is the provider's record as
    JSON text. `observed_at` is when this version was seen (provider updated-at, else fetch time).
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

    def __post_init__(self) -> None:
        if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None or self.observed_at.tzinfo is None:
            raise ValueError("appointment times must be timezone-aware")

    @property
    def content_hash(self) -> bytes:
        return content_hash(self)


def _money_text(money: Money | None) -> str:
    return "" if money is None else f"{money.amount_minor}:{money.currency}"


def content_hash(appointment: CanonicalAppointment) -> bytes:
    """SHA-256 over everything stored except the observation time.

    Two observations of the same provider record hash equal, so a re-import writes nothing
    (DESIGN.md invariant 4). Fields are joined with a separator that cannot occur in them unescaped.
    """
    a = appointment
    parts = (
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
