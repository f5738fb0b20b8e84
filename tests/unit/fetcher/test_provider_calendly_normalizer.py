"""Calendly events + invitees -> canonical appointments, on payloads shaped like Calendly's API v2
reference examples; and, for any JSON at all, a valid appointment or a skip with a reason."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apptsync.fetcher.providers import JobWindow, JsonValue
from apptsync.fetcher.providers.calendly import (
    OUT_OF_WINDOW,
    FetchedEvent,
    calendly_page,
    event_skip,
    event_uuid,
    normalize_calendly_invitee,
)
from apptsync.shared.appointments import AppointmentStatus, CanonicalAppointment, Money, Payment, SkippedRecord

pytestmark = pytest.mark.unit

FETCHED_AT = datetime(2019, 9, 1, tzinfo=UTC)
WINDOW = JobWindow(datetime(2019, 8, 1, tzinfo=UTC), datetime(2019, 9, 1, tzinfo=UTC))

# GET /scheduled_events item, as in Calendly's API reference.
EVENT: dict[str, Any] = {
    "uri": "https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2",
    "name": "15 Minute Meeting",
    "meeting_notes_plain": "Internal meeting notes",
    "meeting_notes_html": "<p>Internal meeting notes</p>",
    "status": "active",
    "start_time": "2019-08-24T14:15:22.123456Z",
    "end_time": "2019-08-24T14:30:22.123456Z",
    "event_type": "https://api.calendly.com/event_types/GBGBDCAADAEDCRZ2",
    "location": {"type": "physical", "location": "Calendly Office", "additional_info": "2nd floor"},
    "invitees_counter": {"total": 1, "active": 1, "limit": 1},
    "created_at": "2019-01-02T03:04:05.678123Z",
    "updated_at": "2019-01-02T03:04:05.678123Z",
    "event_memberships": [
        {"user": "https://api.calendly.com/users/GBGBDCAADAEDCRZ2", "user_email": "user@example.com",
         "user_name": "John Smith"}
    ],
    "event_guests": [
        {"email": "user@example.com", "created_at": "2022-04-21T17:10:48.484945Z",
         "updated_at": "2022-04-21T17:11:01.758636Z"}
    ],
}  # fmt: skip
# GET /scheduled_events/{uuid}/invitees item, as in Calendly's API reference.
INVITEE: dict[str, Any] = {
    "uri": "https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/ABCDABCDABCDABCD",
    "email": "Test@Example.com",
    "first_name": "John",
    "last_name": "Doe",
    "name": "John Doe",
    "status": "active",
    "questions_and_answers": [{"question": "string", "answer": "string", "position": 0}],
    "timezone": "America/New_York",
    "event": "https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2",
    "created_at": "2019-01-02T03:04:05.678123Z",
    "updated_at": "2019-08-07T06:05:04.321123Z",
    "tracking": {"utm_campaign": "string", "utm_source": "string", "utm_medium": "string", "utm_content": "string",
                 "utm_term": "string", "salesforce_uuid": "string"},
    "text_reminder_number": "+1 404-555-1234",
    "rescheduled": False,
    "old_invitee": None,
    "new_invitee": None,
    "cancel_url": "https://calendly.com/cancellations/ABCDABCDABCDABCD",
    "reschedule_url": "https://calendly.com/reschedulings/ABCDABCDABCDABCD",
    "routing_form_submission": "https://api.calendly.com/routing_form_submissions/EBHAAFHDCAEQTSEZ",
    "payment": {"external_id": "ch_AAAAAAAAAAAAAAAAAAAAAAAA", "provider": "stripe", "amount": 1234.56,
                "currency": "USD", "terms": "sample terms of payment (up to 1,024 characters)", "successful": True},
    "no_show": None,
    "reconfirmation": None,
    "scheduling_method": None,
    "invitee_scheduled_by": None,
}  # fmt: skip


def variant(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    record = copy.deepcopy(base)
    record.update(changes)
    return record


def normalized(event: JsonValue = EVENT, invitee: JsonValue = INVITEE) -> CanonicalAppointment:
    result = normalize_calendly_invitee(event, invitee, window=WINDOW, fetched_at=FETCHED_AT)
    assert isinstance(result, CanonicalAppointment), result
    return result


def test_the_documented_booking_becomes_one_appointment() -> None:
    appointment = normalized()
    assert appointment.external_id == "ABCDABCDABCDABCD"
    assert appointment.starts_at == datetime(2019, 8, 24, 14, 15, 22, 123456, tzinfo=UTC)
    assert appointment.ends_at == datetime(2019, 8, 24, 14, 30, 22, 123456, tzinfo=UTC)
    assert appointment.timezone == "America/New_York"
    assert appointment.status is AppointmentStatus.SCHEDULED
    assert appointment.title == appointment.appointment_type == "15 Minute Meeting"
    assert appointment.calendar == "John Smith"
    assert (appointment.contact.name, appointment.contact.email, appointment.contact.phone) == (
        "John Doe", "test@example.com", "+1 404-555-1234",
    )  # fmt: skip
    assert appointment.price == appointment.amount_paid == Money(123456, "USD")
    assert appointment.external_url == INVITEE["uri"]
    assert appointment.observed_at == datetime(2019, 8, 7, 6, 5, 4, 321123, tzinfo=UTC)  # the later updated_at
    assert json.loads(appointment.raw_json) == {"event": EVENT, "invitee": INVITEE}


def test_a_group_event_yields_one_appointment_per_invitee_with_the_events_fields() -> None:
    group = variant(EVENT, invitees_counter={"total": 3, "active": 3, "limit": 10}, name="Group Yoga")
    invitees = [variant(INVITEE, uri=f"{EVENT['uri']}/invitees/I{n}", email=f"p{n}@example.com") for n in range(3)]
    page = calendly_page([FetchedEvent(group, invitees)], window=WINDOW, fetched_at=FETCHED_AT)
    assert page.records_fetched == 3
    appointments = [a for a in page.appointments if isinstance(a, CanonicalAppointment)]
    assert [a.external_id for a in appointments] == ["I0", "I1", "I2"]
    assert {(a.title, a.starts_at) for a in appointments} == {("Group Yoga", normalized().starts_at)}


def test_a_canceled_invitee_or_event_is_canceled_and_no_show_is_kept() -> None:
    canceled = {"canceled_by": "John Doe", "reason": "sick", "canceler_type": "invitee",
                "created_at": "2019-08-20T00:00:00.000000Z"}  # fmt: skip
    assert normalized(invitee=variant(INVITEE, status="canceled", cancellation=canceled)).status is (
        AppointmentStatus.CANCELED
    )
    assert normalized(event=variant(EVENT, status="canceled", cancellation=canceled)).status is (
        AppointmentStatus.CANCELED
    )
    # The InviteeNoShow resource: "Information about an invitees no show" ({uri, created_at}).
    no_show = {"uri": "https://api.calendly.com/invitee_no_shows/6ee96ed4-83a3-4966-a278-cd19b3c02e09",
               "created_at": "2019-01-02T03:04:05.678123Z"}  # fmt: skip
    assert normalized(invitee=variant(INVITEE, no_show=no_show)).status is AppointmentStatus.NO_SHOW
    # Canceled is the stronger statement: the booking is off, whatever was marked before.
    assert normalized(invitee=variant(INVITEE, status="canceled", no_show=no_show)).status is (
        AppointmentStatus.CANCELED
    )


# A reschedule, on the documented invitee: the Invitee resource documents `rescheduled` ("Indicates if
# this invitee has rescheduled"), `new_invitee` ("Link to new invitee, after reschedule") and
# `old_invitee` ("Reference to old Invitee instance that got rescheduled"), both invitee URIs or null.
# The old invitee is canceled with `rescheduled: true` and `new_invitee`; the new one, on a new event,
# is active with `old_invitee`.
NEW_EVENT_URI = "https://api.calendly.com/scheduled_events/HNGBJIPBFZVZHKAX"
NEW_INVITEE_URI = f"{NEW_EVENT_URI}/invitees/AJGW3Q4KER5NTOCW"
RESCHEDULED_OLD = variant(
    INVITEE, status="canceled", rescheduled=True, new_invitee=NEW_INVITEE_URI, updated_at="2019-08-20T10:00:00.000000Z",
    cancellation={"canceled_by": "John Doe", "reason": None, "canceler_type": "invitee",
                  "created_at": "2019-08-20T10:00:00.000000Z"},
)  # fmt: skip
RESCHEDULED_NEW_EVENT = variant(EVENT, uri=NEW_EVENT_URI, start_time="2019-08-28T09:00:00.000000Z",
                                end_time="2019-08-28T09:15:00.000000Z")  # fmt: skip
RESCHEDULED_NEW = variant(
    INVITEE, uri=NEW_INVITEE_URI, event=NEW_EVENT_URI, old_invitee=INVITEE["uri"],
    created_at="2019-08-20T10:00:00.000000Z", updated_at="2019-08-20T10:00:00.000000Z",
    cancel_url="https://calendly.com/cancellations/AJGW3Q4KER5NTOCW",
    reschedule_url="https://calendly.com/reschedulings/AJGW3Q4KER5NTOCW",
)  # fmt: skip


def test_a_reschedule_is_the_old_invitee_canceled_and_a_new_booking_linked_both_ways() -> None:
    before = normalized(invitee=RESCHEDULED_OLD)
    after = normalized(event=RESCHEDULED_NEW_EVENT, invitee=RESCHEDULED_NEW)
    assert (before.external_id, before.status) == ("ABCDABCDABCDABCD", AppointmentStatus.CANCELED)
    assert (after.external_id, after.status) == ("AJGW3Q4KER5NTOCW", AppointmentStatus.SCHEDULED)
    assert after.starts_at == datetime(2019, 8, 28, 9, tzinfo=UTC)
    # Linked by external id, the rule of the invitee's own id: the last segment of its URI.
    assert (before.rescheduled_to_external_id, before.rescheduled_from_external_id) == (after.external_id, "")
    assert (after.rescheduled_to_external_id, after.rescheduled_from_external_id) == ("", before.external_id)
    assert json.loads(after.raw_json)["invitee"]["old_invitee"] == INVITEE["uri"]


def test_a_booking_never_rescheduled_has_no_links_and_a_link_is_content() -> None:
    plain = normalized()  # the documented invitee: rescheduled false, old_invitee and new_invitee null
    assert (plain.rescheduled_to_external_id, plain.rescheduled_from_external_id) == ("", "")
    linked = normalized(invitee=RESCHEDULED_OLD)
    assert replace(linked, rescheduled_to_external_id="").content_hash != linked.content_hash


@pytest.mark.parametrize(
    ("payment", "price", "paid"),
    [
        ({"amount": 45, "currency": "EUR", "successful": False}, Money(4500, "EUR"), Money(0, "EUR")),
        ({"amount": 5000, "currency": "JPY", "successful": True}, Money(5000, "JPY"), Money(5000, "JPY")),
        ({"amount": "12.345", "currency": "KWD", "successful": True}, Money(12345, "KWD"), Money(12345, "KWD")),
        ({"amount": 10, "currency": "dollars", "successful": True}, None, None),
        ({"amount": None, "currency": "USD", "successful": True}, None, None),
        (None, None, None),
    ],
)
def test_payments_are_money_in_minor_units(payment: object, price: Money | None, paid: Money | None) -> None:
    appointment = normalized(invitee=variant(INVITEE, payment=payment))
    assert (appointment.price, appointment.amount_paid) == (price, paid)


def test_the_documented_payment_float_becomes_minor_units_without_binary_rounding() -> None:
    appointment = normalized()  # the documented invitee: "amount": 1234.56, "successful": true

    assert appointment.payments_known
    assert appointment.payments == (Payment("ch_AAAAAAAAAAAAAAAAAAAAAAAA", Money(123456, "USD"), "stripe"),)
    assert appointment.payments[0].revenue_minor == 123456
    # Binary float arithmetic would lose a cent on amounts like 1.15 (1.15 * 100 == 114.99999999999999):
    # the amount is read through its decimal text instead.
    cheap = normalized(invitee=variant(INVITEE, payment={**INVITEE["payment"], "amount": 1.15}))
    assert int(1.15 * 100) == 114 and cheap.payments[0].amount == Money(115, "USD")


@pytest.mark.parametrize(
    ("payment", "expected"),
    [
        (None, ()),  # nothing paid: a known empty list
        ({"external_id": "ch_1", "provider": "stripe", "amount": 45, "currency": "EUR", "successful": False},
         (Payment("ch_1", Money(4500, "EUR"), "stripe", successful=False),)),  # attempted: counts nothing
        ({"provider": "paypal", "amount": 19.99, "currency": "USD", "successful": True},
         (Payment("invitee/AAAAAAAAAAAAAAAA", Money(1999, "USD"), "paypal"),)),  # keyed by the invitee
        ({"amount": "lots", "currency": "USD", "successful": True}, None),  # unreadable: stored ones stay
    ],
)
def test_the_invitee_payment_is_its_payment_list(payment: object, expected: tuple[Payment, ...] | None) -> None:
    invitee = variant(INVITEE, payment=payment, uri=INVITEE["uri"].rsplit("/", 1)[0] + "/AAAAAAAAAAAAAAAA")
    appointment = normalized(invitee=invitee)

    assert appointment.payments_known == (expected is not None)
    assert appointment.payments == (expected or ())


def test_name_falls_back_to_first_and_last_name() -> None:
    assert normalized(invitee=variant(INVITEE, name=None)).contact.name == "John Doe"


def test_events_outside_the_window_or_without_start_are_skipped_before_their_invitees_are_fetched() -> None:
    late = variant(EVENT, start_time="2019-09-01T00:00:00.000000Z")
    broken = variant(EVENT, start_time="not-a-date")
    anonymous = variant(EVENT, uri="")
    assert event_skip(EVENT, window=WINDOW) is None
    assert event_uuid(EVENT) == "GBGBDCAADAEDCRZ2"
    skip = event_skip(late, window=WINDOW)
    assert skip is not None and skip.reason == OUT_OF_WINDOW
    page = calendly_page(
        [FetchedEvent(late, None), FetchedEvent(broken, None), FetchedEvent(anonymous, None), FetchedEvent(42, None),
         FetchedEvent(EVENT, [INVITEE, {"uri": ""}, "not an object"])],
        window=WINDOW, fetched_at=FETCHED_AT,
    )  # fmt: skip
    assert (page.records_fetched, len(page.appointments), page.skipped_out_of_window, page.skipped_invalid) == (
        7, 1, 1, 5,
    )  # fmt: skip
    assert len(page.skip_details) == 6
    assert all("Doe" not in skip.detail and "example.com" not in skip.detail for skip in page.skip_details)


def test_an_event_ending_before_it_starts_ends_when_it_starts() -> None:
    appointment = normalized(event=variant(EVENT, end_time="2019-08-24T14:00:00Z"))
    assert appointment.ends_at == appointment.starts_at


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
FIELDS = {
    "uri": st.text() | st.just(EVENT["uri"]), "start_time": st.text() | st.just(EVENT["start_time"]) | JSON,
    "end_time": st.text() | JSON, "status": st.sampled_from(["active", "canceled"]) | JSON,
    "updated_at": st.text() | st.just("2019-08-24T14:15:22Z"), "name": JSON, "event_memberships": JSON,
    "payment": JSON | st.fixed_dictionaries({"amount": JSON, "currency": st.text(max_size=4), "successful": JSON}),
    "no_show": JSON, "timezone": JSON, "email": JSON, "text_reminder_number": JSON, "first_name": JSON,
}  # fmt: skip
RECORDS = JSON | st.fixed_dictionaries({}, optional=FIELDS)


@settings(max_examples=300, deadline=None)
@given(event=RECORDS, invitee=RECORDS)
def test_any_json_becomes_an_appointment_or_a_skip_with_a_reason(event: JsonValue, invitee: JsonValue) -> None:
    result = normalize_calendly_invitee(event, invitee, window=WINDOW, fetched_at=FETCHED_AT)
    if isinstance(result, SkippedRecord):
        assert result.reason == OUT_OF_WINDOW or result.reason.startswith("invalid: ")
    else:
        assert WINDOW.contains(result.starts_at) and result.ends_at >= result.starts_at
        assert result.external_id and result.content_hash
    page = calendly_page(
        [FetchedEvent(event, [invitee]), FetchedEvent(event, None)], window=WINDOW, fetched_at=FETCHED_AT
    )
    assert page.records_fetched == len(page.appointments) + page.skipped_out_of_window + page.skipped_invalid == 2
