"""The gateway: grpc.aio ImportService with health checking and server reflection.

The servicer is a thin adapter: it authenticates the call, validates through `translate`, runs one
short database transaction through the shared repositories, and maps our error tree onto gRPC
status codes. Health checking and reflection stay open (no token), as probes and grpcurl expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import asyncpg
import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry import trace

from apptsync.gateway.auth import (
    ANONYMOUS_DEVELOPER,
    PermissionDeniedError,
    Principal,
    TokenTable,
    UnauthenticatedError,
)
from apptsync.gateway.subscriptions import ProviderSubscriptions, SubscriptionManager
from apptsync.gateway.translate import (
    FieldViolation,
    RequestInvalid,
    connection_from_request,
    connection_to_proto,
    connections_page,
    connections_query,
    jobs_page,
    jobs_query,
    new_job_from_request,
    parse_ids,
)
from apptsync.gateway.verify import CredentialProbe
from apptsync.gateway.watch import JobChangeHub
from apptsync.shared.appointments import Source
from apptsync.shared.credentials import Keyring
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db import jobs as jobs_db
from apptsync.shared.db import webhooks as webhooks_db
from apptsync.shared.db.pool import acquired
from apptsync.shared.errors import (
    ApptsyncError,
    InvalidArgumentError,
    NotFoundError,
    ProviderUnavailableError,
    RetriableError,
    StorageRefusedError,
)
from apptsync.shared.job_messages import job_to_proto
from apptsync.shared.lifecycle import DEFAULT_RESOURCES, ServiceResources
from apptsync.shared.outbound import OutboundPolicy
from apptsync.shared.settings import DatabaseSettings, GatewaySettings, WebhookSettings
from apptsync.shared.telemetry.logs import register_secrets
from apptsync.shared.telemetry.metrics import METRICS
from apptsync.shared.telemetry.propagation import current_traceparent, trace_id_hex
from apptsync.v1 import imports_pb2, imports_pb2_grpc

_log = logging.getLogger("apptsync.gateway")
_T = TypeVar("_T")
Clock = Callable[[], datetime]
Context = grpc.aio.ServicerContext[object, object]
# WatchJob re-reads the job at least this often even without a notification.
WATCH_FALLBACK_SECONDS = 5.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


# google.rpc.ErrorInfo of a refused idempotency key: clients tell it apart by reason, not by text.
IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
ERROR_DOMAIN = "apptsync.v1"


async def _abort_key_reused(context: Context, error: jobs_db.IdempotencyKeyReusedError) -> None:
    """ALREADY_EXISTS: the key (a name the client gave one request) is taken by another request's job.

    Why not FAILED_PRECONDITION: this gateway answers that for every other permanent refusal, and a
    caller such as sync-all must tell "this key is taken" apart by the code alone; ALREADY_EXISTS is
    what gRPC names "the entity a client attempted to create already exists", and no other StartImport
    answer uses it. Like FAILED_PRECONDITION it says: sending the same call again cannot succeed.
    The message and the ErrorInfo name the job that holds the key."""
    info = error_details_pb2.ErrorInfo(
        reason=IDEMPOTENCY_KEY_REUSED,
        domain=ERROR_DOMAIN,
        metadata={
            "idempotency_key": error.idempotency_key,
            "job_id": error.job_id,
            "differences": ",".join(error.differences),
        },
    )
    packed = any_pb2.Any()
    packed.Pack(info)
    status = status_pb2.Status(code=code_pb2.ALREADY_EXISTS, message=str(error), details=[packed])
    await context.abort_with_status(rpc_status.to_status(status))


async def _abort_invalid(context: Context, error: RequestInvalid) -> None:
    details = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(details)
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(error), details=[packed])
    await context.abort_with_status(rpc_status.to_status(status))


class ImportServicer(imports_pb2_grpc.ImportServiceServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: Keyring,
        settings: GatewaySettings,
        hub: JobChangeHub,
        tokens: TokenTable | None,
        clock: Clock = _utc_now,
        *,
        outbound: OutboundPolicy,
        probe: CredentialProbe,
        subscriptions: SubscriptionManager | None = None,
    ) -> None:
        self._subscriptions = subscriptions
        self._pool = pool
        self._outbound = outbound
        self._probe = probe
        self._keyring = keyring
        self._settings = settings
        self._hub = hub
        self._tokens = tokens
        self._clock = clock

    def _principal(self, context: Context) -> Principal:
        if self._tokens is None:
            return ANONYMOUS_DEVELOPER
        return self._tokens.authenticate(context.invocation_metadata() or ())

    async def _run(self, context: Context, call: Callable[[Principal], Awaitable[_T]]) -> _T:
        """Runs one RPC body and maps our errors to status codes (never INTERNAL for a known error)."""
        try:
            return await call(self._principal(context))
        except (ApptsyncError, OSError) as exc:
            await _abort_for(context, exc)
        raise AssertionError("unreachable: context.abort raises")

    async def StartImport(
        self, request: imports_pb2.StartImportRequest, context: Context
    ) -> imports_pb2.StartImportResponse:
        """Queues an import, or returns the job that makes it a duplicate (`already_exists`): the job
        of the same idempotency key when this is the same request (`translate.request_fingerprint`,
        any state), else the connection's active job. A key held by a job another request started:
        ALREADY_EXISTS naming that job, nothing written (`_abort_key_reused`)."""

        async def body(principal: Principal) -> imports_pb2.StartImportResponse:
            now = self._clock()
            # The job row carries this call's trace context: the fetcher's job span continues it.
            new_job = new_job_from_request(
                request,
                settings=self._settings,
                now=now,
                trace_id=trace_id_hex(),
                traceparent=current_traceparent(),
            )
            principal.require(new_job.tenant_id)
            async with acquired(self._pool) as conn, conn.transaction():
                known = await connections_db.get_connection(
                    conn, tenant_id=new_job.tenant_id, connection_id=new_job.connection_id
                )
                if known is None or known.external_source != new_job.external_source:
                    raise NotFoundError(f"connection {new_job.connection_id!r} for this source does not exist")
                job, already = await jobs_db.create_job(conn, new_job, now=now)
            span = trace.get_current_span()
            span.set_attribute("apptsync.tenant_id", job.tenant_id)
            span.set_attribute("apptsync.job_id", job.job_id)
            span.set_attribute("apptsync.already_exists", already)
            METRICS.imports_started.labels(job.external_source, "existing" if already else "created").inc()
            return imports_pb2.StartImportResponse(job=job_to_proto(job), already_exists=already)

        return await self._run(context, body)

    async def _job(self, principal: Principal, tenant_field: str, job_field: str) -> jobs_db.JobRecord:
        tenant_id, job_id = parse_ids(tenant_id=tenant_field, job_id=job_field)
        principal.require(tenant_id)
        async with acquired(self._pool) as conn:
            job = await jobs_db.get_job(conn, tenant_id=tenant_id, job_id=job_id)
        if job is None:
            raise NotFoundError(f"job {job_id} not found")
        return job

    async def GetJob(self, request: imports_pb2.GetJobRequest, context: Context) -> imports_pb2.Job:
        async def body(principal: Principal) -> imports_pb2.Job:
            return job_to_proto(await self._job(principal, request.tenant_id, request.job_id))

        return await self._run(context, body)

    async def ListJobs(self, request: imports_pb2.ListJobsRequest, context: Context) -> imports_pb2.ListJobsResponse:
        async def body(principal: Principal) -> imports_pb2.ListJobsResponse:
            (tenant_id,) = parse_ids(tenant_id=request.tenant_id)
            principal.require(tenant_id)
            query = jobs_query(request)
            async with acquired(self._pool) as conn:
                jobs = await jobs_db.list_jobs(
                    conn, tenant_id=tenant_id, states=query.states, limit=query.limit + 1, after=query.after
                )
            return jobs_page(jobs, query.limit)

        return await self._run(context, body)

    async def WatchJob(self, request: imports_pb2.WatchJobRequest, context: Context) -> AsyncIterator[imports_pb2.Job]:
        """Streams snapshots until the job is terminal. Each change is sent at most once; bursts of
        changes collapse into one snapshot (a watcher wants the state, not every counter step)."""
        try:
            job = await self._job(self._principal(context), request.tenant_id, request.job_id)
        except (ApptsyncError, OSError) as exc:
            await _abort_for(context, exc)
            return
        changed = self._hub.watch(job.job_id)
        try:
            last_sent = None
            while True:
                snapshot = job_to_proto(job)
                if snapshot != last_sent:
                    yield snapshot
                    last_sent = snapshot
                if job.is_terminal:
                    return
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=WATCH_FALLBACK_SECONDS)
                async with acquired(self._pool) as conn:
                    fresh = await jobs_db.get_job(conn, tenant_id=job.tenant_id, job_id=job.job_id)
                if fresh is None:
                    return
                job = fresh
        finally:
            self._hub.unwatch(job.job_id, changed)

    async def CancelJob(self, request: imports_pb2.CancelJobRequest, context: Context) -> imports_pb2.Job:
        async def body(principal: Principal) -> imports_pb2.Job:
            tenant_id, job_id = parse_ids(tenant_id=request.tenant_id, job_id=request.job_id)
            principal.require(tenant_id)
            async with acquired(self._pool) as conn:
                job = await jobs_db.request_cancel(conn, tenant_id=tenant_id, job_id=job_id, now=self._clock())
            if job is None:
                raise NotFoundError(f"job {job_id} not found")
            return job_to_proto(job)

        return await self._run(context, body)

    async def PutConnection(
        self, request: imports_pb2.PutConnectionRequest, context: Context
    ) -> imports_pb2.Connection:
        async def body(principal: Principal) -> imports_pb2.Connection:
            given = connection_from_request(request, outbound=self._outbound)
            register_secrets(*given.credentials.values())
            principal.require(given.tenant_id)
            # After the tenant check: only a caller who may store the connection learns whether the
            # provider takes the credentials. Before the transaction: no pooled connection waits on it.
            if given.skip_verification:
                _log.info("storing connection %s unverified (skip_verification)", given.connection_id)
            else:
                await self._probe.verify(given)
            async with acquired(self._pool) as conn:
                record = await connections_db.put_connection(
                    conn,
                    keyring=self._keyring,
                    tenant_id=given.tenant_id,
                    connection_id=given.connection_id,
                    external_source=given.external_source,
                    base_url=given.base_url,
                    credentials=given.credentials,
                    settings=given.settings,
                    now=self._clock(),
                )
            # After the commit: the connection is stored (and polled) whatever the provider answers; a
            # refused subscription is stored FAILED and reported below, not raised.
            subscription = None
            if self._subscriptions is not None and self._subscriptions.enabled:
                subscription = await self._subscriptions.subscribe(
                    tenant_id=given.tenant_id,
                    connection_id=given.connection_id,
                    source=Source(given.external_source),
                    base_url=given.base_url,
                    credentials=given.credentials,
                    settings=given.settings,
                )
            return connection_to_proto(record, subscription)

        return await self._run(context, body)

    async def GetConnection(
        self, request: imports_pb2.GetConnectionRequest, context: Context
    ) -> imports_pb2.Connection:
        async def body(principal: Principal) -> imports_pb2.Connection:
            (tenant_id,) = parse_ids(tenant_id=request.tenant_id)
            principal.require(tenant_id)
            async with acquired(self._pool) as conn:
                record = await connections_db.get_connection(
                    conn, tenant_id=tenant_id, connection_id=request.connection_id
                )
                subscription = await webhooks_db.get_subscription(
                    conn, tenant_id=tenant_id, connection_id=request.connection_id
                )
            if record is None:
                raise NotFoundError(f"connection {request.connection_id!r} not found")
            return connection_to_proto(record, subscription)

        return await self._run(context, body)

    async def ListConnections(
        self, request: imports_pb2.ListConnectionsRequest, context: Context
    ) -> imports_pb2.ListConnectionsResponse:
        async def body(principal: Principal) -> imports_pb2.ListConnectionsResponse:
            if request.tenant_id:
                (tenant_id,) = parse_ids(tenant_id=request.tenant_id)
                principal.require(tenant_id)
                tenant_ids: list[str] | None = [tenant_id]
            else:
                tenant_ids = None if principal.tenants is None else sorted(principal.tenants)
            query = connections_query(request)
            async with acquired(self._pool) as conn:
                records = await connections_db.list_connections(
                    conn, tenant_ids=tenant_ids, limit=query.limit + 1, after=query.after
                )
                subscriptions = [
                    await webhooks_db.get_subscription(conn, tenant_id=r.tenant_id, connection_id=r.connection_id)
                    for r in records[: query.limit]
                ]
            return connections_page(records, subscriptions, query.limit)

        return await self._run(context, body)

    async def DeleteConnection(
        self, request: imports_pb2.DeleteConnectionRequest, context: Context
    ) -> imports_pb2.DeleteConnectionResponse:
        async def body(principal: Principal) -> imports_pb2.DeleteConnectionResponse:
            (tenant_id,) = parse_ids(tenant_id=request.tenant_id)
            principal.require(tenant_id)
            if self._subscriptions is not None:
                # Before the row goes: removing the provider side needs the connection's credentials
                # (the subscription row would go with the connection anyway, ON DELETE CASCADE).
                async with acquired(self._pool) as conn:
                    loaded = await connections_db.load_connection_secrets(
                        conn, keyring=self._keyring, tenant_id=tenant_id, connection_id=request.connection_id
                    )
                if loaded is not None:
                    record, credentials = loaded
                    await self._subscriptions.unsubscribe(
                        tenant_id=tenant_id, connection_id=request.connection_id,
                        source=Source(record.external_source), base_url=record.base_url, credentials=credentials,
                    )  # fmt: skip
            async with acquired(self._pool) as conn:
                deleted = await connections_db.delete_connection(
                    conn, tenant_id=tenant_id, connection_id=request.connection_id
                )
            return imports_pb2.DeleteConnectionResponse(deleted=deleted)

        return await self._run(context, body)


async def _abort_for(context: Context, exc: Exception) -> None:
    """Ends the call with the status our error means; raises (grpc's abort always does)."""
    if isinstance(exc, RequestInvalid):
        await _abort_invalid(context, exc)
    elif isinstance(exc, InvalidArgumentError):
        # The other "bad input" error (raised below the gateway, e.g. by the credentials or outbound
        # code): the same INVALID_ARGUMENT with a field violation, never FAILED_PRECONDITION.
        await _abort_invalid(context, RequestInvalid([FieldViolation(exc.field, exc.message)]))
    elif isinstance(exc, UnauthenticatedError):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    elif isinstance(exc, PermissionDeniedError):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    elif isinstance(exc, NotFoundError):
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    elif isinstance(exc, jobs_db.IdempotencyKeyReusedError):
        await _abort_key_reused(context, exc)
    elif isinstance(exc, ProviderUnavailableError):
        # The credential probe could not get an answer: its message says which provider and what to do.
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    elif isinstance(exc, RetriableError | OSError):
        _log.warning("transient failure: %s", type(exc).__name__)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "temporarily unavailable, try again")
    elif isinstance(exc, StorageRefusedError):
        # Our bug or a broken deployment, not the caller's: PostgreSQL's message stays in the log.
        _log.error("database refused a statement: %s", exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    else:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))


