"""ProviderHttp: what is retried, how long it waits, when it gives up (httpx.MockTransport, fake sleep)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from apptsync.fetcher.providers import (
    JsonResponse,
    ProviderHttp,
    RateBudget,
    RetryPolicy,
    backoff_seconds,
    retry_after_seconds,
)
from apptsync.fetcher.providers._http import _ClientSpans, vetted_prefix
from apptsync.shared.appointments import Source
from apptsync.shared.errors import (
    OutboundRefusedError,
    ProviderAuthError,
    ProviderRejectedError,
    ProviderUnavailableError,
)
from apptsync.shared.outbound import OutboundPolicy

pytestmark = pytest.mark.unit

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
URL = "https://acuity.test/api/v1/appointments"
SECRET = "c2VjcmV0LWtleQ=="
HEADERS = {"Authorization": f"Basic {SECRET}"}
GENEROUS = RateBudget(requests_per_period=10_000, period_seconds=1.0, max_concurrent=100)
POLICY = RetryPolicy(max_attempts=4, max_total_seconds=60.0, initial_backoff_seconds=1.0, max_backoff_seconds=8.0)

Reply = httpx.Response | Exception


class Scripted:
    """A MockTransport handler answering from a script, one reply per request."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_http(script: Scripted, sleep: FakeSleep, policy: RetryPolicy = POLICY) -> ProviderHttp:
    clock: Callable[[], datetime] = lambda: NOW  # noqa: E731
    return ProviderHttp(
        timeout_seconds=5.0,
        outbound=OutboundPolicy.allowing(["https://acuity.test"]),
        transport=httpx.MockTransport(script),
        retry=policy,
        sleep=sleep,
        clock=clock,
        rng=random.Random(7),
    )


async def get(http: ProviderHttp) -> JsonResponse:
    try:
        response = await http.get_json(
            source=Source.ACUITY, budget=GENEROUS, url=URL, params={"max": "5"}, headers=HEADERS
        )
    finally:
        await http.aclose()
    return response


def ok(body: object = ()) -> httpx.Response:
    return httpx.Response(200, json=list(body) if isinstance(body, tuple) else body)


async def test_a_success_is_returned_without_retries() -> None:
    script, sleep = Scripted(ok([{"id": 1}])), FakeSleep()
    response = await get(make_http(script, sleep))
    assert response.body == [{"id": 1}]
    assert response.retries == 0
    assert script.requests[0].url.params["max"] == "5"
    assert script.requests[0].headers["Authorization"] == f"Basic {SECRET}"
    assert sleep.calls == []


async def test_429_honours_retry_after_seconds() -> None:
    script, sleep = Scripted(httpx.Response(429, headers={"Retry-After": "7"}), ok()), FakeSleep()
    response = await get(make_http(script, sleep))
    assert response.retries == 1
    assert len(sleep.calls) == 1
    assert 7.0 <= sleep.calls[0] <= 7.7


async def test_429_honours_retry_after_as_an_http_date() -> None:
    when = format_datetime(NOW + timedelta(seconds=30), usegmt=True)
    script, sleep = Scripted(httpx.Response(429, headers={"Retry-After": when}), ok()), FakeSleep()
    await get(make_http(script, sleep))
    assert 30.0 <= sleep.calls[0] <= 33.0


async def test_429_honours_a_rate_limit_reset_header() -> None:
    script, sleep = Scripted(httpx.Response(429, headers={"X-RateLimit-Reset": "12"}), ok()), FakeSleep()
    await get(make_http(script, sleep))
    assert 12.0 <= sleep.calls[0] <= 13.2


async def test_5xx_is_retried_with_growing_jittered_backoff() -> None:
    script = Scripted(httpx.Response(503), httpx.Response(502), httpx.Response(500), ok())
    sleep = FakeSleep()
    response = await get(make_http(script, sleep))
    assert response.retries == 3
    assert len(script.requests) == 4
    first, second, third = sleep.calls
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 2.0
    assert 2.0 <= third <= 4.0


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
    ],
)
async def test_timeouts_and_connection_errors_are_retried(error: Exception) -> None:
    script, sleep = Scripted(error, ok()), FakeSleep()
    response = await get(make_http(script, sleep))
    assert response.retries == 1


async def test_it_gives_up_after_max_attempts() -> None:
    script, sleep = Scripted(httpx.Response(503, json={"message": "down"})), FakeSleep()
    with pytest.raises(ProviderUnavailableError, match="gave up after 4 attempts") as caught:
        await get(make_http(script, sleep))
    assert len(script.requests) == 4
    assert len(sleep.calls) == 3
    assert caught.value.status_code == 503
    assert caught.value.retriable


async def test_it_gives_up_when_the_wait_would_pass_the_total_budget() -> None:
    script, sleep = Scripted(httpx.Response(429, headers={"Retry-After": "100"})), FakeSleep()
    with pytest.raises(ProviderUnavailableError, match="gave up after 1 attempts") as caught:
        await get(make_http(script, sleep))
    assert sleep.calls == []
    assert caught.value.retry_after_seconds == 100.0


