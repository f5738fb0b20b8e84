"""The contacts and revenue a mirror must reach for one account (pure; the route is in _fidelity_api).

Rules (the product must reach the same figures on its own):

- **Sightings.** A person is seen on every record the provider answers now: Acuity's client list
  (`GET /clients`, deleted bookings' people included, as Acuity keeps them) and every appointment
  (canceled ones too); Calendly's invitees (canceled ones too); Google's events' attendee (not the
  deleted ones, which the provider reduces to a stub). Records deleted at the provider add nothing.
- **One contact per person.** Each sighting has identities (see _contact_identity): its case-folded
  email, its E.164 phone, and only when it has neither, its case-folded name. Sightings sharing an
  identity are one contact, transitively (a client listed with a phone and a booking with that phone
  and an email are one person; so is every later booking with that email). A sighting with no
  identity at all is nobody's. The contact shows the first email, phone and name seen, clients first
  in list order, then records in key order, and every email and phone it was seen with.
- **Revenue.** Acuity: every payment entry of the appointment (`GET /appointments/{id}/payments`),
  refunds being negative entries, so a canceled booking refunded in full adds nothing and a kept
  payment counts whatever the booking's status; Calendly: the invitee's `payment.amount` when
  `successful` (Calendly's API shows no refund: an unsuccessful payment adds nothing); Google: none.
  Amounts in integer minor units of their currency (Acuity's: the connection's, `currency`).
- **Figures.** `contacts_total`: the contacts; `revenue_minor`: the revenue in `currency` of all the
  account's records; per contact `revenue_minor` in `currency` (and every currency in
  `revenue_minor_by_currency`); `paying_contacts`: contacts whose `revenue_minor` is above zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from apptsync.simulator._acuity_data import AcuityStore
from apptsync.simulator._calendly_data import CalendlyStore
from apptsync.simulator._contact_identity import email_identity, name_identity, phone_identity
from apptsync.simulator._google_data import GoogleStore
from apptsync.simulator._truth import minor_units


@dataclass(frozen=True, slots=True)
class Sighting:
    """A person as one record shows them, with the money that record brought, per currency."""

    first_name: str
    last_name: str
    email: str
    phone: str
    revenue_minor: tuple[tuple[str, int], ...] = ()

    def identities(self) -> list[str]:
        email, phone = email_identity(self.email), phone_identity(self.phone)
        found = ([f"email:{email}"] if email else []) + ([f"phone:{phone}"] if phone else [])
        if found:
            return found
        name = name_identity(self.first_name, self.last_name)
        return [f"name:{name}"] if name else []


@dataclass(slots=True)
class Contact:
    email: str = ""
    phone: str = ""
    name: str = ""
    emails: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)
    revenue_minor_by_currency: dict[str, int] = field(default_factory=dict)

    def to_json(self, currency: str) -> dict[str, object]:
        return {
            "email": self.email,
            "phone": self.phone,
            "name": self.name,
            "emails": sorted(self.emails),
            "phones": sorted(self.phones),
            "revenue_minor": self.revenue_minor_by_currency.get(currency, 0),
            "revenue_minor_by_currency": dict(sorted(self.revenue_minor_by_currency.items())),
        }


@dataclass(frozen=True, slots=True)
class ContactsSummary:
    contacts: list[Contact]
    revenue_minor_by_currency: dict[str, int]
    currency: str

    @property
    def contacts_total(self) -> int:
        return len(self.contacts)

    @property
    def paying_contacts(self) -> int:
        return sum(1 for c in self.contacts if c.revenue_minor_by_currency.get(self.currency, 0) > 0)

    @property
    def revenue_minor(self) -> int:
        return self.revenue_minor_by_currency.get(self.currency, 0)

    def to_json(self) -> dict[str, object]:
        return {
            "contacts_total": self.contacts_total,
            "paying_contacts": self.paying_contacts,
            "revenue_minor": self.revenue_minor,
            "currency": self.currency,
            "revenue_minor_by_currency": dict(sorted(self.revenue_minor_by_currency.items())),
            "contacts": [c.to_json(self.currency) for c in self.contacts],
        }


def summarize(sightings: Iterable[Sighting], *, currency: str) -> ContactsSummary:
    """Merges the sightings into contacts by the module's rules (order matters only for which
    email/phone/name a contact shows)."""
    ordered = [(sighting, sighting.identities()) for sighting in sightings]
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for _, keys in ordered:
        for key in keys:
            parent.setdefault(key, key)
        for key in keys[1:]:
            a, b = root(keys[0]), root(key)
            if a != b:
                parent[max(a, b)] = min(a, b)
    contacts: dict[str, Contact] = {}
    totals: dict[str, int] = {}
    for sighting, keys in ordered:
        for currency_code, amount in sighting.revenue_minor:
            totals[currency_code] = totals.get(currency_code, 0) + amount
        if not keys:
            continue
        contact = contacts.setdefault(root(keys[0]), Contact())
        email, phone = email_identity(sighting.email), phone_identity(sighting.phone)
        contact.email, contact.phone = contact.email or email, contact.phone or phone
        if email:
            contact.emails.add(email)
        if phone:
            contact.phones.add(phone)
        contact.name = contact.name or " ".join(f"{sighting.first_name} {sighting.last_name}".split())
        for currency_code, amount in sighting.revenue_minor:
            by_currency = contact.revenue_minor_by_currency
            by_currency[currency_code] = by_currency.get(currency_code, 0) + amount
    listed = sorted(contacts.values(), key=lambda c: (c.email, c.phone, c.name))
    return ContactsSummary(listed, totals, currency)


def acuity_contacts(store: AcuityStore, user_id: int, *, currency: str = "USD") -> ContactsSummary:
    """The account's contacts and revenue; `currency` is the connection's. Raises KeyError."""
    sightings = [Sighting(c.first_name, c.last_name, c.email, c.phone) for c in store.clients(user_id)]
    book = store.of(user_id)
    for appointment_id in sorted(book):
        appointment = book[appointment_id]
        paid = sum((Decimal(p.amount) for p in store.payments(user_id, appointment_id)), Decimal(0))
        revenue = ((currency, minor_units(paid, currency)),) if paid else ()
        sightings.append(
            Sighting(appointment.first_name, appointment.last_name, appointment.email, appointment.phone, revenue)
        )
    return summarize(sightings, currency=currency)


def calendly_contacts(store: CalendlyStore, number: int, *, currency: str = "USD") -> ContactsSummary:
    """The account's invitees as contacts, with their successful payments. Raises KeyError."""
    invitees = store.invitees[number]
    sightings = []
    for uuid in sorted(invitees):
        invitee = invitees[uuid]
        revenue: tuple[tuple[str, int], ...] = ()
        if invitee.payment is not None and invitee.payment[2]:
            amount, payment_currency, _ = invitee.payment
            revenue = ((payment_currency, minor_units(amount, payment_currency)),)
        sightings.append(Sighting(invitee.first_name, invitee.last_name, invitee.email, invitee.phone, revenue))
    return summarize(sightings, currency=currency)


def google_contacts(store: GoogleStore, number: int, *, currency: str = "USD") -> ContactsSummary:
    """The attendees of the account's events that are not deleted. Raises KeyError."""
    events = store.events[number]
    sightings = []
    for key in sorted(events):
        event = events[key]
        if event.deleted or event.attendee is None:
            continue
        name, email, _ = event.attendee
        sightings.append(Sighting(name, "", email, ""))
    return summarize(sightings, currency=currency)
