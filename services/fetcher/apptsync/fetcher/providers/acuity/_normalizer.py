"""Acuity appointment JSON -> CanonicalAppointment (pure; never raises on any JSON input)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from apptsync.fetcher.providers._json_fields import canonical_json
from apptsync.fetcher.providers._model import JobWindow, JsonValue, ProviderPage
from apptsync.fetcher.providers._money import money_from_amount
from apptsync.fetcher.providers.acuity._paginator import AcuityRequest
from apptsync.shared.appointments import (
    AppointmentStatus,
    CanonicalAppointment,
    Contact,
    SkippedRecord,
)

OUT_OF_WINDOW = "out_of_window"
_INVALID = "invalid: "
_MAX_DURATION_MINUTES = 366 * 24 * 60


def parse_acuity_datetime(value: JsonValue) -> datetime | None:
    """`2022-06-28T14:00:00+0800` -> an aware datetime in the record's own offset; None if absent,
    unreadable or without an offset."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
        # Far-out years parse but cannot be moved to UTC; such a record has no usable start.
        moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return moment if moment.tzinfo is not None and moment.utcoffset() is not None else None


def acuity_start(record: JsonValue) -> datetime | None:
    """The record's start in its own offset (its date is the day Acuity files it under); None when
    the record has no readable start."""
    return parse_acuity_datetime(record.get("datetime")) if isinstance(record, dict) else None


def acuity_local_day(record: JsonValue) -> date | None:
    """The day Acuity files the record under; None when the record has no readable start."""
    moment = acuity_start(record)
    return None if moment is None else moment.date()


money_from_acuity = money_from_amount


def _duration(value: JsonValue) -> timedelta:
    """Acuity's `duration` (minutes, usually a string); zero when absent or unreadable, so a booking
    with an odd duration is still stored (ending when it starts) rather than dropped."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return timedelta(0)
    # Fast path, same result: whole minutes (ASCII digits, as Acuity sends them, or an int) are exact.
    whole: int | None = None
    if isinstance(value, int):
        whole = value
    elif isinstance(value, str) and len(digits := value.strip()) < 10 and digits.isascii() and digits.isdigit():
        whole = int(digits)
    if whole is not None:
        return timedelta(minutes=whole) if 0 <= whole <= _MAX_DURATION_MINUTES else timedelta(0)
    try:
        minutes = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return timedelta(0)
    if not minutes.is_finite() or not 0 <= minutes <= _MAX_DURATION_MINUTES:
        return timedelta(0)
    return timedelta(minutes=float(minutes))


def _text(record: dict[str, JsonValue], key: str) -> str:
    value = record.get(key)
    return value.strip() if isinstance(value, str) else ""


def _external_id(record: dict[str, JsonValue]) -> str:
    value = record.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    return ""


def _status(record: dict[str, JsonValue]) -> AppointmentStatus:
    # `noShow` only appears on canceled appointments; it is the more specific of the two.
    if record.get("noShow") is True:
        return AppointmentStatus.NO_SHOW
    if record.get("canceled") is True:
        return AppointmentStatus.CANCELED
    return AppointmentStatus.SCHEDULED


def normalize_acuity_record(
    record: JsonValue, *, window: JobWindow, observed_at: datetime, currency: str
) -> CanonicalAppointment | SkippedRecord:
    """One Acuity appointment as a CanonicalAppointment, or why not.

    SkippedRecord reasons: "out_of_window" (start outside `window`), "invalid: <why>" (not an object,
    no id, no readable start). Details carry the record id and times, never personal data. Never
    raises, whatever JSON it is given. `observed_at` is the fetch time (Acuity has no updated-at)."""
    return _normalize(record, acuity_start(record), window=window, observed_at=observed_at, currency=currency)


def _normalize(
    record: JsonValue, starts_local: datetime | None, *, window: JobWindow, observed_at: datetime, currency: str
) -> CanonicalAppointment | SkippedRecord:
    """normalize_acuity_record, given the record's `acuity_start` (computed once per record per page)."""
    if not isinstance(record, dict):
        return SkippedRecord(_INVALID + "record is not a JSON object")
    external_id = _external_id(record)
    if not external_id:
        return SkippedRecord(_INVALID + "no id")
    if starts_local is None:
        return SkippedRecord(_INVALID + "no readable start time", f"id {external_id}")
    try:
        starts_at = starts_local.astimezone(UTC)
        ends_at = starts_at + _duration(record.get("duration"))
        raw_json = canonical_json(record)
    except (OverflowError, ValueError, TypeError, RecursionError):
        return SkippedRecord(_INVALID + "unrepresentable start, duration or payload", f"id {external_id}")
    if not window.contains(starts_at):
        return SkippedRecord(OUT_OF_WINDOW, f"id {external_id} starts {starts_at.isoformat()}")
    appointment_type = _text(record, "type")
    name = " ".join(part for part in (_text(record, "firstName"), _text(record, "lastName")) if part)
    return CanonicalAppointment(
        external_id=external_id,
        starts_at=starts_at,
        ends_at=ends_at,
        timezone=_text(record, "timezone") or _text(record, "calendarTimezone"),
        status=_status(record),
        observed_at=observed_at,
        raw_json=raw_json,
        title=appointment_type,
        appointment_type=appointment_type,
        calendar=_text(record, "calendar"),
        contact=Contact(
            name=name,
            email=_text(record, "email").lower(),
            phone=_text(record, "phone"),
            provider_client_id="",  # Acuity clients have no id
        ),
        price=money_from_acuity(record.get("price"), currency),
        amount_paid=money_from_acuity(record.get("amountPaid"), currency),
        external_url=_text(record, "confirmationPage"),
    )


def acuity_page(
    records: Sequence[JsonValue],
    *,
    request: AcuityRequest,
    window: JobWindow,
    observed_at: datetime,
    currency: str,
    starts: Sequence[datetime | None] | None = None,
) -> ProviderPage:
    """The page of one complete Acuity response.

    A record filed under a day outside the requested days (Acuity ignoring `minDate`) is counted as
    skipped out of window here: the request that covers its day delivers it, so it is stored exactly
    once. `starts`, when given, is `acuity_start` of each record (the session computed it for the
    pager already). The page is a near-term page when the request is. Never raises."""
    appointments: list[CanonicalAppointment] = []
    skipped: list[SkippedRecord] = []
    out_of_window = invalid = 0
    if starts is None or len(starts) != len(records):
        starts = [acuity_start(record) for record in records]
    for record, start in zip(records, starts, strict=True):
        day = None if start is None else start.date()
        if day is not None and not request.covers(day):
            out_of_window += 1
            skipped.append(
                SkippedRecord(
                    OUT_OF_WINDOW,
                    f"{_record_label(record)} is filed under {day}, "
                    f"outside the requested {request.min_date}..{request.max_date}",
                )
            )
            continue
        result = _normalize(record, start, window=window, observed_at=observed_at, currency=currency)
        if isinstance(result, CanonicalAppointment):
            appointments.append(result)
            continue
        skipped.append(result)
        if result.reason == OUT_OF_WINDOW:
            out_of_window += 1
        else:
            invalid += 1
    return ProviderPage(
        records_fetched=len(records),
        appointments=appointments,
        skipped_out_of_window=out_of_window,
        skipped_invalid=invalid,
        skip_details=skipped,
        near_term=request.near_term,
    )


def _record_label(record: JsonValue) -> str:
    external_id = _external_id(record) if isinstance(record, dict) else ""
    return f"id {external_id}" if external_id else "a record"
