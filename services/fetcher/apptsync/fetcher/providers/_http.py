"""The one network seam of the provider layer: GET a JSON document, with retries and rate budgets.

Policy (what is retried, how long to wait, which URLs may be called at all) is in pure functions;
`ProviderHttp` only wires httpx, tenacity and aiolimiter to them. Every request's URL passes the
outbound policy (`apptsync.shared.outbound`) before it is sent, and redirects are never followed: a
3xx answer is the provider's refusal, so a redirect to an internal address is never requested.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Protocol

import aiohttp
import httpx
from aiolimiter import AsyncLimiter
from httpx_aiohttp import AiohttpTransport
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception

from apptsync.fetcher.providers._json_fields import loads_json
from apptsync.fetcher.providers._model import JsonValue
from apptsync.shared.appointments import Source
from apptsync.shared.errors import (
    OutboundRefusedError,
    ProviderAuthError,
    ProviderRejectedError,
    ProviderUnavailableError,
)
from apptsync.shared.outbound import UNAMBIGUOUS_URL_CHARACTER, Origin, OutboundPolicy

# A reset header above this is an epoch timestamp, below it a number of seconds.
_EPOCH_THRESHOLD_SECONDS = 1_000_000_000.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one request is retried before ProviderUnavailableError reaches the job.

    `max_attempts` counts the first try; `max_total_seconds` bounds the backoff sleeps plus elapsed
    time; a provider's Retry-After wins over the computed backoff (it may exceed
    `max_backoff_seconds`, never `max_total_seconds`). A 2xx response whose body is not JSON is tried at
    most `max_malformed_body_attempts` times: a proxy may have cut one body short, but a provider that
    keeps sending broken JSON will not heal within one job."""

    max_attempts: int = 6
    max_total_seconds: float = 120.0
    initial_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    max_malformed_body_attempts: int = 2


@dataclass(frozen=True, slots=True)
class RateBudget:
    """A provider's limit, shared by every job of one fetcher process.

    Requests are spaced `period_seconds / requests_per_period` apart (a leaky bucket holding one
    request), so no sliding window of `period_seconds` ever holds more than `requests_per_period`
    requests: a bucket holding the whole period's worth would allow twice that in one window."""

    requests_per_period: int
    period_seconds: float
    max_concurrent: int


class SharedBudget(Protocol):
    """A provider budget shared with other fetcher processes (apptsync.fetcher.shared_budget keeps it
    in PostgreSQL). Taken after the process's own limiter and semaphore, for every attempt."""

    def covers(self, source: Source) -> bool:
        """Whether `source`'s requests draw from the shared budget (else the local one alone)."""
        ...

    async def acquire(self, source: Source, budget: RateBudget) -> int:
        """Waits for a request slot and a concurrency lease of `budget`; returns the lease. Raises
        ProviderUnavailableError when none frees up in time, StorageUnavailableError when the store
        cannot be reached."""
        ...

    async def release(self, lease_id: int) -> None:
        """Ends the lease once the response is in, possibly a moment later with another statement (never
        raises: an unreleased lease expires)."""
        ...

    async def pause(self, source: Source, pause_seconds: float) -> None:
        """The provider said 429: no process gets a slot for `pause_seconds` (never raises)."""
        ...


# A 429 without a readable Retry-After pauses the shared budget this long: Acuity counts requests per
# second, so one second lets its window empty.
DEFAULT_SHARED_PAUSE_SECONDS = 1.0
# A Retry-After beyond this is not applied to every replica's jobs at once (the retry of the request
# that got it still honours it, up to the RetryPolicy's bound).
MAX_SHARED_PAUSE_SECONDS = 300.0


def shared_pause_seconds(headers: Mapping[str, str], *, now: datetime) -> float:
    """How long a 429 pauses a shared budget for every replica: the provider's Retry-After (or reset
    header), else DEFAULT_SHARED_PAUSE_SECONDS; at most MAX_SHARED_PAUSE_SECONDS. `headers` must be
    case-insensitive."""
    hint = retry_after_seconds(headers, now=now)
    return min(MAX_SHARED_PAUSE_SECONDS, DEFAULT_SHARED_PAUSE_SECONDS if hint is None else hint)


@dataclass(frozen=True, slots=True)
class JsonResponse:
    body: JsonValue
    retries: int


