"""The contacts truth (one contact per person, merged by case-folded email, E.164 phone, else name;
revenue = payments minus refunds) and the mutation kinds that change contacts and money: new client,
payment, refund (Acuity) and paid invitee (Calendly)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from apptsync.simulator._acuity_clients import total_paid
from apptsync.simulator._calendly_data import render_invitee
from apptsync.simulator._clock import fixed_clock
from apptsync.simulator._contact_identity import phone_identity
from apptsync.simulator._contacts_truth import (
    Sighting,
    acuity_contacts,
    calendly_contacts,
    google_contacts,
    summarize,
)
from apptsync.simulator._mutations import AppliedMutation, Kind, apply_mutations
from apptsync.simulator._state import ACUITY, CALENDLY, GOOGLE, SimulatorState

pytestmark = pytest.mark.unit

ANCHOR = date(2024, 6, 15)
NOW = datetime(2024, 6, 15, 10, 7, 30, tzinfo=UTC)
ACCOUNTS = {ACUITY: 1001, CALENDLY: 1, GOOGLE: 1}


def state(appointments: int = 120) -> SimulatorState:
    return SimulatorState.seeded(
        seed=5, accounts=1, appointments_per_account=appointments, anchor=ANCHOR, clock=fixed_clock(NOW)
    )


def mutate(s: SimulatorState, seed: int, count: int, **kwargs: Any) -> list[AppliedMutation]:
    return apply_mutations(s, rng=random.Random(seed), now=NOW, count=count, accounts=ACCOUNTS, **kwargs)


def usd(minor: int) -> tuple[tuple[str, int], ...]:
    return (("USD", minor),)


# --------------------------------------------------------------------------- the merge rules


def test_email_case_and_phone_formats_are_one_person() -> None:
    summary = summarize(
        [
            Sighting("Ann", "Lee", "  Ann@Example.COM ", ""),
            Sighting("Ann", "Lee", "ann@example.com", "(555) 010-2345"),
            Sighting("Annie", "", "", "+1 555 010 2345"),
            Sighting("A.", "Lee", "", "555.010.2345", usd(7500)),
        ],
        currency="USD",
    )
    assert summary.contacts_total == 1
    (contact,) = summary.contacts
    assert (contact.email, contact.phone, contact.name) == ("ann@example.com", "+15550102345", "Ann Lee")
    assert (contact.emails, contact.phones) == ({"ann@example.com"}, {"+15550102345"})
    assert (summary.paying_contacts, summary.revenue_minor) == (1, 7500)


def test_a_person_seen_by_email_in_one_record_and_by_phone_in_another_is_one_contact() -> None:
    # The client list knows only the phone; the booking carries another email and the phone.
    summary = summarize(
        [Sighting("Bo", "", "", "(555) 010-2345"), Sighting("Robert", "Smith", "bob@mail.example", "+15550102345")],
        currency="USD",
    )
    assert summary.contacts_total == 1
    # Transitively: a later booking with only the email is the same person too.
    summary = summarize(
        [
            Sighting("Bo", "", "", "(555) 010-2345"),
            Sighting("Robert", "Smith", "bob@mail.example", "+15550102345"),
            Sighting("Robert", "Smith", "BOB@mail.example", "", usd(4500)),
        ],
        currency="USD",
    )
    assert (summary.contacts_total, summary.paying_contacts) == (1, 1)
    assert summary.contacts[0].name == "Bo"  # the first name seen
    assert (summary.contacts[0].emails, summary.contacts[0].phones) == ({"bob@mail.example"}, {"+15550102345"})


def test_the_name_counts_only_without_email_and_phone() -> None:
    summary = summarize(
        [
            Sighting("Cy", "Young", "", ""),
            Sighting(" cy ", "YOUNG", "", ""),  # the same name: the same person
            Sighting("Cy", "Young", "cy@example.com", ""),  # an email: a person of its own
            Sighting("", "", "", "not a phone"),  # no identity at all: nobody
        ],
        currency="USD",
    )
    assert sorted((c.email, c.name) for c in summary.contacts) == [("", "Cy Young"), ("cy@example.com", "Cy Young")]


def test_revenue_is_payments_minus_refunds_and_a_refunded_booking_adds_nothing() -> None:
    summary = summarize(
        [
            Sighting("Dee", "", "dee@example.com", "", usd(7500 - 7500)),  # canceled and refunded in full
            Sighting("Eve", "", "eve@example.com", "", usd(8999 - 2000)),  # a partial refund
            Sighting("Eve", "", "eve@example.com", "", usd(4500)),
            Sighting("Fay", "", "fay@example.com", "", (("EUR", 1250),)),
        ],
        currency="USD",
    )
    by_email = {c.email: c for c in summary.contacts}
    assert by_email["dee@example.com"].revenue_minor_by_currency == {"USD": 0}
    assert by_email["eve@example.com"].revenue_minor_by_currency == {"USD": 11499}
    assert (summary.contacts_total, summary.paying_contacts, summary.revenue_minor) == (3, 1, 11499)
    assert summary.revenue_minor_by_currency == {"USD": 11499, "EUR": 1250}
    in_euros = summarize([Sighting("Fay", "", "fay@example.com", "", (("EUR", 1250),))], currency="EUR")
    assert (in_euros.paying_contacts, in_euros.revenue_minor) == (1, 1250)


def test_the_summary_renders_the_documented_keys() -> None:
    rendered = summarize([Sighting("Ann", "", "ann@example.com", "", usd(30000))], currency="USD").to_json()
    assert rendered == {
        "contacts_total": 1,
        "paying_contacts": 1,
        "revenue_minor": 30000,
        "currency": "USD",
        "revenue_minor_by_currency": {"USD": 30000},
        "contacts": [
            {"email": "ann@example.com", "phone": "", "name": "Ann", "emails": ["ann@example.com"], "phones": [],
             "revenue_minor": 30000, "revenue_minor_by_currency": {"USD": 30000}},
        ],
    }  # fmt: skip


# --------------------------------------------------------------------------- per provider


def test_acuity_revenue_is_the_sum_of_the_payment_entries_of_live_appointments() -> None:
    s = state()
    book = s.acuity.of(1001)
    expected = sum(int(Decimal(total_paid(s.acuity.payments(1001, i))) * 100) for i in book)
    summary = acuity_contacts(s.acuity, 1001)
    assert summary.revenue_minor == expected > 0
    assert summary.contacts_total == len(s.acuity.clients(1001))  # every booker is on the client list
    target = next(i for i in sorted(book) if book[i].amount_paid != "0.00")
    paid = int(Decimal(book[target].amount_paid) * 100)
    s.acuity.add_payment(1001, target, -Decimal(book[target].amount_paid))
    assert acuity_contacts(s.acuity, 1001).revenue_minor == expected - paid
    s.acuity.delete(1001, target)  # a deleted booking's person stays a client; its money is gone
    after = acuity_contacts(s.acuity, 1001)
    assert (after.revenue_minor, after.contacts_total) == (expected - paid, summary.contacts_total)


def test_calendly_counts_successful_payments_with_the_documented_float_shape() -> None:
    s = state()
    invitees = s.calendly.invitees[1]
    uuid = sorted(invitees)[0]
    invitee = s.calendly.set_payment(1, uuid, (1234.56, "USD", True), now=NOW)
    payment = render_invitee(invitee)["payment"]
    assert payment == {
        "external_id": f"ch_{uuid.lower()}", "provider": "stripe", "amount": 1234.56, "currency": "USD",
        "terms": "Payment is due at booking.", "successful": True,
    }  # fmt: skip
    with_payment = calendly_contacts(s.calendly, 1).revenue_minor
    s.calendly.set_payment(1, uuid, (1234.56, "USD", False), now=NOW)  # not successfully processed
    assert calendly_contacts(s.calendly, 1).revenue_minor == with_payment - 123456


def test_google_contacts_are_the_attendees_of_events_not_deleted() -> None:
    s = state()
    summary = google_contacts(s.google, 1)
    attendees = {e.attendee[1].strip().casefold() for e in s.google.events[1].values() if e.attendee and not e.deleted}
    assert {c.email for c in summary.contacts} == attendees
    assert (summary.paying_contacts, summary.revenue_minor) == (0, 0)


# --------------------------------------------------------------------------- mutations


def test_a_new_client_adds_a_contact_or_joins_a_booker_by_phone() -> None:
    s = state()
    applied = mutate(s, 21, 40, kinds={Kind.NEW_CLIENT})
    assert {m.kind for m in applied} == {Kind.NEW_CLIENT} and {m.provider for m in applied} == {ACUITY}
    contacts = acuity_contacts(s.acuity, 1001).contacts
    identities = {key for c in contacts for key in c.emails | c.phones}
    assert all(m.key in identities for m in applied)
    by_phone = [m for m in applied if m.key.startswith("+")]
    assert by_phone  # a client tied to a booking only by its phone
    booked_phones = {phone_identity(a.phone) for a in s.acuity.of(1001).values()}
    assert all(m.key in booked_phones for m in by_phone)
    assert not any(m.near_term_before or m.near_term_after for m in applied)


def test_payments_and_refunds_keep_amount_paid_the_sum_of_the_entries() -> None:
    s = state()
    applied = mutate(s, 8, 80, kinds={Kind.PAYMENT, Kind.REFUND})
    assert {m.kind for m in applied} == {Kind.PAYMENT, Kind.REFUND}
    for appointment_id, appointment in s.acuity.of(1001).items():
        assert total_paid(s.acuity.payments(1001, appointment_id)) == appointment.amount_paid
        assert Decimal(0) <= Decimal(appointment.amount_paid) <= Decimal(appointment.price)
    refunded = [s.acuity.payments(1001, int(m.key)) for m in applied if m.kind == Kind.REFUND]
    assert all(entries[-1].is_refund or any(p.is_refund for p in entries) for entries in refunded)
    canceled_refunded = [
        int(m.key) for m in applied
        if m.kind == Kind.REFUND and s.acuity.of(1001)[int(m.key)].canceled
        and s.acuity.of(1001)[int(m.key)].amount_paid == "0.00"
    ]  # fmt: skip
    assert canceled_refunded


def test_a_paid_invitee_brings_its_payment_into_the_revenue() -> None:
    s = state()
    before = calendly_contacts(s.calendly, 1)
    applied = mutate(s, 2, 5, kinds={Kind.PAID_INVITEE})
    assert {(m.provider, m.kind) for m in applied} == {(CALENDLY, Kind.PAID_INVITEE)}
    added = [s.calendly.invitees[1][m.key] for m in applied]
    assert all(i.payment is not None and i.payment[1:] == ("USD", True) for i in added)
    paid = sum(round(i.payment[0] * 100) for i in added if i.payment is not None)
    after = calendly_contacts(s.calendly, 1)
    assert after.revenue_minor == before.revenue_minor + paid
    assert after.contacts_total == before.contacts_total + len(added)


def test_kinds_limit_the_providers_drawn_and_an_impossible_set_is_refused() -> None:
    applied = mutate(state(), 4, 30, kinds={Kind.REFUND, Kind.PAID_INVITEE})
    assert {m.provider for m in applied} == {ACUITY, CALENDLY}
    with pytest.raises(ValueError, match="none of"):
        mutate(state(), 4, 3, kinds={Kind.NEW_SERIES}, providers=[ACUITY])
    one, two = state(), state()
    assert mutate(one, 6, 50, kinds={Kind.NEW_CLIENT, Kind.REFUND}) == mutate(
        two, 6, 50, kinds={Kind.NEW_CLIENT, Kind.REFUND}
    )
    assert acuity_contacts(one.acuity, 1001) == acuity_contacts(two.acuity, 1001)
