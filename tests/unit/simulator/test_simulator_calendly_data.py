"""The simulated Calendly: seeded data with the variety an importer must handle, the documented
query semantics of scheduled_events / invitees, and admin changes shaped like Calendly's own."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from apptsync.simulator._acuity_data import QueryError
from apptsync.simulator._calendly_data import CalendlyStore, render_event, render_invitee

pytestmark = pytest.mark.unit

ANCHOR = date(2024, 6, 15)
NOW = datetime(2024, 6, 20, 12, 0, tzinfo=UTC)


def store(invitees: int = 400, seed: int = 3) -> CalendlyStore:
    return CalendlyStore(seed=seed, accounts=2, invitees_per_account=invitees, anchor=ANCHOR)


def all_events(s: CalendlyStore, params: dict[str, str]) -> list[dict[str, object]]:
    account = s.accounts[1]
    events, token = s.list_events(account, {**params, "count": "100"})
    for _ in range(100):
        if token is None:
            return events
        more, token = s.list_events(account, {**params, "count": "100", "page_token": token})
        events += more
    raise AssertionError("no end")


def test_same_seed_same_data_other_seed_other_data() -> None:
    assert store().bookings(1) == store().bookings(1)
    assert store().bookings(1) != store(seed=4).bookings(1)
    assert store().bookings(1) != store().bookings(2)


def test_the_data_set_has_the_variety_the_importer_must_handle() -> None:
    s = store(invitees=1_000)
    bookings: list[Any] = s.bookings(1)
    assert len(bookings) == 1_000
    invitees = [b["invitee"] for b in bookings]
    events = {str(b["event"]["uri"]): b["event"] for b in bookings}
    assert {i["status"] for i in invitees} == {"active", "canceled"}
    assert any(i["no_show"] is not None for i in invitees)
    assert any(i["payment"] is not None and i["payment"]["successful"] for i in invitees)
    assert {i["payment"]["currency"] for i in invitees if i["payment"]} >= {"USD", "EUR", "JPY"}
    assert any(e["invitees_counter"]["total"] > 1 for e in events.values())  # group events
    assert len({i["timezone"] for i in invitees}) >= 15
    assert any(not str(i["name"]).isascii() for i in invitees)
    assert all(str(e["start_time"]).endswith("Z") for e in events.values())


def test_scope_is_required_and_must_be_the_callers() -> None:
    s = store()
    account = s.accounts[1]
    with pytest.raises(QueryError, match="organization, user or group"):
        s.list_events(account, {})
    with pytest.raises(PermissionError):
        s.list_events(account, {"organization": s.accounts[2].organization_uri})
    assert s.list_events(account, {"user": account.user_uri})[0]


def test_token_paging_returns_every_event_once_in_start_order() -> None:
    s = store()
    scope = {"organization": s.accounts[1].organization_uri}
    listed = all_events(s, scope)
    assert len(listed) == len(s.events[1])
    assert len({e["uri"] for e in listed}) == len(listed)
    starts = [str(e["start_time"]) for e in listed]
    assert starts == sorted(starts)
    newest_first = all_events(s, {**scope, "sort": "start_time:desc"})
    assert [str(e["start_time"]) for e in newest_first] == sorted(starts, reverse=True)


def test_filters_by_time_and_status_and_bad_parameters_are_400s() -> None:
    s = store()
    scope = {"organization": s.accounts[1].organization_uri}
    low, high = "2024-06-01T00:00:00.000000Z", "2024-07-01T00:00:00.000000Z"
    windowed = all_events(s, {**scope, "min_start_time": low, "max_start_time": high, "status": "canceled"})
    assert windowed and all(low <= str(e["start_time"]) < high and e["status"] == "canceled" for e in windowed)
    for bad in ({"count": "101"}, {"count": "0"}, {"sort": "updated_at:asc"}, {"status": "gone"},
                {"page_token": "garbage!"}, {"min_start_time": "yesterday"}):  # fmt: skip
        with pytest.raises(QueryError):
            s.list_events(s.accounts[1], {**scope, **bad})
    _, token = s.list_events(s.accounts[1], {**scope, "count": "5"})
    assert token is not None
    with pytest.raises(QueryError, match="does not belong"):
        s.list_events(s.accounts[1], {**scope, "status": "active", "page_token": token})


def test_invitees_are_paged_and_only_for_the_callers_events() -> None:
    s = store()
    group = next(e for e in s.events[1].values() if len(s.invitees_of(1, e.uuid)) > 1)
    first, token = s.list_invitees(s.accounts[1], group.uuid, {"count": "1"})
    assert len(first) == 1 and token is not None
    rest, _ = s.list_invitees(s.accounts[1], group.uuid, {"count": "100", "page_token": token})
    assert len(first) + len(rest) == len(s.invitees_of(1, group.uuid))
    with pytest.raises(KeyError):
        s.list_invitees(s.accounts[2], group.uuid, {})


def test_reschedule_cancels_the_old_invitee_and_books_a_new_one() -> None:
    s = store()
    old = next(i for i in s.invitees[1].values() if i.status == "active" and len(s.invitees_of(1, i.event_uuid)) == 1)
    new = s.reschedule(1, old.uuid, "2024-09-01T10:00:00Z", now=NOW)
    before = s.invitees[1][old.uuid]
    assert (before.status, before.rescheduled, before.new_invitee) == ("canceled", True, new.uri)
    assert new.old_invitee == before.uri and new.status == "active" and new.event_uuid != old.event_uuid
    assert s.events[1][old.event_uuid].status == "canceled"  # its only invitee left
    assert s.events[1][new.event_uuid].starts_at == datetime(2024, 9, 1, 10, tzinfo=UTC)
    expected = {"canceled_by": before.name, "reason": "Rescheduled", "canceler_type": "invitee",
                "created_at": "2024-06-20T12:00:00.000000Z"}  # fmt: skip
    assert render_invitee(before)["cancellation"] == expected


def test_canceling_one_invitee_of_a_group_keeps_the_event_active() -> None:
    s = store()
    group = next(e for e in s.events[1].values() if e.status == "active" and len(s.invitees_of(1, e.uuid)) > 1)
    one = s.invitees_of(1, group.uuid)[0]
    s.cancel(1, one.uuid, now=NOW)
    assert s.events[1][group.uuid].status == "active"
    counter: Any = render_event(s.events[1][group.uuid], s.invitees_of(1, group.uuid))["invitees_counter"]
    assert counter["active"] == counter["total"] - 1


def test_admin_additions_and_no_shows() -> None:
    s = store()
    added = s.add(1, {"start_time": "2024-07-01T09:00:00Z", "invitees": 3, "first_name": "Zoë"}, now=NOW)
    assert len(added) == 3 and len({i.event_uuid for i in added}) == 1
    assert s.mark_no_show(1, added[0].uuid, now=NOW).no_show_at == NOW
    with pytest.raises(QueryError):
        s.add(1, {}, now=NOW)
    with pytest.raises(KeyError):
        s.cancel(1, "NOPE", now=NOW)
