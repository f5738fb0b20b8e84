"""The webhook receiver's HTTP adapter (aiohttp): route, bound, verify, hand on, answer.

`POST /webhooks/{source}/{token}`:
  1. an unknown source or a body announced over the limit is refused before anything is read (404/413);
  2. the token's SHA-256 names the tenant and connection (`apptsync_webhook_route`); none: 404;
  3. the body is read up to the limit (a chunked body that passes it: 413);
  4. the subscription's (and, for Acuity, the connection's) secrets verify it
     (`apptsync.shared.webhooks.inspect_notification`): forged 401, replayed 403, malformed 400;
  5. its target joins the connection's queued targeted job in one short transaction
     (`apptsync.shared.db.webhooks.enqueue_targets`), and only after that commit the answer is 200.
     A storage failure answers 503 so the provider delivers again: an acknowledged notification is
     never lost.
Every answer is counted (`apptsync_webhook_notifications_total{source, outcome}`). The request's span
is the root of the trace the targeted job continues (its traceparent is stored in the job row).

`GET /healthz` (liveness: the event loop answers) and `GET /readyz` (readiness: the database answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
from aiohttp import web
from opentelemetry import trace

from apptsync.shared.appointments import Source
from apptsync.shared.credentials import CredentialDecryptError, Keyring
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db import webhooks as webhooks_db
from apptsync.shared.db.pool import acquired
from apptsync.shared.errors import ApptsyncError
from apptsync.shared.lifecycle import DEFAULT_RESOURCES, ServiceResources
from apptsync.shared.provider_access import PUBLIC_API_URLS
from apptsync.shared.settings import DatabaseSettings, WebhookSettings
from apptsync.shared.telemetry.logs import log_event, register_secrets
from apptsync.shared.telemetry.metrics import METRICS
from apptsync.shared.telemetry.propagation import current_traceparent, trace_id_hex
from apptsync.shared.webhooks import (
    HTTP_STATUS,
    Inspection,
    Verdict,
    body_too_large,
    inspect_notification,
    token_digest,
)

_log = logging.getLogger("apptsync.webhooks")
_tracer = trace.get_tracer("apptsync.webhooks")
Clock = Callable[[], datetime]
_SOURCES = {source.value: source for source in Source}
# Tokens are 43 url-safe characters; anything far longer is not one of ours (and is not hashed).
_MAX_TOKEN_CHARS = 128
# What answers 503 (the provider delivers again): storage down, a credential that does not decrypt.
# Database failures arrive translated (acquired): the project's error tree, never asyncpg's classes.
_UNAVAILABLE: tuple[type[BaseException], ...] = (ApptsyncError, OSError, CredentialDecryptError)
_POOL_KEY = web.AppKey("pool", asyncpg.Pool)
_KEYRING_KEY = web.AppKey("keyring", Keyring)
_SETTINGS_KEY = web.AppKey("settings", WebhookSettings)
_CLOCK_KEY: web.AppKey[Clock] = web.AppKey("clock")


def _answer(source: str, verdict: Verdict, started: float) -> web.Response:
    METRICS.webhook_notifications.labels(source, verdict.value).inc()
    METRICS.webhook_handoff_duration.labels(source).observe(asyncio.get_running_loop().time() - started)
    trace.get_current_span().set_attribute("apptsync.webhook_outcome", verdict.value)
    return web.json_response({"outcome": verdict.value}, status=HTTP_STATUS[verdict])


async def _read_bounded(request: web.Request, limit_bytes: int) -> bytes | None:
    """The body, or None when it passes `limit_bytes` (read no further than one byte past it)."""
    body = await request.content.read(limit_bytes + 1)
    return None if len(body) > limit_bytes else body


async def _notification(request: web.Request) -> web.Response:
    started = asyncio.get_running_loop().time()
    settings, pool, keyring, clock = (
        request.app[_SETTINGS_KEY],
        request.app[_POOL_KEY],
        request.app[_KEYRING_KEY],
        request.app[_CLOCK_KEY],
    )
    source_name, token = request.match_info["source"], request.match_info["token"]
    source = _SOURCES.get(source_name)
    label = source.value if source is not None else "unknown"
    with _tracer.start_as_current_span(
        "webhook notification", kind=trace.SpanKind.SERVER, attributes={"apptsync.source": label}
    ) as span:
        if source is None or len(token) > _MAX_TOKEN_CHARS:
            return _answer(label, Verdict.UNKNOWN_CONNECTION, started)
        if body_too_large(request.content_length, settings.max_body_bytes):
            return _answer(label, Verdict.OVERSIZED, started)
        try:
            async with acquired(pool) as conn:
                route = await webhooks_db.route_by_token_digest(conn, token_digest(token))
                if route is None or route.external_source != source.value:
                    return _answer(label, Verdict.UNKNOWN_CONNECTION, started)
                span.set_attribute("apptsync.tenant_id", route.tenant_id)
                span.set_attribute("apptsync.connection_id", route.connection_id)
                body = await _read_bounded(request, settings.max_body_bytes)
                if body is None:
                    return _answer(label, Verdict.OVERSIZED, started)
                inspection = await _inspect(conn, keyring, route, source, request, body, settings, clock())
                if inspection.verdict is not Verdict.ACCEPTED or inspection.target is None:
                    return _answer(label, inspection.verdict, started)
                handoff = await webhooks_db.enqueue_targets(
                    conn,
                    route=route,
                    targets=[inspection.target.value],
                    traceparent=current_traceparent(),
                    trace_id=trace_id_hex(),
                    now=clock(),
                    google_channel=inspection.google_channel,
                )
        except _UNAVAILABLE as exc:
            # Not handed on: the provider must deliver again (it retries on 5xx).
            log_event(_log, "notification not handed on", level=logging.WARNING, error=type(exc).__name__)
            METRICS.webhook_notifications.labels(label, "unavailable").inc()
            return web.json_response({"outcome": "unavailable"}, status=503)
        if handoff is None:
            return _answer(label, Verdict.DUPLICATE, started)
        span.set_attribute("apptsync.job_id", handoff.job_id)
        span.set_attribute("apptsync.job_created", handoff.created)
        if handoff.overflowed:
            # The queued job is full: the polling sync reconciles these (README "Webhooks").
            METRICS.webhook_notifications.labels(label, "overflowed").inc()
        log_event(_log, "notification handed on", job_id=handoff.job_id, created=handoff.created)
        return _answer(label, Verdict.ACCEPTED, started)


async def _inspect(
    conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
    keyring: Keyring,
    route: webhooks_db.Route,
    source: Source,
    request: web.Request,
    body: bytes,
    settings: WebhookSettings,
    now: datetime,
) -> Inspection:
    """Loads the secrets that verify a notification for `route` and applies the pure inspection."""
    loaded = await webhooks_db.load_subscription_secrets(
        conn, keyring=keyring, tenant_id=route.tenant_id, connection_id=route.connection_id
    )
    connection = await connections_db.load_connection_secrets(
        conn, keyring=keyring, tenant_id=route.tenant_id, connection_id=route.connection_id
    )
    if loaded is None or connection is None:
        return Inspection(Verdict.UNKNOWN_CONNECTION)
    record, credentials = connection
    secrets = {**loaded[1]}
    register_secrets(*secrets.values(), credentials.get("api_key", ""))  # redacted by value from every log line
    if source is Source.ACUITY:
        secrets["api_key"] = credentials.get("api_key", "")
    return inspect_notification(
        source,
        body=body,
        headers=request.headers,
        secrets=secrets,
        api_base_url=(record.base_url or PUBLIC_API_URLS[source]).rstrip("/"),
        now=now,
        calendly_tolerance_seconds=settings.calendly_tolerance_seconds,
    )


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    try:
        async with request.app[_POOL_KEY].acquire() as conn:
            await conn.fetchval("SELECT 1")
    except _UNAVAILABLE:
        return web.json_response({"status": "database unavailable"}, status=503)
    return web.json_response({"status": "ready"})


def build_receiver_app(
    pool: asyncpg.Pool, keyring: Keyring, settings: WebhookSettings, *, clock: Clock | None = None
) -> web.Application:
    """The receiver's aiohttp application. `clock` defaults to UTC now (tests pass their own)."""
    # client_max_size: aiohttp's own bound for anything that reads the whole body.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[_POOL_KEY] = pool
    app[_KEYRING_KEY] = keyring
    app[_SETTINGS_KEY] = settings
    app[_CLOCK_KEY] = clock or (lambda: datetime.now(UTC))
    app.router.add_post("/webhooks/{source}/{token}", _notification)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


async def run_webhook_receiver(
    database: DatabaseSettings,
    keyring: Keyring,
    settings: WebhookSettings,
    *,
    stop: asyncio.Event,
    ready: Callable[[int], None] | None = None,
    resources: ServiceResources = DEFAULT_RESOURCES,
) -> None:
    """Serves until `stop` is set, then stops accepting and finishes requests in progress (bounded),
    in the lifecycle shape of every service (apptsync.shared.lifecycle): what start-up opened is closed
    also when a later step fails (the port taken: OSError). `ready` gets the bound port."""
    host, _, port = settings.listen_address.rpartition(":")
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(resources.pool(database, "apptsync-webhook-receiver"))
        runner = web.AppRunner(build_receiver_app(pool, keyring, settings), access_log=None)
        await runner.setup()
        # Stops the listening site, then lets requests in flight finish, before the pool closes.
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, host or "127.0.0.1", int(port), shutdown_timeout=5.0)
        await site.start()
        bound = _bound_port(runner, int(port))
        log_event(_log, "webhook receiver serving", address=f"{host or '127.0.0.1'}:{bound}")
        if ready is not None:
            ready(bound)
        await stop.wait()


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured
