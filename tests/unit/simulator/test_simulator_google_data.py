"""The simulated Google Calendar: seeded calendars and events, events.list semantics (time bounds,
showDeleted, paging with empty pages, sync tokens and their expiry) and admin changes."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from apptsync.simulator._google_data import GoogleAccount, GoogleQueryError, GoogleStore

pytestmark = pytest.mark.unit

ANCHOR = date(2024, 6, 15)
NOW = datetime(2024, 6, 20, tzinfo=UTC)


def store(events: int = 300, seed: int = 2) -> GoogleStore:
    return GoogleStore(seed=seed, accounts=2, events_per_account=events, anchor=ANCHOR)


def listing(
    s: GoogleStore, account: GoogleAccount, calendar: str, params: dict[str, str], *, empty_every: int = 0
) -> tuple[list[Any], int, str]:
    """Every item of a listing, the number of pages, and its nextSyncToken."""
    items: list[Any] = []
    token: Any = None
    for pages in range(1, 1_000):
        body: Any = s.list_events(account, calendar, {**params, **({"pageToken": token} if token else {})},
                             empty_page_every=empty_every)  # fmt: skip
        items += body["items"]
        token = body.get("nextPageToken")
        if token is None:
            return items, pages, str(body["nextSyncToken"])
    raise AssertionError("no end")


def test_same_seed_same_data() -> None:
    assert store().data_set(1) == store().data_set(1)
    assert store().data_set(1) != store(seed=3).data_set(1)


def test_the_data_set_has_the_variety_the_importer_must_handle() -> None:
    records = store(events=1_000).data_set(1)
    events: list[Any] = [r["event"] for r in records]
    assert {e["status"] for e in events} == {"confirmed", "tentative", "cancelled"}
    assert any("date" in e["start"] for e in events)
    assert len({r["calendar_id"] for r in records}) == 2
    assert len({e["start"].get("timeZone") for e in events if "dateTime" in e["start"]}) >= 5
    assert any(not str(e.get("summary")).isascii() for e in events)


def test_a_full_listing_hides_cancelled_unless_asked_and_bounds_end_and_start() -> None:
    s = store()
    account = s.accounts[1]
    calendar = account.calendars[0].id
    visible, _, _ = listing(s, account, calendar, {"maxResults": "50"})
    everything, _, _ = listing(s, account, calendar, {"maxResults": "50", "showDeleted": "true"})
    assert all(e["status"] != "cancelled" for e in visible)
    assert len(everything) > len(visible)
    bounded, _, _ = listing(s, account, calendar, {"timeMin": "2024-06-01T00:00:00Z", "timeMax": "2024-07-01T00:00:00Z",
                                                    "showDeleted": "true"})  # fmt: skip
    assert 0 < len(bounded) < len(everything)


def test_empty_pages_come_mid_listing_with_a_next_page_token() -> None:
    s = store()
    account = s.accounts[1]
    calendar = account.calendars[0].id
    plain, pages, _ = listing(s, account, calendar, {"maxResults": "20"})
    quirky, quirky_pages, _ = listing(s, account, calendar, {"maxResults": "20"}, empty_every=2)
    assert [e["id"] for e in quirky] == [e["id"] for e in plain]
    assert quirky_pages > pages


def test_sync_tokens_bring_changes_only_and_expire_with_410() -> None:
    s = store()
    account = s.accounts[1]
    calendar = account.calendars[1].id
    _, _, sync_token = listing(s, account, calendar, {"showDeleted": "true", "singleEvents": "true"})
    victim = next(e for e in s.events[1].values() if e.calendar_id == calendar and e.status == "confirmed")
    s.cancel(1, calendar, victim.id, now=NOW)
    added = s.add(1, calendar, {"date": "2024-08-01"}, now=NOW)
    changes, _, next_token = listing(s, account, calendar, {"syncToken": sync_token})
    assert [e["id"] for e in changes] == [victim.id, added.id]
    assert changes[0]["status"] == "cancelled" and changes[1]["start"] == {"date": "2024-08-01"}
    assert listing(s, account, calendar, {"syncToken": next_token})[0] == []
    with pytest.raises(GoogleQueryError, match="syncToken cannot be combined") as bad:
        s.list_events(account, calendar, {"syncToken": next_token, "timeMin": "2024-01-01T00:00:00Z"})
    assert bad.value.status == 400
    s.expire_sync_tokens()
    with pytest.raises(GoogleQueryError) as gone:
        s.list_events(account, calendar, {"syncToken": next_token})
    assert (gone.value.status, gone.value.reason) == (410, "fullSyncRequired")


def test_incremental_sync_lists_cancellations_with_details_only_when_show_deleted_is_true() -> None:
    s = store()
    account = s.accounts[1]
    calendar = account.calendars[0].id
    _, _, sync_token = listing(s, account, calendar, {"showDeleted": "true", "singleEvents": "true"})
    cancelled, deleted = [e for e in s.events[1].values() if e.calendar_id == calendar and e.status == "confirmed"][:2]
    s.cancel(1, calendar, cancelled.id, now=NOW)
    s.cancel(1, calendar, deleted.id, now=NOW, delete=True)
    stub_keys = {"kind", "etag", "id", "status"}
    plain, _, _ = listing(s, account, calendar, {"syncToken": sync_token, "singleEvents": "true"})
    assert [(e["id"], set(e)) for e in plain] == [(cancelled.id, stub_keys), (deleted.id, stub_keys)]
    assert {e["status"] for e in plain} == {"cancelled"}
    with_deleted = {"syncToken": sync_token, "singleEvents": "true", "showDeleted": "true"}
    shown, _, _ = listing(s, account, calendar, with_deleted)
    assert [e["id"] for e in shown] == [cancelled.id, deleted.id]
    assert shown[0]["status"] == "cancelled" and "start" in shown[0]  # the organizer's calendar keeps details
    assert set(shown[1]) == stub_keys
    # A full listing shows cancelled events only when asked to.
    hidden, _, _ = listing(s, account, calendar, {"maxResults": "2500"})
    assert {cancelled.id, deleted.id}.isdisjoint(e["id"] for e in hidden)


def test_a_deleted_event_renders_as_id_and_status_only() -> None:
    s = store()
    victim = next(iter(s.events[1].values()))
    deleted = s.cancel(1, victim.calendar_id, victim.id, now=NOW, delete=True)
    assert set(deleted.to_json()) == {"kind", "etag", "id", "status"}


def test_other_accounts_calendars_and_bad_parameters() -> None:
    s = store()
    with pytest.raises(GoogleQueryError) as missing:
        s.list_events(s.accounts[1], s.accounts[2].calendars[0].id, {})
    assert missing.value.status == 404
    for bad in ({"maxResults": "0"}, {"timeMin": "soon"}, {"pageToken": "%%%"}, {"orderBy": "startTime"}):
        with pytest.raises(GoogleQueryError):
            s.list_events(s.accounts[1], s.accounts[1].calendars[0].id, bad)


def test_reschedule_keeps_the_duration_in_the_events_zone() -> None:
    s = store()
    timed = next(e for e in s.events[1].values() if e.starts_at is not None and e.ends_at is not None)
    moved = s.reschedule(1, timed.calendar_id, timed.id, {"start": "2024-10-27T00:30:00Z"}, now=NOW)
    assert moved.starts_at is not None and moved.ends_at is not None and timed.starts_at and timed.ends_at
    assert moved.ends_at - moved.starts_at == timed.ends_at - timed.starts_at
    assert moved.version > timed.version and moved.updated == NOW
