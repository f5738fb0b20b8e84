"""The legacy-shaped Acuity account (issue #14): a studio like the tenant the legacy import served
(pure: the data is a function of the seed, the user id and now).

Account `LEGACY_USER_ID` (1100; Basic `1100:acuity-key-1100`, Bearer `acuity-token-1100`) holds:

- `LEGACY_CLIENTS` (650) people, every one on the client list (`GET /clients`), each with an email
  and most with a phone (unique per person). 130 of them never booked. 20 are listed with only a
  phone: their bookings carry an email the list never shows and the same phone, typed another way,
  so only the phone ties them together.
- `LEGACY_APPOINTMENTS` (2,000) appointments of the other 520, `LEGACY_FUTURE_APPOINTMENTS` (99)
  starting 2 to 85 days after now and the rest 2 to 85 days before (a window of now +- 90 days holds
  them all). Bookings write the email in any case, sometimes with stray blanks, and some leave the
  email out and give only the phone. About one in ten unpaid ones is canceled (some as no-shows).
- Payments on 97 appointments of 18 people (`LEGACY_PAYMENT_PLAN`, the same for every seed; the
  seed only picks who): deposits paid in two entries, a partial refund on a kept booking, and two
  canceled bookings refunded in full, one of them the only booking of a person who therefore pays
  nothing. Revenue (payments minus refunds): `LEGACY_REVENUE_MINOR` = 585,600 cents ($5,856.00)
  from `LEGACY_PAYING_CONTACTS` (17) people.

So, merged by the rules of _contacts_truth, the account has exactly 650 contacts, 17 of them paying,
and $5,856.00 of revenue: the legacy summary's figures."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from apptsync.simulator._acuity_clients import AcuityClient, AcuityPayment, payment_entry, phone_as_typed, total_paid
from apptsync.simulator._acuity_data import (
    APPOINTMENT_TYPES,
    CALENDARS,
    FIRST_NAMES,
    LAST_NAMES,
    AcuityAccount,
    AcuityAppointment,
    account_for,
)
from apptsync.simulator._clock import not_after

LEGACY_USER_ID = 1100
LEGACY_CLIENTS = 650
LEGACY_NEVER_BOOKED = 130
LEGACY_PHONE_ONLY_LISTED = 20
LEGACY_APPOINTMENTS = 2_000
LEGACY_FUTURE_APPOINTMENTS = 99
LEGACY_PAYING_CONTACTS = 17
LEGACY_REVENUE_MINOR = 585_600
LEGACY_SPREAD_DAYS = 85
# A US studio: its clients book in the US zones.
LEGACY_TIMEZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")

# Per paying person, their paid appointments as (price, payment entries, canceled); a negative entry
# is a refund. The 18th person's only booking was canceled and refunded: not a paying contact.
_PaidBooking = tuple[str, tuple[str, ...], bool]
_ONE_75: _PaidBooking = ("75.00", ("75.00",), False)
_ONE_45: _PaidBooking = ("45.00", ("45.00",), False)
_ONE_89: _PaidBooking = ("89.99", ("89.99",), False)
_REFUNDED_75: _PaidBooking = ("75.00", ("75.00", "-75.00"), True)
LEGACY_PAYMENT_PLAN: tuple[tuple[_PaidBooking, ...], ...] = (
    (_ONE_75,) * 4,
    (_ONE_45,) * 6,
    (_ONE_89,) * 2,
    (("75.00", ("25.00", "50.00"), False), _ONE_45),  # a deposit, then the balance
    (("89.99", ("89.99", "-20.00"), False),),  # a partial refund on a kept booking
    (_ONE_75, _REFUNDED_75),  # a canceled booking refunded in full
    (_ONE_75,) * 8,
    (_ONE_45,) * 10,
    (("12.50", ("12.50",), False),) * 12,
    (_ONE_89,) * 14,
    (_ONE_75,) * 3 + (_ONE_45,) * 4,
    (_ONE_75,) * 13,
    (_ONE_45,) * 3,
    (_ONE_89,) * 3,
    (_ONE_75,) * 5,
    (("45.00", ("20.00", "25.00"), False),) * 2,
    (_ONE_75, ("75.00", ("56.20",), False)),  # a deposit only: amountPaid 56.20 of 75.00
    (_REFUNDED_75,),  # pays nothing in the end
)
_TYPE_BY_PRICE = {
    price: (type_id, name, category, minutes) for type_id, name, category, minutes, price in APPOINTMENT_TYPES
}


@dataclass(frozen=True, slots=True)
class LegacyAccount:
    account: AcuityAccount
    appointments: list[AcuityAppointment]
    clients: list[AcuityClient]
    payments: dict[int, tuple[AcuityPayment, ...]]


@dataclass(frozen=True, slots=True)
class _Person:
    first_name: str
    last_name: str
    email: str  # as the person writes it on the client list
    phone: str  # "+1 555 ..." or ""
    booking_email: str  # what the bookings carry ("" = the listed email)
    listed_without_email: bool


def legacy_account(*, seed: int, now: datetime, user_id: int = LEGACY_USER_ID) -> LegacyAccount:
    """The legacy-shaped account (see the module docstring); same arguments, same data."""
    rng = random.Random(f"apptsync-simulator:{seed}:acuity-legacy:{user_id}")  # noqa: S311 -- seeded, reproducible test data, not a secret
    people = _people(rng, user_id)
    order = list(range(LEGACY_CLIENTS))
    rng.shuffle(order)
    booked = order[LEGACY_NEVER_BOOKED:]  # 520 people who booked
    payers = booked[: len(LEGACY_PAYMENT_PLAN)]
    # Phone-only listed people book with another email and the phone: they need a phone.
    phone_only = [p for p in booked[len(LEGACY_PAYMENT_PLAN) :] if people[p].phone][:LEGACY_PHONE_ONLY_LISTED]
    for index in phone_only:
        person = people[index]
        people[index] = _replace_person(person, booking_email=f"booker{index:03d}.{user_id}@mail.example")

    # Who each appointment belongs to: every booker once, the payers' paid bookings, then random.
    plan: list[tuple[int, _PaidBooking | None]] = [(p, None) for p in booked if p not in payers]
    for payer, bookings in zip(payers, LEGACY_PAYMENT_PLAN, strict=True):
        plan += [(payer, booking) for booking in bookings]
    while len(plan) < LEGACY_APPOINTMENTS:
        plan.append((rng.choice(booked), None))
    rng.shuffle(plan)
    future = set(rng.sample(range(LEGACY_APPOINTMENTS), LEGACY_FUTURE_APPOINTMENTS))

    appointments: list[AcuityAppointment] = []
    payments: dict[int, tuple[AcuityPayment, ...]] = {}
    for number, (index, paid) in enumerate(plan, start=1):
        appointment, entries = _appointment(
            rng, people[index], user_id=user_id, number=number, paid=paid, future=number - 1 in future, now=now
        )
        appointments.append(appointment)
        if entries:
            payments[appointment.id] = entries
    clients = [_listed(person, style=i) for i, person in enumerate(people)]
    return LegacyAccount(account_for(user_id), appointments, clients, payments)


def _replace_person(person: _Person, *, booking_email: str) -> _Person:
    return _Person(person.first_name, person.last_name, "", person.phone, booking_email, True)


def _people(rng: random.Random, user_id: int) -> list[_Person]:
    lines = rng.sample(range(1_000_000, 10_000_000), LEGACY_CLIENTS)  # unique phones
    people = []
    for index, line in enumerate(lines):
        digits = f"{line:07d}"
        phone = f"+1 555 {digits[:3]} {digits[3:]}" if rng.random() < 0.85 else ""
        email = f"member{index:03d}.{user_id}@example.com"
        if rng.random() < 0.25:
            email = f"Member{index:03d}.{user_id}@Example.COM"
        people.append(_Person(rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES), email, phone, "", False))
    return people


def _listed(person: _Person, *, style: int) -> AcuityClient:
    notes = "Prefers phone calls" if person.listed_without_email else ("" if style % 4 else "Imported 2019")
    if person.listed_without_email and style % 3 == 1:
        style = 0  # not as the bookings write it ("+1 555 ..."): only the number ties them
    return AcuityClient(person.first_name, person.last_name, person.email, phone_as_typed(person.phone, style), notes)


def _appointment(
    rng: random.Random,
    person: _Person,
    *,
    user_id: int,
    number: int,
    paid: _PaidBooking | None,
    future: bool,
    now: datetime,
) -> tuple[AcuityAppointment, tuple[AcuityPayment, ...]]:
    zone_name = rng.choice(LEGACY_TIMEZONES)
    zone = ZoneInfo(zone_name)
    days = rng.randint(2, LEGACY_SPREAD_DAYS)
    day = (now + timedelta(days=days if future else -days)).astimezone(zone).date()
    starts_at = datetime.combine(day, time(rng.randint(8, 19), rng.choice((0, 15, 30, 45))), zone)
    starts_at = starts_at.astimezone(UTC).astimezone(zone)  # a wall time in a DST gap: the real instant
    appointment_id = user_id * 1_000_000 + number
    price = paid[0] if paid is not None else rng.choice(APPOINTMENT_TYPES)[4]
    type_id, type_name, category, minutes = _TYPE_BY_PRICE[price]
    calendar_id, calendar, calendar_timezone = rng.choice(CALENDARS)
    created_at = not_after(starts_at - timedelta(days=rng.randint(1, 60), minutes=rng.randint(0, 600)), now)

    email = person.booking_email or person.email
    if rng.random() < 0.2:
        email = email.upper() if rng.random() < 0.5 else f"  {email} "
    phone = person.phone if rng.random() < 0.9 else ""
    if person.phone and not person.listed_without_email and rng.random() < 0.08:
        email, phone = "", person.phone  # booked by phone: only the phone ties it to the client
    if person.listed_without_email:
        phone = person.phone  # the phone is all that ties these bookings to their client

    entries: tuple[AcuityPayment, ...] = ()
    if paid is not None:
        entries = tuple(
            payment_entry(
                user_id=user_id,
                appointment_id=appointment_id,
                position=position,
                amount=Decimal(amount),
                created_at=not_after(created_at + timedelta(days=position), now),
            )
            for position, amount in enumerate(paid[1])
        )
    canceled = paid[2] if paid is not None else rng.random() < 0.1
    appointment = AcuityAppointment(
        id=appointment_id,
        starts_at=starts_at,
        duration_minutes=minutes,
        timezone=zone_name,
        calendar_id=calendar_id,
        calendar=calendar,
        calendar_timezone=calendar_timezone,
        type_id=type_id,
        type_name=type_name,
        category=category,
        first_name=person.first_name,
        last_name=person.last_name,
        email=email,
        phone=phone,
        price=price,
        amount_paid=total_paid(entries),
        canceled=canceled,
        no_show=canceled and paid is None and not future and rng.random() < 0.3,
        labels=None,
        created_at=created_at,
        notes="",
        owner=user_id,
    )
    return appointment, entries
