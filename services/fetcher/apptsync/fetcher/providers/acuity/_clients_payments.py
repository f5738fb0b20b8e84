"""Acuity's clients stream and payments as canonical values (pure; never raises on any JSON input).

- `GET /clients` answers `[{firstName, lastName, email, phone, notes}]` with **no id**: a client is
  keyed by the writer's identities (case-folded email, else E.164 phone, else the name;
  apptsync.writer.contacts), so listing it again finds the same contact.
- `GET /appointments/{id}/payments` answers `[{transactionID, created, processor, amount}]`, the
  amount a decimal string in the connection's currency (`"300.00"` -> 30000 minor units). Acuity
  documents no refund shape; a refund is an entry with a negative amount, and `amountPaid` is the
  sum of the entries. So the list is asked for only when `amountPaid` is not zero (an appointment
  paid nothing, or refunded in full, adds nothing to revenue whatever its entries say) and differs
  from what the mirror holds (a new entry changes the sum; an unchanged one needs no request).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from apptsync.fetcher.providers._model import JsonValue
from apptsync.fetcher.providers._money import money_from_amount
from apptsync.fetcher.providers._state import StoredPayments
from apptsync.fetcher.providers.acuity._normalizer import parse_acuity_datetime
from apptsync.shared.appointments import CanonicalAppointment, Contact, Payment


def _text(record: dict[str, JsonValue], key: str) -> str:
    value = record.get(key)
    return value.strip() if isinstance(value, str) else ""


def acuity_client(record: JsonValue) -> Contact | None:
    """One `/clients` entry as a Contact; None when it is not an object or names nobody (no name,
    email or phone)."""
    if not isinstance(record, dict):
        return None
    name = " ".join(part for part in (_text(record, "firstName"), _text(record, "lastName")) if part)
    contact = Contact(name=name, email=_text(record, "email").lower(), phone=_text(record, "phone"))
    return contact if (contact.name or contact.email or contact.phone) else None


def acuity_clients(records: JsonValue) -> list[Contact]:
    """The contacts of a `/clients` answer, in its order (entries naming nobody left out)."""
    if not isinstance(records, list):
        return []
    return [contact for contact in map(acuity_client, records) if contact is not None]


def pays(appointment: CanonicalAppointment) -> bool:
    """Whether the appointment's `amountPaid` is not zero (absent counts as zero: nothing known)."""
    return appointment.amount_paid is not None and appointment.amount_paid.amount_minor != 0


def needs_payments(appointment: CanonicalAppointment, stored: StoredPayments | None) -> bool:
    """Whether to ask Acuity for the appointment's payment entries: it paid something, and the
    mirror does not hold it (`stored` None), holds another amount paid, or holds no entries for it."""
    if not pays(appointment):
        return False
    assert appointment.amount_paid is not None  # noqa: S101 -- narrows the type; pays() checked it
    return stored is None or stored.entries == 0 or stored.amount_paid_minor != appointment.amount_paid.amount_minor


def acuity_payments(records: JsonValue, currency: str) -> tuple[Payment, ...] | None:
    """The entries of a `/appointments/{id}/payments` answer (`"amount": "300.00"` -> 30000,
    `"-75.00"` -> a refund of -7500); None when the answer is not a list or an entry has no
    transaction id or readable amount (the stored payments then stay as they are)."""
    if not isinstance(records, list):
        return None
    payments = []
    for record in records:
        if not isinstance(record, dict):
            return None
        transaction_id = record.get("transactionID")
        if isinstance(transaction_id, int) and not isinstance(transaction_id, bool):
            transaction_id = str(transaction_id)
        amount = money_from_amount(record.get("amount"), currency)
        if not isinstance(transaction_id, str) or not transaction_id.strip() or amount is None:
            return None
        payments.append(Payment(
            transaction_id=transaction_id.strip(),
            amount=amount,
            processor=_text(record, "processor"),
            paid_at=parse_acuity_datetime(record.get("created")),
        ))
    return tuple(payments)


def with_payments(appointment: CanonicalAppointment, payments: Sequence[Payment] | None) -> CanonicalAppointment:
    """`appointment` with its payment list known (`payments`), or unchanged when None (unreadable)."""
    if payments is None:
        return appointment
    return dataclasses.replace(appointment, payments=tuple(payments), payments_known=True)


def without_payments(appointment: CanonicalAppointment) -> CanonicalAppointment:
    """An appointment that paid nothing (or was refunded in full): its list is known to count for
    nothing, so stored entries of an earlier version are removed. Unchanged when `amountPaid` is
    absent (nothing known)."""
    if appointment.amount_paid is None:
        return appointment
    return dataclasses.replace(appointment, payments=(), payments_known=True)
