"""Acuity-shaped data of the simulator: seeded accounts and appointments, and the query semantics of
`GET /appointments` (pure: no I/O, no global randomness; now is the store's injected clock)."""

from __future__ import annotations

import bisect
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from apptsync.simulator._acuity_clients import (
    AcuityClient,
    AcuityPayment,
    Booker,
    client_list,
    payment_entry,
    phone_as_typed,
    total_paid,
)
from apptsync.simulator._clock import Clock, anchor_clock, not_after

DEMO_USER_ID = 1001
DEMO_API_KEY = "demo-acuity-key"
DEMO_ACCESS_TOKEN = "demo-acuity-token"  # noqa: S105 (the documented fake demo credentials)
FIRST_USER_ID = 1001
DATA_SPREAD_DAYS = 180
DEFAULT_MAX = 100

# Client timezones: DST in both hemispheres, half- and quarter-hour offsets, a 30-minute DST shift.
CLIENT_TIMEZONES = (
    "America/New_York", "America/Los_Angeles", "America/Chicago", "America/St_Johns", "America/Sao_Paulo",
    "America/Santiago", "Europe/London", "Europe/Berlin", "Europe/Helsinki", "Africa/Cairo",
    "Asia/Kolkata", "Asia/Kathmandu", "Asia/Tokyo", "Asia/Shanghai", "Australia/Sydney",
    "Australia/Adelaide", "Australia/Lord_Howe", "Pacific/Auckland", "Pacific/Chatham", "UTC",
)  # fmt: skip
CALENDARS = (
    (101, "Dr. Amélie Dubois", "Europe/Paris"),
    (102, "Zoë Ångström", "Europe/Stockholm"),
    (103, "李医生 (Dr. Li)", "Asia/Shanghai"),
    (104, "Dr. Siobhán O'Brien", "America/New_York"),
)
# (appointmentTypeID, type, category, duration minutes, price)
APPOINTMENT_TYPES = (
    (201, "Initial Consultation", "Clinic", 60, "75.00"),
    (202, "Follow-up", "Clinic", 30, "45.00"),
    (203, "Group Yoga \u2013 Beginners", "Classes", 90, "12.50"),
    (204, "Free intro call", "", 15, "0.00"),
    (205, "Massage 45\u2032", "Wellness", 45, "89.99"),
)
FIRST_NAMES = (
    "José", "Zoë", "Björn", "Łukasz", "Chloé", "Søren", "Nguyễn", "محمد", "अनन्या", "Ольга", "美咲",
    "Mary-Jane", "Seán", "Ava", "Liam", "Noah", "Emma", "Ιωάννης", "Fatoumata", "Renée",
)  # fmt: skip
LAST_NAMES = (
    "García", "Müller", "O'Neil", "Şahin", "Kowalski", "Nakamura", "Dubois", "Håkansson", "Smith",
    "Nguyen", "Ivanova", "Papadopoulos", "Diallo", "Brown", "Østergaard", "", "Van der Berg",
)  # fmt: skip
LABELS = ((1, "Checked In", "green"), (2, "Paid", "blue"), (3, "VIP", "red"))


