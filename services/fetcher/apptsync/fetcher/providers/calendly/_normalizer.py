"""Calendly scheduled events and their invitees -> CanonicalAppointments (pure; never raises).

One appointment per invitee (a booking): a group event yields one per invitee. The external id is
the invitee's UUID (globally unique): the last segment of its `uri`. A reschedule is represented as
Calendly represents it: the old invitee becomes canceled (`rescheduled: true`, `new_invitee`) and the
new invitee is a new booking (`old_invitee`) on a new event. The two are linked by external id, by
the same rule as the invitee's own: `new_invitee` -> `rescheduled_to_external_id` on the old booking,
`old_invitee` -> `rescheduled_from_external_id` on the new one; both payloads are kept in `raw_json`.
Status: canceled when the invitee (`status: canceled`) or the event (`status: canceled`) is; else
no_show when the invitee carries a `no_show` object; else scheduled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from apptsync.fetcher.providers._json_fields import (
    canonical_json,
    last_path_segment,
    list_field,
    object_field,
    parse_instant,
    text_field,
)
from apptsync.fetcher.providers._model import JobWindow, JsonValue, ProviderPage
from apptsync.fetcher.providers._money import is_currency_code, money_from_amount
from apptsync.shared.appointments import (
    AppointmentStatus,
    CanonicalAppointment,
    Contact,
    Money,
    Payment,
    SkippedRecord,
)

OUT_OF_WINDOW = "out_of_window"
_INVALID = "invalid: "


@dataclass(frozen=True, slots=True)
class FetchedEvent:
    """A scheduled event and its invitees; `invitees` None when the event was skipped before they
    were fetched (then the event counts as one skipped record)."""

    event: JsonValue
    invitees: Sequence[JsonValue] | None


def event_uuid(event: JsonValue) -> str:
    """The UUID of a scheduled event: the last segment of its `uri` ("" when there is none)."""
    return last_path_segment(text_field(event, "uri"))


def event_start(event: JsonValue) -> datetime | None:
    """The event's `start_time` (aware); None when it has none or it is unreadable."""
    return parse_instant(event.get("start_time")) if isinstance(event, dict) else None


def event_skip(event: JsonValue, *, window: JobWindow) -> SkippedRecord | None:
    """Why the event's invitees need not be fetched (not an object, no uri, no readable start, start
    outside `window`), or None when they must be."""
    if not isinstance(event, dict):
        return SkippedRecord(_INVALID + "event is not a JSON object")
    uuid = event_uuid(event)
    if not uuid:
        return SkippedRecord(_INVALID + "event without uri")
    starts_at = parse_instant(event.get("start_time"))
    if starts_at is None:
        return SkippedRecord(_INVALID + "event without a readable start_time", f"event {uuid}")
    if not window.contains(starts_at.astimezone(UTC)):
        return SkippedRecord(OUT_OF_WINDOW, f"event {uuid} starts {starts_at.astimezone(UTC).isoformat()}")
    return None


def _status(event: JsonValue, invitee: JsonValue) -> AppointmentStatus:
    if text_field(invitee, "status") == "canceled" or text_field(event, "status") == "canceled":
        return AppointmentStatus.CANCELED
    if object_field(invitee, "no_show"):
        return AppointmentStatus.NO_SHOW
    return AppointmentStatus.SCHEDULED


def calendly_payments(invitee: JsonValue, external_id: str) -> tuple[Payment, ...] | None:
    """The invitee's `payment {external_id, provider, amount, currency, successful}` as its payment
    list (`amount` a JSON number in major units: 1234.56 -> 123456, read through its decimal text, never
    binary float arithmetic); () for `payment: null` (nothing paid); None when the payment is there but
    unreadable (the stored one stays). Calendly shows no refund: an unsuccessful payment counts for
    nothing. A payment without its own id is keyed by the invitee (`invitee/<id>`): one per invitee."""
    if not isinstance(invitee, dict) or invitee.get("payment") is None:
        return ()
    payment = object_field(invitee, "payment")
    currency = text_field(payment, "currency").upper()
    if not payment or not is_currency_code(currency):
        return None
    amount = money_from_amount(payment.get("amount"), currency)
    if amount is None:
        return None
    return (Payment(
        transaction_id=text_field(payment, "external_id") or f"invitee/{external_id}",
        amount=amount,
        processor=text_field(payment, "provider"),
        successful=payment.get("successful") is True,
    ),)


def _payment(invitee: JsonValue) -> tuple[Money | None, Money | None]:
    """(price, amount paid) from `payment {amount, currency, successful}` (amount in major units)."""
    payment = object_field(invitee, "payment")
    currency = text_field(payment, "currency").upper()
    if not payment or not is_currency_code(currency):
        return None, None
    price = money_from_amount(payment.get("amount"), currency)
    if price is None:
        return None, None
    return price, price if payment.get("successful") is True else Money(0, currency)


def _host(event: JsonValue) -> str:
    for membership in list_field(event, "event_memberships"):
        name = text_field(membership, "user_name") or text_field(membership, "user_email")
        if name:
            return name
    return ""


