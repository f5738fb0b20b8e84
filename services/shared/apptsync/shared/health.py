"""The standard gRPC health checking service, for processes whose only gRPC API is health.

Kubernetes probes and `apptsync dev up` ask it; a service reports SERVING once it can do its work
and NOT_SERVING while it drains on SIGTERM.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


class HealthEndpoint:
    """A grpc.aio server serving only grpc.health.v1.Health on `address` ("host:port")."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._server = grpc.aio.server()
        self._servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, self._server)
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc's way of saying the address is taken or invalid
            raise OSError(f"cannot bind the health endpoint to {address}: {exc}") from exc
        if self.port == 0:
            raise OSError(f"cannot bind the health endpoint to {address}")

    async def start(self) -> None:
        await self.set_serving(False)
        await self._server.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._servicer.set("", status)

    async def stop(self, grace_seconds: float = 1.0) -> None:
        await self._server.stop(grace_seconds)


def health_enabled(address: str) -> bool:
    """False for an address whose port is 0: the process runs without a health endpoint."""
    return address.rsplit(":", 1)[-1] not in ("", "0")