class QueryError(ValueError):
    """A query parameter Acuity would reject with 400; `error` is Acuity's error code."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


@dataclass(frozen=True, slots=True)
class AcuityAccount:
    """A simulated Acuity account and its fixed credentials (Basic `user_id:api_key`, or Bearer)."""

    user_id: int
    api_key: str
    access_token: str


@dataclass(frozen=True, slots=True)
class AcuityAppointment:
    """One simulated appointment; `to_json()` renders it exactly as Acuity's API does."""

    id: int
    starts_at: datetime  # aware, in the client's timezone (Acuity writes `datetime` in it)
    duration_minutes: int
    timezone: str
    calendar_id: int
    calendar: str
    calendar_timezone: str
    type_id: int
    type_name: str
    category: str
    first_name: str
    last_name: str
    email: str
    phone: str
    price: str
    amount_paid: str
    canceled: bool
    no_show: bool
    labels: tuple[tuple[int, str, str], ...] | None
    created_at: datetime
    notes: str
    owner: int

    @property
    def instant(self) -> datetime:
        return self.starts_at.astimezone(UTC)

    @property
    def local_day(self) -> date:
        """The day `minDate`/`maxDate` compare against: the date of `datetime` as written."""
        return self.starts_at.date()

    def to_json(self, *, include_forms: bool = True) -> dict[str, object]:
        ends_at = self.starts_at + timedelta(minutes=self.duration_minutes)
        record: dict[str, object] = {
            "id": self.id,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "phone": self.phone,
            "email": self.email,
            "date": _long_date(self.starts_at),
            "time": _clock_time(self.starts_at),
            "endTime": _clock_time(ends_at),
            "dateCreated": _long_date(self.created_at),
            "datetimeCreated": acuity_datetime_text(self.created_at),
            "datetime": acuity_datetime_text(self.starts_at),
            "price": self.price,
            "priceSold": self.price,
            "paid": "yes" if self.amount_paid == self.price and self.price != "0.00" else "no",
            "amountPaid": self.amount_paid,
            "type": self.type_name,
            "appointmentTypeID": self.type_id,
            "classID": None,
            "addonIDs": [],
            "category": self.category,
            "duration": str(self.duration_minutes),
            "calendar": self.calendar,
            "calendarID": self.calendar_id,
            "certificate": None,
            "confirmationPage": f"https://app.acuityscheduling.com/schedule.php?owner={self.owner}"
            f"&action=appt&id%5B%5D={self.id:x}",
            "location": "",
            "notes": self.notes,
            "timezone": self.timezone,
            "calendarTimezone": self.calendar_timezone,
            "canceled": self.canceled,
            "canClientCancel": not self.canceled,
            "canClientReschedule": not self.canceled,
            "labels": None
            if self.labels is None
            else [{"id": label_id, "name": name, "color": color} for label_id, name, color in self.labels],
            "formsText": "Name: ...\n",
        }
        if self.canceled:
            record["noShow"] = self.no_show  # Acuity only sends it on canceled appointments
        if include_forms:
            record["forms"] = [
                {
                    "id": 1,
                    "name": "Intake",
                    "values": [{"id": 11, "fieldID": 7, "value": "no allergies", "name": "Allergies"}],
                }
            ]
        return record