async def test_the_total_budget_counts_the_sleeps() -> None:
    policy = RetryPolicy(max_attempts=50, max_total_seconds=10.0, initial_backoff_seconds=2.0, max_backoff_seconds=4.0)
    script, sleep = Scripted(httpx.Response(503)), FakeSleep()
    with pytest.raises(ProviderUnavailableError):
        await get(make_http(script, sleep, policy))
    assert sum(sleep.calls) <= 10.0
    assert len(script.requests) < 50


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_mean_reauthorization_and_hide_credentials(status: int) -> None:
    script, sleep = Scripted(httpx.Response(status, json={"status_code": status, "error": "unauthorized"})), FakeSleep()
    with pytest.raises(ProviderAuthError, match="reauthorization required") as caught:
        await get(make_http(script, sleep))
    assert len(script.requests) == 1
    assert SECRET not in str(caught.value)
    assert not caught.value.retriable


async def test_other_4xx_are_rejected_with_the_providers_message() -> None:
    body = {"status_code": 400, "error": "invalid_date", "message": "The minDate parameter is not a valid date."}
    script, sleep = Scripted(httpx.Response(400, json=body)), FakeSleep()
    with pytest.raises(ProviderRejectedError, match="The minDate parameter is not a valid date") as caught:
        await get(make_http(script, sleep))
    assert caught.value.status_code == 400
    assert len(script.requests) == 1
    assert SECRET not in str(caught.value)


async def test_a_malformed_body_is_retried_once_then_fails() -> None:
    script, sleep = Scripted(httpx.Response(200, content=b'[{"id": 1,')), FakeSleep()
    with pytest.raises(ProviderUnavailableError, match=r"malformed JSON body.*gave up after 2 attempts") as caught:
        await get(make_http(script, sleep))
    assert type(caught.value) is ProviderUnavailableError
    assert len(script.requests) == 2


async def test_a_malformed_body_followed_by_a_good_one_succeeds() -> None:
    script, sleep = Scripted(httpx.Response(200, content=b"[{"), ok([{"id": 2}])), FakeSleep()
    response = await get(make_http(script, sleep))
    assert response.body == [{"id": 2}]
    assert response.retries == 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "2.5"}, 2.5),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": format_datetime(NOW + timedelta(seconds=90), usegmt=True)}, 90.0),
        ({"Retry-After": format_datetime(NOW - timedelta(seconds=90), usegmt=True)}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"X-RateLimit-Reset": "20"}, 20.0),
        ({"RateLimit-Reset": str(int(NOW.timestamp()) + 45)}, 45.0),
        ({}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(httpx.Headers(headers), now=NOW) == expected


def test_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(1)
    policy = RetryPolicy(initial_backoff_seconds=1.0, max_backoff_seconds=8.0)
    for retry_number, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4), (4, 8), (4, 8), (4, 8)], start=1):
        wait = backoff_seconds(retry_number=retry_number, provider_hint_seconds=None, policy=policy, rng=rng)
        assert low <= wait <= high
    hinted = backoff_seconds(retry_number=1, provider_hint_seconds=20.0, policy=policy, rng=rng)
    assert 20.0 <= hinted <= 22.0


# The outbound policy at the seam: a hostile URL (a connection stored before the gateway checked it)
# is refused before anything is sent, and a redirect to an internal address is not followed.


@pytest.mark.parametrize(
    "hostile",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/api/v1/appointments",
        "http://127.0.0.1:5432/",
        "http://localhost:9092/",
        "http://[::1]/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
        "https://api.calendly.com@evil.example/",
        "https://api.calendly.com.evil.example/",
        "https://acuityscheduling.com:8443/api/v1/appointments",
        "https://acuity.test:444/api/v1/appointments",
    ],
)
async def test_a_url_the_policy_refuses_is_never_requested(hostile: str) -> None:
    script, sleep = Scripted(ok()), FakeSleep()
    http = make_http(script, sleep)
    try:
        with pytest.raises(OutboundRefusedError, match=r"^outbound request refused: "):
            await http.get_json(source=Source.ACUITY, budget=GENEROUS, url=hostile, params={}, headers=HEADERS)
        with pytest.raises(OutboundRefusedError):
            await http.post_form(source=Source.ACUITY, budget=GENEROUS, url=hostile, form={"a": "b"}, headers={})
    finally:
        await http.aclose()
    assert script.requests == []
    assert sleep.calls == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_an_internal_address_is_not_followed(status: int) -> None:
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    script, sleep = Scripted(httpx.Response(status, headers={"Location": metadata}), ok()), FakeSleep()
    with pytest.raises(ProviderRejectedError) as caught:
        await get(make_http(script, sleep))
    assert [str(r.url.host) for r in script.requests] == ["acuity.test"]
    assert f"answered {status}" in str(caught.value)
    assert sleep.calls == []


