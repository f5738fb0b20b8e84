"""Google Calendar: the listing state machine, and the session over a fake Calendar API
(httpx.MockTransport): empty pages, sync tokens stored only after their listing was handed out,
410 -> full sync, 403 rate limits retried, OAuth refresh."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, unquote

import httpx
import pytest

from apptsync.fetcher.providers import (
    ConnectionConfig,
    InMemoryConnectionStateStore,
    JobWindow,
    JsonValue,
    ProviderHttp,
    ProviderPage,
    RetryPolicy,
    open_session,
    provider_error_reasons,
)
from apptsync.fetcher.providers.google_calendar import (
    GoogleCalendarSession,
    GoogleListing,
    SyncState,
    calendar_ids,
    sync_state_key,
)
from apptsync.shared.appointments import AppointmentStatus, CancellationStub, Source
from apptsync.shared.errors import (
    InvalidArgumentError,
    PaginationLoopError,
    ProviderAuthError,
    ProviderRejectedError,
)
from apptsync.shared.outbound import OutboundPolicy

pytestmark = pytest.mark.unit

NOW = datetime(2024, 7, 1, tzinfo=UTC)
WINDOW = JobWindow(datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
CREDENTIALS = {"access_token": "at-1", "refresh_token": "rt-1", "client_id": "cid", "client_secret": "cs"}


def event(n: int) -> dict[str, object]:
    return {"id": f"ev{n}", "status": "confirmed", "updated": "2024-05-01T00:00:00.000Z",
            "start": {"dateTime": f"2024-06-{n % 28 + 1:02d}T10:00:00+02:00"},
            "end": {"dateTime": f"2024-06-{n % 28 + 1:02d}T11:00:00+02:00"}}  # fmt: skip


def google_error(status: int, reason: str) -> httpx.Response:
    errors = [{"domain": "global", "reason": reason, "message": reason}]
    return httpx.Response(status, json={"error": {"errors": errors, "code": status, "message": reason}})


class FakeGoogle:
    """Two calendars; pages of 2 with an empty page after every real one (only nextPageToken tells);
    sync tokens `sync-<calendar>-<version>`; changes recorded by version."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[int, dict[str, object]]]] = {
            "a@x": [(1, event(n)) for n in range(5)],
            "b@x": [(1, event(n)) for n in range(10, 13)],
        }
        self.version = 1
        self.expired = False
        self.valid_tokens = {"at-1"}
        self.requests: list[httpx.Request] = []
        self.script: list[httpx.Response] = []

    def change(self, calendar: str, record: dict[str, object]) -> None:
        self.version += 1
        self.events[calendar].append((self.version, record))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/token":
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            assert form["grant_type"] == "refresh_token" and form["refresh_token"] == "rt-1"
            self.valid_tokens = {"at-2"}
            return httpx.Response(200, json={"access_token": "at-2", "expires_in": 3599})  # no rotation
        if self.script:
            return self.script.pop(0)
        if request.headers.get("Authorization") not in {f"Bearer {t}" for t in self.valid_tokens}:
            return google_error(401, "authError")
        calendar = unquote(request.url.path.split("/")[4])
        params = request.url.params
        since = 0
        if "syncToken" in params:
            assert "timeMin" not in params and "timeMax" not in params
            if self.expired:
                return google_error(410, "fullSyncRequired")
            since = int(params["syncToken"].rsplit("-", 1)[1])
        else:
            assert "2024-06-01T00:00:00Z" <= params["timeMin"] < params["timeMax"] <= "2024-07-01T00:00:00Z"
        assert params["singleEvents"] == "true" and params["showDeleted"] == "true"
        latest: dict[object, dict[str, object]] = {}
        for version, record in self.events[calendar]:
            if version > since:
                latest[record["id"]] = record
        items = list(latest.values())
        if "timeMin" in params:
            low, high = (datetime.fromisoformat(params[k]) for k in ("timeMin", "timeMax"))
            items = [e for e in items if low <= datetime.fromisoformat(e["start"]["dateTime"]) < high]  # type: ignore[index]
        offset, empty_next = 0, False
        if "pageToken" in params:
            offset_text, _, flag = params["pageToken"].partition(":")
            offset, empty_next = int(offset_text), flag == "empty"
        body: dict[str, object] = {"timeZone": "Europe/Berlin", "summary": f"Calendar {calendar}"}
        if empty_next:
            body["items"], body["nextPageToken"] = [], f"{offset}:"
            return httpx.Response(200, json=body)
        body["items"] = items[offset : offset + int(params["maxResults"])]
        following = offset + int(params["maxResults"])
        if following < len(items):
            body["nextPageToken"] = f"{following}:empty"
        else:
            body["nextSyncToken"] = f"sync-{calendar}-{self.version}"
        return httpx.Response(200, json=body)


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_http(fake: Callable[[httpx.Request], httpx.Response], sleep: FakeSleep | None = None) -> ProviderHttp:
    return ProviderHttp(
        timeout_seconds=5.0,
        outbound=OutboundPolicy.allowing(["https://google.test"]),
        transport=httpx.MockTransport(fake),
        retry=RetryPolicy(max_attempts=3, initial_backoff_seconds=0.0, max_backoff_seconds=0.0),
        sleep=sleep or FakeSleep(),
        clock=lambda: NOW,
        rng=random.Random(1),
    )


