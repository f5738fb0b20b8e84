"""Google Calendar events -> canonical appointments and cancellation stubs, on payloads shaped like
the Calendar API v3 Events resource; and, for any JSON at all, a valid appointment, a stub of a
cancelled event or a skip with a reason."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apptsync.fetcher.providers import JobWindow, JsonValue
from apptsync.fetcher.providers.google_calendar import (
    OUT_OF_WINDOW,
    CalendarListing,
    google_moment,
    google_page,
    normalize_google_event,
    zone_or_utc,
)
from apptsync.shared.appointments import AppointmentStatus, CancellationStub, CanonicalAppointment, SkippedRecord

pytestmark = pytest.mark.unit

FETCHED_AT = datetime(2024, 4, 1, tzinfo=UTC)
WINDOW = JobWindow(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC))
LISTING = CalendarListing(calendar_id="clinic@group.calendar.google.com", timezone="Europe/Berlin", name="Praxis")

# An events.list item, shaped like the Events resource of Google Calendar API v3.
EVENT: dict[str, Any] = {
    "kind": "calendar#event",
    "etag": '"3181161784712000"',
    "id": "7cbh8rpc10lrc0ckih9tafss99",
    "status": "confirmed",
    "htmlLink": "https://www.google.com/calendar/event?eid=N2NiaDhycGMxMGxyYzBja2loOXRhZnNzOTkg",
    "created": "2024-02-01T10:00:00.000Z",
    "updated": "2024-02-03T11:12:13.456Z",
    "summary": "Erstgespräch",
    "creator": {"email": "clinic@group.calendar.google.com", "self": True},
    "organizer": {"email": "clinic@group.calendar.google.com", "displayName": "Praxis", "self": True},
    "start": {"dateTime": "2024-03-31T10:00:00+02:00", "timeZone": "Europe/Berlin"},
    "end": {"dateTime": "2024-03-31T10:45:00+02:00", "timeZone": "Europe/Berlin"},
    "iCalUID": "7cbh8rpc10lrc0ckih9tafss99@google.com",
    "sequence": 0,
    "attendees": [
        {"email": "clinic@group.calendar.google.com", "organizer": True, "self": True, "responseStatus": "accepted"},
        {"email": "room-1@resource.calendar.google.com", "resource": True, "responseStatus": "accepted"},
        {"email": "Ana.Garcia@Example.com", "displayName": "Ana García", "responseStatus": "needsAction", "id": "p7"},
    ],
    "reminders": {"useDefault": True},
    "eventType": "default",
}


# What events.list returns for a deleted event in an incremental sync (or with showDeleted=true): the
# Events resource documents that "Deleted events are only guaranteed to have the id field populated";
# the listing renders kind, etag, id and status.
DELETED: dict[str, Any] = {"kind": "calendar#event", "etag": '"3181161784712000"', "id": "7cbh8rpc10lrc0ckih9tafss99",
                           "status": "cancelled"}  # fmt: skip
# A cancelled instance of a recurring event (singleEvents=true): "Cancelled exceptions are only
# guaranteed to have values for the id, recurringEventId and originalStartTime fields populated."
CANCELLED_INSTANCE: dict[str, Any] = {
    "kind": "calendar#event",
    "etag": '"3181170203350000"',
    "id": "5qpvhbt4o0ukdkn5mq3bq2sf8e_20240315T090000Z",
    "status": "cancelled",
    "recurringEventId": "5qpvhbt4o0ukdkn5mq3bq2sf8e",
    "originalStartTime": {"dateTime": "2024-03-15T10:00:00+01:00", "timeZone": "Europe/Berlin"},
}
CANCELLED_ALL_DAY_INSTANCE: dict[str, Any] = {
    "kind": "calendar#event",
    "etag": '"3181170203351000"',
    "id": "0ntdgb3mv3hbq9l3t1uoa4m0ha_20240315",
    "status": "cancelled",
    "recurringEventId": "0ntdgb3mv3hbq9l3t1uoa4m0ha",
    "originalStartTime": {"date": "2024-03-15"},
}


def variant(**changes: Any) -> dict[str, Any]:
    record = copy.deepcopy(EVENT)
    record.update(changes)
    return record


def normalized(event: JsonValue = EVENT, listing: CalendarListing = LISTING) -> CanonicalAppointment:
    result = normalize_google_event(event, listing=listing, window=WINDOW, fetched_at=FETCHED_AT)
    assert isinstance(result, CanonicalAppointment), result
    return result


def test_a_timed_event_becomes_an_appointment_keyed_by_calendar_and_event() -> None:
    appointment = normalized()
    assert appointment.external_id == "clinic@group.calendar.google.com/7cbh8rpc10lrc0ckih9tafss99"
    # 31 March 2024 is the first day of summer time in Berlin: +02:00.
    assert appointment.starts_at == datetime(2024, 3, 31, 8, 0, tzinfo=UTC)
    assert appointment.ends_at == datetime(2024, 3, 31, 8, 45, tzinfo=UTC)
    assert appointment.timezone == "Europe/Berlin"
    assert appointment.status is AppointmentStatus.SCHEDULED
    assert appointment.observed_at == datetime(2024, 2, 3, 11, 12, 13, 456000, tzinfo=UTC)
    assert (appointment.title, appointment.calendar) == ("Erstgespräch", "Praxis")
    assert (appointment.contact.name, appointment.contact.email, appointment.contact.provider_client_id) == (
        "Ana García", "ana.garcia@example.com", "p7",
    )  # fmt: skip
    assert appointment.external_url == EVENT["htmlLink"]
    assert json.loads(appointment.raw_json) == EVENT


def test_an_all_day_event_starts_at_midnight_in_the_calendars_zone() -> None:
    appointment = normalized(variant(start={"date": "2024-03-31"}, end={"date": "2024-04-01"}))
    # Midnight in Berlin on the DST day is 22:00 UTC the day before; the day is 23 hours long.
    assert appointment.starts_at == datetime(2024, 3, 30, 23, 0, tzinfo=UTC)
    assert appointment.ends_at == datetime(2024, 3, 31, 22, 0, tzinfo=UTC)
    assert appointment.timezone == "Europe/Berlin"
    sydney = CalendarListing(calendar_id="c", timezone="Australia/Sydney", name="")
    assert normalized(variant(start={"date": "2024-03-15"}), sydney).starts_at == datetime(2024, 3, 14, 13, tzinfo=UTC)


def test_an_unknown_calendar_zone_means_utc() -> None:
    odd = CalendarListing(calendar_id="c", timezone="Mars/Olympus_Mons", name="")
    appointment = normalized(variant(start={"date": "2024-03-15"}, end={"date": "2024-03-16"}), odd)
    assert appointment.starts_at == datetime(2024, 3, 15, tzinfo=UTC)
    assert zone_or_utc("").key == zone_or_utc("../../etc/passwd").key == "UTC"


def test_cancelled_is_canceled_and_tentative_is_scheduled() -> None:
    assert normalized(variant(status="cancelled")).status is AppointmentStatus.CANCELED
    assert normalized(variant(status="tentative")).status is AppointmentStatus.SCHEDULED


def stub(event: JsonValue, window: JobWindow = WINDOW) -> CancellationStub:
    result = normalize_google_event(event, listing=LISTING, window=window, fetched_at=FETCHED_AT)
    assert isinstance(result, CancellationStub), result
    return result


def test_a_deleted_event_carrying_only_its_id_cancels_the_stored_row_by_a_stub() -> None:
    deleted = stub(DELETED)
    # The same key as the full event had, so the writer cancels that row.
    assert deleted.external_id == normalized().external_id
    assert deleted.external_id == "clinic@group.calendar.google.com/7cbh8rpc10lrc0ckih9tafss99"
    assert deleted.status is AppointmentStatus.CANCELED
    assert deleted.observed_at == FETCHED_AT  # no `updated`: the fetch time
    assert json.loads(deleted.raw_json) == DELETED
    assert len(deleted.content_hash) == 32
    # Another observation of the same notice is the same content.
    later = normalize_google_event(DELETED, listing=LISTING, window=WINDOW, fetched_at=datetime(2025, 1, 1, tzinfo=UTC))
    assert isinstance(later, CancellationStub) and later.content_hash == deleted.content_hash


def test_a_stub_has_no_time_so_no_window_filters_it() -> None:
    far_away = JobWindow(datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 2, 1, tzinfo=UTC))
    assert stub(DELETED, far_away).external_id.endswith("/7cbh8rpc10lrc0ckih9tafss99")
    # A cancelled instance whose original start lies outside the window is still a stub of that
    # instance: its row may have been stored by a job with another window.
    instance = stub(CANCELLED_INSTANCE, far_away)
    assert instance.external_id == "clinic@group.calendar.google.com/5qpvhbt4o0ukdkn5mq3bq2sf8e_20240315T090000Z"
    assert json.loads(instance.raw_json)["originalStartTime"] == CANCELLED_INSTANCE["originalStartTime"]
    all_day = stub(CANCELLED_ALL_DAY_INSTANCE, far_away)
    assert all_day.external_id == "clinic@group.calendar.google.com/0ntdgb3mv3hbq9l3t1uoa4m0ha_20240315"


def test_a_stub_is_observed_when_google_says_it_was_updated() -> None:
    updated = stub({**DELETED, "updated": "2024-03-20T08:09:10.123Z"})
    assert updated.observed_at == datetime(2024, 3, 20, 8, 9, 10, 123000, tzinfo=UTC)
    assert updated.content_hash != stub(DELETED).content_hash  # the payload differs


def test_a_cancelled_event_with_its_start_is_a_canceled_record_inside_the_window_only() -> None:
    # A full listing with showDeleted=true returns the organizer's cancelled events with details.
    cancelled = normalized(variant(status="cancelled"))
    assert (cancelled.status, cancelled.starts_at) == (AppointmentStatus.CANCELED, normalized().starts_at)
    late = normalize_google_event(
        variant(status="cancelled", start={"dateTime": "2024-04-02T10:00:00+02:00"}),
        listing=LISTING, window=WINDOW, fetched_at=FETCHED_AT,
    )  # fmt: skip
    assert isinstance(late, SkippedRecord) and late.reason == OUT_OF_WINDOW


def test_an_event_without_a_readable_start_is_invalid_unless_it_is_a_deletion_notice() -> None:
    for event, why in [
        (variant(start=None), "invalid: no start time"),  # not cancelled: a broken event, not a deletion
        (variant(status="cancelled", start={"dateTime": "not-a-date"}), "invalid: no start time"),
    ]:
        result = normalize_google_event(event, listing=LISTING, window=WINDOW, fetched_at=FETCHED_AT)
        assert isinstance(result, SkippedRecord)
        assert result.reason == why
        assert result.detail == "event clinic@group.calendar.google.com/7cbh8rpc10lrc0ckih9tafss99"


def test_the_event_zone_wins_for_timed_events_and_missing_parts_fall_back() -> None:
    tokyo = normalized(variant(start={"dateTime": "2024-03-20T09:00:00+09:00", "timeZone": "Asia/Tokyo"}, end={}))
    assert (tokyo.timezone, tokyo.ends_at) == ("Asia/Tokyo", tokyo.starts_at)
    no_zone = normalized(variant(start={"dateTime": "2024-03-20T09:00:00Z"}, attendees=None, updated="soon"))
    assert (no_zone.timezone, no_zone.contact.email, no_zone.observed_at) == ("Europe/Berlin", "", FETCHED_AT)


def test_a_page_counts_out_of_window_and_invalid_records_and_keeps_stubs_in_order() -> None:
    items: list[JsonValue] = [
        EVENT,
        variant(id="late", start={"dateTime": "2024-04-01T02:00:00+02:00"}),  # 2024-04-01T00:00Z: window end
        variant(id="", summary="no id"),
        "not an object",
        variant(id="x", start={"dateTime": "not-a-date"}),
        CANCELLED_INSTANCE,
        {**DELETED, "id": "", "status": "cancelled"},  # a notice without an id names nothing to cancel
    ]
    page = google_page(items, listing=LISTING, window=WINDOW, fetched_at=FETCHED_AT)
    assert (page.records_fetched, len(page.appointments), page.skipped_out_of_window, page.skipped_invalid) == (
        7, 2, 1, 4,
    )  # fmt: skip
    assert [type(a) for a in page.appointments] == [CanonicalAppointment, CancellationStub]
    assert page.skip_details[0].reason == OUT_OF_WINDOW
    assert all("García" not in s.detail and "Example" not in s.detail for s in page.skip_details)


def test_google_moment_reads_date_time_and_dates() -> None:
    assert google_moment({"dateTime": "2024-03-01T00:00:00-05:00"}, calendar_timezone="") == datetime(
        2024, 3, 1, 5, tzinfo=UTC
    )
    assert google_moment({"dateTime": "2024-03-01T00:00:00"}, calendar_timezone="UTC") is None  # no offset
    assert google_moment({"date": "2024-13-01"}, calendar_timezone="UTC") is None
    assert google_moment("2024-03-01", calendar_timezone="UTC") is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
MOMENT = st.fixed_dictionaries(
    {}, optional={"dateTime": st.text() | st.just("2024-03-10T10:00:00+01:00") | JSON,
                  "date": st.text() | st.just("2024-03-10") | JSON, "timeZone": st.text() | JSON},
)  # fmt: skip
EVENTS = JSON | st.fixed_dictionaries(
    {}, optional={"id": st.text() | JSON, "status": st.sampled_from(["confirmed", "cancelled"]) | JSON,
                  "start": MOMENT | JSON, "end": MOMENT | JSON, "updated": st.text() | JSON, "attendees": JSON,
                  "summary": JSON, "htmlLink": JSON},
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(event=EVENTS, zone=st.text(max_size=30) | st.sampled_from(["Europe/Berlin", "Pacific/Chatham", ""]))
def test_any_json_becomes_an_appointment_or_a_skip_with_a_reason(event: JsonValue, zone: str) -> None:
    listing = CalendarListing(calendar_id="cal", timezone=zone, name="")
    result = normalize_google_event(event, listing=listing, window=WINDOW, fetched_at=FETCHED_AT)
    if isinstance(result, SkippedRecord):
        assert result.reason == OUT_OF_WINDOW or result.reason.startswith("invalid: ")
    elif isinstance(result, CancellationStub):
        assert isinstance(event, dict) and event.get("status") == "cancelled"
        assert result.external_id.startswith("cal/") and len(result.content_hash) == 32
    else:
        assert WINDOW.contains(result.starts_at) and result.ends_at >= result.starts_at
        assert result.external_id.startswith("cal/") and result.content_hash
    page = google_page([event, event], listing=listing, window=WINDOW, fetched_at=FETCHED_AT)
    assert page.records_fetched == len(page.appointments) + page.skipped_out_of_window + page.skipped_invalid == 2
