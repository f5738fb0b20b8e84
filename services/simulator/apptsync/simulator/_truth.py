"""The truth a mirror of a simulated account must hold: one record per booking the provider has or
had, derived from the simulator's own model (pure; independent of how any client reads the API).

The contract, per record (the mirror's `appointments` row of the same key):
- `external_id`: Acuity's appointment id; Calendly's invitee uuid; Google's `<calendarId>/<eventId>`.
- `status`: `scheduled`, `canceled` or `no_show` (Acuity: canceled with `noShow` is no_show;
  Calendly: a canceled invitee or event is canceled, else a marked no-show is no_show; Google:
  `cancelled`, deleted events included, is canceled; nothing is `completed`).
- `deleted`: the provider no longer returns the record at all (Acuity's and Calendly's deletions). A
  deleted record may be absent from the mirror (it never saw it) or present with `deleted_at` set;
  its other fields are the last the provider said and are not part of the contract.
- `stub`: the provider reports the record only as a deletion stub (Google: id and status): its times
  and contact are what the provider said before and only the key and status are part of the contract;
  it may be absent from the mirror when the mirror never saw it whole.
- `starts_at`/`ends_at` (UTC; Acuity: start + duration; Google all-day: midnight in the calendar's
  zone), price and amount paid in integer minor units with their currency (None when the provider
  has none; Calendly: the payment's amount, paid in full when successful, else 0), the contact's
  email (trimmed, lower case) and phone (trimmed), and `rescheduled_to_external_id` (Calendly: the new
  invitee of a rescheduled one; "" otherwise)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from apptsync.simulator._acuity_data import AcuityAppointment, AcuityStore
from apptsync.simulator._calendly_data import CalendlyEvent, CalendlyInvitee, CalendlyStore
from apptsync.simulator._google_data import GoogleStore

# ISO 4217 currencies of the simulated data whose minor unit is not a hundredth.
_MINOR_DIGITS = {"JPY": 0, "KRW": 0, "BHD": 3, "KWD": 3}


@dataclass(frozen=True, slots=True)
class TruthRecord:
    external_id: str
    status: str
    deleted: bool
    stub: bool
    starts_at: datetime
    ends_at: datetime
    price_minor: int | None
    price_currency: str | None
    amount_paid_minor: int | None
    amount_paid_currency: str | None
    contact_email: str
    contact_phone: str
    rescheduled_to_external_id: str

    def to_json(self) -> dict[str, object]:
        return {
            "external_id": self.external_id,
            "status": self.status,
            "deleted": self.deleted,
            "stub": self.stub,
            "starts_at": self.starts_at.astimezone(UTC).isoformat(),
            "ends_at": self.ends_at.astimezone(UTC).isoformat(),
            "price_minor": self.price_minor,
            "price_currency": self.price_currency,
            "amount_paid_minor": self.amount_paid_minor,
            "amount_paid_currency": self.amount_paid_currency,
            "contact_email": self.contact_email,
            "contact_phone": self.contact_phone,
            "rescheduled_to_external_id": self.rescheduled_to_external_id,
        }


def minor_units(amount: Decimal | float | str, currency: str) -> int:
    """`45.5` USD -> 4550; `5000` JPY -> 5000 (half-even past the currency's minor unit)."""
    scale = Decimal(10) ** _MINOR_DIGITS.get(currency, 2)
    return int((Decimal(str(amount)) * scale).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def acuity_truth(store: AcuityStore, user_id: int, *, currency: str = "USD") -> list[TruthRecord]:
    """Every appointment of the account, deleted ones included, sorted by key. `currency` is the
    connection's (Acuity amounts carry none). Raises KeyError for an unknown account."""
    records = [_acuity_record(a, currency, deleted=False) for a in store.of(user_id).values()]
    records += [_acuity_record(a, currency, deleted=True) for a in store.removed[user_id].values()]
    return sorted(records, key=lambda r: r.external_id)


def _acuity_record(appointment: AcuityAppointment, currency: str, *, deleted: bool) -> TruthRecord:
    status = "scheduled"
    if appointment.canceled:
        status = "no_show" if appointment.no_show else "canceled"
    return TruthRecord(
        external_id=str(appointment.id),
        status=status,
        deleted=deleted,
        stub=False,
        starts_at=appointment.instant,
        ends_at=appointment.instant + timedelta(minutes=appointment.duration_minutes),
        price_minor=minor_units(appointment.price, currency),
        price_currency=currency,
        amount_paid_minor=minor_units(appointment.amount_paid, currency),
        amount_paid_currency=currency,
        contact_email=appointment.email.strip().lower(),
        contact_phone=appointment.phone.strip(),
        rescheduled_to_external_id="",
    )


def calendly_truth(store: CalendlyStore, number: int) -> list[TruthRecord]:
    """Every invitee of the account, deleted ones included, sorted by key. Raises KeyError."""
    events = store.events[number]
    records = [_calendly_record(events[i.event_uuid], i, deleted=False) for i in store.invitees[number].values()]
    records += [_calendly_record(event, i, deleted=True) for event, i in store.removed[number].values()]
    return sorted(records, key=lambda r: r.external_id)


def _calendly_record(event: CalendlyEvent, invitee: CalendlyInvitee, *, deleted: bool) -> TruthRecord:
    status = "scheduled"
    if invitee.status == "canceled" or event.status == "canceled":
        status = "canceled"
    elif invitee.no_show_at is not None:
        status = "no_show"
    price = paid = currency = None
    if invitee.payment is not None:
        amount, currency, successful = invitee.payment
        price = minor_units(amount, currency)
        paid = price if successful else 0
    return TruthRecord(
        external_id=invitee.uuid,
        status=status,
        deleted=deleted,
        stub=False,
        starts_at=event.starts_at.astimezone(UTC),
        ends_at=max(event.ends_at, event.starts_at).astimezone(UTC),
        price_minor=price,
        price_currency=currency,
        amount_paid_minor=paid,
        amount_paid_currency=currency,
        contact_email=invitee.email.strip().lower(),
        contact_phone=invitee.phone.strip(),
        rescheduled_to_external_id=(invitee.new_invitee or "").rsplit("/", 1)[-1] if invitee.rescheduled else "",
    )


def google_truth(store: GoogleStore, number: int) -> list[TruthRecord]:
    """Every event (instance) of the account's calendars, sorted by key. A Google deletion is not
    `deleted`: the provider still reports the event, as `cancelled` (a stub). Raises KeyError."""
    zones = {c.id: c.timezone for c in store.accounts[number].calendars}
    records = []
    for event in store.events[number].values():
        zone = zones[event.calendar_id]
        starts_at = event.start_instant(zone)
        email = ""
        if event.attendee is not None:
            email = event.attendee[1].strip().lower()
        records.append(
            TruthRecord(
                external_id=f"{event.calendar_id}/{event.id}",
                status="canceled" if event.status == "cancelled" or event.deleted else "scheduled",
                deleted=False,
                stub=event.deleted,
                starts_at=starts_at,
                ends_at=max(event.end_instant(zone), starts_at),
                price_minor=None,
                price_currency=None,
                amount_paid_minor=None,
                amount_paid_currency=None,
                contact_email=email,
                contact_phone="",
                rescheduled_to_external_id="",
            )
        )
    return sorted(records, key=lambda r: r.external_id)
