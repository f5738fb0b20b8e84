"""The legacy-shaped Acuity account 1100: the legacy summary's exact figures (650 contacts, 17 paying,
$5,856.00), 2,000 appointments of which 99 lie ahead, the refund cases, deterministic per seed."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from apptsync.simulator._acuity_clients import total_paid
from apptsync.simulator._acuity_data import AcuityAppointment
from apptsync.simulator._clock import fixed_clock
from apptsync.simulator._contact_identity import email_identity, phone_identity
from apptsync.simulator._contacts_truth import acuity_contacts
from apptsync.simulator._legacy_account import (
    LEGACY_APPOINTMENTS,
    LEGACY_CLIENTS,
    LEGACY_FUTURE_APPOINTMENTS,
    LEGACY_PAYING_CONTACTS,
    LEGACY_REVENUE_MINOR,
    LEGACY_USER_ID,
    legacy_account,
)
from apptsync.simulator._state import SimulatorState

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
LEGACY = LEGACY_USER_ID


def state(seed: int = 42, now: datetime = NOW) -> SimulatorState:
    return SimulatorState.seeded(
        seed=seed, accounts=1, appointments_per_account=10, anchor=now.date(), clock=fixed_clock(now),
        legacy_acuity_account=True,
    )  # fmt: skip


def test_the_figures_are_the_legacy_summarys() -> None:
    assert (LEGACY_CLIENTS, LEGACY_APPOINTMENTS, LEGACY_FUTURE_APPOINTMENTS) == (650, 2000, 99)
    assert (LEGACY_PAYING_CONTACTS, LEGACY_REVENUE_MINOR) == (17, 585_600)
    s = state()
    assert len(s.acuity.clients(LEGACY)) == 650
    assert len(s.acuity.of(LEGACY)) == 2000
    assert sum(1 for a in s.acuity.of(LEGACY).values() if a.instant > NOW) == 99
    summary = acuity_contacts(s.acuity, LEGACY)
    assert (summary.contacts_total, summary.paying_contacts, summary.revenue_minor) == (650, 17, 585_600)
    assert sum(c.revenue_minor_by_currency.get("USD", 0) for c in summary.contacts) == 585_600


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_every_seed_and_every_day_gives_the_same_figures_and_the_same_seed_the_same_data(seed: int) -> None:
    for now in (NOW, NOW + timedelta(days=200, hours=13)):
        summary = acuity_contacts(state(seed, now).acuity, LEGACY)
        assert (summary.contacts_total, summary.paying_contacts, summary.revenue_minor) == (650, 17, 585_600)
    one, two = legacy_account(seed=seed, now=NOW), legacy_account(seed=seed, now=NOW)
    assert one == two
    assert legacy_account(seed=seed + 1, now=NOW).clients != one.clients


def test_a_window_of_now_plus_minus_ninety_days_holds_every_appointment_and_none_is_stamped_later() -> None:
    legacy = legacy_account(seed=42, now=NOW)
    assert all(abs(a.instant - NOW) < timedelta(days=90) for a in legacy.appointments)
    assert all(a.created_at <= NOW for a in legacy.appointments)
    assert all(p.created_at <= NOW for entries in legacy.payments.values() for p in entries)


def test_the_payments_hold_deposits_a_partial_refund_and_canceled_refunded_bookings() -> None:
    s = state()
    book = s.acuity.of(LEGACY)
    paid = {i: s.acuity.payments(LEGACY, i) for i in book if s.acuity.payments(LEGACY, i)}
    assert len(paid) == 97
    assert all(total_paid(entries) == book[i].amount_paid for i, entries in paid.items())
    assert all(total_paid(s.acuity.payments(LEGACY, i)) == "0.00" for i in book if i not in paid)
    refunded = {i: e for i, e in paid.items() if any(p.is_refund for p in e)}
    canceled_refunded = [i for i in refunded if book[i].canceled and book[i].amount_paid == "0.00"]
    kept_refunded = [i for i in refunded if not book[i].canceled and book[i].amount_paid != "0.00"]
    assert len(canceled_refunded) == 2 and len(kept_refunded) == 1
    assert [p.amount for p in refunded[kept_refunded[0]]] == ["89.99", "-20.00"]
    assert any(len(entries) == 2 and not any(p.is_refund for p in entries) for entries in paid.values())  # deposits
    payers = Counter(email_identity(book[i].email) or phone_identity(book[i].phone) for i in paid)
    assert max(payers.values()) > 1  # people who paid several times


def test_clients_vary_as_people_type_and_some_share_only_a_phone_with_their_bookings() -> None:
    s = state()
    clients = s.acuity.clients(LEGACY)
    assert any(c.email != c.email.lower() for c in clients)
    assert any(c.phone.startswith("(") for c in clients) and any(c.phone.startswith("+1") for c in clients)
    assert any(c.phone.count(".") == 2 for c in clients)
    phone_only = [c for c in clients if not c.email]
    assert len(phone_only) == 20 and all(c.phone for c in phone_only)
    booked = s.acuity.of(LEGACY).values()
    by_phone: dict[str, list[AcuityAppointment]] = {}
    for appointment in booked:
        by_phone.setdefault(phone_identity(appointment.phone), []).append(appointment)
    for client in phone_only:
        bookings = by_phone.get(phone_identity(client.phone), [])
        assert bookings and all(a.email and a.phone != client.phone for a in bookings)
        assert not {email_identity(a.email) for a in bookings} & {email_identity(c.email) for c in clients}
    emails = {email_identity(c.email) for c in clients if c.email}
    never_booked = emails - {email_identity(a.email) for a in booked if a.email}
    assert len(never_booked) == 130
    assert any(not a.email and a.phone for a in booked)  # booked by phone only
    assert any(a.email != a.email.strip() for a in booked)  # stray blanks
    assert Decimal(sum(Decimal(a.amount_paid) for a in booked)) == Decimal("5856.00")


def test_the_account_is_listed_with_the_documented_credentials_and_absent_unless_asked() -> None:
    account = state().acuity.accounts[LEGACY]
    assert (account.api_key, account.access_token) == ("acuity-key-1100", "acuity-token-1100")
    plain = SimulatorState.seeded(seed=42, accounts=1, appointments_per_account=10, anchor=NOW.date())
    assert LEGACY not in plain.acuity.accounts