class _MalformedBodyError(ProviderUnavailableError):
    """A 2xx response whose body is not JSON (retried a bounded number of times)."""


class UnauthorizedError(ProviderAuthError):
    """A 401: the access token was refused. OAuth sessions refresh once on it; anyone else treats it
    as the ProviderAuthError it is."""


# Google answers quota overruns with 403 (or 429) and one of these reasons: retry with backoff.
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
# ... and a spent quota with these: no retry helps today, and it is not the credentials' fault.
QUOTA_REASONS = frozenset({"quotaExceeded", "dailyLimitExceeded"})


def rate_limit_pause_seconds(headers: Mapping[str, str]) -> float | None:
    """How long to wait before the next request when `X-RateLimit-Remaining` says the budget is
    spent (Calendly): `X-RateLimit-Reset` seconds (60 when absent or unreadable). None while requests
    remain or when the provider sends no such header. `headers` must be case-insensitive."""
    remaining = headers.get("x-ratelimit-remaining")
    remaining_count = None if remaining is None else _float_or_none(remaining.strip())
    if remaining_count is None or remaining_count > 0:
        return None
    reset = headers.get("x-ratelimit-reset")
    reset_seconds = None if reset is None else _float_or_none(reset.strip())
    if reset_seconds is None:
        return 60.0
    return max(0.0, min(reset_seconds, 3600.0))


def provider_error_reasons(body: JsonValue) -> frozenset[str]:
    """The `reason`s of a Google-style error body `{"error": {"errors": [{"reason": ...}]}}` (empty
    for any other shape)."""
    error = body.get("error") if isinstance(body, dict) else None
    items = error.get("errors") if isinstance(error, dict) else None
    if not isinstance(items, list):
        return frozenset()
    return frozenset(str(item["reason"]) for item in items if isinstance(item, dict) and "reason" in item)


def retry_after_seconds(headers: Mapping[str, str], *, now: datetime) -> float | None:
    """The wait a provider asks for: `Retry-After` (seconds or HTTP-date), else a rate-limit reset
    header (`X-RateLimit-Reset` / `RateLimit-Reset`, seconds or epoch seconds). None if absent or
    unreadable; never negative. `headers` must look names up case-insensitively (httpx.Headers does)."""
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        text = retry_after.strip()
        seconds = _float_or_none(text)
        if seconds is not None:
            return max(0.0, seconds)
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return max(0.0, (moment - now).total_seconds())
    for name in ("x-ratelimit-reset", "ratelimit-reset"):
        value = headers.get(name)
        seconds = None if value is None else _float_or_none(value.strip())
        if seconds is not None:
            if seconds > _EPOCH_THRESHOLD_SECONDS:
                seconds -= now.timestamp()
            return max(0.0, seconds)
    return None


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def backoff_seconds(
    *, retry_number: int, provider_hint_seconds: float | None, policy: RetryPolicy, rng: random.Random
) -> float:
    """Seconds to wait before retry number `retry_number` (1 = the first retry).

    The provider's hint is honoured as given (plus up to 10 % jitter so that jobs told the same
    moment do not all return at once); otherwise exponential backoff with "equal jitter":
    half the capped exponential plus a random share of the other half."""
    if provider_hint_seconds is not None:
        return provider_hint_seconds * (1.0 + 0.1 * rng.random())
    exponential = policy.initial_backoff_seconds * (2.0 ** (retry_number - 1))
    capped = min(policy.max_backoff_seconds, exponential)
    return capped / 2.0 + rng.uniform(0.0, capped / 2.0)


def error_for_status(source: Source, response: httpx.Response, *, now: datetime) -> Exception | None:
    """The apptsync error a non-2xx response means (None for 2xx). Messages carry the provider's own
    error text and the request path, never headers or credentials."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    where = f"{source.value} {response.request.url.path}"
    reasons = _error_reasons(response) if status == 403 else frozenset()
    rate_limited = bool(reasons & RATE_LIMIT_REASONS)
    if status == 401:
        return UnauthorizedError(f"reauthorization required: {where} answered {status}")
    if reasons & QUOTA_REASONS:
        return ProviderRejectedError(f"{where} answered {status}{_provider_message(response)}", status_code=status)
    if status == 403 and not rate_limited:
        return ProviderAuthError(f"reauthorization required: {where} answered {status}")
    if status == 429 or status >= 500 or status == 408 or rate_limited:
        return ProviderUnavailableError(
            f"{where} answered {status}{_provider_message(response)}",
            status_code=status,
            retry_after_seconds=retry_after_seconds(response.headers, now=now),
        )
    return ProviderRejectedError(f"{where} answered {status}{_provider_message(response)}", status_code=status)


def _error_reasons(response: httpx.Response) -> frozenset[str]:
    try:
        return provider_error_reasons(response.json())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return frozenset()


def _provider_message(response: httpx.Response) -> str:
    """`: <message>` from an error body such as Acuity's `{status_code, error, message}`, Google's
    `{error: {code, message, errors: [{reason}]}}` or OAuth's `{error, error_description}`."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = response.text.strip()[:200]
        return f": {text}" if text else ""
    if isinstance(body, dict):
        nested = body.get("error")
        if isinstance(nested, dict):
            reasons = sorted(provider_error_reasons(body))
            parts = [str(nested["message"])] if isinstance(nested.get("message"), str) else []
            parts += [f"reason {reason}" for reason in reasons]
        else:
            keys = ("error", "message", "error_description", "title")
            parts = [str(body[key]) for key in keys if isinstance(body.get(key), str | int)]
        if parts:
            return ": " + " - ".join(parts)[:500]
    return ""


def _gave_up(last: ProviderUnavailableError, *, attempts: int) -> ProviderUnavailableError:
    return ProviderUnavailableError(
        f"{last} (gave up after {attempts} attempts)",
        status_code=last.status_code,
        retry_after_seconds=last.retry_after_seconds,
    )


class _ClientSpans(httpx.AsyncBaseTransport):
    """One CLIENT span per provider request, named by its method, with the stable HTTP attributes
    (method, `scheme://host/path` without the query, which may hold a searched name or phone, server
    address and port, response status; an error status from 400 on, and the exception's type).

    opentelemetry-instrumentation-httpx's transport wrapper re-parsed the URL, normalized every header
    and injected `traceparent` into each request: 14 % of the fetcher's CPU on a Calendly first load.
    The providers are third parties that continue none of our traces, so nothing is injected."""

    def __init__(self, inner: httpx.AsyncBaseTransport, tracer: trace.Tracer | None = None) -> None:
        self._inner = inner
        self._tracer = tracer if tracer is not None else trace.get_tracer("apptsync.fetcher.providers")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        attributes: dict[str, str | int] = {
            "http.request.method": request.method,
            "url.full": f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}",
            "server.address": url.host,
            "server.port": url.port or (443 if url.scheme == "https" else 80),
        }
        # Failures by type only: an exception's text may quote the URL's query.
        with self._tracer.start_as_current_span(
            request.method, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False,
            set_status_on_exception=False,
        ) as span:  # fmt: skip
            try:
                response = await self._inner.handle_async_request(request)
            except BaseException as exc:
                span.set_status(StatusCode.ERROR)
                span.set_attribute("error.type", type(exc).__qualname__)
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_status(StatusCode.ERROR)
                span.set_attribute("error.type", str(response.status_code))
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class ProviderTransport(httpx.AsyncBaseTransport):
    """The fetcher's transport under httpx's API: aiohttp's HTTP/1.1 client (httpx-aiohttp).

    Measured (`benchmarks/profile_requests.py`, Calendly, 1,686 requests): ~1.4-1.6 ms of CPU per
    request against ~2.3-2.7 ms with httpx's own transport (httpcore), with the tracing and metrics
    around it unchanged. The session never keeps cookies (a provider's cookie must not travel to
    another tenant's request), never follows a redirect (httpx-aiohttp sends allow_redirects=False)
    and reads no proxy from the environment; every aiohttp error that httpx-aiohttp does not map is
    raised as httpx.TransportError, so ProviderHttp retries it as it retries httpx's own; aiohttp's
    own silent retry of a request on a dropped keep-alive connection is off."""

    def __init__(self) -> None:
        # The httpx instrumentation patches httpx's own transports only: this one is wrapped in a
        # client span of its own (see _ClientSpans).
        self._inner = _ClientSpans(AiohttpTransport(trust_env=False, client=self._session))

    @staticmethod
    def _session() -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=5.0),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        # aiohttp silently repeats a GET once when a reused connection drops; ProviderHttp's retry
        # policy must see (count, back off from, budget) every attempt. The attribute is aiohttp's
        # own switch (pinned version), not a constructor argument.
        session._retry_connection = False
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