def _server_credentials(settings: GatewaySettings) -> grpc.ServerCredentials | None:
    """None (plaintext) when no TLS setting is given. Raises InvalidArgumentError for a partial TLS
    configuration: a key or client CA without a certificate must not fall back to plaintext."""
    if not settings.tls_cert_file:
        if settings.tls_key_file or settings.tls_client_ca_file:
            raise InvalidArgumentError("APPTSYNC_GATEWAY_TLS_CERT_FILE", "required when a TLS key or client CA is set")
        return None
    if not settings.tls_key_file:
        raise InvalidArgumentError("APPTSYNC_GATEWAY_TLS_KEY_FILE", "required when a TLS certificate is set")
    chain = [(Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())]
    if settings.tls_client_ca_file:
        return grpc.ssl_server_credentials(
            chain, root_certificates=Path(settings.tls_client_ca_file).read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials(chain)


def load_tokens(settings: GatewaySettings) -> TokenTable | None:
    """The token table, or None when unauthenticated calls are explicitly allowed.

    Raises InvalidArgumentError when neither a tokens file nor the development opt-out is configured:
    a gateway never runs open by accident."""
    if settings.auth_tokens_file:
        return TokenTable.from_file(settings.auth_tokens_file)
    if settings.allow_unauthenticated:
        _log.warning("authentication is DISABLED (APPTSYNC_GATEWAY_ALLOW_UNAUTHENTICATED): development only")
        return None
    raise InvalidArgumentError(
        "APPTSYNC_GATEWAY_AUTH_TOKENS_FILE",
        "set a tokens file, or APPTSYNC_GATEWAY_ALLOW_UNAUTHENTICATED=true for development",
    )


async def run_gateway(
    database: DatabaseSettings,
    keyring: Keyring,
    settings: GatewaySettings,
    *,
    outbound: OutboundPolicy,
    stop: asyncio.Event,
    ready: Callable[[int], None] | None = None,
    webhooks: WebhookSettings | None = None,
    resources: ServiceResources = DEFAULT_RESOURCES,
) -> None:
    """Serves until `stop` is set, then stops intake, lets calls in flight finish (bounded), returns.
    PutConnection accepts only the URLs `outbound` allows (see apptsync.shared.outbound) and, unless
    the caller opts out, credentials the provider accepts (see apptsync.gateway.verify). `ready` gets
    the bound port once serving. Whatever start-up opened is closed again when a later step fails (see
    apptsync.shared.lifecycle; `resources` says how each part is opened)."""
    tokens = load_tokens(settings)
    # Before anything is opened: a bad TLS setting fails startup instead of hanging it.
    credentials = _server_credentials(settings)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(resources.pool(database, "apptsync-gateway"))
        # The hub holds a pooled connection that pool.close() would wait for forever: it is stopped first.
        hub = JobChangeHub(pool)
        stack.push_async_callback(hub.stop)
        await hub.start()
        credential_probe = CredentialProbe(outbound=outbound, timeout_seconds=settings.credential_probe_timeout_seconds)
        stack.push_async_callback(credential_probe.aclose)
        provider_subscriptions = ProviderSubscriptions(
            outbound=outbound, timeout_seconds=settings.credential_probe_timeout_seconds
        )
        stack.push_async_callback(provider_subscriptions.aclose)
        subscriptions = SubscriptionManager(
            pool=pool,
            keyring=keyring,
            settings=webhooks if webhooks is not None else WebhookSettings(),
            provider=provider_subscriptions,
            clock=_utc_now,
        )
        # Plaintext, health only: the kubelet's gRPC probe cannot speak TLS, and the API never
        # listens here, so a TLS gateway stays TLS-only for every call that carries a token.
        # NOT_SERVING until the API serves; it stops after the server.
        probe = await stack.enter_async_context(resources.health(settings.health_address))
        server = grpc.aio.server(options=options)
        # Binding the port below already holds it: the server is stopped on exit even if it never started.
        # Calls in flight finish (bounded) before the hub and the pool close.
        stack.push_async_callback(server.stop, 10.0)
        servicer = ImportServicer(
            pool, keyring, settings, hub, tokens, outbound=outbound, probe=credential_probe, subscriptions=subscriptions
        )
        imports_pb2_grpc.add_ImportServiceServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        import_service = imports_pb2.DESCRIPTOR.services_by_name["ImportService"].full_name
        reflection.enable_server_reflection((import_service, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        try:
            if credentials is None:
                port = server.add_insecure_port(settings.listen_address)
            else:
                port = server.add_secure_port(settings.listen_address, credentials)
        except RuntimeError as exc:  # grpc's way of saying the address is taken or invalid
            raise OSError(f"cannot bind {settings.listen_address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot bind {settings.listen_address}")
        await server.start()
        for name in ("", import_service):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if probe is not None:
            await probe.set_serving(True)
        _log.info("gateway listening on port %d", port)
        if ready is not None:
            ready(port)
        await stop.wait()
        # Stop intake: probes see NOT_SERVING before the server stops (on the stack, above).
        for name in ("", import_service):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if probe is not None:
            await probe.set_serving(False)
