"""Google-Calendar-shaped data of the simulator: seeded accounts with calendars and events, the query
semantics of `events.list` (full and incremental by sync token, empty pages mid-listing, token
expiry), recurring series expanded into instances, and the admin mutations (pure: no I/O, no global
randomness; now comes from the store's injected clock or as an argument)."""

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

from apptsync.simulator._acuity_data import CLIENT_TIMEZONES, DATA_SPREAD_DAYS, FIRST_NAMES, LAST_NAMES
from apptsync.simulator._clock import Clock, anchor_clock, not_after
from apptsync.simulator._oauth_tokens import OAuthTokenBook

FIRST_ACCOUNT = 1
DEFAULT_MAX_RESULTS = 250
MAX_RESULTS = 2500
# Each account's calendars: (id pattern, summary, timezone); zones with DST north and south, and none.
CALENDAR_TEMPLATES = (
    ("clinic-{n}@group.calendar.google.com", "Praxis M\u00fcnchen \u2013 Empfang", "Europe/Berlin"),
    ("therapist{n}@example.com", "Dr. Siobh\u00e1n O'Brien", "America/New_York"),
    ("sydney-{n}@group.calendar.google.com", "Sydney rooms", "Australia/Sydney"),
    ("kolkata-{n}@group.calendar.google.com", "\u0915\u094b\u0932\u0915\u093e\u0924\u093e", "Asia/Kolkata"),
)
SUMMARIES = ("Consultation", "Follow-up \u2013 Zo\u00eb", "Physio \U0001f3c3", "Erstgespr\u00e4ch", "\u8a3a\u5bdf",
             "Team offsite", "Massage 45\u2032")  # fmt: skip
RESPONSES = ("accepted", "accepted", "needsAction", "tentative", "declined")
_FULL_SYNC_REQUIRED = "Sync token is no longer valid, a full sync is required."


class GoogleQueryError(ValueError):
    """What Google answers instead of events: `status` (400, 404, 410), `reason`, `message`."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def google_error_body(status: int, reason: str, message: str) -> dict[str, object]:
    """Google's error shape: `{error: {errors: [{domain, reason, message}], code, message}}`."""
    return {"error": {"errors": [{"domain": "global", "reason": reason, "message": message}], "code": status,
                      "message": message}}  # fmt: skip


