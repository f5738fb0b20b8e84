"""The Acuity session over a fake Acuity (httpx.MockTransport): requests, auth, pages, resume."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from apptsync.fetcher.providers import (
    ConnectionConfig,
    InMemoryConnectionStateStore,
    JobWindow,
    ProviderHttp,
    ProviderPage,
    ProviderSession,
    RateBudget,
    RetryPolicy,
    open_session,
)
from apptsync.shared.appointments import CancellationStub, Source
from apptsync.shared.errors import (
    InvalidArgumentError,
    OutboundRefusedError,
    PermanentError,
    ProviderAuthError,
    ProviderRejectedError,
)
from apptsync.shared.outbound import OutboundPolicy
from tests.unit.fetcher.test_provider_acuity_normalizer import DOCUMENTED

pytestmark = pytest.mark.unit

FETCHED_AT = datetime(2024, 3, 30, tzinfo=UTC)
WINDOW = JobWindow(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 29, tzinfo=UTC))
BASIC = ConnectionConfig(base_url="https://acuity.test/api/v1", credentials={"user_id": "7", "api_key": "k-secret"})
GENEROUS = {Source.ACUITY: RateBudget(requests_per_period=10_000, period_seconds=1.0, max_concurrent=100)}


def acuity_record(number: int, day: date, *, hour: int = 10) -> dict[str, object]:
    return {
        "id": number,
        "datetime": f"{day.isoformat()}T{hour:02d}:00:00-0500",
        "duration": "30",
        "firstName": "Ann",
        "lastName": "Lee",
        "email": f"ann{number}@example.com",
        "price": "20.00",
        "amountPaid": "0.00",
        "canceled": False,
        "labels": None,
        "timezone": "America/Chicago",
    }


class FakeAcuity:
    """GET /appointments with Acuity's semantics: local-day filter, DESC, silent truncation at max;
    GET /clients (the whole list, no id) and GET /appointments/{id}/payments."""

    def __init__(
        self, records: list[dict[str, object]], *, ignore_min_date: bool = False,
        clients: list[dict[str, object]] | None = None, payments: dict[str, list[dict[str, object]]] | None = None,
    ) -> None:
        self.records = records
        self.ignore_min_date = ignore_min_date
        self.clients = clients or []
        self.payments = payments or {}
        self.requests: list[httpx.Request] = []

    @property
    def listing_requests(self) -> list[httpx.Request]:
        """The requests of the appointment walk (not /clients or payments)."""
        return [r for r in self.requests if r.url.path.endswith("/appointments") or
                r.url.path.rsplit("/", 2)[-2] == "appointments"]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("Authorization") not in (
            "Basic " + base64.b64encode(b"7:k-secret").decode(),
            "Bearer tok-secret",
        ):
            return httpx.Response(401, json={"status_code": 401, "error": "unauthorized", "message": "Unauthorized"})
        if request.url.path.endswith("/clients"):
            return httpx.Response(200, json=self.clients)
        if request.url.path.endswith("/payments"):
            return httpx.Response(200, json=self.payments.get(request.url.path.rsplit("/", 2)[-2], []))
        if request.url.path.rsplit("/", 2)[-2] == "appointments":  # GET /appointments/{id}
            by_id = {str(record["id"]): record for record in self.records}
            found = by_id.get(request.url.path.rsplit("/", 1)[-1])
            if found is None:
                return httpx.Response(404, json={"status_code": 404, "error": "not_found", "message": "Not found"})
            return httpx.Response(200, json=found)
        params = request.url.params
        low, high = date.fromisoformat(params["minDate"]), date.fromisoformat(params["maxDate"])

        def day(record: dict[str, object]) -> date:
            return datetime.fromisoformat(str(record["datetime"])).date()

        chosen = [r for r in self.records if day(r) <= high and (self.ignore_min_date or day(r) >= low)]
        chosen.sort(key=lambda r: datetime.fromisoformat(str(r["datetime"])), reverse=True)
        return httpx.Response(200, json=chosen[: int(params["max"])])


def make_http(handler: Callable[[httpx.Request], httpx.Response]) -> ProviderHttp:
    return ProviderHttp(
        timeout_seconds=5.0,
        outbound=OutboundPolicy.allowing(["https://acuity.test"]),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=2, initial_backoff_seconds=0.0, max_backoff_seconds=0.0),
        rate_budget_overrides=GENEROUS,
    )


def session(
    http: ProviderHttp,
    *,
    connection: ConnectionConfig = BASIC,
    cursor: object = None,
    near_term: JobWindow | None = None,
    clients: bool = True,
) -> ProviderSession:
    return open_session(
        Source.ACUITY,
        http=http,
        connection=connection,
        window=WINDOW,
        page_size=10,
        cursor=cursor,  # type: ignore[arg-type]
        clock=lambda: FETCHED_AT,
        near_term=near_term,
        clients=clients,
    )


async def drain(provider_session: ProviderSession, *, max_pages: int = 200) -> list[ProviderPage]:
    pages: list[ProviderPage] = []
    for _ in range(max_pages):
        page = await provider_session.next_page()
        if page is None:
            return pages
        pages.append(page)
    raise AssertionError("session did not end within the page bound")


def spread(count: int, first: date = date(2024, 2, 20), days: int = 50) -> list[dict[str, object]]:
    return [acuity_record(n, first + timedelta(days=n % days), hour=8 + n % 10) for n in range(1, count + 1)]


@pytest.mark.parametrize("ignore_min_date", [False, True])
async def test_pages_hold_exactly_the_windows_appointments(ignore_min_date: bool) -> None:
    records = spread(300)
    fake = FakeAcuity(records, ignore_min_date=ignore_min_date)
    http = make_http(fake)
    pages = await drain(session(http))
    await http.aclose()
    imported = [a.external_id for page in pages for a in page.appointments]
    expected = {str(r["id"]) for r in records if WINDOW.contains(datetime.fromisoformat(str(r["datetime"])))}
    assert sorted(imported) == sorted(expected)  # each exactly once
    assert all(p.records_fetched > 0 for p in pages)  # empty windows are not pages
    for page in pages:
        assert page.records_fetched == len(page.appointments) + page.skipped_out_of_window + page.skipped_invalid
    assert all(a.observed_at == FETCHED_AT for page in pages for a in page.appointments)


async def test_requests_carry_the_documented_parameters_and_basic_auth() -> None:
    fake = FakeAcuity(spread(5))
    http = make_http(fake)
    await drain(session(http))
    await http.aclose()
    assert fake.requests[0].url.path == "/api/v1/clients"  # the clients stream comes first
    first = fake.listing_requests[0]
    assert first.url.path == "/api/v1/appointments"
    assert dict(first.url.params) == {
        "minDate": "2024-03-24",
        "maxDate": "2024-03-30",
        "max": "10",
        "showall": "true",
        "direction": "DESC",
        "excludeForms": "true",
    }


async def test_bearer_tokens_are_used_when_present() -> None:
    fake = FakeAcuity(spread(100))
    http = make_http(fake)
    connection = ConnectionConfig(base_url="https://acuity.test/api/v1", credentials={"access_token": "tok-secret"})
    pages = await drain(session(http, connection=connection))
    await http.aclose()
    assert fake.requests[0].headers["Authorization"] == "Bearer tok-secret"
    assert pages


async def test_missing_or_wrong_credentials_need_reauthorization() -> None:
    http = make_http(FakeAcuity([]))
    wrong = ConnectionConfig(base_url="https://acuity.test/api/v1", credentials={"user_id": "7", "api_key": "nope"})
    with pytest.raises(ProviderAuthError) as wrong_error:
        await session(http, connection=wrong).next_page()
    with pytest.raises(ProviderAuthError) as missing_error:
        await session(http, connection=ConnectionConfig(base_url="", credentials={})).next_page()
    await http.aclose()
    assert "nope" not in str(wrong_error.value)
    assert "reauthorization required" in str(missing_error.value)


async def test_the_public_api_is_the_default_base_url() -> None:
    fake = FakeAcuity([])
    http = make_http(fake)
    await drain(session(http, connection=ConnectionConfig(base_url="", credentials=BASIC.credentials)))
    await http.aclose()
    assert str(fake.listing_requests[0].url).startswith("https://acuityscheduling.com/api/v1/appointments?")


async def test_a_response_that_is_not_a_list_is_rejected() -> None:
    http = make_http(lambda request: httpx.Response(200, json={"appointments": []}))
    with pytest.raises(ProviderRejectedError, match="not a list"):
        await session(http).next_page()
    await http.aclose()


async def test_a_session_resumed_from_the_cursor_continues_where_the_first_stopped() -> None:
    records = spread(200)
    http = make_http(FakeAcuity(records))
    first = session(http)
    head = [await first.next_page() for _ in range(3)]
    cursor = json.loads(json.dumps(first.cursor()))
    tail = await drain(session(http, cursor=cursor))
    whole = await drain(session(http))
    await http.aclose()
    ids = [a.external_id for page in [*head, *tail] if page for a in page.appointments]
    assert ids == [a.external_id for page in whole for a in page.appointments]


def test_unknown_sources_and_bad_settings_are_invalid_arguments() -> None:
    http = make_http(FakeAcuity([]))
    # Every Source is supported now; a Calendly connection without its scope settings is invalid.
    with pytest.raises(InvalidArgumentError, match="organization"):
        open_session(Source.CALENDLY, http=http, connection=BASIC, window=WINDOW, page_size=10, cursor=None,
                     clock=lambda: FETCHED_AT)  # fmt: skip
    bad_currency = ConnectionConfig(base_url="", credentials=BASIC.credentials, settings={"currency": "dollars"})
    with pytest.raises(InvalidArgumentError, match="currency"):
        session(http, connection=bad_currency)


def documented(number: int, day: date) -> dict[str, object]:
    """The API reference's appointment (offset +0800 and all) on another day."""
    record: dict[str, object] = dict(copy.deepcopy(DOCUMENTED))
    record.update(id=number, datetime=f"{day.isoformat()}T14:00:00+0800")
    return record


