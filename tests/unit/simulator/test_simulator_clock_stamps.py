"""No simulated record is stamped later than the simulator's clock: seeded future bookings carry
past `created`/`updated` stamps, so a later real change is newer than what the seed said."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from apptsync.simulator._acuity_data import AcuityStore
from apptsync.simulator._calendly_data import CalendlyStore, render_event, render_invitee
from apptsync.simulator._clock import fixed_clock
from apptsync.simulator._google_data import GoogleStore
from apptsync.simulator._state import SimulatorState

pytestmark = pytest.mark.unit

ANCHOR = date(2024, 6, 15)
NOW = datetime(2024, 6, 15, 8, 30, tzinfo=UTC)


def stamp(text: object) -> datetime:
    assert isinstance(text, str)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_acuity_bookings_are_never_created_in_the_future() -> None:
    store = AcuityStore(seed=3, accounts=1, appointments_per_account=400, anchor=ANCHOR, clock=fixed_clock(NOW))
    appointments = list(store.of(1001).values())
    assert any(a.instant > NOW for a in appointments)
    assert all(a.created_at <= NOW for a in appointments)
    added = store.add(1001, {"datetime": "2024-07-01T10:00:00+02:00"})
    assert added.created_at == NOW


def test_calendly_events_and_invitees_are_never_stamped_in_the_future() -> None:
    store = CalendlyStore(seed=3, accounts=1, invitees_per_account=400, anchor=ANCHOR, clock=fixed_clock(NOW))
    assert any(e.starts_at > NOW + timedelta(days=30) for e in store.events[1].values())
    for event in store.events[1].values():
        invitees = store.invitees_of(1, event.uuid)
        rendered = render_event(event, invitees)
        assert stamp(rendered["created_at"]) <= stamp(rendered["updated_at"]) <= NOW
        for invitee in invitees:
            body = render_invitee(invitee)
            assert stamp(body["created_at"]) <= stamp(body["updated_at"]) <= NOW
            no_show = body["no_show"]
            assert no_show is None or (isinstance(no_show, dict) and stamp(no_show["created_at"]) <= NOW)


def test_google_events_are_never_stamped_in_the_future() -> None:
    store = GoogleStore(seed=3, accounts=1, events_per_account=400, anchor=ANCHOR, clock=fixed_clock(NOW))
    events = [e.to_json() for e in store.events[1].values()]
    assert any(e["start"].get("dateTime", "0") > "2024-08" for e in events if isinstance(e["start"], dict))
    assert all(stamp(e["created"]) <= stamp(e["updated"]) <= NOW for e in events)


def test_the_state_passes_its_clock_to_every_store() -> None:
    clock = fixed_clock(NOW)
    state = SimulatorState.seeded(seed=1, accounts=1, appointments_per_account=5, anchor=ANCHOR, clock=clock)
    assert state.acuity.clock is clock and state.calendly.clock is clock and state.google.clock is clock


def test_without_a_clock_the_data_is_a_function_of_the_arguments() -> None:
    one = GoogleStore(seed=3, accounts=1, events_per_account=50, anchor=ANCHOR)
    two = GoogleStore(seed=3, accounts=1, events_per_account=50, anchor=ANCHOR)
    assert one.data_set(1) == two.data_set(1)
    noon = datetime(2024, 6, 15, 12, tzinfo=UTC)
    assert all(stamp(r["event"]["updated"]) <= noon for r in one.data_set(1))  # type: ignore[index]
