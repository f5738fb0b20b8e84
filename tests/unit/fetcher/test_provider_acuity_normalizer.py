"""Acuity records -> canonical appointments, on payloads shaped like Acuity's documentation."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apptsync.fetcher.providers import JobWindow, JsonValue
from apptsync.fetcher.providers.acuity import (
    AcuityRequest,
    acuity_local_day,
    acuity_page,
    money_from_acuity,
    normalize_acuity_record,
)
from apptsync.shared.appointments import AppointmentStatus, CanonicalAppointment, Money, SkippedRecord

pytestmark = pytest.mark.unit

OBSERVED_AT = datetime(2022, 7, 1, 12, 0, tzinfo=UTC)
WINDOW = JobWindow(datetime(2022, 6, 1, tzinfo=UTC), datetime(2022, 7, 1, tzinfo=UTC))

# The shape of GET /appointments items in Acuity's API reference.
DOCUMENTED: dict[str, JsonValue] = {
    "id": 54321,
    "firstName": "Bob",
    "lastName": "McTest",
    "phone": " 555-555-1234 ",
    "email": "  Bob.McTest@Example.COM ",
    "date": "June 28, 2022",
    "time": "2:00pm",
    "endTime": "3:30pm",
    "dateCreated": "June 1, 2022",
    "datetimeCreated": "2022-06-01T10:00:00-0500",
    "datetime": "2022-06-28T14:00:00+0800",
    "price": "45.00",
    "priceSold": "45.00",
    "paid": "yes",
    "amountPaid": "12.50",
    "type": "Initial Consultation",
    "appointmentTypeID": 1,
    "classID": None,
    "addonIDs": [],
    "category": "",
    "duration": "90",
    "calendar": "Dr. Amélie",
    "calendarID": 27238,
    "certificate": None,
    "confirmationPage": "https://acuityscheduling.com/schedule.php?owner=11145481&id[]=1220aa9f&action=appt",
    "location": "",
    "notes": "",
    "timezone": "Asia/Shanghai",
    "calendarTimezone": "America/New_York",
    "canceled": False,
    "canClientCancel": True,
    "canClientReschedule": True,
    "labels": None,
    "formsText": "",
}


def record(**changes: JsonValue) -> dict[str, JsonValue]:
    result = copy.deepcopy(DOCUMENTED)
    result.update(changes)
    return result


def normalize(value: JsonValue, currency: str = "USD") -> CanonicalAppointment | SkippedRecord:
    return normalize_acuity_record(value, window=WINDOW, observed_at=OBSERVED_AT, currency=currency)


def appointment(value: JsonValue, currency: str = "USD") -> CanonicalAppointment:
    result = normalize(value, currency)
    assert isinstance(result, CanonicalAppointment), result
    return result


def test_documented_record_becomes_the_canonical_appointment() -> None:
    a = appointment(record())
    assert a.external_id == "54321"
    assert a.starts_at == datetime(2022, 6, 28, 6, 0, tzinfo=UTC)  # 14:00 at +0800
    assert a.ends_at == a.starts_at + timedelta(minutes=90)
    assert a.timezone == "Asia/Shanghai"
    assert a.status is AppointmentStatus.SCHEDULED
    assert (a.title, a.appointment_type, a.calendar) == ("Initial Consultation", "Initial Consultation", "Dr. Amélie")
    assert (a.contact.name, a.contact.email, a.contact.phone) == (
        "Bob McTest",
        "bob.mctest@example.com",
        "555-555-1234",
    )
    assert a.contact.provider_client_id == ""
    assert a.price == Money(4500, "USD")
    assert a.amount_paid == Money(1250, "USD")
    assert a.external_url == DOCUMENTED["confirmationPage"]
    assert a.observed_at == OBSERVED_AT


def test_raw_json_is_the_record_in_canonical_json_text() -> None:
    a = appointment(record(calendar="Zoë"))
    assert a.raw_json == json.dumps(record(calendar="Zoë"), separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    assert "Zoë" in a.raw_json


# Acuity's cancel endpoint: "Once canceled, appointments will have a `noShow` attribute"; canceling as
# an admin may set it. A canceled appointment marked noShow is a no-show, the more specific of the two.
@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"canceled": True}, AppointmentStatus.CANCELED),
        ({"canceled": True, "noShow": False}, AppointmentStatus.CANCELED),
        ({"canceled": True, "noShow": True}, AppointmentStatus.NO_SHOW),
        ({"canceled": False}, AppointmentStatus.SCHEDULED),
    ],
)
def test_canceled_and_no_show(changes: dict[str, JsonValue], status: AppointmentStatus) -> None:
    assert appointment(record(**changes)).status is status


def test_labels_may_be_a_list_or_null() -> None:
    labeled = record(labels=[{"id": 3, "name": "Checked In", "color": "green"}])
    assert appointment(labeled).raw_json != appointment(record(labels=None)).raw_json


def test_name_email_and_phone_may_be_missing() -> None:
    a = appointment(record(firstName="", lastName="Ng", email="", phone=None))
    assert (a.contact.name, a.contact.email, a.contact.phone) == ("Ng", "", "")
    assert a.contact.is_empty


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("45.00", "USD", 4500),
        ("0.00", "USD", 0),
        ("10.5", "EUR", 1050),
        ("1500", "JPY", 1500),
        ("1.234", "KWD", 1234),
        ("0.125", "USD", 12),  # half-even past the minor unit
        ("-5.00", "USD", -500),
        (" 19.99 ", "USD", 1999),
    ],
)
def test_money_is_exact_minor_units(text: str, currency: str, minor: int) -> None:
    assert money_from_acuity(text, currency) == Money(minor, currency)


@pytest.mark.parametrize("value", ["", "  ", "abc", "NaN", "Infinity", "1e400000", None, True, [], {}])
def test_unreadable_money_is_absent(value: JsonValue) -> None:
    assert money_from_acuity(value, "USD") is None


def test_currency_comes_from_the_connection() -> None:
    assert appointment(record(), currency="EUR").price == Money(4500, "EUR")


@pytest.mark.parametrize("duration", [None, "", "abc", "-30", "1e12"])
def test_an_unreadable_duration_ends_at_the_start(duration: JsonValue) -> None:
    a = appointment(record(duration=duration))
    assert a.ends_at == a.starts_at


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not an object", "invalid: record is not a JSON object"),
        ([1, 2], "invalid: record is not a JSON object"),
        (record(id=None), "invalid: no id"),
        (record(id=True), "invalid: no id"),
        (record(datetime=None), "invalid: no readable start time"),
        (record(datetime="June 28, 2022"), "invalid: no readable start time"),
        (record(datetime="2022-06-28T14:00:00"), "invalid: no readable start time"),  # no offset
        (record(datetime="0001-01-01T00:00:00+0800"), "invalid: no readable start time"),
    ],
)
def test_records_without_a_usable_id_or_start_are_invalid(value: JsonValue, reason: str) -> None:
    result = normalize(value)
    assert isinstance(result, SkippedRecord)
    assert result.reason == reason


def test_the_window_is_half_open_on_the_start_time() -> None:
    at_start = record(datetime="2022-06-01T08:00:00+0800")  # 00:00 UTC
    at_end = record(datetime="2022-07-01T08:00:00+0800")
    just_before = record(datetime="2022-06-01T07:59:59+0800")
    assert isinstance(normalize(at_start), CanonicalAppointment)
    for value in (at_end, just_before):
        result = normalize(value)
        assert isinstance(result, SkippedRecord)
        assert result.reason == "out_of_window"
        assert "54321" in result.detail
        assert "Bob" not in result.detail


def test_local_day_is_the_date_as_written() -> None:
    assert acuity_local_day(record(datetime="2022-06-28T23:30:00-0500")) == date(2022, 6, 28)
    assert acuity_local_day(record(datetime="garbage")) is None
    assert acuity_local_day(17) is None


def test_a_page_counts_every_record_once() -> None:
    request = AcuityRequest(min_date=date(2022, 6, 20), max_date=date(2022, 6, 30), max_records=100)
    records: list[JsonValue] = [
        record(id=1),  # in range, in window
        record(id=2, datetime="2022-06-10T10:00:00+0000"),  # before minDate: Acuity ignored it
        record(id=3, datetime="2022-06-30T23:00:00-0300"),  # in range, but after the job window
        record(id=4, datetime=None),  # invalid
        record(id=5, canceled=True, noShow=True),
    ]
    page = acuity_page(records, request=request, window=WINDOW, observed_at=OBSERVED_AT, currency="USD")
    assert [a.external_id for a in page.appointments] == ["1", "5"]
    assert (page.records_fetched, page.skipped_out_of_window, page.skipped_invalid) == (5, 2, 1)
    assert len(page.skip_details) == 3
    assert all("Bob" not in s.detail and "mctest" not in s.detail.lower() for s in page.skip_details)


json_values: st.SearchStrategy[JsonValue] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
acuity_keys = st.sampled_from(
    ["id", "datetime", "duration", "price", "amountPaid", "canceled", "noShow", "firstName", "lastName",
     "email", "phone", "type", "calendar", "timezone", "labels", "confirmationPage"]
)  # fmt: skip
datetime_like = st.one_of(
    st.datetimes(timezones=st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S%z")
    ),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}[+-][0-9]{4}\Z"),
)
acuity_like = st.dictionaries(acuity_keys, json_values | datetime_like, max_size=8)


@settings(max_examples=150, deadline=None)
@given(value=json_values | acuity_like)
def test_normalizing_never_raises_on_any_json(value: JsonValue) -> None:
    result = normalize(value)
    assert isinstance(result, CanonicalAppointment | SkippedRecord)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(acuity_like | json_values, max_size=5))
def test_a_page_of_any_json_accounts_for_every_record(values: list[JsonValue]) -> None:
    request = AcuityRequest(min_date=date(2022, 6, 1), max_date=date(2022, 6, 30), max_records=100)
    page = acuity_page(values, request=request, window=WINDOW, observed_at=OBSERVED_AT, currency="USD")
    assert page.records_fetched == len(page.appointments) + page.skipped_out_of_window + page.skipped_invalid
    assert len(page.skip_details) == page.skipped_out_of_window + page.skipped_invalid
