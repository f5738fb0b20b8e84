"""Calendly-shaped data of the simulator: seeded accounts, scheduled events and invitees, the query
semantics of `GET /scheduled_events` and `GET /scheduled_events/{uuid}/invitees`, and the admin
mutations (pure: no I/O, no global randomness; times come in as arguments or from the store's injected
clock, and no record is stamped later than that clock)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from apptsync.simulator._acuity_data import CLIENT_TIMEZONES, DATA_SPREAD_DAYS, FIRST_NAMES, LAST_NAMES, QueryError
from apptsync.simulator._clock import Clock, anchor_clock, not_after
from apptsync.simulator._oauth_tokens import OAuthTokenBook

API = "https://api.calendly.com"
FIRST_ACCOUNT = 1
MAX_COUNT = 100
DEFAULT_COUNT = 20
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# (name, minutes, group size limit: 1 = one-on-one)
EVENT_TYPES = (
    ("15 Minute Meeting", 15, 1),
    ("Initial Consultation \u2013 60 min", 60, 1),
    ("Group Yoga \u2013 Beginners", 90, 6),
    ("Caf\u00e9 chat \u2615", 30, 1),
    ("Beratungsgespr\u00e4ch", 45, 1),
    ("Webinar: Sleep better", 60, 40),
)
HOSTS = (
    ("Dr. Am\u00e9lie Dubois", "amelie"),
    ("\u674e\u533b\u751f (Dr. Li)", "li"),
    ("Zo\u00eb \u00c5ngstr\u00f6m", "zoe"),
)
LOCATIONS = ("Calendly Office", "Praxis M\u00fcnchen, Raum 2", "\u6771\u4eac\u30af\u30ea\u30cb\u30c3\u30af")
QUESTIONS = ({"question": "Anything we should know?", "answer": "Premi\u00e8re visite", "position": 0},)
TRACKING = dict.fromkeys(("utm_campaign", "utm_source", "utm_medium", "utm_content", "utm_term", "salesforce_uuid"))
PAYMENTS = ((45.0, "USD"), (75.0, "USD"), (12.5, "EUR"), (89.99, "GBP"), (5000, "JPY"), (1234.56, "USD"))


def calendly_time(moment: datetime) -> str:
    """`2024-06-15T14:00:00.000000Z`: how Calendly writes times (UTC, microseconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_calendly_time(text: str, name: str) -> datetime:
    """Raises QueryError for a time without an offset or unreadable."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise QueryError("invalid_argument", f"{name} must be an ISO 8601 UTC time") from exc
    if moment.tzinfo is None:
        raise QueryError("invalid_argument", f"{name} must carry a UTC offset")
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class CalendlyAccount:
    number: int
    user_uri: str
    organization_uri: str
    name: str
    email: str


@dataclass(frozen=True, slots=True)
class CalendlyEvent:
    uuid: str
    number: int
    name: str
    status: str  # active | canceled
    starts_at: datetime  # UTC
    ends_at: datetime
    event_type_uuid: str
    host: str
    host_email: str
    user_uri: str
    invitee_limit: int
    created_at: datetime
    updated_at: datetime
    cancellation: tuple[tuple[str, str], ...] | None  # (key, value) pairs
    location: str

    @property
    def uri(self) -> str:
        return f"{API}/scheduled_events/{self.uuid}"


@dataclass(frozen=True, slots=True)
class CalendlyInvitee:
    uuid: str
    event_uuid: str
    first_name: str
    last_name: str
    email: str
    phone: str
    timezone: str
    status: str  # active | canceled
    created_at: datetime
    updated_at: datetime
    rescheduled: bool
    old_invitee: str | None
    new_invitee: str | None
    no_show_at: datetime | None
    payment: tuple[float, str, bool] | None  # amount (major units), currency, successful
    cancellation: tuple[tuple[str, str], ...] | None

    @property
    def uri(self) -> str:
        return f"{API}/scheduled_events/{self.event_uuid}/invitees/{self.uuid}"

    @property
    def name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)


def render_event(event: CalendlyEvent, invitees: list[CalendlyInvitee]) -> dict[str, object]:
    """The event exactly as `GET /scheduled_events` renders it."""
    active = sum(1 for invitee in invitees if invitee.status == "active")
    record: dict[str, object] = {
        "uri": event.uri,
        "name": event.name,
        "meeting_notes_plain": None,
        "meeting_notes_html": None,
        "status": event.status,
        "start_time": calendly_time(event.starts_at),
        "end_time": calendly_time(event.ends_at),
        "event_type": f"{API}/event_types/{event.event_type_uuid}",
        "location": {"type": "physical", "location": event.location},
        "invitees_counter": {"total": len(invitees), "active": active, "limit": event.invitee_limit},
        "created_at": calendly_time(event.created_at),
        "updated_at": calendly_time(event.updated_at),
        "event_memberships": [{"user": event.user_uri, "user_email": event.host_email, "user_name": event.host}],
        "event_guests": [],
    }
    if event.cancellation is not None:
        record["cancellation"] = dict(event.cancellation)
    return record


def render_invitee(invitee: CalendlyInvitee) -> dict[str, object]:
    """The invitee exactly as `GET /scheduled_events/{uuid}/invitees` renders it."""
    payment = None
    if invitee.payment is not None:
        amount, currency, successful = invitee.payment
        payment = {
            "external_id": f"ch_{invitee.uuid.lower()}",
            "provider": "stripe",
            "amount": amount,
            "currency": currency,
            "terms": "Payment is due at booking.",
            "successful": successful,
        }
    record: dict[str, object] = {
        "cancel_url": f"https://calendly.com/cancellations/{invitee.uuid}",
        "created_at": calendly_time(invitee.created_at),
        "email": invitee.email,
        "event": f"{API}/scheduled_events/{invitee.event_uuid}",
        "name": invitee.name,
        "first_name": invitee.first_name or None,
        "last_name": invitee.last_name or None,
        "new_invitee": invitee.new_invitee,
        "old_invitee": invitee.old_invitee,
        "questions_and_answers": [dict(question) for question in QUESTIONS],
        "reschedule_url": f"https://calendly.com/reschedulings/{invitee.uuid}",
        "rescheduled": invitee.rescheduled,
        "status": invitee.status,
        "text_reminder_number": invitee.phone or None,
        "timezone": invitee.timezone,
        "tracking": dict(TRACKING),
        "updated_at": calendly_time(invitee.updated_at),
        "uri": invitee.uri,
        "routing_form_submission": None,
        "payment": payment,
        "no_show": None
        if invitee.no_show_at is None
        else {"uri": f"{API}/invitee_no_shows/{invitee.uuid}", "created_at": calendly_time(invitee.no_show_at)},
        "reconfirmation": None,
        "scheduling_method": None,
        "invitee_scheduled_by": None,
    }
    if invitee.cancellation is not None:
        record["cancellation"] = dict(invitee.cancellation)
    return record


def _uuid(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(16))


def _derived_uuid(*parts: object) -> str:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return "".join(_ALPHABET[byte % len(_ALPHABET)] for byte in digest[:16])


def account_for(number: int) -> CalendlyAccount:
    return CalendlyAccount(
        number=number,
        user_uri=f"{API}/users/USER{number:012d}",
        organization_uri=f"{API}/organizations/ORG{number:013d}",
        name=f"Clinic {number}",
        email=f"owner{number}@clinic.example",
    )


def _cancellation(by: str, reason: str, canceler_type: str, at: datetime) -> tuple[tuple[str, str], ...]:
    return (
        ("canceled_by", by),
        ("reason", reason),
        ("canceler_type", canceler_type),
        ("created_at", calendly_time(at)),
    )


class CalendlyStore:
    """The simulated Calendly accounts with their events and invitees (mutable through the admin API)."""

    def __init__(
        self, *, seed: int, accounts: int, invitees_per_account: int, anchor: date, clock: Clock | None = None
    ) -> None:
        self.accounts: dict[int, CalendlyAccount] = {}
        self.events: dict[int, dict[str, CalendlyEvent]] = {}
        self.invitees: dict[int, dict[str, CalendlyInvitee]] = {}
        # Invitees deleted at the provider (with their events when none was left), kept for the truth.
        self.removed: dict[int, dict[str, tuple[CalendlyEvent, CalendlyInvitee]]] = {}
        self.clock = clock or anchor_clock(anchor)
        self._by_event: dict[int, dict[str, list[str]]] = {}
        self._sequences: dict[int, int] = {}
        self.tokens = OAuthTokenBook("calendly")
        for number in range(FIRST_ACCOUNT, FIRST_ACCOUNT + accounts):
            account = account_for(number)
            self.accounts[number] = account
            self.events[number], self.invitees[number], self._by_event[number] = {}, {}, {}
            self.removed[number] = {}
            self.tokens.issue(number)
            self._seed(account, seed=seed, count=invitees_per_account, anchor=anchor, now=self.clock())

    # -- seeding ---------------------------------------------------------------------------------

    def _seed(self, account: CalendlyAccount, *, seed: int, count: int, anchor: date, now: datetime) -> None:
        rng = random.Random(f"apptsync-simulator:{seed}:calendly:{account.number}")  # noqa: S311 -- seeded, reproducible test data, not a secret
        made = 0
        while made < count:
            made += self._seed_event(rng, account, anchor=anchor, room=count - made, now=now)

    def _seed_event(
        self, rng: random.Random, account: CalendlyAccount, *, anchor: date, room: int, now: datetime
    ) -> int:
        name, minutes, limit = rng.choice(EVENT_TYPES)
        zone = rng.choice(CLIENT_TIMEZONES)
        day = anchor + timedelta(days=rng.randint(-DATA_SPREAD_DAYS, DATA_SPREAD_DAYS))
        wall = datetime.combine(day, time(rng.randint(7, 19), rng.choice((0, 15, 30, 45))), ZoneInfo(zone))
        starts_at = wall.astimezone(UTC)
        host, host_key = rng.choice(HOSTS)
        number = len(self.events[account.number]) + 1
        # Booked 1-40 days ahead and last touched the day before, but never stamped in the future:
        # a later real change must be newer than what the seed says.
        created_at = not_after(starts_at - timedelta(days=rng.randint(1, 40), minutes=rng.randint(0, 600)), now)
        event = CalendlyEvent(
            uuid=_uuid(rng),
            number=number,
            name=name,
            status="active",
            starts_at=starts_at,
            ends_at=starts_at + timedelta(minutes=minutes),
            event_type_uuid=_derived_uuid("event-type", account.number, name),
            host=host,
            host_email=f"{host_key}@clinic{account.number}.example",
            user_uri=account.user_uri,
            invitee_limit=limit,
            created_at=created_at,
            updated_at=max(created_at, not_after(starts_at - timedelta(days=1), now)),
            cancellation=None,
            location=rng.choice(LOCATIONS),
        )
        size = 1 if limit == 1 else min(room, rng.randint(2, min(limit, 5)))
        canceled = rng.random() < 0.1
        if canceled:
            event = replace(event, status="canceled",
                            cancellation=_cancellation(host, "Host unavailable", "host", event.updated_at))  # fmt: skip
        self.events[account.number][event.uuid] = event
        for _ in range(size):
            self._put_invitee(account.number, self._seed_invitee(rng, event, anchor=anchor, now=now))
        return size

    def _seed_invitee(
        self, rng: random.Random, event: CalendlyEvent, *, anchor: date, now: datetime
    ) -> CalendlyInvitee:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        uuid = _uuid(rng)
        created_at = max(event.created_at, not_after(event.created_at + timedelta(minutes=rng.randint(0, 60)), now))
        past = event.starts_at.date() < anchor
        invitee = CalendlyInvitee(
            uuid=uuid,
            event_uuid=event.uuid,
            first_name=first,
            last_name=last,
            email=f"invitee.{uuid.lower()}@example.com" if rng.random() < 0.85 else f"  Invitee.{uuid}@Example.COM ",
            phone="" if rng.random() < 0.5 else f"+49 151 {rng.randint(1000000, 9999999)}",
            timezone=rng.choice(CLIENT_TIMEZONES),
            status="canceled" if event.status == "canceled" else "active",
            created_at=created_at,
            updated_at=created_at,
            rescheduled=False,
            old_invitee=None,
            new_invitee=None,
            no_show_at=event.ends_at + timedelta(minutes=5) if past and rng.random() < 0.08 else None,
            payment=None,
            cancellation=event.cancellation,
        )
        if rng.random() < 0.3:
            amount, currency = rng.choice(PAYMENTS)
            invitee = replace(invitee, payment=(amount, currency, rng.random() < 0.9))
        if invitee.status == "canceled" or (invitee.no_show_at is not None and invitee.no_show_at > now):
            invitee = replace(invitee, no_show_at=None)  # no no-show is marked before the meeting ended
        return invitee

    def _next_sequence(self, number: int) -> int:
        """A new event number of the account: never reused, also after deletions (uuids derive from it)."""
        sequence = max(len(self.events[number]), self._sequences.get(number, 0)) + 1
        self._sequences[number] = sequence
        return sequence

    # -- reading ---------------------------------------------------------------------------------

    def authenticate(self, access_token: str) -> CalendlyAccount | None:
        number = self.tokens.account_of(access_token)
        return None if number is None else self.accounts[number]

    def invitees_of(self, number: int, event_uuid: str) -> list[CalendlyInvitee]:
        """The event's invitees, oldest booking first."""
        book = self.invitees[number]
        found = (book[uuid] for uuid in self._by_event[number].get(event_uuid, ()))
        return sorted(found, key=lambda i: (i.created_at, i.uuid))

    def _put_invitee(self, number: int, invitee: CalendlyInvitee) -> None:
        if invitee.uuid not in self.invitees[number]:
            self._by_event[number].setdefault(invitee.event_uuid, []).append(invitee.uuid)
        self.invitees[number][invitee.uuid] = invitee

    def bookings(self, number: int) -> list[dict[str, object]]:
        """Every invitee with its event, as the API renders them (the data set tests compare with)."""
        rendered: list[dict[str, object]] = []
        for event in sorted(self.events[number].values(), key=lambda e: (e.starts_at, e.uuid)):
            invitees = self.invitees_of(number, event.uuid)
            event_json = render_event(event, invitees)
            rendered += [{"event": event_json, "invitee": render_invitee(i)} for i in invitees]
        return rendered

    def list_events(
        self, account: CalendlyAccount, params: Mapping[str, str], *, malformed_every: int = 0
    ) -> tuple[list[dict[str, object]], str | None]:
        """One page of `GET /scheduled_events` and the next page token (None on the last page).
        Raises QueryError (400) or PermissionError (403: a scope that is not the caller's)."""
        scope = {key: params[key] for key in ("organization", "user", "group") if key in params}
        if not scope:
            raise QueryError("invalid_argument", "One of organization, user or group is required.")
        if (
            scope.get("organization", account.organization_uri) != account.organization_uri
            or scope.get("user", account.user_uri) != account.user_uri
        ):
            raise PermissionError("You do not have permission to access this resource.")
        count = _count(params)
        status = params.get("status")
        if status not in (None, "active", "canceled"):
            raise QueryError("invalid_argument", "status must be active or canceled")
        low = parse_calendly_time(params["min_start_time"], "min_start_time") if "min_start_time" in params else None
        high = parse_calendly_time(params["max_start_time"], "max_start_time") if "max_start_time" in params else None
        sort = params.get("sort", "start_time:asc")
        if sort not in ("start_time:asc", "start_time:desc"):
            raise QueryError("invalid_argument", "sort supports start_time:asc or start_time:desc only")
        email = params.get("invitee_email", "").strip().lower()

        def wanted(event: CalendlyEvent) -> bool:
            if status is not None and event.status != status:
                return False
            if low is not None and event.starts_at < low:
                return False
            if high is not None and event.starts_at >= high:
                return False
            return not email or any(
                i.email.strip().lower() == email for i in self.invitees_of(account.number, event.uuid)
            )

        selected = sorted(
            (e for e in self.events[account.number].values() if wanted(e)),
            key=lambda e: (e.starts_at, e.uuid),
            reverse=sort.endswith("desc"),
        )
        fingerprint = _fingerprint({k: v for k, v in params.items() if k not in ("page_token", "count")})
        offset = _offset(params.get("page_token"), fingerprint)
        page = selected[offset : offset + count]
        rendered = []
        for event in page:
            record = render_event(event, self.invitees_of(account.number, event.uuid))
            if malformed_every and event.number % malformed_every == 0:
                record["start_time"] = "not-a-date"
            rendered.append(record)
        more = offset + count < len(selected)
        return rendered, _token(offset + count, fingerprint) if more else None

    def list_invitees(
        self, account: CalendlyAccount, event_uuid: str, params: Mapping[str, str]
    ) -> tuple[list[dict[str, object]], str | None]:
        """One page of an event's invitees (created_at ascending). Raises KeyError for an event that
        is not the account's, QueryError (400)."""
        if event_uuid not in self.events[account.number]:
            raise KeyError(event_uuid)
        count = _count(params)
        status = params.get("status")
        invitees = [i for i in self.invitees_of(account.number, event_uuid) if status is None or i.status == status]
        fingerprint = _fingerprint({"event": event_uuid, "status": status or ""})
        offset = _offset(params.get("page_token"), fingerprint)
        page = invitees[offset : offset + count]
        more = offset + count < len(invitees)
        return [render_invitee(i) for i in page], _token(offset + count, fingerprint) if more else None

    # -- admin mutations -------------------------------------------------------------------------

    def add(self, number: int, fields: Mapping[str, object], *, now: datetime) -> list[CalendlyInvitee]:
        """A new event (`start_time` required; `name`, `duration_minutes`, `invitees` (count),
        `first_name`, `timezone` optional) with its invitees. Raises KeyError, QueryError."""
        account = self.accounts[number]
        start_text = fields.get("start_time")
        if not isinstance(start_text, str):
            raise QueryError("invalid_argument", "start_time is required")
        starts_at = parse_calendly_time(start_text, "start_time")
        minutes = _int(fields.get("duration_minutes"), 30)
        size = max(1, _int(fields.get("invitees"), 1))
        name = fields.get("name") if isinstance(fields.get("name"), str) else "Added by admin"
        sequence = self._next_sequence(number)
        event = CalendlyEvent(
            uuid=_derived_uuid("added-event", number, sequence),
            number=sequence,
            name=str(name),
            status="active",
            starts_at=starts_at,
            ends_at=starts_at + timedelta(minutes=minutes),
            event_type_uuid=_derived_uuid("event-type", number, name),
            host=HOSTS[0][0],
            host_email=f"{HOSTS[0][1]}@clinic{number}.example",
            user_uri=account.user_uri,
            invitee_limit=max(1, size),
            created_at=now,
            updated_at=now,
            cancellation=None,
            location="Calendly Office",
        )
        self.events[number][event.uuid] = event
        first = fields.get("first_name") if isinstance(fields.get("first_name"), str) else "New"
        added = []
        for position in range(size):
            uuid = _derived_uuid("added-invitee", number, sequence, position)
            invitee = CalendlyInvitee(
                uuid=uuid,
                event_uuid=event.uuid,
                first_name=str(first),
                last_name=f"Invitee {position + 1}",
                email=f"new.{uuid.lower()}@example.com",
                phone="",
                timezone=str(fields.get("timezone", "UTC")),
                status="active",
                created_at=now,
                updated_at=now,
                rescheduled=False,
                old_invitee=None,
                new_invitee=None,
                no_show_at=None,
                payment=None,
                cancellation=None,
            )
            self._put_invitee(number, invitee)
            added.append(invitee)
        return added

    def cancel(
        self, number: int, invitee_uuid: str, *, now: datetime, reason: str = "Canceled by invitee"
    ) -> CalendlyInvitee:
        """Cancels one invitee; an event left without active invitees is canceled too. Raises KeyError."""
        invitee = self.invitees[number][invitee_uuid]
        cancellation = _cancellation(invitee.name, reason, "invitee", now)
        canceled = replace(invitee, status="canceled", updated_at=now, cancellation=cancellation, no_show_at=None)
        self.invitees[number][invitee_uuid] = canceled
        self._settle_event(number, invitee.event_uuid, now=now, cancellation=cancellation)
        return canceled

    def reschedule(self, number: int, invitee_uuid: str, start_text: object, *, now: datetime) -> CalendlyInvitee:
        """Calendly's reschedule: the old invitee is canceled (`rescheduled: true`, `new_invitee`), a
        new event at `start_text` gets a new invitee (`old_invitee`). Returns the new invitee.
        Raises KeyError, QueryError."""
        old = self.invitees[number][invitee_uuid]
        if not isinstance(start_text, str):
            raise QueryError("invalid_argument", "start_time is required")
        starts_at = parse_calendly_time(start_text, "start_time")
        old_event = self.events[number][old.event_uuid]
        sequence = self._next_sequence(number)
        new_event = replace(
            old_event,
            uuid=_derived_uuid("rescheduled-event", number, invitee_uuid, sequence),
            number=sequence,
            status="active",
            starts_at=starts_at,
            ends_at=starts_at + (old_event.ends_at - old_event.starts_at),
            created_at=now,
            updated_at=now,
            cancellation=None,
        )
        self.events[number][new_event.uuid] = new_event
        new = replace(
            old,
            uuid=_derived_uuid("rescheduled-invitee", number, invitee_uuid),
            event_uuid=new_event.uuid,
            status="active",
            created_at=now,
            updated_at=now,
            rescheduled=False,
            old_invitee=old.uri,
            new_invitee=None,
            no_show_at=None,
            cancellation=None,
        )
        self._put_invitee(number, new)
        cancellation = _cancellation(old.name, "Rescheduled", "invitee", now)
        self.invitees[number][invitee_uuid] = replace(
            old, status="canceled", rescheduled=True, new_invitee=new.uri, updated_at=now, cancellation=cancellation
        )
        self._settle_event(number, old.event_uuid, now=now, cancellation=cancellation)
        return new

    def mark_no_show(self, number: int, invitee_uuid: str, *, now: datetime) -> CalendlyInvitee:
        """Raises KeyError."""
        invitee = replace(self.invitees[number][invitee_uuid], no_show_at=now, updated_at=now)
        self.invitees[number][invitee_uuid] = invitee
        return invitee

    def set_payment(
        self, number: int, invitee_uuid: str, payment: tuple[float, str, bool] | None, *, now: datetime
    ) -> CalendlyInvitee:
        """The invitee's `payment` becomes (amount in major units, currency, successful), or none.
        Raises KeyError."""
        invitee = replace(self.invitees[number][invitee_uuid], payment=payment, updated_at=now)
        self.invitees[number][invitee_uuid] = invitee
        return invitee

    def delete(self, number: int, invitee_uuid: str) -> CalendlyInvitee:
        """The invitee's data is deleted at the provider: no listing shows it any more, and its event
        goes too when no invitee is left (both kept in `removed`). Raises KeyError."""
        invitee = self.invitees[number].pop(invitee_uuid)
        event = self.events[number][invitee.event_uuid]
        self.removed[number][invitee_uuid] = (event, invitee)
        siblings = self._by_event[number][invitee.event_uuid]
        siblings.remove(invitee_uuid)
        if not siblings:
            del self._by_event[number][invitee.event_uuid]
            del self.events[number][invitee.event_uuid]
        return invitee

    def _settle_event(
        self, number: int, event_uuid: str, *, now: datetime, cancellation: tuple[tuple[str, str], ...]
    ) -> None:
        if any(i.status == "active" for i in self.invitees_of(number, event_uuid)):
            return
        event = self.events[number][event_uuid]
        self.events[number][event_uuid] = replace(event, status="canceled", updated_at=now, cancellation=cancellation)


def _count(params: Mapping[str, str]) -> int:
    text = params.get("count", str(DEFAULT_COUNT))
    if not text.isdigit() or not 1 <= int(text) <= MAX_COUNT:
        raise QueryError("invalid_argument", f"count must be between 1 and {MAX_COUNT}")
    return int(text)


def _int(value: object, default: int) -> int:
    try:
        return int(str(value)) if value is not None else default
    except ValueError:
        return default


def _fingerprint(params: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(params.items())).encode()).hexdigest()[:12]


def _token(offset: int, fingerprint: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "f": fingerprint}).encode()).decode().rstrip("=")


def _offset(token: str | None, fingerprint: str) -> int:
    """Raises QueryError for a token of another query or an unreadable one."""
    if token is None:
        return 0
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise QueryError("invalid_argument", "page_token is invalid") from exc
    if not isinstance(decoded, dict) or decoded.get("f") != fingerprint or not isinstance(decoded.get("o"), int):
        raise QueryError("invalid_argument", "page_token does not belong to this query")
    return int(decoded["o"])