def acuity_datetime_text(moment: datetime) -> str:
    """`2022-06-28T14:00:00+0800`: ISO 8601 with the offset written without a colon."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S%z")


def _long_date(moment: datetime) -> str:
    return f"{moment:%B} {moment.day}, {moment.year}"


def _clock_time(moment: datetime) -> str:
    hour = moment.hour % 12 or 12
    return f"{hour}:{moment.minute:02d}{'am' if moment.hour < 12 else 'pm'}"


def account_for(user_id: int) -> AcuityAccount:
    """The fixed credentials of simulated account `user_id` (1001 is the documented demo account)."""
    if user_id == DEMO_USER_ID:
        return AcuityAccount(user_id=user_id, api_key=DEMO_API_KEY, access_token=DEMO_ACCESS_TOKEN)
    return AcuityAccount(user_id=user_id, api_key=f"acuity-key-{user_id}", access_token=f"acuity-token-{user_id}")


# Seeded appointments paid in full at booking: each makes the fetcher ask for its payment list. The
# legacy tenant's bookings paid far less often (its account is seeded apart, _legacy_account).
DEFAULT_PAID_SHARE = 0.6


def seeded_appointments(
    *,
    seed: int,
    user_id: int,
    count: int,
    anchor: date,
    spread_days: int = DATA_SPREAD_DAYS,
    now: datetime | None = None,
    paid_share: float = DEFAULT_PAID_SHARE,
) -> list[AcuityAppointment]:
    """`count` appointments of account `user_id`, starting within +-`spread_days` days of `anchor`;
    none created after `now` (default: noon UTC of `anchor`); about `paid_share` of them paid in full
    when booked (the rest paid nothing).

    Same arguments, same data: all randomness comes from a Random seeded with (seed, user_id)."""
    rng = random.Random(f"apptsync-simulator:{seed}:acuity:{user_id}")  # noqa: S311 -- seeded, reproducible test data, not a secret
    moment = now if now is not None else anchor_clock(anchor)()
    return [
        _seeded_appointment(rng, user_id=user_id, number=n, anchor=anchor, spread_days=spread_days, now=moment,
                            paid_share=paid_share)
        for n in range(1, count + 1)
    ]


def _seeded_appointment(
    rng: random.Random, *, user_id: int, number: int, anchor: date, spread_days: int, now: datetime,
    paid_share: float,
) -> AcuityAppointment:
    zone_name = rng.choice(CLIENT_TIMEZONES)
    day = anchor + timedelta(days=rng.randint(-spread_days, spread_days))
    wall = datetime.combine(day, time(rng.randint(7, 19), rng.choice((0, 15, 30, 45))), ZoneInfo(zone_name))
    # A wall time inside a DST gap does not exist: the round trip moves it to the real instant.
    starts_at = wall.astimezone(UTC).astimezone(ZoneInfo(zone_name))
    calendar_id, calendar, calendar_timezone = rng.choice(CALENDARS)
    type_id, type_name, category, duration, price = rng.choice(APPOINTMENT_TYPES)
    first_name, last_name = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    canceled = rng.random() < 0.12
    email = ""
    if rng.random() < 0.88:
        email = f"client{number}.{user_id}@example.com"
        if rng.random() < 0.2:  # what people type: case and stray blanks
            email = f"  Client{number}.{user_id}@Example.COM "
    phone = "" if rng.random() < 0.15 else f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
    labels: tuple[tuple[int, str, str], ...] | None = None
    if rng.random() < 0.3:
        labels = (rng.choice(LABELS),)
    return AcuityAppointment(
        id=user_id * 1_000_000 + number,
        starts_at=starts_at,
        duration_minutes=duration,
        timezone=zone_name,
        calendar_id=calendar_id,
        calendar=calendar,
        calendar_timezone=calendar_timezone,
        type_id=type_id,
        type_name=type_name,
        category=category,
        first_name=first_name,
        last_name=last_name,
        email=email,
        phone=phone,
        price=price,
        amount_paid=price if rng.random() < paid_share else "0.00",
        canceled=canceled,
        no_show=canceled and rng.random() < 0.3,
        labels=labels,
        # Booked 1-60 days ahead, but never in the future: a future booking was made before now.
        created_at=not_after(starts_at - timedelta(days=rng.randint(1, 60), minutes=rng.randint(0, 600)), now),
        notes=rng.choice(("", "", "Parking at the back 🚗", "Bitte pünktlich", "First visit")),
        owner=user_id,
    )


def seeded_payments(appointment: AcuityAppointment) -> tuple[AcuityPayment, ...]:
    """The payments of an appointment whose payments never changed: one entry for its whole
    `amountPaid`, made when it was booked; none when nothing was paid."""
    amount = Decimal(appointment.amount_paid)
    if not amount:
        return ()
    return (
        payment_entry(
            user_id=appointment.owner,
            appointment_id=appointment.id,
            position=0,
            amount=amount,
            created_at=appointment.created_at,
        ),
    )


def parse_query_date(text: str, name: str) -> date:
    """A `minDate`/`maxDate` value (`YYYY-MM-DD`). Raises QueryError."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise QueryError("invalid_date", f"The {name} parameter is not a valid date.") from exc