def session(
    http: ProviderHttp, store: InMemoryConnectionStateStore, *, cursor: JsonValue = None, page_size: int = 2
) -> GoogleCalendarSession:
    config = ConnectionConfig(
        base_url="https://google.test/calendar/v3",
        credentials=CREDENTIALS,
        settings={"calendar_ids": "a@x, b@x", "token_url": "https://google.test/token"},
    )
    opened = open_session(
        Source.GOOGLE_CALENDAR, http=http, connection=config, window=WINDOW, page_size=page_size, cursor=cursor,
        clock=lambda: NOW, state=store,
    )  # fmt: skip
    assert isinstance(opened, GoogleCalendarSession)
    return opened


async def drain(s: GoogleCalendarSession) -> list[ProviderPage]:
    pages: list[ProviderPage] = []
    for _ in range(100):
        page = await s.next_page()
        if page is None:
            return pages
        pages.append(page)
    raise AssertionError("no end")


def ids(pages: list[ProviderPage]) -> list[str]:
    return [a.external_id for p in pages for a in p.appointments]


async def test_a_full_listing_walks_past_empty_pages_and_stores_sync_tokens_only_when_asked_for_more() -> None:
    fake, store = FakeGoogle(), InMemoryConnectionStateStore()
    http = make_http(fake)
    try:
        s = session(http, store)
        pages = [await s.next_page() for _ in range(3)]
        assert store.values == {}  # a@x's last page is handed out but not yet sent: no token yet
        assert s.cursor()["pending"] == {  # type: ignore[index, call-overload]
            "calendar_id": "a@x", "state": SyncState("sync-a@x-1", WINDOW.start, WINDOW.end).to_json(),
        }  # fmt: skip
        rest = await drain(s)
    finally:
        await http.aclose()
    assert ids([p for p in pages if p] + rest) == [
        *(f"a@x/ev{n}" for n in range(5)),
        "b@x/ev10",
        "b@x/ev11",
        "b@x/ev12",
    ]
    assert set(store.values) == {sync_state_key("a@x"), sync_state_key("b@x")}
    empty_pages = [r for r in fake.requests if r.url.params.get("pageToken", "").endswith(":")]
    assert len(empty_pages) == 3  # every second page came back empty, and paging went on


async def test_the_next_import_is_incremental_and_brings_only_changes() -> None:
    fake, store = FakeGoogle(), InMemoryConnectionStateStore()
    http = make_http(fake)
    try:
        await drain(session(http, store))
        fake.change("b@x", {**event(11), "status": "cancelled"})
        fake.change("a@x", event(7))
        s = session(http, store)
        pages = await drain(s)
    finally:
        await http.aclose()
    assert ids(pages) == ["a@x/ev7", "b@x/ev11"]
    assert [p.appointments[0].status.value for p in pages] == ["scheduled", "canceled"]
    # Every calendar's changes are read: no page of a sync-token pass is a reason to stop early.
    assert all(page.near_term for page in pages) and s.near_term_pages >= len(pages)
    assert SyncState.from_json(store.values[sync_state_key("b@x")]) == SyncState("sync-b@x-3", WINDOW.start, WINDOW.end)