async def test_the_policy_and_httpx_agree_on_an_upper_case_host_with_its_default_port() -> None:
    """The seam compares the policy's origin with the one httpx would connect to; equal spellings of
    one origin pass (a URL they read differently would be refused, and none is known)."""
    script, sleep = Scripted(ok()), FakeSleep()
    http = make_http(script, sleep)
    try:
        await http.get_json(
            source=Source.ACUITY, budget=GENEROUS, url="HTTPS://ACUITY.TEST:443/api/v1", params={}, headers=HEADERS
        )
    finally:
        await http.aclose()
    assert [(r.url.scheme, r.url.host, r.url.port, r.url.path) for r in script.requests] == [
        ("https", "acuity.test", 443, "/api/v1")
    ]


async def test_each_attempt_waits_for_the_provider_inside_provider_wait_and_parses_outside() -> None:
    """The fetcher lends a job's working slot for exactly this region (apptsync.fetcher.slots)."""
    events: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        events.append("request sent")
        return ok([{"id": 1}]) if len(events) > 3 else httpx.Response(503)

    @contextlib.asynccontextmanager
    async def provider_wait() -> AsyncIterator[None]:
        events.append("wait begins")
        yield
        events.append("wait ends")

    http = ProviderHttp(
        timeout_seconds=5.0,
        outbound=OutboundPolicy.allowing(["https://acuity.test"]),
        transport=httpx.MockTransport(answer),
        retry=POLICY,
        sleep=FakeSleep(),
        clock=lambda: NOW,
        rng=random.Random(7),
        provider_wait=provider_wait,
    )
    response = await get(http)

    assert response.body == [{"id": 1}] and response.retries == 1
    assert events == ["wait begins", "request sent", "wait ends"] * 2


def test_a_vetted_prefix_is_the_url_up_to_its_path_when_nothing_after_it_is_ambiguous() -> None:
    assert vetted_prefix("https://api.calendly.com/scheduled_events/E1/invitees") == "https://api.calendly.com/"
    assert vetted_prefix("http://127.0.0.1:8710/calendly/x?y=1") == "http://127.0.0.1:8710/"
    assert vetted_prefix("https://api.calendly.com") is None  # no path: nothing to remember
    assert vetted_prefix("https://api.calendly.com/a\\@evil.example/") is None
    assert vetted_prefix("https://api.calendly.com/a b") is None
    assert vetted_prefix("api.calendly.com/x") is None


@pytest.mark.parametrize(
    "hostile",
    [
        "https://acuity.test.evil.example/api/v1/appointments",
        "https://acuity.test@evil.example/api/v1/appointments",
        "https://acuity.test:444/api/v1/appointments",
        "https://acuity.test/api/v1/\\\\evil.example/",
    ],
)
async def test_an_allowed_prefix_seen_before_lets_no_other_origin_through(hostile: str) -> None:
    script, sleep = Scripted(ok()), FakeSleep()
    http = make_http(script, sleep)
    try:
        await http.get_json(source=Source.ACUITY, budget=GENEROUS, url=URL, params={}, headers=HEADERS)
        with pytest.raises(OutboundRefusedError):
            await http.get_json(source=Source.ACUITY, budget=GENEROUS, url=hostile, params={}, headers=HEADERS)
    finally:
        await http.aclose()
    assert [str(r.url) for r in script.requests] == [URL]


async def test_every_request_asks_for_json_names_itself_and_accepts_compression() -> None:
    script, sleep = Scripted(ok()), FakeSleep()
    await get(make_http(script, sleep))
    (sent,) = script.requests
    assert sent.headers["Accept"] == "application/json"
    assert sent.headers["Accept-Encoding"] == "gzip, deflate"
    assert sent.headers["User-Agent"].startswith("apptsync/")
    assert sent.headers["Authorization"] == HEADERS["Authorization"]
    assert str(sent.url) == f"{URL}?max=5"


async def test_each_provider_call_is_one_client_span_without_query_or_error_text() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    replies: list[Reply] = [httpx.Response(503), httpx.ConnectError("refused by 10.0.0.1")]

    def answer(_request: httpx.Request) -> httpx.Response:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    transport = _ClientSpans(httpx.MockTransport(answer), tracer=provider.get_tracer("test"))
    request = httpx.Request("GET", "https://acuity.test/api/v1/clients?search=ada%40example.org")
    assert (await transport.handle_async_request(request)).status_code == 503
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(request)
    answered, failed = exported.get_finished_spans()
    assert answered.name == "GET" and answered.kind == SpanKind.CLIENT
    assert dict(answered.attributes or {}) == {
        "http.request.method": "GET", "url.full": "https://acuity.test/api/v1/clients",
        "server.address": "acuity.test", "server.port": 443, "http.response.status_code": 503, "error.type": "503",
    }  # fmt: skip
    assert answered.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "ConnectError"
    assert failed.events == () and "10.0.0.1" not in failed.to_json()


async def test_a_sessions_own_accept_header_replaces_the_default_whatever_its_case() -> None:
    script, sleep = Scripted(ok()), FakeSleep()
    http = make_http(script, sleep)
    try:
        await http.get_json(
            source=Source.ACUITY, budget=GENEROUS, url=URL, params={}, headers={"accept": "application/x-ndjson"}
        )
    finally:
        await http.aclose()
    (sent,) = script.requests
    assert sent.headers.get_list("Accept") == ["application/x-ndjson"]
