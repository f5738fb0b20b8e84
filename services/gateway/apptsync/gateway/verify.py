"""Verifies a connection's credentials with its provider before PutConnection stores them.

One cheap authenticated read per connection: Acuity `GET /me`, Calendly `GET /users/me`, Google
Calendar `GET /calendars/{calendarId}` of each configured calendar (`primary` when none is).

Why a probe of its own in the gateway rather than the fetcher's HTTP seam: services never import
each other (an import-linter contract), and what the fetcher's `ProviderHttp` adds (retries, rate
budgets shared across replicas, page streaming) is what a single question asked while a caller waits
must not do. What must agree with the fetcher does: the credential fields and the `Authorization`
header come from apptsync.shared.provider_access, the same the fetcher's sessions send, and every URL
passes the same outbound policy (apptsync.shared.outbound). No redirect is followed, nothing is
retried (the caller may retry, or store with skip_verification) and one short timeout bounds each
request.

The decisions (which requests, what an answer means) are pure functions below; `CredentialProbe`
only sends the requests with httpx.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

import httpx

from apptsync.gateway.translate import ConnectionInput
from apptsync.shared.appointments import Source
from apptsync.shared.errors import ProviderAuthError, ProviderRejectedError, ProviderUnavailableError
from apptsync.shared.outbound import OutboundPolicy
from apptsync.shared.provider_access import PUBLIC_API_URLS, auth_headers, google_calendar_ids

# A connection reading more calendars than this has the first ones probed: each probe is one
# request while the caller waits, and one refused calendar already shows a wrong credential.
MAX_PROBED_CALENDARS: Final[int] = 10
# An identity document is small; more than this of an answer is not read (the verdict needs the status).
MAX_BODY_BYTES: Final[int] = 64 * 1024
# The provider's message in an error is cut to this many characters.
MAX_MESSAGE_CHARACTERS: Final[int] = 300
# Google answers 403 (not 429) with these reasons when a quota is used up: busy, not refused.
_GOOGLE_RATE_LIMIT_REASONS: Final[frozenset[str]] = frozenset(
    {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded"}
)
_REDACTED: Final[str] = "[redacted]"


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """One GET of the probe: `what` names it in messages (method and path, never a credential)."""

    url: str
    what: str
    headers: Mapping[str, str]


def probe_requests(
    source: Source, *, base_url: str, credentials: Mapping[str, str], settings: Mapping[str, str]
) -> list[ProbeRequest]:
    """The requests that verify `credentials` (an empty base_url is the provider's public API).
    Raises ProviderAuthError when the credentials hold no usable field (the schema check of
    PutConnection comes first, so only a caller that skipped it sees this)."""
    base = (base_url or PUBLIC_API_URLS[source]).rstrip("/")
    headers = auth_headers(source, credentials)
    if source is Source.ACUITY:
        paths = ["/me"]
    elif source is Source.CALENDLY:
        paths = ["/users/me"]
    else:
        paths = [f"/calendars/{quote(c, safe='')}" for c in google_calendar_ids(settings)[:MAX_PROBED_CALENDARS]]
    return [ProbeRequest(url=base + path, what=f"GET {path}", headers=headers) for path in paths]


def provider_message(body: bytes) -> str:
    """The message of an error body: Acuity's `{status_code, error, message}`, Calendly's
    `{title, message}`, Google's `{error: {code, message, errors: [...]}}`, OAuth's `{error,
    error_description}`; else the start of the text. Empty when there is none."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:MAX_MESSAGE_CHARACTERS].decode("utf-8", "replace").strip()
    if not isinstance(document, dict):
        return ""
    nested = document.get("error")
    if isinstance(nested, dict):
        document = nested
    keys = ("title", "error", "message", "error_description")
    parts = [document[k] for k in keys if isinstance(document.get(k), str) and document[k]]
    return ": ".join(dict.fromkeys(parts))


def _google_reasons(body: bytes) -> frozenset[str]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return frozenset()
    error = document.get("error") if isinstance(document, dict) else None
    errors = error.get("errors") if isinstance(error, dict) else None
    if not isinstance(errors, list):
        return frozenset()
    return frozenset(str(e["reason"]) for e in errors if isinstance(e, dict) and "reason" in e)


def scrub(text: str, credentials: Mapping[str, str]) -> str:
    """`text` without any credential value in it (a provider may echo what it was sent), cut short."""
    for value in sorted((v.strip() for v in credentials.values()), key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, _REDACTED)
    return text[:MAX_MESSAGE_CHARACTERS]


def probe_verdict(
    source: Source, request: ProbeRequest, *, status: int, body: bytes, credentials: Mapping[str, str]
) -> Exception | None:
    """What the provider's answer to `request` means: None (2xx: accepted); ProviderAuthError (401,
    or a 403 that is not a quota: the credentials are refused); ProviderUnavailableError (429, 5xx, or
    Google's quota 403: ask again later); ProviderRejectedError (any other answer, e.g. 404 for a
    Google calendar the account cannot read, or a redirect, which is never followed). Each message
    names the source, the request and the status, plus the provider's message without credentials."""
    if 200 <= status < 300:
        return None
    message = scrub(provider_message(body), credentials)
    said = f"{source.value} answered {request.what} with {status}" + (f": {message}" if message else "")
    quota = source is Source.GOOGLE_CALENDAR and status == 403 and _google_reasons(body) & _GOOGLE_RATE_LIMIT_REASONS
    if status == 429 or status >= 500 or quota:
        return ProviderUnavailableError(
            f"credentials not verified, {said}; try again later, or store with skip_verification", status_code=status
        )
    if status in (401, 403):
        return ProviderAuthError(f"credentials refused: {said}")
    return ProviderRejectedError(f"credentials not verified: {said}", status_code=status)


class CredentialProbe:
    """Sends the probe requests (httpx; `transport` lets tests answer in place of a provider)."""

    def __init__(
        self,
        *,
        outbound: OutboundPolicy,
        timeout_seconds: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._outbound = outbound
        self._timeout_seconds = timeout_seconds
        # No redirects (a Location is not checked by the outbound policy) and no proxy taken from the
        # environment (the policy's hosts are what is called).
        self._client = httpx.AsyncClient(
            timeout=timeout_seconds, follow_redirects=False, trust_env=False, transport=transport
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def verify(self, connection: ConnectionInput) -> None:
        """Returns when the provider accepted the credentials for every probe request. Raises
        OutboundRefusedError (a URL the policy refuses; nothing sent), ProviderAuthError,
        ProviderRejectedError or ProviderUnavailableError (see probe_verdict; a timeout or a
        connection failure is ProviderUnavailableError)."""
        source = Source(connection.external_source)
        requests = probe_requests(
            source, base_url=connection.base_url, credentials=connection.credentials, settings=connection.settings
        )
        for request in requests:
            self._outbound.check(request.url, source=source)
        for request in requests:
            status, body = await self._get(source, request)
            error = probe_verdict(source, request, status=status, body=body, credentials=connection.credentials)
            if error is not None:
                raise error

    async def _get(self, source: Source, request: ProbeRequest) -> tuple[int, bytes]:
        unverified = "credentials not verified"
        try:
            async with self._client.stream("GET", request.url, headers=dict(request.headers)) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) >= MAX_BODY_BYTES:
                        break
                return response.status_code, bytes(body[:MAX_BODY_BYTES])
        except httpx.TimeoutException as exc:
            raise ProviderUnavailableError(
                f"{unverified}: {source.value} did not answer {request.what} within {self._timeout_seconds:g} s; "
                "try again later, or store with skip_verification"
            ) from exc
        except httpx.HTTPError as exc:
            raise ProviderUnavailableError(
                f"{unverified}: {source.value} could not be reached for {request.what} ({type(exc).__name__}); "
                "try again later, or store with skip_verification"
            ) from exc