async def test_an_event_deleted_since_the_last_import_comes_as_a_stub_of_its_key() -> None:
    fake, store = FakeGoogle(), InMemoryConnectionStateStore()
    http = make_http(fake)
    try:
        await drain(session(http, store))
        # Incremental sync always includes deletions, as the id and status only.
        fake.change("b@x", {"kind": "calendar#event", "etag": '"318116178471"', "id": "ev11", "status": "cancelled"})
        pages = await drain(session(http, store))
    finally:
        await http.aclose()
    [deleted] = [a for p in pages for a in p.appointments]
    assert isinstance(deleted, CancellationStub)
    assert (deleted.external_id, deleted.status, deleted.observed_at) == ("b@x/ev11", AppointmentStatus.CANCELED, NOW)
    assert all(r.url.params["showDeleted"] == "true" for r in fake.requests if "syncToken" in r.url.params)


async def test_a_token_covering_part_of_the_window_is_used_and_the_rest_listed_in_full() -> None:
    """A rolling window: the stored state covers all but the window's first day."""
    fake, store = FakeGoogle(), InMemoryConnectionStateStore()
    fake.change("a@x", event(20))  # a change since the token
    partial = SyncState("sync-a@x-1", WINDOW.start + timedelta(days=1), WINDOW.end)
    await store.save(sync_state_key("a@x"), partial.to_json())
    http = make_http(fake)
    try:
        pages = await drain(session(http, store))
    finally:
        await http.aclose()
    a_requests = [r.url.params for r in fake.requests if "/a@x/" in r.url.path]
    assert a_requests[0]["syncToken"] == "sync-a@x-1"
    gap = [p for p in a_requests if "timeMin" in p]
    assert {(p["timeMin"], p["timeMax"]) for p in gap} == {("2024-06-01T00:00:00Z", "2024-06-02T00:00:00Z")}
    # The change (by token), the first day's event (by the gap listing), and b@x in full.
    assert ids(pages) == ["a@x/ev20", "a@x/ev0", "b@x/ev10", "b@x/ev11", "b@x/ev12"]
    stored = SyncState.from_json(store.values[sync_state_key("a@x")])
    assert stored == SyncState("sync-a@x-2", WINDOW.start, WINDOW.end)  # the incremental pass's token


async def test_a_token_of_a_window_that_does_not_overlap_is_not_used() -> None:
    fake, store = FakeGoogle(), InMemoryConnectionStateStore()
    old = SyncState("sync-a@x-1", WINDOW.start - timedelta(days=60), WINDOW.start)
    await store.save(sync_state_key("a@x"), old.to_json())
    http = make_http(fake)
    try:
        pages = await drain(session(http, store))
    finally:
        await http.aclose()
    assert len(ids(pages)) == 8
    assert not any("syncToken" in r.url.params for r in fake.requests)


async def test_an_expired_sync_token_drops_it_and_lists_in_full() -> None:
    fake, store = FakeGoogle(), InMemoryConnectionStateStore()
    http = make_http(fake)
    try:
        await drain(session(http, store))
        fake.expired = True
        s = session(http, store)
        first = await s.next_page()
        assert sync_state_key("a@x") not in store.values  # dropped at once
        fake.expired = False
        pages = [first, *await drain(s)]
    finally:
        await http.aclose()
    assert s.full_syncs_after_gone == 1  # only a@x was asked while the tokens were expired
    assert len(ids([p for p in pages if p])) == 5  # a@x in full; b@x by its (valid) token: no changes
    assert set(store.values) == {sync_state_key("a@x"), sync_state_key("b@x")}


async def test_a_410_without_a_sync_token_is_a_failure() -> None:
    fake, store = FakeGoogle(), InMemoryConnectionStateStore()
    fake.script = [google_error(410, "updatedMinTooLongAgo")]
    http = make_http(fake)
    try:
        with pytest.raises(ProviderRejectedError, match="410"):
            await session(http, store).next_page()
    finally:
        await http.aclose()


async def test_a_resumed_session_stores_the_pending_token_first() -> None:
    fake, store = FakeGoogle(), InMemoryConnectionStateStore()
    http = make_http(fake)
    try:
        s = session(http, store)
        for _ in range(3):
            await s.next_page()
        cursor = s.cursor()
        rest = await drain(session(http, store, cursor=cursor))
    finally:
        await http.aclose()
    assert ids(rest) == ["b@x/ev10", "b@x/ev11", "b@x/ev12"]
    assert set(store.values) == {sync_state_key("a@x"), sync_state_key("b@x")}


