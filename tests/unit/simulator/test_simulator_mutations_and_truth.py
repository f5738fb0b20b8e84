"""The seeded mutation model and the truth derived from the simulator's own model: deterministic per
seed, every kind on every provider, deletions remembered, Calendly reschedules linked, Google
recurring instances deleted as stubs that name their series."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from apptsync.simulator._clock import fixed_clock
from apptsync.simulator._contacts_truth import acuity_contacts
from apptsync.simulator._mutations import AppliedMutation, Kind, apply_mutations
from apptsync.simulator._state import ACUITY, CALENDLY, GOOGLE, SimulatorState
from apptsync.simulator._truth import TruthRecord, acuity_truth, calendly_truth, google_truth, minor_units

pytestmark = pytest.mark.unit

ANCHOR = date(2024, 6, 15)
NOW = datetime(2024, 6, 15, 10, 7, 30, tzinfo=UTC)
ACCOUNTS = {ACUITY: 1001, CALENDLY: 1, GOOGLE: 1}


def state(appointments: int = 150) -> SimulatorState:
    return SimulatorState.seeded(
        seed=5, accounts=1, appointments_per_account=appointments, anchor=ANCHOR, clock=fixed_clock(NOW)
    )


def mutate(s: SimulatorState, seed: int, count: int, **kwargs: Any) -> list[AppliedMutation]:
    return apply_mutations(s, rng=random.Random(seed), now=NOW, count=count, accounts=ACCOUNTS, **kwargs)


def truths(s: SimulatorState) -> dict[str, dict[str, TruthRecord]]:
    return {
        ACUITY: {r.external_id: r for r in acuity_truth(s.acuity, 1001)},
        CALENDLY: {r.external_id: r for r in calendly_truth(s.calendly, 1)},
        GOOGLE: {r.external_id: r for r in google_truth(s.google, 1)},
    }


def test_same_seed_same_mutations_and_same_truth() -> None:
    one, two = state(), state()
    assert mutate(one, 7, 60) == mutate(two, 7, 60)
    assert truths(one) == truths(two)
    assert mutate(state(), 8, 60) != mutate(state(), 7, 60)


def test_every_kind_happens_on_every_provider() -> None:
    applied = mutate(state(), 11, 600)
    assert len(applied) == 600
    kinds = Counter((m.provider, m.kind) for m in applied)
    for provider, expected in (
        (ACUITY, {Kind.NEW, Kind.RESCHEDULE, Kind.CANCEL, Kind.DELETE, Kind.NO_SHOW, Kind.PAYMENT, Kind.NEW_CLIENT,
                  Kind.REFUND}),
        (CALENDLY, {Kind.NEW, Kind.RESCHEDULE, Kind.CANCEL, Kind.DELETE, Kind.NO_SHOW, Kind.PAYMENT,
                    Kind.PAID_INVITEE}),
        (GOOGLE, {Kind.NEW, Kind.NEW_SERIES, Kind.RESCHEDULE, Kind.CANCEL, Kind.DELETE, Kind.DELETE_INSTANCE}),
    ):
        assert {kind for p, kind in kinds if p == provider} == expected


def test_most_new_bookings_are_near_term_and_some_far() -> None:
    new = [m for m in mutate(state(), 3, 400) if m.kind == Kind.NEW]
    near = sum(m.near_term_after for m in new)
    assert 0.55 * len(new) < near < 0.85 * len(new)
    assert not any(m.near_term_before for m in new)


def test_every_touched_key_is_in_the_truth_with_what_the_mutation_did() -> None:
    s = state()
    for seed in range(300):
        (m,) = mutate(s, seed, 1)
        if m.kind == Kind.NEW_CLIENT:  # a client is no booking: its key is its contact's identity
            contacts = acuity_contacts(s.acuity, 1001).contacts
            assert any(m.key in c.emails | c.phones for c in contacts), m
            continue
        truth = truths(s)[m.provider]
        assert all(key in truth for key in m.keys), m
        record = truth[m.key]
        near = NOW <= record.starts_at < NOW + timedelta(days=14)
        if m.kind in (Kind.NEW, Kind.RESCHEDULE) and m.provider != CALENDLY:
            assert (record.status, near) == ("scheduled", m.near_term_after), m
        if m.kind in (Kind.CANCEL, Kind.DELETE_INSTANCE):
            assert record.status == "canceled", m
        if m.kind == Kind.NO_SHOW:
            assert record.status == "no_show", m
        if m.kind == Kind.DELETE:
            assert record.deleted or record.stub, m


def test_deletions_are_remembered_as_deleted_acuity_and_calendly_and_as_canceled_stubs_google() -> None:
    s = state()
    applied = mutate(s, 4, 300)
    truth = truths(s)
    deleted = [m for m in applied if m.kind == Kind.DELETE]
    assert {m.provider for m in deleted} == {ACUITY, CALENDLY, GOOGLE}
    for m in deleted:
        record = truth[m.provider][m.key]
        if m.provider == GOOGLE:
            assert (record.status, record.stub, record.deleted) == ("canceled", True, False)
        else:
            assert record.deleted and not record.stub
    gone = {m.key for m in deleted if m.provider == ACUITY}
    assert not gone & {str(k) for k in s.acuity.of(1001)}
    assert all(str(k) not in s.calendly.invitees[1] for m in deleted if m.provider == CALENDLY for k in [m.key])


def test_a_calendly_reschedule_links_the_old_invitee_to_the_new_one() -> None:
    s = state()
    pairs = [m for m in mutate(s, 9, 200) if m.provider == CALENDLY and m.kind == Kind.RESCHEDULE]
    assert pairs
    truth = truths(s)[CALENDLY]
    for m in pairs:
        old, new_key = truth[m.key], m.related_keys[0]
        assert old.status == "canceled" and old.rescheduled_to_external_id == new_key
        # The new booking may have been rescheduled again: then it links on to the next one.
        assert truth[new_key].rescheduled_to_external_id in ("", *truth)
        new = s.calendly.invitees[1].get(new_key) or s.calendly.removed[1][new_key][1]
        assert str(new.old_invitee).endswith("/" + m.key)


def test_google_series_instances_and_a_deleted_instance_stub() -> None:
    s = state(appointments=30)
    account = s.google.accounts[1]
    calendar = account.calendars[0]
    series = s.google.add_recurring(1, calendar.id, {"start": "2024-10-21T09:00:00+02:00", "count": 3}, now=NOW)
    first: Any = series[0].to_json()
    assert first["id"] == f"{first['recurringEventId']}_20241021T070000Z"
    assert first["originalStartTime"] == {"dateTime": "2024-10-21T09:00:00+02:00", "timeZone": calendar.timezone}
    # The same wall time after the change to winter time.
    assert series[1].id.endswith("_20241028T080000Z")
    _, _, token = _listing(s, calendar.id, {"showDeleted": "true", "singleEvents": "true"})
    s.google.cancel(1, calendar.id, series[1].id, now=NOW, delete=True)
    changes, _, _ = _listing(s, calendar.id, {"syncToken": token})
    assert changes == [{
        "kind": "calendar#event", "etag": changes[0]["etag"], "id": series[1].id, "status": "cancelled",
        "recurringEventId": first["recurringEventId"],
        "originalStartTime": {"dateTime": "2024-10-28T09:00:00+01:00", "timeZone": calendar.timezone},
    }]  # fmt: skip
    visible, _, _ = _listing(s, calendar.id, {"singleEvents": "true"})
    assert series[1].id not in {e["id"] for e in visible} and series[0].id in {e["id"] for e in visible}
    record = {r.external_id: r for r in google_truth(s.google, 1)}[f"{calendar.id}/{series[1].id}"]
    assert (record.status, record.stub) == ("canceled", True)


def _listing(s: SimulatorState, calendar: str, params: dict[str, str]) -> tuple[list[Any], int, str]:
    items: list[Any] = []
    token: Any = None
    for pages in range(1, 100):
        body: Any = s.google.list_events(
            s.google.accounts[1], calendar, {**params, **({"pageToken": token} if token else {})}
        )
        items += body["items"]
        token = body.get("nextPageToken")
        if token is None:
            return items, pages, str(body["nextSyncToken"])
    raise AssertionError("no end")


def test_mutations_stamp_with_the_given_now_never_later() -> None:
    s = state()
    mutate(s, 13, 200)
    for event in s.calendly.events[1].values():
        assert event.updated_at <= NOW
    assert all(i.updated_at <= NOW for i in s.calendly.invitees[1].values())
    assert all(e.updated <= NOW for e in s.google.events[1].values())
    assert all(a.created_at <= NOW for a in s.acuity.of(1001).values())


def test_truth_fields_follow_the_contract() -> None:
    s = state(appointments=400)
    acuity = acuity_truth(s.acuity, 1001)
    assert {r.status for r in acuity} == {"scheduled", "canceled", "no_show"}
    assert all(r.contact_email == r.contact_email.strip().lower() for r in acuity)
    assert {r.price_minor for r in acuity} >= {7500, 4500, 1250, 0, 8999}
    calendly = calendly_truth(s.calendly, 1)
    paid = [r for r in calendly if r.price_minor is not None]
    assert paid and all(r.amount_paid_minor in (0, r.price_minor) for r in paid)
    assert minor_units(5000, "JPY") == 5000 and minor_units(89.99, "GBP") == 8999
    google = google_truth(s.google, 1)
    assert all("/" in r.external_id and r.ends_at >= r.starts_at for r in google)
    assert {r.status for r in google} == {"scheduled", "canceled"}
