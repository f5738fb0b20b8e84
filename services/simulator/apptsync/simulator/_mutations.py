"""The seeded mutation model: what happens to a provider's bookings between two syncs (pure: the
randomness is the `random.Random` passed in, now is an argument, changes go through the stores).

Kinds, for every provider unless noted: a new booking (most start within `near_term_days` of now,
some far ahead), a reschedule, a cancellation, a deletion (the record vanishes from the provider:
Acuity's appointment and Calendly's invitee are gone from every answer; a Google event becomes
`status: cancelled`, a stub of id and status in incremental sync and absent from a listing without
`showDeleted`), a no-show (Acuity: canceled with `noShow`; Calendly: `no_show` on a past invitee), a
payment change (Acuity: one more payment entry for the unpaid rest or half the price, `amountPaid`
following; Calendly invitee `payment`), Calendly's reschedule pair (the old invitee canceled with
`rescheduled`/`new_invitee`, a new invitee on a new event with `old_invitee`), and for Google a new
recurring series (instances `<series>_<YYYYMMDDTHHMMSSZ>`) and the deletion of one instance (a
cancelled stub carrying `recurringEventId` and `originalStartTime`).

Contacts and money (issue #14): Acuity's `new_client` (a client recorded by hand on `GET /clients`:
with an email, or 30% of the time only a phone that one of the account's bookings carries, typed
another way, so that only the phone ties them), Acuity's `refund` (a negative payment entry: the
whole paid amount, and then half of the time the booking is canceled too when it still lies ahead;
or half of it on a kept booking), and Calendly's `paid_invitee` (a new one-on-one booking whose
invitee paid, successfully, in USD).

Every applied mutation is reported with the keys it touched as the product keys records (Acuity: the
appointment id; Calendly: the invitee uuid; Google: `<calendarId>/<eventId>`; a new client: its
case-folded email, else its E.164 phone, one of its contact's `emails`/`phones` in
`GET /_admin/acuity/truth/{account}/contacts`)
and whether the record started within the near-term horizon before and after the change (a client
never does)."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TypeVar
from zoneinfo import ZoneInfo

from apptsync.simulator._acuity_clients import phone_as_typed
from apptsync.simulator._acuity_data import CLIENT_TIMEZONES, FIRST_NAMES, LAST_NAMES, AcuityAppointment, AcuityStore
from apptsync.simulator._calendly_data import PAYMENTS, CalendlyInvitee, CalendlyStore, calendly_time
from apptsync.simulator._contact_identity import email_identity, phone_identity
from apptsync.simulator._google_data import GoogleEvent, GoogleStore
from apptsync.simulator._state import ACUITY, CALENDLY, GOOGLE, PROVIDERS, SimulatorState

NEAR_TERM_DAYS = 14
FAR_HORIZON_DAYS = 150
# Share of new bookings and reschedule targets within the near-term horizon (the rest are far).
NEAR_TERM_SHARE = 0.7
# Share of reschedules and cancellations that pick a near-term booking when one exists.
NEAR_TARGET_SHARE = 0.6


class Kind(StrEnum):
    NEW = "new"
    RESCHEDULE = "reschedule"
    CANCEL = "cancel"
    DELETE = "delete"
    NO_SHOW = "no_show"
    PAYMENT = "payment"
    NEW_SERIES = "new_series"  # Google only
    DELETE_INSTANCE = "delete_instance"  # Google only
    NEW_CLIENT = "new_client"  # Acuity only
    REFUND = "refund"  # Acuity only
    PAID_INVITEE = "paid_invitee"  # Calendly only


# Relative weights of the kinds per provider.
WEIGHTS: Mapping[str, Mapping[Kind, int]] = {
    ACUITY: {Kind.NEW: 30, Kind.RESCHEDULE: 20, Kind.CANCEL: 15, Kind.DELETE: 10, Kind.NO_SHOW: 10, Kind.PAYMENT: 15,
             Kind.NEW_CLIENT: 5, Kind.REFUND: 8},
    CALENDLY: {Kind.NEW: 30, Kind.RESCHEDULE: 20, Kind.CANCEL: 15, Kind.DELETE: 10, Kind.NO_SHOW: 10,
               Kind.PAYMENT: 15, Kind.PAID_INVITEE: 10},
    GOOGLE: {Kind.NEW: 25, Kind.NEW_SERIES: 10, Kind.RESCHEDULE: 20, Kind.CANCEL: 15, Kind.DELETE: 15,
             Kind.DELETE_INSTANCE: 15},
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class AppliedMutation:
    """One change made to a provider's data. `key` is the record changed (for a reschedule pair the
    old invitee, for a new series its first instance); `related_keys` the other records it made."""

    provider: str
    account: int
    kind: Kind
    key: str
    near_term_before: bool
    near_term_after: bool
    related_keys: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.related_keys)

    def to_json(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "account": self.account,
            "kind": self.kind.value,
            "key": self.key,
            "related_keys": list(self.related_keys),
            "near_term_before": self.near_term_before,
            "near_term_after": self.near_term_after,
        }


@dataclass(frozen=True, slots=True)
class Horizon:
    """`now` and the near-term horizon: a booking is near-term when it starts in [now, now + days)."""

    now: datetime
    near_term_days: int

    def near(self, moment: datetime) -> bool:
        return self.now <= moment < self.now + timedelta(days=self.near_term_days)

    def start(self, rng: random.Random, *, near: bool) -> datetime:
        """A quarter-hour start (UTC) at least an hour from now: near-term or between the horizon and
        FAR_HORIZON_DAYS."""
        if near:
            low, high = timedelta(hours=2), timedelta(days=self.near_term_days) - timedelta(hours=1)
        else:
            low, high = timedelta(days=self.near_term_days + 1), timedelta(days=FAR_HORIZON_DAYS)
        moment = self.now + timedelta(seconds=rng.uniform(low.total_seconds(), high.total_seconds()))
        return moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0).astimezone(UTC)

    def some_start(self, rng: random.Random) -> datetime:
        return self.start(rng, near=rng.random() < NEAR_TERM_SHARE)


def apply_mutations(
    state: SimulatorState,
    *,
    rng: random.Random,
    now: datetime,
    count: int,
    near_term_days: int = NEAR_TERM_DAYS,
    accounts: Mapping[str, int],
    providers: Sequence[str] = PROVIDERS,
    kinds: Collection[Kind] | None = None,
) -> list[AppliedMutation]:
    """Applies `count` mutations, each to a provider drawn from `providers` (its account from
    `accounts`), and returns them in order. `kinds` (default: all) limits the kinds drawn, and the
    providers to those having one of them. A kind without a candidate record (no past booking to
    mark a no-show, ...) becomes a new booking, so exactly `count` are applied. Raises KeyError for an
    unknown account or provider, ValueError when no provider has any of `kinds`."""
    horizon = Horizon(now=now, near_term_days=near_term_days)
    drawn = {
        provider: {kind: weight for kind, weight in WEIGHTS[provider].items() if kinds is None or kind in kinds}
        for provider in providers
    }
    choices = [provider for provider in providers if drawn[provider]]
    if not choices:
        raise ValueError(f"none of {sorted(kinds or ())} happens on {list(providers)}")
    applied: list[AppliedMutation] = []
    for _ in range(count):
        provider = rng.choice(choices)
        weights = drawn[provider]
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        account = accounts[provider]
        if provider == ACUITY:
            applied.append(_acuity(state.acuity, account, kind, rng, horizon))
        elif provider == CALENDLY:
            applied.append(_calendly(state.calendly, account, kind, rng, horizon))
        else:
            applied.append(_google(state.google, account, kind, rng, horizon))
    return applied


_T = TypeVar("_T")


def _pick(rng: random.Random, candidates: Sequence[_T], near: Callable[[_T], bool]) -> _T | None:
    """A candidate; a near-term one with probability NEAR_TARGET_SHARE when there is one."""
    if not candidates:
        return None
    close = [c for c in candidates if near(c)]
    if close and rng.random() < NEAR_TARGET_SHARE:
        return rng.choice(close)
    return rng.choice(list(candidates))


# --------------------------------------------------------------------------- Acuity


def _acuity(store: AcuityStore, user_id: int, kind: Kind, rng: random.Random, horizon: Horizon) -> AppliedMutation:
    book = [store.of(user_id)[k] for k in sorted(store.of(user_id))]
    active_future = [a for a in book if not a.canceled and a.instant > horizon.now]

    def result(key: int, before: bool, after: bool, applied: Kind = kind) -> AppliedMutation:
        return AppliedMutation(ACUITY, user_id, applied, str(key), before, after)

    def near(appointment: AcuityAppointment) -> bool:
        return horizon.near(appointment.instant)

    if kind == Kind.RESCHEDULE and (target := _pick(rng, active_future, near)) is not None:
        moved_to = horizon.some_start(rng)
        moved = store.reschedule(user_id, target.id, moved_to.astimezone(ZoneInfo(target.timezone)).isoformat())
        return result(target.id, horizon.near(target.instant), horizon.near(moved.instant))
    if kind == Kind.CANCEL and (target := _pick(rng, active_future, near)) is not None:
        store.cancel(user_id, target.id)
        return result(target.id, near(target), near(target))
    if kind == Kind.DELETE and book:
        target = rng.choice(book)
        store.delete(user_id, target.id)
        return result(target.id, near(target), near(target))
    past = [a for a in book if not a.canceled and a.instant < horizon.now]
    if kind == Kind.NO_SHOW and past:
        target = rng.choice(past)
        store.cancel(user_id, target.id, no_show=True)
        return result(target.id, False, False)
    unpaid = [a for a in book if Decimal(a.amount_paid) < Decimal(a.price)]
    if kind == Kind.PAYMENT and unpaid:
        target = rng.choice(unpaid)
        half = (Decimal(target.price) / 2).quantize(Decimal("0.01"))
        options = [amount for amount in (Decimal(target.price), half) if amount > Decimal(target.amount_paid)]
        store.set_amount_paid(user_id, target.id, str(rng.choice(options)))
        return result(target.id, near(target), near(target))
    paid = [a for a in book if Decimal(a.amount_paid) > 0]
    if kind == Kind.REFUND and paid:
        target = rng.choice(paid)
        whole = Decimal(target.amount_paid)
        if rng.random() < 0.7:
            store.add_payment(user_id, target.id, -whole)
            if not target.canceled and target.instant > horizon.now and rng.random() < 0.5:
                store.cancel(user_id, target.id)  # canceled and refunded: the booking adds nothing
        else:
            store.add_payment(user_id, target.id, -(whole / 2).quantize(Decimal("0.01")))
        return result(target.id, near(target), near(target))
    if kind == Kind.NEW_CLIENT:
        return _acuity_client(store, user_id, rng)
    zone = rng.choice(CLIENT_TIMEZONES)
    starts_at = horizon.some_start(rng)
    number = rng.randint(1000, 9999)
    # What people type: case and stray blanks, which the mirror stores normalized.
    email = f"booked{number}.{user_id}@example.com"
    if rng.random() < 0.2:
        email = f"  Booked{number}.{user_id}@Example.com "
    phone = "" if rng.random() < 0.3 else f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
    added = store.add(user_id, {
        "datetime": starts_at.astimezone(ZoneInfo(zone)).isoformat(), "timezone": zone,
        "duration": rng.choice((30, 45, 60)), "firstName": rng.choice(FIRST_NAMES), "lastName": rng.choice(LAST_NAMES),
        "email": email, "phone": phone,
        "price": rng.choice(("45.00", "75.00", "12.50", "0.00")),
    })  # fmt: skip
    return result(added.id, False, horizon.near(added.instant), Kind.NEW)


def _acuity_client(store: AcuityStore, user_id: int, rng: random.Random) -> AppliedMutation:
    number = rng.randint(1000, 9999)
    phones = sorted({a.phone for a in store.of(user_id).values() if a.phone})
    if phones and rng.random() < 0.3:
        phone = phone_as_typed(rng.choice(phones), rng.randint(0, 2))
        client = store.add_client(user_id, {"firstName": rng.choice(FIRST_NAMES), "phone": phone, "notes": "Called in"})
        return AppliedMutation(ACUITY, user_id, Kind.NEW_CLIENT, phone_identity(client.phone), False, False)
    email = f"walkin{number}.{user_id}@example.com" if rng.random() < 0.7 else f"WalkIn{number}.{user_id}@Example.com"
    phone = "" if rng.random() < 0.4 else f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
    client = store.add_client(user_id, {
        "firstName": rng.choice(FIRST_NAMES), "lastName": rng.choice(LAST_NAMES), "email": email,
        "phone": phone_as_typed(phone, rng.randint(0, 2)) if phone else "",
    })  # fmt: skip
    return AppliedMutation(ACUITY, user_id, Kind.NEW_CLIENT, email_identity(client.email), False, False)


# --------------------------------------------------------------------------- Calendly


def _calendly(store: CalendlyStore, number: int, kind: Kind, rng: random.Random, horizon: Horizon) -> AppliedMutation:
    now = horizon.now
    invitees = [store.invitees[number][k] for k in sorted(store.invitees[number])]
    events = store.events[number]

    def result(
        key: str, before: bool, after: bool, related: tuple[str, ...] = (), applied: Kind = kind
    ) -> AppliedMutation:
        return AppliedMutation(CALENDLY, number, applied, key, before, after, related)

    def near(invitee: CalendlyInvitee) -> bool:
        return horizon.near(events[invitee.event_uuid].starts_at)

    active_future = [
        i for i in invitees
        if i.status == "active" and events[i.event_uuid].status == "active" and events[i.event_uuid].starts_at > now
    ]  # fmt: skip
    if kind == Kind.RESCHEDULE and (target := _pick(rng, active_future, near)) is not None:
        before = near(target)
        new = store.reschedule(number, target.uuid, calendly_time(horizon.some_start(rng)), now=now)
        return result(target.uuid, before, horizon.near(events[new.event_uuid].starts_at), (new.uuid,))
    if kind == Kind.CANCEL and (target := _pick(rng, active_future, near)) is not None:
        before = near(target)
        store.cancel(number, target.uuid, now=now)
        return result(target.uuid, before, before)
    if kind == Kind.DELETE and invitees:
        target = rng.choice(invitees)
        before = near(target)
        store.delete(number, target.uuid)
        return result(target.uuid, before, before)
    past = [
        i for i in invitees
        if i.status == "active" and i.no_show_at is None and events[i.event_uuid].status == "active"
        and events[i.event_uuid].ends_at < now
    ]  # fmt: skip
    if kind == Kind.NO_SHOW and past:
        target = rng.choice(past)
        store.mark_no_show(number, target.uuid, now=now)
        return result(target.uuid, False, False)
    if kind == Kind.PAYMENT and invitees:
        target = rng.choice(invitees)
        amount, currency = rng.choice(PAYMENTS)
        payment = (amount, currency, rng.random() < 0.8)
        if payment == target.payment:
            payment = (amount, currency, not payment[2])
        store.set_payment(number, target.uuid, payment, now=now)
        return result(target.uuid, near(target), near(target))
    if kind == Kind.PAID_INVITEE:
        starts_at = horizon.some_start(rng)
        added = store.add(number, {
            "start_time": calendly_time(starts_at), "duration_minutes": 60, "invitees": 1,
            "name": "Initial Consultation \u2013 60 min", "first_name": rng.choice(FIRST_NAMES),
            "timezone": rng.choice(CLIENT_TIMEZONES),
        }, now=now)  # fmt: skip
        amount = rng.choice((45.0, 75.0, 1234.56))
        store.set_payment(number, added[0].uuid, (amount, "USD", True), now=now)
        return result(added[0].uuid, False, horizon.near(starts_at))
    starts_at = horizon.some_start(rng)
    size = 1 if rng.random() < 0.8 else rng.randint(2, 3)
    added = store.add(number, {
        "start_time": calendly_time(starts_at), "duration_minutes": rng.choice((15, 30, 60)), "invitees": size,
        "name": rng.choice(("Caf\u00e9 chat \u2615", "Initial Consultation \u2013 60 min", "Group session")),
        "first_name": rng.choice(FIRST_NAMES), "timezone": rng.choice(CLIENT_TIMEZONES),
    }, now=now)  # fmt: skip
    keys = tuple(i.uuid for i in added)
    return result(keys[0], False, horizon.near(starts_at), keys[1:], Kind.NEW)


# --------------------------------------------------------------------------- Google


def google_key(event: GoogleEvent) -> str:
    """The product's external id of a Google event: `<calendarId>/<eventId>`."""
    return f"{event.calendar_id}/{event.id}"