async def test_403_rate_limits_are_retried_spent_quotas_rejected_and_other_403s_auth_errors() -> None:
    fake, store = FakeGoogle(), InMemoryConnectionStateStore()
    fake.script = [google_error(403, "rateLimitExceeded"), google_error(429, "userRateLimitExceeded")]
    sleep = FakeSleep()
    http = make_http(fake, sleep)
    try:
        s = session(http, store)
        assert await s.next_page() is not None
        assert s.retries == 2 and len(sleep.calls) == 2
        fake.script = [google_error(403, "forbidden")]
        with pytest.raises(ProviderAuthError, match="403"):
            await s.next_page()
        fake.script = [google_error(403, "dailyLimitExceeded")]
        with pytest.raises(ProviderRejectedError, match="reason dailyLimitExceeded") as quota:
            await s.next_page()
        assert not isinstance(quota.value, ProviderAuthError)
    finally:
        await http.aclose()


async def test_a_401_refreshes_and_keeps_the_refresh_token_google_did_not_rotate() -> None:
    fake, store = FakeGoogle(), InMemoryConnectionStateStore(CREDENTIALS)
    fake.valid_tokens = set()
    http = make_http(fake)
    try:
        s = session(http, store)
        pages = await drain(s)
    finally:
        await http.aclose()
    assert len(ids(pages)) == 8 and s.refreshes == 1
    assert store.credentials == {**CREDENTIALS, "access_token": "at-2"}


def test_the_listing_protocol_and_cursor() -> None:
    listing = GoogleListing(calendar_ids=["a", "b"], window=WINDOW, page_size=5000, cursor=None)
    assert listing.calendar_to_start() == "a"
    with pytest.raises(ValueError, match="start_calendar"):
        listing.next_request()
    listing.start_calendar(SyncState("tok", WINDOW.start, WINDOW.end).to_json())
    assert listing.incremental
    request = listing.next_request()
    assert request is not None and request.sync_token == "tok" and request.max_results == 2500
    assert request.query_params() == {"singleEvents": "true", "showDeleted": "true", "maxResults": "2500",
                                      "syncToken": "tok"}  # fmt: skip
    listing.accept(request, next_page_token="p2", next_sync_token=None)
    request = listing.next_request()
    assert request is not None and request.page_token == "p2"
    with pytest.raises(PaginationLoopError):
        listing.accept(request, next_page_token="p2", next_sync_token=None)
    listing.accept(request, next_page_token=None, next_sync_token="tok2")
    assert listing.next_request() is None and listing.calendar_to_start() is None  # pending first
    restored = GoogleListing(calendar_ids=["a", "b"], window=WINDOW, page_size=10, cursor=listing.cursor())
    pending = restored.pending_sync()
    assert pending is not None and pending.calendar_id == "a" and pending.state.sync_token == "tok2"
    restored.sync_stored()
    assert restored.calendar_to_start() == "b"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [({}, ["primary"]), ({"calendar_ids": " a , b ,a,"}, ["a", "b"]), ({"calendar_ids": " "}, ["primary"])],
)
def test_calendar_ids_from_settings(settings: dict[str, str], expected: list[str]) -> None:
    assert calendar_ids(settings) == expected


@pytest.mark.parametrize("cursor", ["x", {"v": 1, "calendar": 9, "started": True}, {"v": 1, "calendar": 0}])
def test_unreadable_cursors_are_invalid_arguments(cursor: JsonValue) -> None:
    with pytest.raises(InvalidArgumentError):
        GoogleListing(calendar_ids=["a"], window=WINDOW, page_size=10, cursor=cursor)


UNREADABLE_STATES: list[JsonValue] = [
    None,
    "x",
    {"v": 2},
    {"v": 1, "sync_token": "", "window_start": "", "window_end": ""},
    {"v": 1, "sync_token": "t", "window_start": "2024-01-01", "window_end": "x"},
    {"v": 1, "sync_token": "t", "window_start": "2024-01-01T00:00:00", "window_end": "2024-02-01T00:00:00"},
]


@pytest.mark.parametrize("stored", UNREADABLE_STATES)
def test_unreadable_sync_state_means_a_full_sync(stored: JsonValue) -> None:
    assert SyncState.from_json(stored) is None


def test_google_error_reasons_are_read_from_the_nested_shape() -> None:
    body = json.loads(google_error(403, "rateLimitExceeded").content)
    assert provider_error_reasons(body) == frozenset({"rateLimitExceeded"})
    assert provider_error_reasons({"error": "invalid_grant"}) == frozenset()
