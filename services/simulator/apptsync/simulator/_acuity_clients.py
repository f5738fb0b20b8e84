"""Acuity's client list (`GET /clients`) and appointment payments (`GET /appointments/{id}/payments`)
as the simulator models them (pure: no I/O, no global randomness).

Clients: `[{firstName, lastName, email, phone, notes}]` and **no id**, as Acuity documents them.
An account's list holds the clients recorded by hand or seeded without any booking, then one client
per person who booked and is not listed yet (a booking whose email, else phone, else name, is not on
the list adds its person as the first booking wrote it). Phones are written as people type them
("(555) 010-2345", "+1 555 010 2345", "555.010.2345"), emails in any case. `search` filters on the
first name, last name or phone, as Acuity's parameter does (here: a case-insensitive substring, the
phone compared on digits).

Payments: `[{transactionID, created, processor, amount}]`, `amount` a string such as `"300.00"`,
`created` written like the appointment's `datetimeCreated`. Acuity documents no refund shape, so the
simulator models a refund as one more entry with a negative amount (`"-75.00"`, `transactionID`
`re_...`). An appointment's `amountPaid` is always the sum of its entries; an appointment nobody paid
has none.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from apptsync.simulator._contact_identity import email_identity, name_identity

# Processor keys as Acuity documents them for a payment.
PROCESSORS = ("stripe", "paypal", "braintree", "authorizenet")
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class AcuityClient:
    first_name: str
    last_name: str
    email: str
    phone: str
    notes: str

    def to_json(self) -> dict[str, object]:
        return {
            "firstName": self.first_name,
            "lastName": self.last_name,
            "email": self.email,
            "phone": self.phone,
            "notes": self.notes,
        }


@dataclass(frozen=True, slots=True)
class AcuityPayment:
    """One payment entry of an appointment; a negative `amount` is a refund (the simulator's choice:
    Acuity documents no refund shape)."""

    transaction_id: str
    created_at: datetime  # aware
    processor: str
    amount: str  # "75.00", "-75.00"

    @property
    def is_refund(self) -> bool:
        return Decimal(self.amount) < 0

    def to_json(self) -> dict[str, object]:
        return {
            "transactionID": self.transaction_id,
            "created": self.created_at.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "processor": self.processor,
            "amount": self.amount,
        }


def money_text(amount: Decimal) -> str:
    """`Decimal("75")` -> `"75.00"`, `Decimal("-20")` -> `"-20.00"` (Acuity's money strings)."""
    return str(amount.quantize(CENT))


def total_paid(payments: Iterable[AcuityPayment]) -> str:
    """The `amountPaid` the entries add up to."""
    return money_text(sum((Decimal(p.amount) for p in payments), Decimal(0)))


def payment_entry(
    *, user_id: int, appointment_id: int, position: int, amount: Decimal, created_at: datetime
) -> AcuityPayment:
    """Entry number `position` of an appointment: a charge (`ch_...`) or, negative, a refund (`re_...`);
    the id and processor derive from the arguments, so the same history renders the same ids."""
    digest = hashlib.sha256(f"acuity-payment:{user_id}:{appointment_id}:{position}".encode()).hexdigest()
    prefix = "re" if amount < 0 else "ch"
    return AcuityPayment(
        transaction_id=f"{prefix}_{digest[:24]}",
        created_at=created_at,
        processor=PROCESSORS[appointment_id % len(PROCESSORS)],
        amount=money_text(amount),
    )


def phone_digits(phone: str) -> str:
    """A cheap key for the simulator's own bookkeeping (not the truth, which uses E.164): the digits,
    a ten-digit North American number given its country code 1."""
    digits = re.sub(r"\D", "", phone)
    return "1" + digits if len(digits) == 10 else digits


def phone_as_typed(phone: str, style: int) -> str:
    """A North American number written one of three ways people type it (style modulo 3):
    `(555) 010-2345`, `+1 555 010 2345`, `555.010.2345`; any other number unchanged."""
    digits = phone_digits(phone)
    if len(digits) != 11 or not digits.startswith("1"):
        return phone
    area, exchange, line = digits[1:4], digits[4:7], digits[7:]
    return (f"({area}) {exchange}-{line}", f"+1 {area} {exchange} {line}", f"{area}.{exchange}.{line}")[style % 3]


def select_clients(clients: Iterable[AcuityClient], params: Mapping[str, str]) -> list[AcuityClient]:
    """What `GET /clients` answers for `params` (`search`: first name, last name or phone)."""
    search = params.get("search", "").strip().casefold()
    if not search:
        return list(clients)
    search_digits = re.sub(r"\D", "", search)

    def matches(client: AcuityClient) -> bool:
        if search in client.first_name.casefold() or search in client.last_name.casefold():
            return True
        if search in f"{client.first_name} {client.last_name}".casefold():
            return True
        return bool(search_digits) and search_digits in re.sub(r"\D", "", client.phone)

    return [c for c in clients if matches(c)]


@dataclass(frozen=True, slots=True)
class Booker:
    """Who made a booking, as the booking wrote it (first booking first)."""

    first_name: str
    last_name: str
    email: str
    phone: str
    style: int  # how the client list writes the phone (see phone_as_typed)


def client_list(listed: Iterable[AcuityClient], bookers: Iterable[Booker]) -> list[AcuityClient]:
    """The account's client list: `listed`, then each booker none of whose identities (case-folded
    email, phone digits, or the name when it has neither) is known yet, as first written; sorted by
    last name, first name, email."""
    emails: set[str] = set()
    phones: set[str] = set()
    names: set[str] = set()
    result: list[AcuityClient] = []

    def known(first: str, last: str, email: str, phone: str) -> bool:
        email_key, phone_key = email_identity(email), phone_digits(phone)
        if email_key or phone_key:
            return (bool(email_key) and email_key in emails) or (bool(phone_key) and phone_key in phones)
        return name_identity(first, last) in names

    def remember(client: AcuityClient) -> None:
        email_key, phone_key = email_identity(client.email), phone_digits(client.phone)
        if email_key:
            emails.add(email_key)
        if phone_key:
            phones.add(phone_key)
        if not email_key and not phone_key:
            names.add(name_identity(client.first_name, client.last_name))

    for client in listed:
        remember(client)
        result.append(client)
    for booker in bookers:
        if known(booker.first_name, booker.last_name, booker.email, booker.phone):
            continue
        client = AcuityClient(
            first_name=booker.first_name,
            last_name=booker.last_name,
            email=booker.email.strip(),
            phone=phone_as_typed(booker.phone.strip(), booker.style),
            notes="",
        )
        remember(client)
        result.append(client)
    return sorted(result, key=lambda c: (c.last_name.casefold(), c.first_name.casefold(), c.email.casefold()))