async def test_the_near_term_comes_first_flagged_and_is_counted_across_a_resume() -> None:
    near_term = JobWindow(datetime(2024, 3, 12, tzinfo=UTC), datetime(2024, 3, 19, tzinfo=UTC))
    records = [documented(n, date(2024, 3, 1) + timedelta(days=n % 28)) for n in range(1, 141)]  # 5 a day
    http = make_http(FakeAcuity(records))
    try:
        whole = await drain(session(http, near_term=near_term))
        first = session(http, near_term=near_term)
        head = [await first.next_page() for _ in range(2)]
        resumed = session(http, cursor=json.loads(json.dumps(first.cursor())))
        tail = await drain(resumed)
    finally:
        await http.aclose()
    flags = [page.near_term for page in whole]
    assert flags[0] and flags == sorted(flags, reverse=True)
    near_ids = {a.external_id for page in whole if page.near_term for a in page.appointments}
    expected_near = {str(r["id"]) for r in records if near_term.contains(datetime.fromisoformat(str(r["datetime"])))}
    assert expected_near <= near_ids
    imported = [a.external_id for page in whole for a in page.appointments]
    in_window = [str(r["id"]) for r in records if WINDOW.contains(datetime.fromisoformat(str(r["datetime"])))]
    assert sorted(imported) == sorted(in_window)  # each exactly once
    assert [a.external_id for page in [*head, *tail] if page for a in page.appointments] == imported
    assert resumed.near_term_pages == sum(flags)


