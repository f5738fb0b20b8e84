"""Fleet seeding: many accounts, each with its own size, added to the stores after their first
accounts, and answered with the credentials the accounts take."""

from __future__ import annotations

from datetime import date

import pytest

from apptsync.simulator._fleet import (
    MAX_FLEET_ACCOUNTS,
    add_acuity_accounts,
    add_calendly_accounts,
    add_google_accounts,
    fleet_sizes,
)
from apptsync.simulator._state import SimulatorState

pytestmark = pytest.mark.unit

ANCHOR = date(2026, 1, 15)


def state() -> SimulatorState:
    return SimulatorState.seeded(seed=5, accounts=1, appointments_per_account=10, anchor=ANCHOR)


def test_each_new_account_has_its_own_size_and_working_credentials() -> None:
    s = state()

    acuity = add_acuity_accounts(s, [50, 120], seed=5, anchor=ANCHOR)
    calendly = add_calendly_accounts(s, [60], seed=5, anchor=ANCHOR)
    google = add_google_accounts(s, [70], seed=5, anchor=ANCHOR)

    assert [a["account"] for a in acuity] == [1002, 1003]
    assert [len(s.acuity.appointments[int(str(a["account"]))]) for a in acuity] == [50, 120]
    assert s.acuity.authenticate_basic(str(acuity[1]["user_id"]), str(acuity[1]["api_key"])) is not None
    assert calendly[0]["invitees"] == len(s.calendly.invitees[2]) == 60
    assert s.calendly.authenticate(str(calendly[0]["access_token"])) is s.calendly.accounts[2]
    assert len(s.google.events[2]) == 70
    assert s.google.authenticate(str(google[0]["access_token"])) is s.google.accounts[2]
    assert len(s.acuity.appointments[1001]) == 10  # the first accounts are untouched


def test_a_new_acuity_account_lists_its_clients_as_the_seeded_ones_do() -> None:
    """The fetcher asks every Acuity account for its clients: a fleet account answers like any other."""
    s = state()
    [made] = add_acuity_accounts(s, [400], seed=5, anchor=ANCHOR)
    user_id = int(str(made["account"]))

    clients = s.acuity.clients(user_id)

    prospects = [c for c in clients if c.email.lower().startswith("prospect")]  # listed, never booked
    assert len(prospects) == 400 // 20
    assert len(clients) > len(prospects)  # the bookers follow


def test_the_same_seed_makes_the_same_accounts() -> None:
    first, second = state(), state()
    add_acuity_accounts(first, [80], seed=9, anchor=ANCHOR)
    add_acuity_accounts(second, [80], seed=9, anchor=ANCHOR)

    assert first.acuity.appointments[1002] == second.acuity.appointments[1002]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "sizes must map"),
        ({"sizes": {"outlook": [1]}}, "sizes must map"),
        ({"sizes": {"acuity": [1, "2"]}}, "list of integers"),
        ({"sizes": {"acuity": [-1]}}, "negative"),
        ({"sizes": {"acuity": [1] * (MAX_FLEET_ACCOUNTS + 1)}}, "accounts per call"),
        ({"sizes": {"acuity": [6_000_000]}}, "records per call"),
    ],
)
def test_bad_fleet_requests_are_refused_with_the_reason(body: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        fleet_sizes(body)


def test_a_valid_fleet_request_parses() -> None:
    assert fleet_sizes({"sizes": {"acuity": [50, 2000], "google": []}}) == {"acuity": [50, 2000], "google": []}