def select_appointments(
    appointments: Iterable[AcuityAppointment], params: Mapping[str, str], *, ignore_min_date: bool = False
) -> list[AcuityAppointment]:
    """What `GET /appointments` returns for `params`, with Acuity's quirks.

    `max` (default 100) silently truncates; no offset exists; `direction` DESC by default (by start
    instant, then id); canceled ones only with `canceled=true` (only those) or `showall=true` (all);
    `minDate`/`maxDate` compare the appointment's local day, inclusive; `ignore_min_date` reproduces
    the legacy-observed quirk of appointments before `minDate` coming back. Raises QueryError."""
    max_text = params.get("max", str(DEFAULT_MAX))
    try:
        max_records = int(max_text)
    except ValueError as exc:
        raise QueryError("invalid_max", "The max parameter must be a number.") from exc
    if max_records < 1:
        raise QueryError("invalid_max", "The max parameter must be positive.")
    direction = params.get("direction", "DESC").upper()
    if direction not in ("ASC", "DESC"):
        raise QueryError("invalid_direction", "The direction parameter must be ASC or DESC.")
    min_day = None if "minDate" not in params else parse_query_date(params["minDate"], "minDate")
    max_day = None if "maxDate" not in params else parse_query_date(params["maxDate"], "maxDate")
    showall = params.get("showall", "").lower() == "true"
    canceled_only = params.get("canceled", "").lower() == "true"
    calendar_id = params.get("calendarID")
    type_id = params.get("appointmentTypeID")

    def wanted(appointment: AcuityAppointment) -> bool:
        if not showall and appointment.canceled != canceled_only:
            return False
        if min_day is not None and not ignore_min_date and appointment.local_day < min_day:
            return False
        if max_day is not None and appointment.local_day > max_day:
            return False
        if calendar_id is not None and str(appointment.calendar_id) != calendar_id:
            return False
        return type_id is None or str(appointment.type_id) == type_id

    selected = sorted(
        (a for a in appointments if wanted(a)), key=lambda a: (a.instant, a.id), reverse=direction == "DESC"
    )
    return selected[:max_records]