# `scheme://authority/` prefixes (per source) a process remembers as allowed: the providers' API hosts
# and the deployment's allowed origins, a handful; the bound only keeps a pathological stream of
# distinct hosts from growing the set.
MAX_VETTED_PREFIXES = 256
# The outbound policy's own reading of "unambiguous" (see apptsync.shared.outbound).
_UNAMBIGUOUS_URL_TAIL = re.compile(rf"{UNAMBIGUOUS_URL_CHARACTER}*")


def vetted_prefix(url: str) -> str | None:
    """`scheme://authority/` of `url` when everything after it is printable ASCII without backslashes
    (so no parser can read another authority out of the URL), else None."""
    start = url.find("://")
    if start <= 0:
        return None
    end = url.find("/", start + 3)
    if end < 0 or not _UNAMBIGUOUS_URL_TAIL.fullmatch(url, end + 1):
        return None
    return url[: end + 1]


# What every provider request asks for (httpx's client sent the same Accept-Encoding by default).
DEFAULT_REQUEST_HEADERS = {
    "Accept": "application/json", "Accept-Encoding": "gzip, deflate", "User-Agent": "apptsync/0.1",
}  # fmt: skip


class _BudgetState:
    def __init__(self, budget: RateBudget) -> None:
        self.budget = budget
        self.limiter = AsyncLimiter(1, budget.period_seconds / budget.requests_per_period)
        self.connections = asyncio.Semaphore(budget.max_concurrent)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ProviderHttp:
    """HTTP client of every provider session in one fetcher process.

    Holds one connection pool, and per provider one rate limiter and one concurrency semaphore, so the
    provider's budget is shared across all tenants and jobs. Every attempt (retries included) waits for
    both. A response that says a per-account budget is spent (`X-RateLimit-Remaining: 0`) pauses every
    later request of the same `rate_limit_scope` until its `X-RateLimit-Reset`. `transport` defaults to
    ProviderTransport (tests pass httpx.MockTransport, the service wraps it in its metrics); `sleep`,
    `clock` and `rng` drive the backoff and the pauses.
    `rate_budget_overrides` replaces a provider's budget (tests, or a provider plan with other limits).
    `shared_budget` makes the providers it covers draw, after this process's limiter and semaphore,
    from a budget shared with other fetcher processes; a 429 from such a provider pauses it for all.
    `provider_wait` is entered around each attempt's wait for the provider (rate-window pause, budgets,
    request and answer; not the parsing): the fetcher lends the job's working slot meanwhile.
    `outbound` decides which URLs may be requested: a refused one raises OutboundRefusedError before
    anything is sent (no retry, no rate slot taken), and no redirect is followed.
    """

    def __init__(
        self,
        *,
        timeout_seconds: float,
        outbound: OutboundPolicy,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], datetime] = _utc_now,
        rng: random.Random | None = None,
        rate_budget_overrides: Mapping[Source, RateBudget] | None = None,
        shared_budget: SharedBudget | None = None,
        provider_wait: Callable[[], AbstractAsyncContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self._timeout_seconds = timeout_seconds
        self._provider_wait = provider_wait
        self._outbound = outbound
        # Requests go to the transport directly, not through an httpx.AsyncClient: the client's
        # per-request work (URL merging, auth and redirect flows, a cookie jar shared by every tenant's
        # requests) was a third of the fetcher's CPU per request and nothing of it is wanted here. Not
        # following redirects is part of the outbound policy (a Location header is not checked by it).
        self._transport = transport if transport is not None else ProviderTransport()
        self._timeouts = {"timeout": httpx.Timeout(timeout_seconds).as_dict()}
        self._retry = retry
        self._sleep = sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 -- retry jitter, not a secret
        self._overrides = dict(rate_budget_overrides or {})
        self._shared = shared_budget
        self._budgets: dict[Source, _BudgetState] = {}
        self._paused_until: dict[tuple[Source, str], datetime] = {}
        self._vetted_prefixes: set[tuple[Source, str]] = set()
        self.rate_limit_pauses = 0

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def get_json(
        self,
        *,
        source: Source,
        budget: RateBudget,
        url: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        rate_limit_scope: str = "",
    ) -> JsonResponse:
        """GET `url` and parse its JSON body, retrying transient failures per the RetryPolicy.

        Raises ProviderUnavailableError (429 / 5xx / Google 403 rate limits / timeouts / resets /
        malformed bodies, once retries are spent), UnauthorizedError (401), ProviderAuthError (other
        403), ProviderRejectedError (other 4xx and 3xx: redirects are not followed),
        OutboundRefusedError (the outbound policy refuses `url`; nothing was sent)."""
        request = _Request("GET", url, params=dict(params), form=None, headers=dict(headers))
        return await self._with_retries(source, budget, request, rate_limit_scope, retry_transport_errors=True)

    async def post_form(
        self,
        *,
        source: Source,
        budget: RateBudget,
        url: str,
        form: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> JsonResponse:
        """POST `form` (application/x-www-form-urlencoded) and parse the JSON answer (OAuth token
        requests). Retried only when the provider answered 429 / 5xx: after a timeout or a reset the
        request may have been processed, and a single-use refresh token must not be sent twice.

        Raises like get_json; a timeout or reset is a ProviderUnavailableError at once."""
        request = _Request("POST", url, params={}, form=dict(form), headers=dict(headers))
        return await self._with_retries(source, budget, request, "", retry_transport_errors=False)

    async def _with_retries(
        self,
        source: Source,
        budget: RateBudget,
        request: _Request,
        rate_limit_scope: str,
        *,
        retry_transport_errors: bool,
    ) -> JsonResponse:
        self._check_outbound(source, request)
        state = self._budget_state(source, budget)
        started_at = self._clock()
        policy = self._retry
        malformed_bodies = 0
        retries = 0

        def should_retry(exc: BaseException) -> bool:
            if isinstance(exc, _MalformedBodyError):
                return malformed_bodies < policy.max_malformed_body_attempts
            if isinstance(exc, _TransportError):
                return retry_transport_errors
            return isinstance(exc, ProviderUnavailableError)

        def wait(retry_state: RetryCallState) -> float:
            outcome = retry_state.outcome
            exc = outcome.exception() if outcome is not None else None
            hint = exc.retry_after_seconds if isinstance(exc, ProviderUnavailableError) else None
            return backoff_seconds(
                retry_number=retry_state.attempt_number,
                provider_hint_seconds=hint,
                policy=policy,
                rng=self._rng,
            )

        def stop(retry_state: RetryCallState) -> bool:
            elapsed = max(retry_state.idle_for, (self._clock() - started_at).total_seconds())
            return (
                retry_state.attempt_number >= policy.max_attempts
                or elapsed + retry_state.upcoming_sleep > policy.max_total_seconds
            )

        def count_retry(_: RetryCallState) -> None:
            nonlocal retries
            retries += 1

        retrying = AsyncRetrying(
            retry=retry_if_exception(should_retry),
            wait=wait,
            stop=stop,
            sleep=self._sleep,
            before_sleep=count_retry,
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        body = await self._attempt(state, source, request, rate_limit_scope)
                    except _MalformedBodyError:
                        malformed_bodies += 1
                        raise
        except RetryError as exc:
            last = exc.last_attempt.exception()
            assert isinstance(last, ProviderUnavailableError)  # noqa: S101 -- narrows the type; the retry policy retries only ProviderUnavailableError
            raise _gave_up(last, attempts=exc.last_attempt.attempt_number) from last
        except (_MalformedBodyError, _TransportError) as exc:
            raise _gave_up(exc, attempts=retries + 1) from exc
        return JsonResponse(body=body, retries=retries)

    def _check_outbound(self, source: Source, request: _Request) -> None:
        """Raises OutboundRefusedError unless the policy allows the URL httpx would request. Checked on
        httpx's own reading of the URL too, so that no difference between its parser and the policy's
        can send a request to a host the policy did not see.

        A URL that begins with a `scheme://authority/` both have read and allowed before, followed by
        printable ASCII without backslashes, has that authority for every RFC 3986 parser (it ends at
        the first "/"): such a URL is not read again. Both readings cost 8 % of the fetcher's CPU on a
        Calendly first load, where every event's invitee list has a URL of its own."""
        prefix = vetted_prefix(request.url)
        if prefix is not None and (source, prefix) in self._vetted_prefixes:
            return
        origin = self._outbound.check(request.url, source=source)
        try:
            sent = httpx.URL(request.url, params=request.params or None)
        except httpx.InvalidURL as exc:
            raise OutboundRefusedError("the HTTP client cannot read the URL") from exc
        sent_origin = Origin(sent.scheme, sent.host, sent.port or (443 if sent.scheme == "https" else 80))
        if sent_origin != origin:
            raise OutboundRefusedError(f"the URL reads as {sent_origin} to the HTTP client, not {origin}")
        if prefix is not None and len(self._vetted_prefixes) < MAX_VETTED_PREFIXES:
            self._vetted_prefixes.add((source, prefix))

    async def _attempt(self, state: _BudgetState, source: Source, request: _Request, scope: str) -> JsonValue:
        # Waiting for the provider (its rate window, the budgets, its answer) is no work of ours: the
        # fetcher lends the job's working slot to another job meanwhile (see apptsync.fetcher.slots).
        async with self._provider_wait():
            response = await self._send(state, source, request, scope)
        shared = self._shared if self._shared is not None and self._shared.covers(source) else None
        if shared is not None and response.status_code == 429:
            await shared.pause(source, shared_pause_seconds(response.headers, now=self._clock()))
        if scope:
            pause = rate_limit_pause_seconds(response.headers)
            if pause is not None:
                self._paused_until[(source, scope)] = self._clock() + timedelta(seconds=pause)
        error = error_for_status(source, response, now=self._clock())
        if error is not None:
            raise error
        try:
            parsed = loads_json(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise _MalformedBodyError(
                f"{source.value} {response.request.url.path}: malformed JSON body ({reason})",
                status_code=response.status_code,
            ) from exc
        return parsed

    async def _send(self, state: _BudgetState, source: Source, request: _Request, scope: str) -> httpx.Response:
        if scope:
            await self._wait_for_rate_limit_reset(source, scope)
        # The semaphore first, then the limiter: a request holding a rate slot must not then queue
        # for a connection, or the slots would bunch up into a burst.
        shared = self._shared if self._shared is not None and self._shared.covers(source) else None
        async with state.connections:
            await state.limiter.acquire()
            # The local stages first: a process never asks the shared budget for more than its own
            # concurrency, so it never holds slots it cannot use yet.
            lease_id = None if shared is None else await shared.acquire(source, state.budget)
            try:
                async with asyncio.timeout(self._timeout_seconds):
                    return await self._exchange(request)
            except (httpx.TransportError, TimeoutError) as exc:
                path = httpx.URL(request.url).path
                raise _TransportError(
                    f"{source.value} {path}: {type(exc).__name__} (timeout, reset or connection error)"
                ) from exc
            finally:
                if shared is not None and lease_id is not None:
                    await shared.release(lease_id)

    async def _exchange(self, request: _Request) -> httpx.Response:
        """Sends `request` through the transport and reads the whole answer."""
        headers = httpx.Headers(DEFAULT_REQUEST_HEADERS)
        headers.update(request.headers)  # case-insensitively: a session's own Accept replaces ours
        sent = httpx.Request(
            request.method, request.url, params=request.params or None, data=request.form, headers=headers,
            extensions=self._timeouts,
        )  # fmt: skip
        response = await self._transport.handle_async_request(sent)
        response.request = sent  # what httpx's client does: not every transport sets it
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def _wait_for_rate_limit_reset(self, source: Source, scope: str) -> None:
        key = (source, scope)
        paused_until = self._paused_until.get(key)
        if paused_until is None:
            return
        wait_seconds = (paused_until - self._clock()).total_seconds()
        if wait_seconds > 0:
            self.rate_limit_pauses += 1
            await self._sleep(wait_seconds)
        if self._paused_until.get(key) == paused_until:
            del self._paused_until[key]

    def _budget_state(self, source: Source, budget: RateBudget) -> _BudgetState:
        state = self._budgets.get(source)
        if state is None:
            state = _BudgetState(self._overrides.get(source, budget))
            self._budgets[source] = state
        return state


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    url: str
    params: dict[str, str]
    form: dict[str, str] | None
    headers: dict[str, str] = field(repr=False)


class _TransportError(ProviderUnavailableError):
    """A timeout, reset or refused connection: the request may or may not have reached the provider."""