def rfc3339_millis(moment: datetime) -> str:
    """`2024-06-15T12:00:00.000Z`: how Google writes `created` / `updated`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class GoogleCalendar:
    id: str
    summary: str
    timezone: str


@dataclass(frozen=True, slots=True)
class GoogleAccount:
    number: int
    email: str
    calendars: tuple[GoogleCalendar, ...]


@dataclass(frozen=True, slots=True)
class GoogleEvent:
    id: str
    calendar_id: str
    number: int
    summary: str
    status: str  # confirmed | tentative | cancelled
    starts_at: datetime | None  # aware in `timezone` (timed events)
    ends_at: datetime | None
    all_day: date | None  # first day of an all-day event
    all_day_days: int
    timezone: str
    attendee: tuple[str, str, str] | None  # (displayName, email, responseStatus)
    organizer: tuple[str, str]  # (email, displayName)
    created: datetime
    updated: datetime
    version: int
    deleted: bool = False  # deleted: rendered as Google renders a deleted event (id and status only)
    # An instance of a recurring series (as `singleEvents=true` lists them): the series' id and the
    # instance's start by the recurrence rule (aware, in `timezone`), which a reschedule keeps.
    recurring_event_id: str | None = None
    original_start: datetime | None = None

    def _recurrence_fields(self) -> dict[str, object]:
        if self.recurring_event_id is None or self.original_start is None:
            return {}
        return {
            "recurringEventId": self.recurring_event_id,
            "originalStartTime": {"dateTime": self.original_start.isoformat(), "timeZone": self.timezone},
        }

    def start_instant(self, calendar_timezone: str) -> datetime:
        if self.all_day is not None:
            return datetime.combine(self.all_day, time.min, ZoneInfo(calendar_timezone)).astimezone(UTC)
        assert self.starts_at is not None  # noqa: S101 -- narrows the type; an event is all-day or has both instants
        return self.starts_at.astimezone(UTC)

    def end_instant(self, calendar_timezone: str) -> datetime:
        if self.all_day is not None:
            last = self.all_day + timedelta(days=self.all_day_days)
            return datetime.combine(last, time.min, ZoneInfo(calendar_timezone)).astimezone(UTC)
        assert self.ends_at is not None  # noqa: S101 -- narrows the type; an event is all-day or has both instants
        return self.ends_at.astimezone(UTC)

    def to_json(self) -> dict[str, object]:
        """The event exactly as `events.list` renders it."""
        etag = f'"{3_000_000_000_000_000 + self.version * 1000}"'
        if self.deleted:
            # A deleted instance of a series also names its series and original start.
            return {"kind": "calendar#event", "etag": etag, "id": self.id, "status": "cancelled",
                    **self._recurrence_fields()}  # fmt: skip
        if self.all_day is not None:
            start: dict[str, object] = {"date": self.all_day.isoformat()}
            end: dict[str, object] = {"date": (self.all_day + timedelta(days=self.all_day_days)).isoformat()}
        else:
            assert self.starts_at is not None and self.ends_at is not None  # noqa: S101 -- narrows the type; an event is all-day or has both instants
            start = {"dateTime": self.starts_at.isoformat(), "timeZone": self.timezone}
            end = {"dateTime": self.ends_at.isoformat(), "timeZone": self.timezone}
        organizer_email, organizer_name = self.organizer
        record: dict[str, object] = {
            "kind": "calendar#event",
            "etag": etag,
            "id": self.id,
            "status": self.status,
            "htmlLink": f"https://www.google.com/calendar/event?eid={self.id}",
            "created": rfc3339_millis(self.created),
            "updated": rfc3339_millis(self.updated),
            "summary": self.summary,
            "creator": {"email": organizer_email, "self": True},
            "organizer": {"email": organizer_email, "displayName": organizer_name, "self": True},
            "start": start,
            "end": end,
            "iCalUID": f"{self.recurring_event_id or self.id}@google.com",
            "sequence": 0,
            "reminders": {"useDefault": True},
            "eventType": "default",
            **self._recurrence_fields(),
        }
        if self.attendee is not None:
            name, email, response = self.attendee
            record["attendees"] = [
                {"email": organizer_email, "organizer": True, "self": True, "responseStatus": "accepted"},
                {"email": email, "displayName": name, "responseStatus": response},
            ]
        return record


def account_for(number: int) -> GoogleAccount:
    """Account n has two calendars (zones rotate through CALENDAR_TEMPLATES)."""
    picked = [CALENDAR_TEMPLATES[(number - 1 + k) % len(CALENDAR_TEMPLATES)] for k in (0, 1)]
    calendars = tuple(GoogleCalendar(pattern.format(n=number), summary, zone) for pattern, summary, zone in picked)
    return GoogleAccount(number=number, email=f"owner{number}@example.com", calendars=calendars)


class GoogleStore:
    """The simulated Google accounts, their calendars' events, and the sync-token clock.

    Every change bumps `version` (and the event's); a sync token remembers the version its listing
    started at and the token `generation`; `expire_sync_tokens()` starts a new generation (410)."""

    def __init__(
        self, *, seed: int, accounts: int, events_per_account: int, anchor: date, clock: Clock | None = None
    ) -> None:
        self.clock = clock or anchor_clock(anchor)
        self.accounts: dict[int, GoogleAccount] = {}
        self.events: dict[int, dict[tuple[str, str], GoogleEvent]] = {}
        self.tokens = OAuthTokenBook("google")
        self.version = 0
        self.generation = 1
        for number in range(FIRST_ACCOUNT, FIRST_ACCOUNT + accounts):
            account = account_for(number)
            self.accounts[number] = account
            self.events[number] = {}
            self.tokens.issue(number)
            rng = random.Random(f"apptsync-simulator:{seed}:google:{number}")  # noqa: S311 -- seeded, reproducible test data, not a secret
            now = self.clock()
            for n in range(1, events_per_account + 1):
                self._put(number, self._seeded(rng, account, n, anchor=anchor, now=now))

    def _next_version(self) -> int:
        self.version += 1
        return self.version

    def _put(self, number: int, event: GoogleEvent) -> None:
        self.events[number][(event.calendar_id, event.id)] = event

    def _seeded(
        self, rng: random.Random, account: GoogleAccount, n: int, *, anchor: date, now: datetime
    ) -> GoogleEvent:
        calendar = rng.choice(account.calendars)
        zone = calendar.timezone if rng.random() < 0.8 else rng.choice(CLIENT_TIMEZONES)
        day = anchor + timedelta(days=rng.randint(-DATA_SPREAD_DAYS, DATA_SPREAD_DAYS))
        all_day = rng.random() < 0.08
        starts_at = ends_at = None
        if not all_day:
            wall = datetime.combine(day, time(rng.randint(6, 20), rng.choice((0, 15, 30, 45))), ZoneInfo(zone))
            starts_at = wall.astimezone(UTC).astimezone(ZoneInfo(zone))
            ends_at = (starts_at.astimezone(UTC) + timedelta(minutes=rng.choice((15, 30, 45, 60, 90)))).astimezone(
                ZoneInfo(zone)
            )
        status = "cancelled" if rng.random() < 0.1 else "tentative" if rng.random() < 0.05 else "confirmed"
        attendee = None
        if rng.random() < 0.9:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            name = " ".join(part for part in (first, last) if part)
            email = f"patient{n}.{account.number}@example.com"
            attendee = (name, email if rng.random() < 0.85 else email.upper(), rng.choice(RESPONSES))
        # Created 1-60 days before the day, but never in the future: a later real change must be newer.
        created = not_after(datetime.combine(day - timedelta(days=rng.randint(1, 60)), time(9), UTC), now)
        return GoogleEvent(
            id=f"{rng.getrandbits(96):024x}",
            calendar_id=calendar.id,
            number=n,
            summary=rng.choice(SUMMARIES),
            status=status,
            starts_at=starts_at,
            ends_at=ends_at,
            all_day=day if all_day else None,
            all_day_days=rng.choice((1, 1, 1, 2)),
            timezone=zone,
            attendee=attendee,
            organizer=(calendar.id, calendar.summary),
            created=created,
            updated=not_after(created + timedelta(minutes=rng.randint(0, 5000), milliseconds=rng.randint(0, 999)), now),
            version=self._next_version(),
        )

    # -- reading ---------------------------------------------------------------------------------

    def authenticate(self, access_token: str) -> GoogleAccount | None:
        number = self.tokens.account_of(access_token)
        return None if number is None else self.accounts[number]

    def calendar(self, account: GoogleAccount, calendar_id: str) -> GoogleCalendar | None:
        return next((c for c in account.calendars if c.id == calendar_id), None)

    def data_set(self, number: int) -> list[dict[str, object]]:
        """Every event of the account (cancelled ones too) as `{calendar_id, calendar_timezone,
        calendar_summary, event}`, the event rendered as the API renders it."""
        zones = {c.id: c for c in self.accounts[number].calendars}
        ordered = sorted(self.events[number].values(), key=lambda e: (e.calendar_id, e.number))
        return [
            {"calendar_id": e.calendar_id, "calendar_timezone": zones[e.calendar_id].timezone,
             "calendar_summary": zones[e.calendar_id].summary, "event": e.to_json()}
            for e in ordered
        ]  # fmt: skip

    def list_events(
        self, account: GoogleAccount, calendar_id: str, params: Mapping[str, str], *, empty_page_every: int = 0
    ) -> dict[str, object]:
        """The body of `GET /calendars/{calendar_id}/events`. Raises GoogleQueryError (400 bad
        parameters, 404 unknown calendar, 410 expired sync token)."""
        calendar = self.calendar(account, calendar_id)
        if calendar is None:
            raise GoogleQueryError(404, "notFound", "Not Found")
        max_results = _max_results(params)
        sync_text = params.get("syncToken")
        if sync_text is not None:
            conflicting = [p for p in ("timeMin", "timeMax", "updatedMin", "orderBy", "q", "iCalUID") if p in params]
            if conflicting:
                raise GoogleQueryError(400, "invalid", f"syncToken cannot be combined with {', '.join(conflicting)}.")
        page = _decode(params.get("pageToken"), "pageToken") if "pageToken" in params else None
        if page is not None and (page.get("g") != self.generation or page.get("c") != calendar_id):
            raise GoogleQueryError(410, "fullSyncRequired", _FULL_SYNC_REQUIRED)
        since: int | None = None
        if page is not None:
            since = _int_field(page, "s") if page.get("s") is not None else None
        elif sync_text is not None:
            sync = _decode(sync_text, "syncToken")
            if sync.get("g") != self.generation or sync.get("c") != calendar_id or not isinstance(sync.get("v"), int):
                raise GoogleQueryError(410, "fullSyncRequired", _FULL_SYNC_REQUIRED)
            since = _int_field(sync, "v")
        if since is not None:
            # Incremental: every change since the token, deleted events included, whatever the time.
            selected = sorted(
                (e for e in self.events[account.number].values() if e.calendar_id == calendar_id and e.version > since),
                key=lambda e: (e.version, e.id),
            )
        else:
            selected = self._full_listing(account, calendar, params)
        snapshot = _int_field(page, "v") if page is not None else self.version
        offset = _int_field(page, "o") if page is not None else 0
        page_number = _int_field(page, "p") if page is not None else 0
        after_empty = page.get("e") is True if page is not None else False
        items: list[GoogleEvent] = []
        more = offset < len(selected)
        serve_empty = empty_page_every > 0 and more and not after_empty and (page_number + 1) % empty_page_every == 0
        if not serve_empty:
            items = selected[offset : offset + max_results]
            offset += len(items)
            more = offset < len(selected)
        body: dict[str, object] = {
            "kind": "calendar#events",
            "etag": f'"p{self.version}"',
            "summary": calendar.summary,
            "description": "",
            "updated": rfc3339_millis(max((e.updated for e in selected), default=datetime(2024, 1, 1, tzinfo=UTC))),
            "timeZone": calendar.timezone,
            "accessRole": "owner",
            "defaultReminders": [],
        }
        if more:
            body["nextPageToken"] = _encode({"c": calendar_id, "g": self.generation, "v": snapshot, "s": since,
                                             "o": offset, "p": page_number + 1, "e": serve_empty})  # fmt: skip
        else:
            body["nextSyncToken"] = _encode({"c": calendar_id, "g": self.generation, "v": snapshot})
        # Incremental sync without showDeleted=true lists a cancelled event as a deletion notice (id and
        # status only): Google withholds the details the organizer's calendar keeps for undeleting.
        withheld = since is not None and params.get("showDeleted", "false").lower() != "true"
        body["items"] = [_listed(e, details=not withheld) for e in items]
        return body

    def _full_listing(
        self, account: GoogleAccount, calendar: GoogleCalendar, params: Mapping[str, str]
    ) -> list[GoogleEvent]:
        time_min = _time_param(params, "timeMin")
        time_max = _time_param(params, "timeMax")
        show_deleted = params.get("showDeleted", "false").lower() == "true"
        if params.get("orderBy") == "startTime" and params.get("singleEvents", "false").lower() != "true":
            raise GoogleQueryError(
                400, "badRequest", "The requested ordering is not available for the particular query."
            )

        def wanted(event: GoogleEvent) -> bool:
            if event.calendar_id != calendar.id or (event.status == "cancelled" and not show_deleted):
                return False
            if event.deleted:
                return show_deleted
            # timeMin bounds the end, timeMax the start; both exclusive.
            if time_min is not None and event.end_instant(calendar.timezone) <= time_min:
                return False
            return time_max is None or event.start_instant(calendar.timezone) < time_max

        # Google's default order is unspecified: the simulator lists by event id. A recurring series
        # is stored as its instances and always listed so (what `singleEvents=true` gives; series
        # masters with `recurrence` rules, what `singleEvents=false` would list, are not simulated).
        return sorted((e for e in self.events[account.number].values() if wanted(e)), key=lambda e: e.id)

    # -- admin mutations -------------------------------------------------------------------------

    def add(self, number: int, calendar_id: str, fields: Mapping[str, object], *, now: datetime) -> GoogleEvent:
        """A new event on `calendar_id`: `start` (ISO 8601 with offset) or `date` (all-day), optional
        `duration_minutes`, `summary`, `attendee_name`, `attendee_email`. Raises KeyError,
        GoogleQueryError."""
        account = self.accounts[number]
        calendar = self.calendar(account, calendar_id)
        if calendar is None:
            raise KeyError(calendar_id)
        sequence = len(self.events[number]) + 1
        event_id = hashlib.sha256(f"added:{number}:{calendar_id}:{sequence}".encode()).hexdigest()[:26]
        minutes = int(str(fields.get("duration_minutes", 30)))
        name = str(fields.get("attendee_name", "Neue Patientin \u00c9lodie"))
        email = str(fields.get("attendee_email", f"added{sequence}.{number}@example.com"))
        event = GoogleEvent(
            id=event_id,
            calendar_id=calendar_id,
            number=sequence,
            summary=str(fields.get("summary", "Added appointment")),
            status="confirmed",
            starts_at=None,
            ends_at=None,
            all_day=None,
            all_day_days=1,
            timezone=calendar.timezone,
            attendee=(name, email, "accepted"),
            organizer=(calendar.id, calendar.summary),
            created=now,
            updated=now,
            version=self._next_version(),
        )
        event = _with_start(event, fields, minutes)
        self._put(number, event)
        return event

    def cancel(
        self, number: int, calendar_id: str, event_id: str, *, now: datetime, delete: bool = False
    ) -> GoogleEvent:
        """`status: cancelled` (full data kept); `delete` renders it as a deleted event (id and status
        only). Raises KeyError."""
        event = self.events[number][(calendar_id, event_id)]
        changed = replace(event, status="cancelled", deleted=delete, updated=now, version=self._next_version())
        self._put(number, changed)
        return changed

    def reschedule(
        self, number: int, calendar_id: str, event_id: str, fields: Mapping[str, object], *, now: datetime
    ) -> GoogleEvent:
        """Moves the event to `start` (or all-day `date`), keeping its duration. Raises KeyError,
        GoogleQueryError."""
        event = self.events[number][(calendar_id, event_id)]
        minutes = 30
        if event.starts_at is not None and event.ends_at is not None:
            minutes = int((event.ends_at - event.starts_at).total_seconds() // 60)
        moved = _with_start(replace(event, updated=now, version=self._next_version()), fields, minutes)
        self._put(number, moved)
        return moved

    def add_recurring(
        self, number: int, calendar_id: str, fields: Mapping[str, object], *, now: datetime
    ) -> list[GoogleEvent]:
        """A recurring series on `calendar_id`, stored as its instances (what `singleEvents=true`
        lists): `start` (ISO 8601 with offset: the first instance), `count` instances (default 4)
        every `interval_days` (default 7) at the same wall time in the calendar's zone; instance ids
        are `<series id>_<original start, UTC, YYYYMMDDTHHMMSSZ>`. Raises KeyError, GoogleQueryError."""
        account = self.accounts[number]
        calendar = self.calendar(account, calendar_id)
        if calendar is None:
            raise KeyError(calendar_id)
        start = fields.get("start")
        first = _aware(start) if isinstance(start, str) else None
        if first is None:
            raise GoogleQueryError(400, "invalid", "start (ISO 8601 with offset) is required")
        count = max(1, min(52, int(str(fields.get("count", 4)))))
        interval = timedelta(days=max(1, int(str(fields.get("interval_days", 7)))))
        minutes = int(str(fields.get("duration_minutes", 45)))
        zone = ZoneInfo(calendar.timezone)
        base = hashlib.sha256(f"recurring:{number}:{calendar_id}:{len(self.events[number]) + 1}".encode()).hexdigest()
        series_id = base[:26]
        wall = first.astimezone(zone).replace(tzinfo=None)
        name = str(fields.get("attendee_name", "Serien-Patient Jörg"))
        email = str(fields.get("attendee_email", f"series.{series_id[:8]}@example.com"))
        instances = []
        for k in range(count):
            # The same wall time every occurrence (a weekly 09:00 stays 09:00 across a DST change).
            original = (wall + interval * k).replace(tzinfo=zone).astimezone(UTC).astimezone(zone)
            instance = GoogleEvent(
                id=f"{series_id}_{original.astimezone(UTC):%Y%m%dT%H%M%SZ}",
                calendar_id=calendar_id,
                number=len(self.events[number]) + 1,
                summary=str(fields.get("summary", "Physio series")),
                status="confirmed",
                starts_at=original,
                ends_at=(original.astimezone(UTC) + timedelta(minutes=minutes)).astimezone(zone),
                all_day=None,
                all_day_days=1,
                timezone=calendar.timezone,
                attendee=(name, email, "accepted"),
                organizer=(calendar.id, calendar.summary),
                created=now,
                updated=now,
                version=self._next_version(),
                recurring_event_id=series_id,
                original_start=original,
            )
            self._put(number, instance)
            instances.append(instance)
        return instances

    def expire_sync_tokens(self) -> int:
        """Every sync and page token issued so far answers 410 from now on; returns the new generation."""
        self.generation += 1
        return self.generation


def _listed(event: GoogleEvent, *, details: bool) -> dict[str, object]:
    """The event as `events.list` renders it; a cancelled one as a deletion notice unless `details`."""
    if event.status == "cancelled" and not details:
        return replace(event, deleted=True).to_json()
    return event.to_json()


def _with_start(event: GoogleEvent, fields: Mapping[str, object], minutes: int) -> GoogleEvent:
    start, day = fields.get("start"), fields.get("date")
    if isinstance(day, str):
        try:
            return replace(event, all_day=date.fromisoformat(day), starts_at=None, ends_at=None)
        except ValueError as exc:
            raise GoogleQueryError(400, "invalid", "date must be YYYY-MM-DD") from exc
    if isinstance(start, str):
        try:
            moment = datetime.fromisoformat(start)
        except ValueError as exc:
            raise GoogleQueryError(400, "invalid", "start must be ISO 8601 with an offset") from exc
        if moment.tzinfo is not None:
            local = moment.astimezone(ZoneInfo(event.timezone))
            ends = (local.astimezone(UTC) + timedelta(minutes=minutes)).astimezone(ZoneInfo(event.timezone))
            return replace(event, starts_at=local, ends_at=ends, all_day=None)
    raise GoogleQueryError(400, "invalid", "start (ISO 8601 with offset) or date is required")


def _aware(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _max_results(params: Mapping[str, str]) -> int:
    text = params.get("maxResults", str(DEFAULT_MAX_RESULTS))
    if not text.isdigit() or int(text) < 1:
        raise GoogleQueryError(400, "invalid", "Invalid value for maxResults.")
    return min(MAX_RESULTS, int(text))


def _time_param(params: Mapping[str, str], name: str) -> datetime | None:
    if name not in params:
        return None
    try:
        moment = datetime.fromisoformat(params[name])
    except ValueError as exc:
        raise GoogleQueryError(400, "badRequest", f"Bad Request: {name}") from exc
    if moment.tzinfo is None:
        raise GoogleQueryError(400, "badRequest", f"Bad Request: {name} needs an offset")
    return moment.astimezone(UTC)


def _int_field(token: dict[str, object], key: str) -> int:
    value = token.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise GoogleQueryError(400, "invalid", "Invalid page or sync token.")
    return value


def _encode(value: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, sort_keys=True).encode()).decode().rstrip("=")


def _decode(token: str | None, name: str) -> dict[str, object]:
    """Raises GoogleQueryError (400) for a token this simulator did not issue."""
    try:
        value = json.loads(base64.urlsafe_b64decode((token or "") + "=" * (-len(token or "") % 4)))
    except (binascii.Error, ValueError) as exc:
        raise GoogleQueryError(400, "invalid", f"Invalid {name}.") from exc
    if not isinstance(value, dict):
        raise GoogleQueryError(400, "invalid", f"Invalid {name}.")
    return value
