"""Google Calendar events -> CanonicalAppointments (pure; never raises on any JSON input).

- The external id is `{calendarId}/{eventId}`: event ids are unique per calendar only.
- An all-day event (`start.date`, no `dateTime`) starts at midnight of that day in the calendar's
  timezone (the listing's `timeZone`) and ends at midnight of its exclusive `end.date`: the moments
  a person looking at that calendar sees the day begin and end. Its `timezone` is the calendar's.
- `status: cancelled` -> canceled; `confirmed` and `tentative` -> scheduled. Google has no no-show.
- A cancelled event without a start is a deletion notice: Google's incremental sync lists a deleted
  event as `{"kind", "etag", "id", "status": "cancelled"}` (a cancelled instance of a recurring event
  also has `recurringEventId` and `originalStartTime`). It becomes a CancellationStub of the same
  external id, outside any window filter (it has no time): the stored row is canceled, not left
  scheduled. A cancelled event that still has its start (a full listing with `showDeleted=true`
  returns the organizer's cancelled events with their details) is an ordinary canceled record.
- `updated` is the observation time (of stubs too, when they carry it). The contact is the first
  attendee that is neither the organizer nor the calendar's own account (nor a resource such as a
  room).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from apptsync.fetcher.providers._json_fields import canonical_json, list_field, object_field, parse_instant, text_field
from apptsync.fetcher.providers._model import JobWindow, JsonValue, ProviderPage
from apptsync.shared.appointments import (
    AppointmentStatus,
    CancellationStub,
    CanonicalAppointment,
    Contact,
    PageRecord,
    SkippedRecord,
)

OUT_OF_WINDOW = "out_of_window"
_INVALID = "invalid: "


@dataclass(frozen=True, slots=True)
class CalendarListing:
    """What one `events.list` answer says about its calendar."""

    calendar_id: str
    timezone: str  # the listing's `timeZone` (IANA); "" when absent
    name: str  # the listing's `summary`


def zone_or_utc(name: str) -> ZoneInfo:
    """The IANA zone `name`; UTC when it is empty or unknown."""
    if not name or len(name) > 64:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        return ZoneInfo("UTC")


def _is_zone(name: str) -> bool:
    return bool(name) and zone_or_utc(name).key == name


def google_moment(value: JsonValue, *, calendar_timezone: str) -> datetime | None:
    """`{dateTime}` -> that instant; `{date}` (all-day) -> midnight of the day in the calendar's
    timezone. None when neither is readable."""
    if not isinstance(value, dict):
        return None
    if "dateTime" in value:
        return parse_instant(value.get("dateTime"))
    day_text = value.get("date")
    if not isinstance(day_text, str):
        return None
    try:
        day = date.fromisoformat(day_text.strip())
        return datetime.combine(day, time.min, zone_or_utc(calendar_timezone)).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _contact(event: JsonValue) -> Contact:
    for attendee in list_field(event, "attendees"):
        if not isinstance(attendee, dict):
            continue
        if attendee.get("organizer") is True or attendee.get("self") is True or attendee.get("resource") is True:
            continue
        return Contact(
            name=text_field(attendee, "displayName"),
            email=text_field(attendee, "email").lower(),
            provider_client_id=text_field(attendee, "id"),
        )
    return Contact()


def _status(event: JsonValue) -> AppointmentStatus:
    return AppointmentStatus.CANCELED if text_field(event, "status") == "cancelled" else AppointmentStatus.SCHEDULED


def _has_start(start: dict[str, JsonValue]) -> bool:
    return "dateTime" in start or "date" in start


def normalize_google_event(
    event: JsonValue, *, listing: CalendarListing, window: JobWindow, fetched_at: datetime
) -> PageRecord | SkippedRecord:
    """One event as a CanonicalAppointment, a cancelled event without a start as a CancellationStub
    (never filtered by the window), or why not ("out_of_window"; "invalid: ..." for no id, no start
    on an event that is not cancelled, or a start that cannot be read). Never raises."""
    if not isinstance(event, dict):
        return SkippedRecord(_INVALID + "event is not a JSON object")
    event_id = text_field(event, "id")
    if not event_id:
        return SkippedRecord(_INVALID + "event without id")
    external_id = f"{listing.calendar_id}/{event_id}"
    start, end = object_field(event, "start"), object_field(event, "end")
    if not _has_start(start) and text_field(event, "status") == "cancelled":
        return _deletion(event, external_id, fetched_at=fetched_at)
    starts_at = google_moment(start, calendar_timezone=listing.timezone)
    if starts_at is None:
        return SkippedRecord(_INVALID + "no start time", f"event {external_id}")
    ends_at = google_moment(end, calendar_timezone=listing.timezone) or starts_at
    try:
        starts_utc, ends_utc = starts_at.astimezone(UTC), ends_at.astimezone(UTC)
        raw_json = canonical_json(event)
    except (OverflowError, ValueError, TypeError, RecursionError):
        return SkippedRecord(_INVALID + "unrepresentable times or payload", f"event {external_id}")
    if not window.contains(starts_utc):
        return SkippedRecord(OUT_OF_WINDOW, f"event {external_id} starts {starts_utc.isoformat()}")
    event_zone = text_field(start, "timeZone")
    all_day = "dateTime" not in start
    timezone = listing.timezone if all_day or not _is_zone(event_zone) else event_zone
    updated = parse_instant(event.get("updated"))
    summary = text_field(event, "summary")
    return CanonicalAppointment(
        external_id=external_id,
        starts_at=starts_utc,
        ends_at=max(ends_utc, starts_utc),
        timezone=timezone,
        status=_status(event),
        observed_at=updated if updated is not None else fetched_at,
        raw_json=raw_json,
        title=summary,
        appointment_type="",
        calendar=listing.name or listing.calendar_id,
        contact=_contact(event),
        external_url=text_field(event, "htmlLink"),
    )


def _deletion(
    event: dict[str, JsonValue], external_id: str, *, fetched_at: datetime
) -> CancellationStub | SkippedRecord:
    """The CancellationStub of a cancelled event that carries no start."""
    try:
        raw_json = canonical_json(event)
    except (ValueError, TypeError, RecursionError):
        return SkippedRecord(_INVALID + "unrepresentable payload", f"event {external_id}")
    updated = parse_instant(event.get("updated"))
    return CancellationStub(
        external_id=external_id, observed_at=updated if updated is not None else fetched_at, raw_json=raw_json
    )


def google_page(
    items: Sequence[JsonValue], *, listing: CalendarListing, window: JobWindow, fetched_at: datetime
) -> ProviderPage:
    """The page of one `events.list` answer. Never raises."""
    appointments: list[PageRecord] = []
    skipped: list[SkippedRecord] = []
    out_of_window = invalid = 0
    for item in items:
        result = normalize_google_event(item, listing=listing, window=window, fetched_at=fetched_at)
        if not isinstance(result, SkippedRecord):
            appointments.append(result)
            continue
        skipped.append(result)
        if result.reason == OUT_OF_WINDOW:
            out_of_window += 1
        else:
            invalid += 1
    return ProviderPage(
        records_fetched=len(items),
        appointments=appointments,
        skipped_out_of_window=out_of_window,
        skipped_invalid=invalid,
        skip_details=skipped,
    )