def seeded_clients(*, seed: int, user_id: int, appointments: Iterable[AcuityAppointment]) -> list[AcuityClient]:
    """The clients an account lists besides its bookers (see _acuity_clients): one in twenty
    bookings' worth of people who never booked (at most 500), and one in fifty bookings' worth
    (at most 200) who share nothing with their bookings but the phone (listed by a nickname, with no
    email, the phone typed another way). Same arguments, same clients."""
    rng = random.Random(f"apptsync-simulator:{seed}:acuity-clients:{user_id}")  # noqa: S311 -- seeded, reproducible test data, not a secret
    booked = sorted(appointments, key=lambda a: a.id)
    clients = []
    for number in range(1, min(len(booked) // 20, 500) + 1):
        email = f"prospect{number}.{user_id}@example.com"
        if rng.random() < 0.3:
            email = f"Prospect{number}.{user_id}@Example.COM"
        phone = ""
        if rng.random() < 0.7:
            phone = phone_as_typed(f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}", rng.randint(0, 2))
        clients.append(
            AcuityClient(rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES), email, phone, "Walk-in, never booked online")
        )
    with_phone = [a for a in booked if a.phone and a.email]
    for appointment in rng.sample(with_phone, min(len(booked) // 50, 200, len(with_phone))):
        nickname = rng.choice(FIRST_NAMES)
        phone = phone_as_typed(appointment.phone, appointment.id + 1)  # another way than the booking's
        clients.append(AcuityClient(nickname, "", "", phone, "Called in"))
    return clients


class AcuityStore:
    """The simulated Acuity accounts and their appointments (mutable through the admin API).

    Large accounts (100,000s of appointments) stay cheap to serve: `candidates()` slices a per-account
    index sorted by local day instead of scanning the account, and `rendered()` keeps each
    appointment's JSON text (both are dropped for an account when any of its appointments changes)."""

    def __init__(
        self,
        *,
        seed: int,
        accounts: int,
        appointments_per_account: int,
        anchor: date,
        spread_days: int = DATA_SPREAD_DAYS,
        clock: Clock | None = None,
        paid_share: float = DEFAULT_PAID_SHARE,
    ) -> None:
        self.accounts: dict[int, AcuityAccount] = {}
        self.appointments: dict[int, dict[int, AcuityAppointment]] = {}
        # Appointments deleted at the provider (gone from every answer), kept for the truth.
        self.removed: dict[int, dict[int, AcuityAppointment]] = {}
        self.clock = clock or anchor_clock(anchor)
        self._anchor = anchor
        self._day_index: dict[int, tuple[list[date], list[AcuityAppointment]]] = {}
        self._rendered: dict[tuple[int, bool], bytes] = {}
        # Clients listed by hand or seeded without a booking; the bookers are added by clients().
        self._listed_clients: dict[int, list[AcuityClient]] = {}
        self._clients: dict[int, list[AcuityClient]] = {}
        # Payment entries of appointments whose payments changed after they were made (or installed);
        # any other appointment has its seeded ones (see seeded_payments).
        self._payments: dict[int, dict[int, tuple[AcuityPayment, ...]]] = {}
        for user_id in range(FIRST_USER_ID, FIRST_USER_ID + accounts):
            self.accounts[user_id] = account_for(user_id)
            seeded = seeded_appointments(
                seed=seed,
                user_id=user_id,
                count=appointments_per_account,
                anchor=anchor,
                spread_days=spread_days,
                now=self.clock(),
                paid_share=paid_share,
            )
            self.appointments[user_id] = {a.id: a for a in seeded}
            self.removed[user_id] = {}
            self._listed_clients[user_id] = seeded_clients(seed=seed, user_id=user_id, appointments=seeded)
            self._payments[user_id] = {}

    def install(
        self,
        account: AcuityAccount,
        appointments: Iterable[AcuityAppointment],
        *,
        clients: Iterable[AcuityClient] = (),
        payments: Mapping[int, tuple[AcuityPayment, ...]] | None = None,
    ) -> None:
        """Adds (or replaces) a whole account: its appointments, the clients it lists besides its
        bookers, and the payment entries of the appointments that have some (each appointment's
        `amountPaid` must be their sum)."""
        user_id = account.user_id
        self.accounts[user_id] = account
        self.appointments[user_id] = {a.id: a for a in appointments}
        self.removed[user_id] = {}
        self._listed_clients[user_id] = list(clients)
        self._payments[user_id] = dict(payments or {})
        self._day_index.pop(user_id, None)
        self._clients.pop(user_id, None)
        for appointment_id in self.appointments[user_id]:
            self._changed(user_id, appointment_id)

    def authenticate_basic(self, user_id: str, api_key: str) -> AcuityAccount | None:
        account = self.accounts.get(int(user_id)) if user_id.isdigit() else None
        return account if account is not None and account.api_key == api_key else None

    def authenticate_bearer(self, token: str) -> AcuityAccount | None:
        return next((a for a in self.accounts.values() if a.access_token == token), None)

    def of(self, user_id: int) -> dict[int, AcuityAppointment]:
        """Raises KeyError for an unknown account."""
        return self.appointments[user_id]

    def candidates(self, user_id: int, params: Mapping[str, str], *, ignore_min_date: bool) -> list[AcuityAppointment]:
        """The account's appointments whose local day lies within `params`' minDate/maxDate (all of
        them without those, every day up to maxDate with `ignore_min_date`): what select_appointments
        needs to see, found by bisection. Raises KeyError (unknown account), QueryError (bad date)."""
        days, ordered = self._index(user_id)
        lo, hi = 0, len(ordered)
        if "minDate" in params and not ignore_min_date:
            lo = bisect.bisect_left(days, parse_query_date(params["minDate"], "minDate"))
        if "maxDate" in params:
            hi = bisect.bisect_right(days, parse_query_date(params["maxDate"], "maxDate"))
        return ordered[lo:hi]

    def rendered(self, appointment: AcuityAppointment, *, include_forms: bool) -> bytes:
        """`json.dumps(appointment.to_json(include_forms=...), ensure_ascii=False)` as UTF-8, kept for
        the next request. `appointment` must be the stored version (what of() and candidates() give)."""
        key = (appointment.id, include_forms)
        text = self._rendered.get(key)
        if text is None:
            text = json.dumps(appointment.to_json(include_forms=include_forms), ensure_ascii=False).encode()
            self._rendered[key] = text
        return text

    def _index(self, user_id: int) -> tuple[list[date], list[AcuityAppointment]]:
        index = self._day_index.get(user_id)
        if index is None:
            ordered = sorted(self.of(user_id).values(), key=lambda a: a.local_day)
            index = ([a.local_day for a in ordered], ordered)
            self._day_index[user_id] = index
        return index

    def clients(self, user_id: int) -> list[AcuityClient]:
        """The account's client list (see _acuity_clients.client_list): its listed clients, then
        everyone who booked (deleted bookings too: deleting an appointment keeps its client), first
        booking first. Raises KeyError for an unknown account."""
        found = self._clients.get(user_id)
        if found is None:
            booked = [*self.of(user_id).values(), *self.removed[user_id].values()]
            bookers = (
                Booker(a.first_name, a.last_name, a.email, a.phone, a.id)
                for a in sorted(booked, key=lambda a: (a.created_at.timestamp(), a.id))  # aware compares are slow
            )
            found = client_list(self._listed_clients[user_id], bookers)
            self._clients[user_id] = found
        return found

    def add_client(self, user_id: int, fields: Mapping[str, object]) -> AcuityClient:
        """A client recorded by hand (`firstName`, `lastName`, `email`, `phone`, `notes`; all
        optional). Raises KeyError for an unknown account."""
        self.of(user_id)
        client = AcuityClient(
            first_name=_str_field(fields, "firstName", ""),
            last_name=_str_field(fields, "lastName", ""),
            email=_str_field(fields, "email", ""),
            phone=_str_field(fields, "phone", ""),
            notes=_str_field(fields, "notes", ""),
        )
        self._listed_clients[user_id].append(client)
        self._clients.pop(user_id, None)
        return client

    def payments(self, user_id: int, appointment_id: int) -> tuple[AcuityPayment, ...]:
        """The appointment's payment entries, oldest first (deleted appointments' too); they add up
        to its `amountPaid`. Raises KeyError for an unknown account or appointment."""
        stored = self._payments[user_id].get(appointment_id)
        if stored is not None:
            return stored
        appointment = self.of(user_id).get(appointment_id) or self.removed[user_id][appointment_id]
        return seeded_payments(appointment)

    def add_payment(self, user_id: int, appointment_id: int, amount: Decimal) -> AcuityPayment:
        """A payment (`amount` > 0) or refund (`amount` < 0) entry stamped at the clock; the
        appointment's `amountPaid` becomes the new sum. Raises KeyError, ValueError (amount 0)."""
        if amount == 0:
            raise ValueError("a payment entry needs a non-zero amount")
        book = self.of(user_id)
        appointment = book[appointment_id]
        history = self.payments(user_id, appointment_id)
        entry = payment_entry(
            user_id=user_id,
            appointment_id=appointment_id,
            position=len(history),
            amount=amount,
            created_at=self.clock(),
        )
        history = (*history, entry)
        self._payments[user_id][appointment_id] = history
        book[appointment_id] = replace(appointment, amount_paid=total_paid(history))
        self._changed(user_id, appointment_id)
        return entry

    def _changed(self, user_id: int, appointment_id: int) -> None:
        self._day_index.pop(user_id, None)
        self._clients.pop(user_id, None)
        for include_forms in (False, True):
            self._rendered.pop((appointment_id, include_forms), None)

    def add(self, user_id: int, fields: Mapping[str, object]) -> AcuityAppointment:
        """A new appointment (`datetime` required, with an offset; `duration`, `firstName`, `lastName`,
        `email`, `phone`, `price`, `timezone` optional). Raises KeyError, QueryError."""
        book = self.of(user_id)
        starts_at = _aware_datetime(fields.get("datetime"))
        next_id = max([*book, *self.removed[user_id]], default=user_id * 1_000_000) + 1
        template = AcuityAppointment(
            id=next_id,
            starts_at=starts_at,
            duration_minutes=_int_field(fields, "duration", 30),
            timezone=_str_field(fields, "timezone", "UTC"),
            calendar_id=CALENDARS[0][0],
            calendar=CALENDARS[0][1],
            calendar_timezone=CALENDARS[0][2],
            type_id=APPOINTMENT_TYPES[1][0],
            type_name=APPOINTMENT_TYPES[1][1],
            category=APPOINTMENT_TYPES[1][2],
            first_name=_str_field(fields, "firstName", "New"),
            last_name=_str_field(fields, "lastName", "Client"),
            email=_str_field(fields, "email", f"new{next_id}@example.com"),
            phone=_str_field(fields, "phone", ""),
            price=_str_field(fields, "price", "45.00"),
            amount_paid=_str_field(fields, "amountPaid", "0.00"),
            canceled=False,
            no_show=False,
            labels=None,
            created_at=self.clock(),
            notes="",
            owner=user_id,
        )
        book[next_id] = template
        self._changed(user_id, next_id)
        return template

    def cancel(self, user_id: int, appointment_id: int, *, no_show: bool = False) -> AcuityAppointment:
        """Raises KeyError for an unknown account or appointment."""
        book = self.of(user_id)
        updated = replace(book[appointment_id], canceled=True, no_show=no_show)
        book[appointment_id] = updated
        self._changed(user_id, appointment_id)
        return updated

    def reschedule(self, user_id: int, appointment_id: int, starts_at_text: object) -> AcuityAppointment:
        """Raises KeyError, QueryError (a `datetime` without an offset)."""
        book = self.of(user_id)
        updated = replace(book[appointment_id], starts_at=_aware_datetime(starts_at_text))
        book[appointment_id] = updated
        self._changed(user_id, appointment_id)
        return updated

    def set_amount_paid(self, user_id: int, appointment_id: int, amount_paid: str) -> AcuityAppointment:
        """`amountPaid` becomes `amount_paid` through one more payment entry (a refund when it
        drops; none when it stays). Raises KeyError."""
        difference = Decimal(amount_paid) - Decimal(self.of(user_id)[appointment_id].amount_paid)
        if difference:
            self.add_payment(user_id, appointment_id, difference)
        return self.of(user_id)[appointment_id]

    def delete(self, user_id: int, appointment_id: int) -> AcuityAppointment:
        """The appointment is deleted at the provider: no listing or GET returns it any more (it is
        kept in `removed`). Raises KeyError."""
        gone = self.of(user_id).pop(appointment_id)
        self.removed[user_id][appointment_id] = gone
        self._changed(user_id, appointment_id)
        return gone


def _aware_datetime(value: object) -> datetime:
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment
    raise QueryError("invalid_datetime", "datetime must be ISO 8601 with an offset.")


def _str_field(fields: Mapping[str, object], key: str, default: str) -> str:
    value = fields.get(key, default)
    return value if isinstance(value, str) else default


def _int_field(fields: Mapping[str, object], key: str, default: int) -> int:
    value = fields.get(key, default)
    try:
        return int(str(value))
    except ValueError:
        return default
