"""The Calendly pager, session, OAuth refresh and rate-limit pauses, over a fake Calendly
(httpx.MockTransport) with a fake sleep and clock: no network, no waiting."""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qs

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
    rate_limit_pause_seconds,
)
from apptsync.fetcher.providers.calendly import (
    CALENDLY_RATE_BUDGET,
    CalendlyPaginator,
    CalendlySession,
    calendly_scope,
)
from apptsync.shared.appointments import Source
from apptsync.shared.errors import (
    InvalidArgumentError,
    OutboundRefusedError,
    PaginationLoopError,
    ProviderAuthError,
    ProviderRejectedError,
    ProviderUnavailableError,
)
from apptsync.shared.outbound import OutboundPolicy
from tests.unit.fetcher.test_provider_calendly_normalizer import EVENT, INVITEE

pytestmark = pytest.mark.unit

NOW = datetime(2024, 7, 1, tzinfo=UTC)
WINDOW = JobWindow(datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
ORG = "https://api.calendly.com/organizations/ORG1"
CREDENTIALS = {"access_token": "at-1", "refresh_token": "rt-1", "client_id": "cid", "client_secret": "csecret"}


def event(n: int, day: int = 10) -> dict[str, object]:
    return {
        "uri": f"https://api.calendly.com/scheduled_events/EV{n}",
        "name": "Meeting",
        "status": "active",
        "start_time": f"2024-06-{day:02d}T10:00:00.000000Z",
        "end_time": f"2024-06-{day:02d}T10:30:00.000000Z",
        "updated_at": "2024-05-01T00:00:00.000000Z",
    }


def invitee(event_n: int, n: int) -> dict[str, object]:
    return {
        "uri": f"https://api.calendly.com/scheduled_events/EV{event_n}/invitees/IN{event_n}x{n}",
        "email": f"p{n}@example.com",
        "name": "Zoë",
        "status": "active",
        "timezone": "Europe/Berlin",
        "no_show": None,
        "payment": None,
    }


class FakeCalendly:
    """Events in pages of `per_page` (tokens `t<offset>`), invitees in pages of 2, tokens that expire
    on demand, and single-use rotating refresh tokens."""

    def __init__(self, events: list[dict[str, object]], invitees: dict[str, list[dict[str, object]]]) -> None:
        self.events, self.invitees = events, invitees
        self.per_page = 2
        self.valid_tokens = {"at-1"}
        self.refresh_tokens = {"rt-1"}
        self.refreshes = 0
        self.requests: list[httpx.Request] = []
        self.rate_headers: Callable[[int], dict[str, str]] = lambda _n: {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/oauth/token":
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            if form.get("refresh_token") not in self.refresh_tokens or form.get("client_secret") != "csecret":
                return httpx.Response(400, json={"error": "invalid_grant", "error_description": "spent"})
            self.refresh_tokens.discard(form["refresh_token"])
            self.refreshes += 1
            access, refresh = f"at-{self.refreshes + 1}", f"rt-{self.refreshes + 1}"
            self.valid_tokens.add(access)
            self.refresh_tokens.add(refresh)
            return httpx.Response(200, json={"access_token": access, "refresh_token": refresh, "token_type": "Bearer"})
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.valid_tokens:
            return httpx.Response(401, json={"title": "Unauthenticated", "message": "The access token is expired"})
        headers = self.rate_headers(len(self.requests))
        offset = int(request.url.params.get("page_token", "t0")[1:])
        if request.url.path == "/scheduled_events":
            assert request.url.params["organization"] == ORG
            records, size = self.events, self.per_page
        else:
            records, size = self.invitees[request.url.path.split("/")[2]], 2
        page = records[offset : offset + size]
        token_next = f"t{offset + size}" if offset + size < len(records) else None
        body = {"collection": page, "pagination": {"count": len(page), "next_page_token": token_next}}
        return httpx.Response(200, json=body, headers=headers)


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_http(fake: Callable[[httpx.Request], httpx.Response], sleep: FakeSleep | None = None) -> ProviderHttp:
    return ProviderHttp(
        timeout_seconds=5.0,
        outbound=OutboundPolicy.allowing(["https://calendly.test", "https://auth.test"]),
        transport=httpx.MockTransport(fake),
        retry=RetryPolicy(max_attempts=3, initial_backoff_seconds=0.0, max_backoff_seconds=0.0),
        sleep=sleep or FakeSleep(),
        clock=lambda: NOW,
        rng=random.Random(1),
    )


def session(
    http: ProviderHttp, *, cursor: JsonValue = None, store: InMemoryConnectionStateStore | None = None, **settings: str
) -> CalendlySession:
    config = ConnectionConfig(
        base_url="https://calendly.test", credentials=CREDENTIALS, settings={"organization": ORG, **settings}
    )
    opened = open_session(
        Source.CALENDLY, http=http, connection=config, window=WINDOW, page_size=100, cursor=cursor,
        clock=lambda: NOW, state=store,
    )  # fmt: skip
    assert isinstance(opened, CalendlySession)
    return opened


async def drain(s: CalendlySession) -> list[ProviderPage]:
    pages: list[ProviderPage] = []
    for _ in range(100):
        page = await s.next_page()
        if page is None:
            return pages
        pages.append(page)
    raise AssertionError("no end")


def three_events() -> FakeCalendly:
    events = [event(1), event(2), event(3, day=28)]
    invitees = {"EV1": [invitee(1, 1)], "EV2": [invitee(2, n) for n in range(5)], "EV3": [invitee(3, 1)]}
    return FakeCalendly(events, invitees)


def test_the_paginator_asks_for_the_window_and_follows_tokens_until_none() -> None:
    paginator = CalendlyPaginator(window=WINDOW, page_size=500, cursor=None)
    first = paginator.next_request()
    assert first is not None
    assert first.query_params(calendly_scope({"organization": ORG})) == {
        "organization": ORG, "count": "100", "min_start_time": "2024-06-01T00:00:00.000000Z",
        "max_start_time": "2024-07-01T00:00:00.000000Z", "sort": "start_time:desc",
    }  # fmt: skip
    paginator.accept(first, "tok-2")
    assert paginator.cursor() == {
        "v": 2,
        "listings": [{"start": "2024-06-01T00:00:00+00:00", "end": "2024-07-01T00:00:00+00:00",
                      "order": "descending", "near_term": False}],
        "page_token": "tok-2",
        "near_term_pages": 0,
    }  # fmt: skip
    resumed = CalendlyPaginator(window=WINDOW, page_size=100, cursor=paginator.cursor())
    second = resumed.next_request()
    assert second is not None and second.page_token == "tok-2"
    resumed.accept(second, None)
    assert resumed.exhausted and resumed.next_request() is None


def test_a_token_seen_before_is_a_pagination_loop() -> None:
    paginator = CalendlyPaginator(window=WINDOW, page_size=10, cursor=None)
    for token in ("a", "b"):
        request = paginator.next_request()
        assert request is not None
        paginator.accept(request, token)
    request = paginator.next_request()
    assert request is not None
    with pytest.raises(PaginationLoopError, match="pagination loop"):
        paginator.accept(request, "a")


@pytest.mark.parametrize(
    "cursor",
    [
        {"v": 2},
        {"v": 3, "listings": [], "page_token": None, "near_term_pages": 0},
        {"v": 1, "page_token": 3, "done": False},
        "x",
        {"v": 1},
        {"v": 2, "listings": [{"start": "2024-06-01T00:00:00+00:00", "end": "2024-07-01T00:00:00+00:00",
                               "order": "sideways", "near_term": False}], "page_token": None, "near_term_pages": 0},
        {"v": 2, "listings": [{"start": "2024-06-01T00:00:00", "end": "2024-07-01T00:00:00",
                               "order": "ascending", "near_term": False}], "page_token": None, "near_term_pages": 0},
        {"v": 2, "listings": [{"start": "June", "end": "July", "order": "ascending", "near_term": False}],
         "page_token": None, "near_term_pages": 0},
        {"v": 2, "listings": ["x"], "page_token": None, "near_term_pages": 0},
        {"v": 2, "listings": [], "page_token": None},
    ],
)  # fmt: skip
def test_unreadable_cursors_are_invalid_arguments(cursor: JsonValue) -> None:
    with pytest.raises(InvalidArgumentError):
        CalendlyPaginator(window=WINDOW, page_size=10, cursor=cursor)


def test_the_scope_is_the_organization_else_the_user() -> None:
    assert calendly_scope({"organization": ORG, "user": "u"}).parameter == "organization"
    assert calendly_scope({"user": "https://api.calendly.com/users/U1"}).parameter == "user"
    with pytest.raises(InvalidArgumentError, match="organization"):
        calendly_scope({})


async def test_pages_carry_every_invitee_of_their_events_paged_the_same_way() -> None:
    fake = three_events()
    http = make_http(fake)
    try:
        pages = await drain(session(http))
    finally:
        await http.aclose()
    assert [p.records_fetched for p in pages] == [6, 1]
    ids = [a.external_id for p in pages for a in p.appointments]
    assert ids == ["IN1x1", *(f"IN2x{n}" for n in range(5)), "IN3x1"]
    invitee_requests = [r for r in fake.requests if r.url.path == "/scheduled_events/EV2/invitees"]
    assert [r.url.params.get("page_token") for r in invitee_requests] == [None, "t2", "t4"]
    assert all(r.url.params["count"] == "100" for r in invitee_requests)


async def test_a_rerun_lists_every_events_invitees_because_an_invitee_changes_alone() -> None:
    """Why an unchanged full re-run still costs one invitees request per event: Calendly documents no
    event field that changes with its invitees' own changes (a no-show mark, a reconfirmation; an
    invitee's cancellation in a group event shows only in `invitees_counter`), so no event proves
    its invitees unchanged. Here the event stays byte for byte the same and the no-show still lands."""
    fake = three_events()
    http = make_http(fake)
    try:
        first = await drain(session(http))
        events_before = copy.deepcopy(fake.events)
        fake.invitees["EV1"][0] = {
            **fake.invitees["EV1"][0],
            "no_show": {"uri": "https://api.calendly.com/invitee_no_shows/NS1", "created_at": "2024-06-10T10:40:00Z"},
            "updated_at": "2024-06-10T10:40:00.000000Z",
        }
        fake.requests.clear()
        again = await drain(session(http))
    finally:
        await http.aclose()

    assert fake.events == events_before
    status = {a.external_id: a.status.value for p in again for a in p.appointments}
    assert status["IN1x1"] == "no_show"
    assert {a.external_id: a.status.value for p in first for a in p.appointments}["IN1x1"] == "scheduled"
    invitee_paths = {r.url.path for r in fake.requests if r.url.path.endswith("/invitees")}
    assert invitee_paths == {f"/scheduled_events/EV{n}/invitees" for n in (1, 2, 3)}


@pytest.mark.parametrize(("status", "error"), [(400, ProviderRejectedError), (503, ProviderUnavailableError)])
async def test_a_failed_invitee_listing_fails_the_page_with_the_error_tree(status: int, error: type[Exception]) -> None:
    """Not an exception group: the runner fails the job on the error tree's classes alone."""
    fake = three_events()

    def failing(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/scheduled_events/EV2/invitees":
            return httpx.Response(status, json={"title": "Invalid Argument", "message": "The event is unknown."})
        return fake(request)

    http = make_http(failing)
    try:
        with pytest.raises(error) as raised:
            await session(http).next_page()
    finally:
        await http.aclose()
    assert "/scheduled_events/EV2/invitees" in str(raised.value)


async def test_a_resumed_session_continues_after_its_cursor() -> None:
    fake = three_events()
    http = make_http(fake)
    try:
        first = session(http)
        await first.next_page()
        rest = await drain(session(http, cursor=first.cursor()))
    finally:
        await http.aclose()
    assert [a.external_id for p in rest for a in p.appointments] == ["IN3x1"]


async def test_an_expired_token_is_refreshed_once_and_the_rotated_pair_stored() -> None:
    fake = three_events()
    fake.valid_tokens = set()
    store = InMemoryConnectionStateStore(CREDENTIALS)
    http = make_http(fake)
    try:
        opened = session(http, store=store)
        pages = await drain(opened)
    finally:
        await http.aclose()
    assert sum(len(p.appointments) for p in pages) == 7
    assert fake.refreshes == 1 and opened.refreshes == 1 and store.refreshes == 1
    assert store.credentials == {**CREDENTIALS, "access_token": "at-2", "refresh_token": "rt-2"}
    token_request = next(r for r in fake.requests if r.url.path == "/oauth/token")
    assert parse_qs(token_request.content.decode()) == {
        "grant_type": ["refresh_token"], "refresh_token": ["rt-1"], "client_id": ["cid"], "client_secret": ["csecret"],
    }  # fmt: skip


async def test_a_401_after_a_refresh_needs_reauthorization() -> None:
    fake = three_events()
    fake.valid_tokens = set()
    original = fake.__call__

    def refuse_everything(request: httpx.Request) -> httpx.Response:
        response = original(request)
        fake.valid_tokens.clear()  # every new token is refused too
        return response

    http = make_http(refuse_everything)
    try:
        with pytest.raises(ProviderAuthError, match="reauthorization required: calendly refused the refreshed"):
            await session(http).next_page()
    finally:
        await http.aclose()


async def test_a_spent_refresh_token_needs_reauthorization_and_stays_secret() -> None:
    fake = three_events()
    fake.valid_tokens, fake.refresh_tokens = set(), set()
    http = make_http(fake)
    try:
        with pytest.raises(ProviderAuthError, match="reauthorization required") as caught:
            await session(http).next_page()
    finally:
        await http.aclose()
    assert "invalid_grant" in str(caught.value)
    assert "rt-1" not in str(caught.value) and "csecret" not in str(caught.value)


async def test_without_a_refresh_token_a_401_needs_reauthorization_at_once() -> None:
    fake = three_events()
    fake.valid_tokens = set()
    http = make_http(fake)
    config = ConnectionConfig(base_url="https://calendly.test", credentials={"access_token": "pat"},
                              settings={"organization": ORG})  # fmt: skip
    s = open_session(Source.CALENDLY, http=http, connection=config, window=WINDOW, page_size=10, cursor=None,
                     clock=lambda: NOW)  # fmt: skip
    try:
        with pytest.raises(ProviderAuthError, match="no refresh_token"):
            await s.next_page()
    finally:
        await http.aclose()
    assert not any(r.url.path == "/oauth/token" for r in fake.requests)


async def test_a_spent_rate_limit_pauses_the_connection_until_its_reset() -> None:
    fake = three_events()
    fake.rate_headers = lambda n: {
        "X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0" if n % 3 == 0 else "1", "X-RateLimit-Reset": "7",
    }  # fmt: skip
    sleep = FakeSleep()
    http = make_http(fake, sleep)
    try:
        await drain(session(http))
    finally:
        await http.aclose()
    assert sleep.calls and all(seconds == 7.0 for seconds in sleep.calls)
    assert http.rate_limit_pauses == len(sleep.calls) == len(fake.requests) // 3


@pytest.mark.parametrize(
    ("headers", "pause"),
    [
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "42"}, 42.0),
        ({"X-RateLimit-Remaining": "0"}, 60.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "soon"}, 60.0),
        ({"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "42"}, None),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "99999"}, 3600.0),
        ({}, None),
    ],
)
def test_rate_limit_pause_seconds(headers: dict[str, str], pause: float | None) -> None:
    assert rate_limit_pause_seconds(httpx.Headers(headers)) == pause


async def test_a_body_without_collection_is_rejected() -> None:
    http = make_http(lambda _request: httpx.Response(200, json={"data": []}))
    try:
        with pytest.raises(ProviderRejectedError, match="collection"):
            await session(http).next_page()
    finally:
        await http.aclose()


async def test_token_requests_are_not_retried_after_a_reset() -> None:
    calls: list[httpx.Request] = []

    def reset(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("reset", request=request)

    http = make_http(reset)
    try:
        with pytest.raises(ProviderUnavailableError, match="gave up after 1 attempts"):
            await http.post_form(source=Source.CALENDLY, budget=CALENDLY_RATE_BUDGET, url="https://auth.test/oauth/token",
                                 form={"grant_type": "refresh_token"}, headers={})  # fmt: skip
    finally:
        await http.aclose()
    assert len(calls) == 1


# --- The near term first, on Calendly's reference payloads ----------------------------------------


def documented_event(n: int, start: str) -> dict[str, object]:
    """The reference's `GET /scheduled_events` item (microsecond start times and all), renamed."""
    record = copy.deepcopy(EVENT)
    record["uri"] = f"https://api.calendly.com/scheduled_events/DOC{n}"
    record["start_time"] = start
    record["end_time"] = start
    return record


def documented_invitee(n: int) -> dict[str, object]:
    record = copy.deepcopy(INVITEE)
    record["uri"] = f"https://api.calendly.com/scheduled_events/DOC{n}/invitees/INV{n}"
    return record


async def test_the_near_term_is_paged_first_and_flagged_and_each_booking_comes_once() -> None:
    """A fake that ignores the time bounds altogether answers every listing with every event: the
    session keeps each event in the one listing whose range holds it."""
    near_term = JobWindow(datetime(2024, 6, 9, 12, tzinfo=UTC), datetime(2024, 6, 15, 12, tzinfo=UTC))
    starts = {1: "2024-06-10T14:15:22.123456Z", 2: "2024-06-15T12:00:00.000000Z", 3: "2024-06-02T09:00:00.000000Z",
              4: "2024-06-15T11:59:59.999999Z"}  # fmt: skip
    fake = FakeCalendly(
        [documented_event(n, start) for n, start in starts.items()],
        {f"DOC{n}": [documented_invitee(n)] for n in starts},
    )
    fake.per_page = 100
    http = make_http(fake)
    config = ConnectionConfig(base_url="https://calendly.test", credentials=CREDENTIALS, settings={"organization": ORG})
    opened = open_session(Source.CALENDLY, http=http, connection=config, window=WINDOW, page_size=100, cursor=None,
                          clock=lambda: NOW, near_term=near_term)  # fmt: skip
    try:
        pages = await drain(opened)  # type: ignore[arg-type]
    finally:
        await http.aclose()
    assert [(p.near_term, sorted(a.external_id for a in p.appointments)) for p in pages] == [
        (True, ["INV1", "INV4"]),
        (False, ["INV2"]),
        (False, ["INV3"]),
    ]
    assert opened.near_term_pages == 1
    event_requests = [r for r in fake.requests if r.url.path == "/scheduled_events"]
    assert [r.url.params["sort"] for r in event_requests] == ["start_time:asc", "start_time:asc", "start_time:desc"]


async def test_a_stored_token_url_the_policy_refuses_gets_no_refresh_token() -> None:
    """A connection stored before the outbound policy: its token_url points at an internal address.
    The 401 leads to a refresh, which the seam refuses: the refresh token and client secret are never
    sent there, and the job fails with the policy's reason."""
    fake = three_events()
    fake.valid_tokens = set()
    http = make_http(fake)
    try:
        with pytest.raises(OutboundRefusedError, match=re.escape("outbound request refused: host '169.254.169.254'")):
            await session(http, token_url="http://169.254.169.254/oauth/token").next_page()
    finally:
        await http.aclose()
    assert [r.url.host for r in fake.requests] == ["calendly.test"]
    assert all(r.url.path != "/oauth/token" for r in fake.requests)