async def test_the_near_term_sweep_finds_a_stored_booking_that_moved_out_of_the_near_term() -> None:
    near_term = JobWindow(datetime(2024, 3, 12, tzinfo=UTC), datetime(2024, 3, 19, tzinfo=UTC))
    stays = documented(1, date(2024, 3, 14))
    moved = documented(2, date(2024, 3, 26))  # stored on the 15th, rescheduled to the 26th
    records = [stays, moved, documented(3, date(2024, 3, 5))]
    store = InMemoryConnectionStateStore()
    store.stored_starts = {"1": datetime(2024, 3, 14, 6, tzinfo=UTC), "2": datetime(2024, 3, 15, 6, tzinfo=UTC),
                           "99": datetime(2024, 3, 16, 6, tzinfo=UTC)}  # 99 is gone at Acuity (404)
    fake = FakeAcuity(records)
    http = make_http(fake)

    def opened(cursor: object = None) -> ProviderSession:
        return open_session(Source.ACUITY, http=http, connection=BASIC, window=WINDOW, page_size=10,
                            cursor=cursor, clock=lambda: FETCHED_AT, state=store,  # type: ignore[arg-type]
                            near_term=near_term)

    try:
        pages = await drain(opened())
        started = opened()
        await started.next_page()  # the walk's first page: a session resumed after it did not see it
        resumed_pages = await drain(opened(cursor=json.loads(json.dumps(started.cursor()))))
    finally:
        await http.aclose()

    near = [page for page in pages if page.near_term]
    assert [a.external_id for a in near[0].appointments] == ["1"]
    # Right after the near term: one more near-term page with what Acuity has now for key 2.
    assert [a.external_id for a in near[-1].appointments] == ["2"]
    sweep = near[-1].appointments[0]
    assert not isinstance(sweep, CancellationStub) and sweep.starts_at.date() == date(2024, 3, 26)
    looked_up = [r.url.path for r in fake.requests if r.url.path.rsplit("/", 1)[-1] in ("2", "99")]
    assert sorted(looked_up) == ["/api/v1/appointments/2", "/api/v1/appointments/99"]
    # A resumed session does not know what the walk returned before: it sweeps nothing.
    assert all(a.external_id != "2" or not page.near_term for page in resumed_pages for a in page.appointments)


async def test_a_stored_base_url_the_policy_refuses_fails_the_page_and_sends_nothing() -> None:
    """A connection stored before the outbound policy (the gateway refuses such a base_url now): the
    session fails with the policy's reason, a PermanentError that fails the job, and the credentials
    never leave the process."""
    fake = FakeAcuity(spread(10))
    http = make_http(fake)
    for hostile in ("http://169.254.169.254/latest", "http://127.0.0.1:5432/api/v1", "https://acuity.test.evil.example"):
        stored = ConnectionConfig(base_url=hostile, credentials=BASIC.credentials)
        with pytest.raises(OutboundRefusedError) as caught:
            await session(http, connection=stored).next_page()
        assert isinstance(caught.value, PermanentError)
        assert str(caught.value).startswith("outbound request refused: host ")
        assert "k-secret" not in str(caught.value)
    await http.aclose()
    assert fake.requests == []
