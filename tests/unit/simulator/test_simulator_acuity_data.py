"""The simulator's Acuity data: deterministic seeding and the quirks of GET /appointments."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from apptsync.simulator import DEMO_API_KEY, DEMO_USER_ID, AcuityAppointment, account_for, select_appointments
from apptsync.simulator._acuity_data import AcuityStore, QueryError, acuity_datetime_text, seeded_appointments

pytestmark = pytest.mark.unit

ANCHOR = date(2024, 3, 15)


def seeded(count: int = 400, user_id: int = DEMO_USER_ID, seed: int = 42) -> list[AcuityAppointment]:
    return seeded_appointments(seed=seed, user_id=user_id, count=count, anchor=ANCHOR)


def test_same_seed_same_data_other_seed_other_data() -> None:
    assert seeded() == seeded()
    assert seeded() != seeded(seed=43)
    assert [a.id for a in seeded(user_id=1002)] != [a.id for a in seeded()]


def test_the_data_set_has_the_variety_the_importer_must_handle() -> None:
    data = seeded(2000)
    assert all(abs((a.local_day - ANCHOR).days) <= 181 for a in data)
    assert len({a.timezone for a in data}) >= 15
    assert {"America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"} <= {a.timezone for a in data}
    statuses = Counter((a.canceled, a.no_show) for a in data)
    assert statuses[(True, True)] > 0 and statuses[(True, False)] > 0 and statuses[(False, False)] > 1000
    assert any(a.email == "" for a in data) and any(a.phone == "" for a in data)
    assert any(not (a.first_name + a.last_name).isascii() for a in data)
    assert any(a.labels is None for a in data) and any(a.labels for a in data)
    assert any(not a.price.endswith(".00") for a in data)
    assert len({a.id for a in data}) == len(data)


def test_records_render_like_acuity() -> None:
    appointment = seeded(1)[0]
    record = appointment.to_json()
    assert record["id"] == appointment.id
    assert record["datetime"] == acuity_datetime_text(appointment.starts_at)
    assert str(record["datetime"])[-5] in "+-" and ":" not in str(record["datetime"])[-5:]
    assert record["duration"] == str(appointment.duration_minutes)
    assert ("noShow" in record) == appointment.canceled
    assert "forms" in record and "forms" not in appointment.to_json(include_forms=False)


def test_the_datetime_text_has_an_offset_without_a_colon() -> None:
    moment = datetime(2022, 6, 28, 14, 0, tzinfo=timezone(timedelta(hours=8)))
    assert acuity_datetime_text(moment) == "2022-06-28T14:00:00+0800"
    assert acuity_datetime_text(moment.astimezone(timezone(timedelta(hours=-3, minutes=-30)))) == (
        "2022-06-28T02:30:00-0330"
    )


def days_of(result: list[AcuityAppointment]) -> list[date]:
    return [a.local_day for a in result]


def test_default_query_is_newest_first_truncated_at_100_without_canceled() -> None:
    data = seeded(400)
    result = select_appointments(data, {})
    assert len(result) == 100
    assert not any(a.canceled for a in result)
    instants = [a.instant for a in result]
    assert instants == sorted(instants, reverse=True)


def test_canceled_and_showall() -> None:
    data = seeded(400)
    canceled = select_appointments(data, {"canceled": "true", "max": "1000"})
    everything = select_appointments(data, {"showall": "true", "max": "1000"})
    assert canceled and all(a.canceled for a in canceled)
    assert len(everything) == 400


def test_min_and_max_date_are_inclusive_local_days_unless_min_date_is_ignored() -> None:
    data = seeded(400)
    params = {"minDate": "2024-03-01", "maxDate": "2024-03-10", "showall": "true", "max": "1000"}
    inside = select_appointments(data, params)
    assert inside and all(date(2024, 3, 1) <= d <= date(2024, 3, 10) for d in days_of(inside))
    quirky = select_appointments(data, params, ignore_min_date=True)
    assert len(quirky) > len(inside)
    assert all(d <= date(2024, 3, 10) for d in days_of(quirky))


def test_ascending_direction_and_small_max() -> None:
    result = select_appointments(seeded(50), {"direction": "ASC", "max": "3", "showall": "true"})
    assert len(result) == 3
    assert [a.instant for a in result] == sorted(a.instant for a in result)


@pytest.mark.parametrize(
    ("params", "error"),
    [({"max": "ten"}, "invalid_max"), ({"max": "0"}, "invalid_max"), ({"minDate": "soon"}, "invalid_date"),
     ({"direction": "UP"}, "invalid_direction")],
)  # fmt: skip
def test_bad_parameters_are_acuity_400s(params: dict[str, str], error: str) -> None:
    with pytest.raises(QueryError) as caught:
        select_appointments(seeded(5), params)
    assert caught.value.error == error


def test_store_authenticates_and_mutates() -> None:
    store = AcuityStore(seed=1, accounts=2, appointments_per_account=10, anchor=ANCHOR)
    assert store.authenticate_basic("1001", DEMO_API_KEY) == account_for(DEMO_USER_ID)
    assert store.authenticate_basic("1001", "wrong") is None
    assert store.authenticate_basic("x", DEMO_API_KEY) is None
    assert store.authenticate_bearer("acuity-token-1002") == account_for(1002)
    added = store.add(1001, {"datetime": "2024-03-20T09:00:00+0100", "firstName": "Zoë"})
    assert store.of(1001)[added.id].first_name == "Zoë"
    assert store.cancel(1001, added.id, no_show=True).to_json()["noShow"] is True
    moved = store.reschedule(1001, added.id, "2024-03-21T09:00:00+0100")
    assert moved.instant == datetime(2024, 3, 21, 8, tzinfo=UTC)
    with pytest.raises(QueryError):
        store.reschedule(1001, added.id, "2024-03-21T09:00:00")
    with pytest.raises(KeyError):
        store.cancel(1001, 1, no_show=False)
    assert len(store.of(1002)) == 10
