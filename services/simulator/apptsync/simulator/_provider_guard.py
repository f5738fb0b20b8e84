"""What every simulated provider endpoint goes through: counting, latency, injected faults, and
writing the JSON body (optionally slowly). aiohttp adapter; the decisions are in _faults/_counters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from apptsync.simulator._faults import InjectedFault
from apptsync.simulator._state import ProviderState

_CHUNK_BYTES = 1024


@dataclass(frozen=True, slots=True)
class JsonReply:
    status: int
    body: object
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EncodedJson:
    """A JSON body already encoded as UTF-8 (a JsonReply body that is served as is)."""

    data: bytes


def error_reply(status: int, error: str, message: str, headers: Mapping[str, str] | None = None) -> JsonReply:
    """Acuity's error shape: `{status_code, error, message}`."""
    return JsonReply(status, {"status_code": status, "error": error, "message": message}, headers or {})


# How a provider renders an error: (status, error code, message, headers) -> reply.
ErrorRenderer = Callable[[int, str, str, Mapping[str, str] | None], JsonReply]


async def guarded(
    request: web.Request,
    provider: ProviderState,
    handle: Callable[[web.Request], Awaitable[JsonReply]],
    *,
    monotonic: Callable[[], float] = time.monotonic,
    render_error: ErrorRenderer = error_reply,
) -> web.StreamResponse:
    """Serves `request` with `handle`, after the provider's knobs had their say; injected errors are
    rendered in the provider's error shape by `render_error`."""
    provider.counters.started(monotonic())
    status = 0
    try:
        knobs = provider.faults.knobs
        if knobs.latency_ms:
            await asyncio.sleep(knobs.latency_ms / 1000)
        fault = provider.faults.take_next_fault()
        if fault is InjectedFault.RESET:
            # Aborting drops the connection without a response (the client sees a reset); the
            # response returned afterwards is never written.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if fault is InjectedFault.TOO_MANY_REQUESTS:
            headers = {} if knobs.retry_after is None else {"Retry-After": knobs.retry_after}
            reply = render_error(429, "too_many_requests", "Too many requests: slow down.", headers)
        elif fault is InjectedFault.RATE_LIMIT_403:
            reply = render_error(403, "rate_limit_exceeded", "Rate Limit Exceeded", None)
        elif fault is InjectedFault.SERVER_ERROR:
            reply = render_error(knobs.status_5xx, "server_error", "Simulated server error.", None)
        else:
            reply = await handle(request)
        if isinstance(reply.body, EncodedJson):
            body = reply.body.data
        else:
            body = json.dumps(reply.body, ensure_ascii=False).encode()
        if fault is InjectedFault.MALFORMED_BODY and reply.status == 200:
            body = body[: max(1, len(body) // 2)]
        response = await _write(request, reply, body, slow_body_ms=knobs.slow_body_ms)
        status = reply.status
        return response
    finally:
        provider.counters.finished(status)


async def _write(request: web.Request, reply: JsonReply, body: bytes, *, slow_body_ms: int) -> web.StreamResponse:
    headers = {"Content-Type": "application/json; charset=utf-8", **reply.headers}
    if not slow_body_ms:
        response = web.Response(status=reply.status, body=body, headers=headers)
        await response.prepare(request)
        await response.write_eof()
        return response
    stream = web.StreamResponse(status=reply.status, headers=headers)
    stream.content_length = len(body)
    await stream.prepare(request)
    for offset in range(0, len(body), _CHUNK_BYTES):
        if offset:
            await asyncio.sleep(slow_body_ms / 1000)
        await stream.write(body[offset : offset + _CHUNK_BYTES])
    await stream.write_eof()
    return stream
