"""Readiness probes: gRPC health, HTTP GET, a line in the child's output.

Each `is_ready` returns False while the target is not ready (refused, starting, wrong answer) and never
raises for that; each single check is bounded by `timeout_seconds`. Clients ignore proxy settings:
dev-stack traffic stays on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import grpc.aio
import httpx
from grpc_health.v1 import health_pb2

_HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"


class GrpcHealthProbe:
    """Ready when `grpc.health.v1.Health/Check(service)` answers SERVING on `address` (host:port)."""

    def __init__(self, address: str, *, service: str = "", timeout_seconds: float = 1.0) -> None:
        self.address = address
        self.service = service
        self.timeout_seconds = timeout_seconds

    @property
    def description(self) -> str:
        return f"gRPC health of {self.service or 'the server'} at {self.address} is SERVING"

    async def is_ready(self) -> bool:
        options = [("grpc.enable_http_proxy", 0)]
        async with grpc.aio.insecure_channel(self.address, options=options) as channel:
            check = channel.unary_unary(
                _HEALTH_CHECK_METHOD,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            try:
                response = await check(
                    health_pb2.HealthCheckRequest(service=self.service), timeout=self.timeout_seconds
                )
            except grpc.aio.AioRpcError:
                return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


class HttpGetProbe:
    """Ready when `GET url` answers 200."""

    def __init__(self, url: str, *, timeout_seconds: float = 1.0) -> None:
        self.url = url
        self.timeout_seconds = timeout_seconds

    @property
    def description(self) -> str:
        return f"GET {self.url} answers 200"

    async def is_ready(self) -> bool:
        async with httpx.AsyncClient(trust_env=False, timeout=self.timeout_seconds) as client:
            try:
                response = await client.get(self.url)
            except httpx.HTTPError:
                return False
        return response.status_code == 200


class OutputContainsProbe:
    """Ready once the child's output of its current run contains `needle` (e.g. Tansu's `ready in`)."""

    def __init__(self, read_output: Callable[[], str], needle: str) -> None:
        self._read_output = read_output
        self.needle = needle

    @property
    def description(self) -> str:
        return f"its output contains {self.needle!r}"

    async def is_ready(self) -> bool:
        return self.needle in self._read_output()