def _google(store: GoogleStore, number: int, kind: Kind, rng: random.Random, horizon: Horizon) -> AppliedMutation:
    now = horizon.now
    account = store.accounts[number]
    zones = {c.id: c.timezone for c in account.calendars}
    events = [store.events[number][k] for k in sorted(store.events[number])]

    def starts(event: GoogleEvent) -> datetime:
        return event.start_instant(zones[event.calendar_id])

    def near(event: GoogleEvent) -> bool:
        return horizon.near(starts(event))

    def result(event: GoogleEvent, before: bool, after: bool, applied: Kind = kind) -> AppliedMutation:
        return AppliedMutation(GOOGLE, number, applied, google_key(event), before, after)

    live = [e for e in events if not e.deleted]
    live_future = [e for e in live if e.status != "cancelled" and starts(e) > now]
    if kind == Kind.RESCHEDULE and (target := _pick(rng, live_future, near)) is not None:
        start = horizon.some_start(rng)
        moved = store.reschedule(number, target.calendar_id, target.id, {"start": start.isoformat()}, now=now)
        return result(moved, near(target), near(moved))
    if kind == Kind.CANCEL and (target := _pick(rng, live_future, near)) is not None:
        store.cancel(number, target.calendar_id, target.id, now=now)
        return result(target, near(target), near(target))
    singles = [e for e in live if e.recurring_event_id is None]
    if kind == Kind.DELETE and singles:
        target = rng.choice(singles)
        store.cancel(number, target.calendar_id, target.id, now=now, delete=True)
        return result(target, near(target), near(target))
    instances = [e for e in live if e.recurring_event_id is not None]
    if kind == Kind.DELETE_INSTANCE and instances:
        target = _pick(rng, instances, near)
        assert target is not None  # noqa: S101 -- narrows the type; the simulator's own test data
        store.cancel(number, target.calendar_id, target.id, now=now, delete=True)
        return result(target, near(target), near(target))
    calendar = rng.choice(account.calendars)
    start = horizon.some_start(rng)
    if kind in (Kind.NEW_SERIES, Kind.DELETE_INSTANCE):
        series = store.add_recurring(number, calendar.id, {
            "start": start.isoformat(), "count": rng.randint(3, 6), "interval_days": rng.choice((7, 14)),
        }, now=now)  # fmt: skip
        after = any(near(e) for e in series)
        first = series[0]
        return AppliedMutation(
            GOOGLE, number, Kind.NEW_SERIES, google_key(first), False, after, tuple(google_key(e) for e in series[1:])
        )
    added = store.add(number, calendar.id, {
        "start": start.isoformat(), "duration_minutes": rng.choice((30, 45, 60)),
        "summary": rng.choice(("Erstgespr\u00e4ch", "Follow-up \u2013 Zo\u00eb", "Consultation")),
        "attendee_email": f"Booked{rng.randint(1000, 9999)}.{number}@Example.com",
    }, now=now)  # fmt: skip
    return result(added, False, near(added), Kind.NEW)
