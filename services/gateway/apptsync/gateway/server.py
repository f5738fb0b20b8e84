"""The gateway: grpc.aio ImportService with health checking and server reflection.

The servicer is a thin adapter: it validates through `translate`, runs one short transaction per
call through the shared repositories, and maps our error tree onto gRPC status codes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from apptsync.gateway.translate import (
    FieldViolation,
    RequestInvalid,
    connection_from_request,
    connection_to_proto,
    job_to_proto,
    new_job_from_request,
    parse_uuid,
)
from apptsync.shared.credentials import Keyring
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db import jobs as jobs_db
from apptsync.shared.errors import ApptsyncError, NotFoundError, RetriableError
from apptsync.shared.settings import GatewaySettings
from apptsync.v1 import imports_pb2, imports_pb2_grpc

_log = logging.getLogger("apptsync.gateway")
_T = TypeVar("_T")
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def _abort_invalid(context: grpc.aio.ServicerContext[object, object], error: RequestInvalid) -> None:
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
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring, settings: GatewaySettings,
                 clock: Clock = _utc_now) -> None:
        self._pool = pool
        self._keyring = keyring
        self._settings = settings
        self._clock = clock

    async def _run(self, context: grpc.aio.ServicerContext[object, object],
                   call: Callable[[], Awaitable[_T]]) -> _T:
        """Runs one RPC body and maps our errors to status codes (never INTERNAL for a known error)."""
        try:
            return await call()
        except RequestInvalid as exc:
            await _abort_invalid(context, exc)
        except NotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except (RetriableError, asyncpg.exceptions.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
            _log.warning("transient failure: %s", type(exc).__name__)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "temporarily unavailable, try again")
        except ApptsyncError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        raise AssertionError("unreachable: context.abort raises")

    async def StartImport(self, request: imports_pb2.StartImportRequest,
                          context: grpc.aio.ServicerContext[object, object]) -> imports_pb2.StartImportResponse:
        async def body() -> imports_pb2.StartImportResponse:
            now = self._clock()
            new_job = new_job_from_request(request, settings=self._settings, now=now)
            async with self._pool.acquire() as conn, conn.transaction():
                known = await connections_db.get_connection(
                    conn, tenant_id=new_job.tenant_id, connection_id=new_job.connection_id
                )
                if known is None or known.external_source != new_job.external_source:
                    raise NotFoundError(f"connection {new_job.connection_id!r} for this source does not exist")
                job, already = await jobs_db.create_job(conn, new_job, now=now)
            return imports_pb2.StartImportResponse(job=job_to_proto(job), already_exists=already)

        return await self._run(context, body)

    async def GetJob(self, request: imports_pb2.GetJobRequest,
                     context: grpc.aio.ServicerContext[object, object]) -> imports_pb2.Job:
        async def body() -> imports_pb2.Job:
            tenant_id, job_id = _ids(request.tenant_id, request.job_id)
            async with self._pool.acquire() as conn:
                job = await jobs_db.get_job(conn, tenant_id=tenant_id, job_id=job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} not found")
            return job_to_proto(job)

        return await self._run(context, body)

    async def CancelJob(self, request: imports_pb2.CancelJobRequest,
                        context: grpc.aio.ServicerContext[object, object]) -> imports_pb2.Job:
        async def body() -> imports_pb2.Job:
            tenant_id, job_id = _ids(request.tenant_id, request.job_id)
            async with self._pool.acquire() as conn:
                job = await jobs_db.request_cancel(conn, tenant_id=tenant_id, job_id=job_id, now=self._clock())
            if job is None:
                raise NotFoundError(f"job {job_id} not found")
            return job_to_proto(job)

        return await self._run(context, body)

    async def PutConnection(self, request: imports_pb2.PutConnectionRequest,
                            context: grpc.aio.ServicerContext[object, object]) -> imports_pb2.Connection:
        async def body() -> imports_pb2.Connection:
            given = connection_from_request(request)
            async with self._pool.acquire() as conn:
                record = await connections_db.put_connection(
                    conn, keyring=self._keyring, tenant_id=given.tenant_id, connection_id=given.connection_id,
                    external_source=given.external_source, base_url=given.base_url,
                    credentials=given.credentials, settings=given.settings, now=self._clock(),
                )
            return connection_to_proto(record)

        return await self._run(context, body)

    async def GetConnection(self, request: imports_pb2.GetConnectionRequest,
                            context: grpc.aio.ServicerContext[object, object]) -> imports_pb2.Connection:
        async def body() -> imports_pb2.Connection:
            violations: list[FieldViolation] = []
            tenant_id = parse_uuid(request.tenant_id, "tenant_id", violations)
            if violations:
                raise RequestInvalid(violations)
            async with self._pool.acquire() as conn:
                record = await connections_db.get_connection(
                    conn, tenant_id=tenant_id, connection_id=request.connection_id
                )
            if record is None:
                raise NotFoundError(f"connection {request.connection_id!r} not found")
            return connection_to_proto(record)

        return await self._run(context, body)


def _ids(tenant_id: str, job_id: str) -> tuple[str, str]:
    violations: list[FieldViolation] = []
    tenant = parse_uuid(tenant_id, "tenant_id", violations)
    job = parse_uuid(job_id, "job_id", violations)
    if violations:
        raise RequestInvalid(violations)
    return tenant, job


async def serve_gateway(pool: asyncpg.Pool, keyring: Keyring, settings: GatewaySettings, *,
                        stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> None:
    """Serves until `stop` is set, then stops intake, lets calls in flight finish (bounded), returns."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    imports_pb2_grpc.add_ImportServiceServicer_to_server(ImportServicer(pool, keyring, settings), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (
        imports_pb2.DESCRIPTOR.services_by_name["ImportService"].full_name,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, server)
    port = server.add_insecure_port(settings.listen_address)
    if port == 0:
        raise OSError(f"cannot bind {settings.listen_address}")
    await server.start()
    for name in ("", service_names[0]):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _log.info("gateway listening on port %d", port)
    if ready is not None:
        ready(port)
    await stop.wait()
    for name in ("", service_names[0]):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=10.0)