def invitee_external_id(uri: str) -> str:
    """The external id of the invitee at `uri` (`.../scheduled_events/{uuid}/invitees/{uuid}`): its
    last path segment; "" for an empty URI."""
    return last_path_segment(uri)


def _observed_at(event: JsonValue, invitee: JsonValue, fetched_at: datetime) -> datetime:
    candidates = (record.get("updated_at") for record in (event, invitee) if isinstance(record, dict))
    moments = [moment for moment in map(parse_instant, candidates) if moment is not None]
    return max(moments, key=lambda m: m.astimezone(UTC)) if moments else fetched_at


def normalize_calendly_invitee(
    event: JsonValue, invitee: JsonValue, *, window: JobWindow, fetched_at: datetime
) -> CanonicalAppointment | SkippedRecord:
    """One invitee of `event` as a CanonicalAppointment, or why not.

    Times are the event's (UTC); `timezone` is the invitee's; status canceled when the invitee or the
    event is canceled, else no_show when marked so, else scheduled. `observed_at` is the later
    `updated_at` of event and invitee (else `fetched_at`). `new_invitee` / `old_invitee` become the
    reschedule links (external ids; "" when null). Never raises."""
    skip = event_skip(event, window=window)
    if skip is not None:
        return skip
    if not isinstance(invitee, dict):
        return SkippedRecord(_INVALID + "invitee is not a JSON object", f"event {event_uuid(event)}")
    invitee_uri = text_field(invitee, "uri")
    external_id = invitee_external_id(invitee_uri)
    if not external_id:
        return SkippedRecord(_INVALID + "invitee without uri", f"event {event_uuid(event)}")
    assert isinstance(event, dict)  # noqa: S101 -- narrows the type; checked by the caller's invalid-record branch
    starts_at = parse_instant(event.get("start_time"))
    assert starts_at is not None  # noqa: S101 -- narrows the type; a missing start was refused above
    ends_at = parse_instant(event.get("end_time")) or starts_at
    try:
        starts_utc, ends_utc = starts_at.astimezone(UTC), ends_at.astimezone(UTC)
        raw_json = canonical_json({"event": event, "invitee": invitee})
    except (OverflowError, ValueError, TypeError, RecursionError):
        return SkippedRecord(_INVALID + "unrepresentable times or payload", f"invitee {external_id}")
    if ends_utc < starts_utc:
        ends_utc = starts_utc
    name = text_field(invitee, "name") or " ".join(
        part for part in (text_field(invitee, "first_name"), text_field(invitee, "last_name")) if part
    )
    price, amount_paid = _payment(invitee)
    payments = calendly_payments(invitee, external_id)
    title = text_field(event, "name")
    return CanonicalAppointment(
        external_id=external_id,
        starts_at=starts_utc,
        ends_at=ends_utc,
        timezone=text_field(invitee, "timezone"),
        status=_status(event, invitee),
        observed_at=_observed_at(event, invitee, fetched_at),
        raw_json=raw_json,
        title=title,
        appointment_type=title,
        calendar=_host(event),
        contact=Contact(
            name=name,
            email=text_field(invitee, "email").lower(),
            phone=text_field(invitee, "text_reminder_number"),
            provider_client_id="",  # Calendly has no client records: invitees are keyed by email
        ),
        price=price,
        amount_paid=amount_paid,
        external_url=invitee_uri,
        rescheduled_to_external_id=invitee_external_id(text_field(invitee, "new_invitee")),
        rescheduled_from_external_id=invitee_external_id(text_field(invitee, "old_invitee")),
        payments=payments or (),
        payments_known=payments is not None,
    )


def calendly_page(
    fetched: Sequence[FetchedEvent], *, window: JobWindow, fetched_at: datetime, near_term: bool = False
) -> ProviderPage:
    """The page of one `/scheduled_events` answer with each event's invitees (`near_term`: an answer
    of the near-term listing).

    Records are invitees; an event skipped before its invitees were fetched counts as one record
    (skipped out of window or invalid). Never raises."""
    appointments: list[CanonicalAppointment] = []
    skipped: list[SkippedRecord] = []
    out_of_window = invalid = records = 0
    for item in fetched:
        results: list[CanonicalAppointment | SkippedRecord]
        if item.invitees is None:
            results = [event_skip(item.event, window=window) or SkippedRecord(_INVALID + "event not fetched")]
        else:
            results = [
                normalize_calendly_invitee(item.event, invitee, window=window, fetched_at=fetched_at)
                for invitee in item.invitees
            ]
        for result in results:
            records += 1
            if isinstance(result, CanonicalAppointment):
                appointments.append(result)
                continue
            skipped.append(result)
            if result.reason == OUT_OF_WINDOW:
                out_of_window += 1
            else:
                invalid += 1
    return ProviderPage(
        records_fetched=records,
        appointments=appointments,
        skipped_out_of_window=out_of_window,
        skipped_invalid=invalid,
        skip_details=skipped,
        near_term=near_term,
    )
