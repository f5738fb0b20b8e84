"""The Acuity store's day index and kept renderings answer exactly what a full scan would."""

from __future__ import annotations

import json
from datetime import date

import pytest

from apptsync.simulator._acuity_data import AcuityStore, select_appointments

pytestmark = pytest.mark.unit

ANCHOR = date(2026, 3, 1)
USER_ID = 1001


@pytest.fixture(scope="module")
def store() -> AcuityStore:
    return AcuityStore(seed=7, accounts=1, appointments_per_account=2000, anchor=ANCHOR)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"minDate": "2026-03-01", "maxDate": "2026-03-03", "showall": "true"},
        {"minDate": "2026-01-10", "maxDate": "2026-01-10", "max": "1000"},
        {"maxDate": "2026-02-01", "direction": "ASC", "canceled": "true"},
        {"minDate": "2027-01-01", "maxDate": "2027-02-01"},
    ],
)
@pytest.mark.parametrize("ignore_min_date", [False, True])
def test_candidates_select_what_a_full_scan_selects(
    store: AcuityStore, params: dict[str, str], ignore_min_date: bool
) -> None:
    everything = list(store.of(USER_ID).values())
    from_index = store.candidates(USER_ID, params, ignore_min_date=ignore_min_date)
    assert select_appointments(from_index, params, ignore_min_date=ignore_min_date) == select_appointments(
        everything, params, ignore_min_date=ignore_min_date
    )
    assert len(from_index) <= len(everything)


def test_a_change_reaches_the_index_and_the_rendering() -> None:
    store = AcuityStore(seed=7, accounts=1, appointments_per_account=50, anchor=ANCHOR)
    first = next(iter(store.of(USER_ID).values()))
    before = store.rendered(first, include_forms=False)
    assert json.loads(before) == first.to_json(include_forms=False)

    canceled = store.cancel(USER_ID, first.id)
    assert json.loads(store.rendered(canceled, include_forms=False))["canceled"] is True

    moved = store.reschedule(USER_ID, first.id, "2030-06-01T10:00:00+0000")
    found = store.candidates(USER_ID, {"minDate": "2030-06-01", "maxDate": "2030-06-01"}, ignore_min_date=False)
    assert found == [moved]

    added = store.add(USER_ID, {"datetime": "2030-06-01T12:00:00+00:00"})
    found = store.candidates(USER_ID, {"minDate": "2030-06-01", "maxDate": "2030-06-01"}, ignore_min_date=False)
    assert sorted(a.id for a in found) == sorted([moved.id, added.id])
