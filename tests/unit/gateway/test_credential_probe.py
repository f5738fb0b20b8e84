"""The credential probe of PutConnection: which requests it sends, what each provider answer means, and
that it never sends a request the outbound policy refuses (httpx mock transport in place of providers)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from apptsync.gateway.translate import ConnectionInput
from apptsync.gateway.verify import (
    MAX_PROBED_CALENDARS,
    CredentialProbe,
    ProbeRequest,
    probe_requests,
    probe_verdict,
    provider_message,
)
from apptsync.shared.appointments import Source
from apptsync.shared.errors import (
    OutboundRefusedError,
    ProviderAuthError,
    ProviderRejectedError,
    ProviderUnavailableError,
)
from apptsync.shared.outbound import OutboundPolicy

pytestmark = pytest.mark.unit

SECRET = "k-7f3e-secret"
ACUITY = {"user_id": "1001", "api_key": SECRET}
SIMULATOR = "http://127.0.0.1:8710"
ME = ProbeRequest(url="https://acuityscheduling.com/api/v1/me", what="GET /me", headers={})


def connection(source: Source, credentials: dict[str, str], base_url: str = "", **settings: str) -> ConnectionInput:
    return ConnectionInput(
        tenant_id="t", connection_id="c", external_source=source.value, base_url=base_url,
        credentials=credentials, settings=settings,
    )  # fmt: skip


def test_each_source_is_asked_its_documented_identity_read() -> None:
    acuity = probe_requests(Source.ACUITY, base_url="", credentials=ACUITY, settings={})
    assert [(r.url, r.what) for r in acuity] == [("https://acuityscheduling.com/api/v1/me", "GET /me")]
    assert acuity[0].headers["Authorization"].startswith("Basic ")
    calendly = probe_requests(Source.CALENDLY, base_url=f"{SIMULATOR}/calendly/", credentials={"access_token": "t"},
                              settings={})  # fmt: skip
    assert [r.url for r in calendly] == [f"{SIMULATOR}/calendly/users/me"]
    assert calendly[0].headers == {"Authorization": "Bearer t"}
    google = probe_requests(Source.GOOGLE_CALENDAR, base_url="", credentials={"access_token": "t"}, settings={})
    assert [r.url for r in google] == ["https://www.googleapis.com/calendar/v3/calendars/primary"]


def test_google_asks_for_each_configured_calendar_escaped_and_bounded() -> None:
    ids = ",".join(f"team{n}@group.calendar.google.com" for n in range(MAX_PROBED_CALENDARS + 5))
    requests = probe_requests(Source.GOOGLE_CALENDAR, base_url="", credentials={"access_token": "t"},
                              settings={"calendar_ids": f"a/b?c, {ids}"})  # fmt: skip
    assert len(requests) == MAX_PROBED_CALENDARS
    assert requests[0].url.endswith("/calendars/a%2Fb%3Fc")
    assert requests[1].what == "GET /calendars/team0%40group.calendar.google.com"


@pytest.mark.parametrize(
    ("status", "body", "expected", "message"),
    [
        (200, b"{}", None, ""),
        (401, b'{"status_code": 401, "error": "unauthorized", "message": "Unauthorized"}', ProviderAuthError,
         "credentials refused: acuity answered GET /me with 401: unauthorized: Unauthorized"),
        (403, b'{"status_code": 403, "message": "API access is only available on Powerhouse plans"}',
         ProviderAuthError, "403: API access is only available on Powerhouse plans"),
        (429, b"", ProviderUnavailableError, "acuity answered GET /me with 429; try again later"),
        (503, b"<html>down</html>", ProviderUnavailableError, "with 503: <html>down</html>"),
        (404, b'{"message": "Not found"}', ProviderRejectedError, "credentials not verified: acuity answered"),
        (302, b"", ProviderRejectedError, "with 302"),
    ],
)  # fmt: skip
def test_status_mapping(status: int, body: bytes, expected: type[Exception] | None, message: str) -> None:
    verdict = probe_verdict(Source.ACUITY, ME, status=status, body=body, credentials=ACUITY)
    if expected is None:
        assert verdict is None
    else:
        assert type(verdict) is expected
        assert message in str(verdict)


def test_googles_quota_403_is_busy_and_its_auth_403_is_refused() -> None:
    def google(reason: str) -> bytes:
        error = {"code": 403, "message": "m", "errors": [{"domain": "usageLimits", "reason": reason}]}
        return json.dumps({"error": error}).encode()

    busy = probe_verdict(Source.GOOGLE_CALENDAR, ME, status=403, body=google("rateLimitExceeded"), credentials={})
    refused = probe_verdict(Source.GOOGLE_CALENDAR, ME, status=403, body=google("forbidden"), credentials={})
    assert isinstance(busy, ProviderUnavailableError)
    assert isinstance(refused, ProviderAuthError)


def test_the_providers_message_never_carries_a_credential() -> None:
    echo = json.dumps({"title": "Unauthenticated", "message": f"token {SECRET} is invalid"}).encode()
    verdict = probe_verdict(Source.CALENDLY, ME, status=401, body=echo, credentials=ACUITY)
    assert SECRET not in str(verdict)
    assert "Unauthenticated: token [redacted] is invalid" in str(verdict)


def test_provider_messages_of_each_shape() -> None:
    assert provider_message(b'{"title": "Unauthenticated", "message": "expired"}') == "Unauthenticated: expired"
    assert provider_message(b'{"error": {"code": 401, "message": "Invalid Credentials"}}') == "Invalid Credentials"
    assert provider_message(b'{"error": "invalid_grant", "error_description": "x"}') == "invalid_grant: x"
    assert provider_message(b"[1]") == ""
    assert len(provider_message(b"x" * 10_000)) == 300


def probe_with(handler: Callable[[httpx.Request], httpx.Response], outbound: OutboundPolicy) -> CredentialProbe:
    return CredentialProbe(outbound=outbound, timeout_seconds=0.5, transport=httpx.MockTransport(handler))


async def test_an_accepted_credential_passes_and_the_header_is_the_fetchers() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": 1001})

    probe = probe_with(answer, OutboundPolicy())
    await probe.verify(connection(Source.ACUITY, ACUITY))
    await probe.aclose()
    assert [str(r.url) for r in seen] == ["https://acuityscheduling.com/api/v1/me"]
    assert seen[0].headers["Authorization"].startswith("Basic ")


async def test_a_refusal_of_any_calendar_refuses_the_connection() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/b"):
            return httpx.Response(404, json={"error": {"code": 404, "message": "Not Found"}})
        return httpx.Response(200, json={"kind": "calendar#calendar"})

    probe = probe_with(answer, OutboundPolicy())
    with pytest.raises(ProviderRejectedError, match="GET /calendars/b with 404: Not Found"):
        await probe.verify(connection(Source.GOOGLE_CALENDAR, {"access_token": "t"}, calendar_ids="a,b"))
    await probe.aclose()


async def test_a_timeout_or_a_refused_connection_is_unavailable() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    for handler, message in ((slow, "did not answer GET /users/me within 0.5 s"), (down, "could not be reached")):
        probe = probe_with(handler, OutboundPolicy())
        with pytest.raises(ProviderUnavailableError, match=message):
            await probe.verify(connection(Source.CALENDLY, {"access_token": "t"}))
        await probe.aclose()


async def test_a_url_the_outbound_policy_refuses_is_never_requested() -> None:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={})

    probe = probe_with(answer, OutboundPolicy())
    with pytest.raises(OutboundRefusedError):
        await probe.verify(connection(Source.ACUITY, ACUITY, base_url="http://169.254.169.254/latest"))
    await probe.aclose()
    assert sent == []


async def test_a_redirect_is_not_followed() -> None:
    sent: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://169.254.169.254/"})

    probe = probe_with(answer, OutboundPolicy.allowing(SIMULATOR))
    with pytest.raises(ProviderRejectedError, match="302"):
        await probe.verify(connection(Source.ACUITY, ACUITY, base_url=f"{SIMULATOR}/acuity/api/v1"))
    await probe.aclose()
    assert sent == [f"{SIMULATOR}/acuity/api/v1/me"]
