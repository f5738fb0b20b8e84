"""The simulator's Acuity client list and payments: the documented shapes (no client id, amounts as
strings, a refund as a negative entry), amountPaid always the sum of the entries, Acuity's `search`."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from apptsync.simulator._acuity_clients import (
    AcuityClient,
    Booker,
    client_list,
    phone_as_typed,
    select_clients,
    total_paid,
)
from apptsync.simulator._acuity_data import AcuityStore
from apptsync.simulator._clock import fixed_clock
from apptsync.simulator._contact_identity import email_identity, name_identity, phone_identity

pytestmark = pytest.mark.unit

ANCHOR = date(2024, 6, 15)
NOW = datetime(2024, 6, 15, 10, 0, tzinfo=UTC)
USER = 1001
MONEY = re.compile(r"^-?\d+\.\d{2}$")
ACUITY_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{4}$")


def store(appointments: int = 300) -> AcuityStore:
    return AcuityStore(seed=3, accounts=1, appointments_per_account=appointments, anchor=ANCHOR, clock=fixed_clock(NOW))


def test_a_client_has_the_documented_fields_and_no_id() -> None:
    clients = store().clients(USER)
    assert clients
    for client in clients:
        rendered = client.to_json()
        assert set(rendered) == {"firstName", "lastName", "email", "phone", "notes"}
        assert all(isinstance(value, str) for value in rendered.values())


def test_the_client_list_holds_every_booker_once_and_people_who_never_booked() -> None:
    s = store()
    clients = s.clients(USER)
    listed_emails = {email_identity(c.email) for c in clients if c.email}
    listed_phones = {phone_identity(c.phone) for c in clients if c.phone}
    listed_names = {name_identity(c.first_name, c.last_name) for c in clients if not c.email and not c.phone}
    for a in s.of(USER).values():  # listed by the email, or tied by the phone, else by the name
        if a.email or a.phone:
            assert email_identity(a.email) in listed_emails or phone_identity(a.phone) in listed_phones
        else:
            assert name_identity(a.first_name, a.last_name) in listed_names
    booked_emails = {email_identity(a.email) for a in s.of(USER).values() if a.email}
    never_booked = listed_emails - booked_emails
    assert len(never_booked) == 300 // 20
    assert len(listed_emails) == len([c for c in clients if c.email])  # one client per email
    # Clients tied to a booking only by the phone, typed another way than the booking wrote it.
    booked_phones = {a.phone for a in s.of(USER).values()}
    phone_only = [c for c in clients if not c.email and c.phone and c.phone not in booked_phones]
    assert len(phone_only) >= 300 // 50
    booked_identities = {phone_identity(a.phone) for a in s.of(USER).values() if a.phone}
    assert all(phone_identity(c.phone) in booked_identities for c in phone_only if c.notes == "Called in")


def test_phones_are_written_the_ways_people_type_them() -> None:
    assert [phone_as_typed("+1 555 010 2345", style) for style in range(3)] == [
        "(555) 010-2345",
        "+1 555 010 2345",
        "555.010.2345",
    ]
    assert phone_as_typed("+49 151 1234567", 0) == "+49 151 1234567"
    typed = {c.phone for c in store().clients(USER) if c.phone}
    assert any(p.startswith("(") for p in typed) and any(p.startswith("+1 ") for p in typed)
    assert any(re.fullmatch(r"\d{3}\.\d{3}\.\d{4}", p) for p in typed)
    assert {phone_identity(p) for p in ("(555) 010-2345", "+1 555 010 2345", "555.010.2345")} == {"+15550102345"}


def test_a_booker_already_listed_by_email_or_phone_is_not_listed_again() -> None:
    listed = [AcuityClient("Ann", "Lee", "Ann@Example.com", "", ""), AcuityClient("Bo", "", "", "555.010.2345", "")]
    bookers = [
        Booker("Ann", "Lee", " ann@example.COM ", "+1 555 999 0000", 1),
        Booker("Robert", "Smith", "bob@example.com", "+1 555 010 2345", 2),  # the listed phone
        Booker("Cy", "Young", "", "", 3),
        Booker("cy", " young", "", "", 4),  # the same name, no email or phone: the same client
        Booker("Di", "Ng", "di@example.com", "", 5),
    ]
    clients = client_list(listed, bookers)
    assert sorted((c.first_name, c.email) for c in clients) == [
        ("Ann", "Ann@Example.com"),
        ("Bo", ""),
        ("Cy", ""),
        ("Di", "di@example.com"),
    ]


def test_search_filters_on_first_name_last_name_or_phone() -> None:
    clients = [
        AcuityClient("Zoë", "Müller", "z@example.com", "(555) 010-2345", ""),
        AcuityClient("Liam", "Brown", "l@example.com", "555.777.1234", ""),
    ]
    assert select_clients(clients, {}) == clients
    assert select_clients(clients, {"search": "zoë"}) == clients[:1]
    assert select_clients(clients, {"search": "BROWN"}) == clients[1:]
    assert select_clients(clients, {"search": "Liam Brown"}) == clients[1:]
    assert select_clients(clients, {"search": "555-010"}) == clients[:1]
    assert select_clients(clients, {"search": "nobody"}) == []


def test_payments_have_the_documented_shape_and_add_up_to_amount_paid() -> None:
    s = store()
    paid = [a for a in s.of(USER).values() if Decimal(a.amount_paid) > 0]
    unpaid = [a for a in s.of(USER).values() if Decimal(a.amount_paid) == 0]
    assert paid and unpaid
    for appointment in s.of(USER).values():
        payments = s.payments(USER, appointment.id)
        assert total_paid(payments) == appointment.amount_paid
        for payment in payments:
            rendered = payment.to_json()
            assert set(rendered) == {"transactionID", "created", "processor", "amount"}
            assert isinstance(rendered["amount"], str) and MONEY.match(rendered["amount"])
            assert ACUITY_TIME.match(str(rendered["created"]))
            assert rendered["processor"] in ("stripe", "paypal", "braintree", "authorizenet")
    assert all(s.payments(USER, a.id) == () for a in unpaid)


def test_a_payment_and_a_refund_are_entries_and_amount_paid_follows() -> None:
    s = store()
    target = next(a for a in sorted(s.of(USER).values(), key=lambda a: a.id) if a.price == "75.00")
    before = s.payments(USER, target.id)
    if target.amount_paid != "0.00":
        s.add_payment(USER, target.id, -Decimal(target.amount_paid))
    charge = s.add_payment(USER, target.id, Decimal("75.00"))
    refund = s.add_payment(USER, target.id, Decimal("-75.00"))
    payments = s.payments(USER, target.id)
    assert payments[: len(before)] == before and payments[-2:] == (charge, refund)
    assert (charge.amount, refund.amount, refund.is_refund, charge.is_refund) == ("75.00", "-75.00", True, False)
    assert charge.transaction_id.startswith("ch_") and refund.transaction_id.startswith("re_")
    assert len({p.transaction_id for p in payments}) == len(payments)
    assert s.of(USER)[target.id].amount_paid == "0.00"
    assert s.of(USER)[target.id].to_json()["paid"] == "no"
    s.set_amount_paid(USER, target.id, "75.00")
    assert s.of(USER)[target.id].to_json()["paid"] == "yes" and total_paid(s.payments(USER, target.id)) == "75.00"
    with pytest.raises(ValueError, match="non-zero"):
        s.add_payment(USER, target.id, Decimal(0))


def test_a_deleted_appointment_keeps_its_payments_and_its_client() -> None:
    s = store()
    target = next(a for a in sorted(s.of(USER).values(), key=lambda a: a.id) if a.amount_paid != "0.00" and a.email)
    payments = s.payments(USER, target.id)
    s.delete(USER, target.id)
    assert s.payments(USER, target.id) == payments
    assert email_identity(target.email) in {email_identity(c.email) for c in s.clients(USER)}


def test_a_client_recorded_by_hand_is_listed() -> None:
    s = store(40)
    before = len(s.clients(USER))
    added = s.add_client(USER, {"firstName": "Renée", "email": "Renee@Example.com", "phone": "(555) 321-0000"})
    assert added in s.clients(USER) and len(s.clients(USER)) == before + 1
    assert added.to_json() == {
        "firstName": "Renée", "lastName": "", "email": "Renee@Example.com", "phone": "(555) 321-0000", "notes": "",
    }  # fmt: skip
    with pytest.raises(KeyError):
        s.add_client(9999, {})
