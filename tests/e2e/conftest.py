"""End-to-end fixtures (see system.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from apptsync.v1 import imports_pb2_grpc
from tests.containers.fixtures import BrokerContainer
from tests.e2e.system import TENANT_TOKEN, RunningSystem, service_set, system_env


@pytest.fixture
async def running_system(
    database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> AsyncIterator[RunningSystem]:
    # The services connect as a role row-level security binds; `migrate` and the tests' checks of
    # the truth use the owner.
    services = service_set(
        database_url=database_url,
        service_database_url=service_database_url,
        bootstrap_servers=broker.bootstrap_servers,
        tmp_path=tmp_path,
        env=system_env(tmp_path),
    )
    async with services, grpc.aio.insecure_channel(services.addresses.gateway_address) as channel:
        yield RunningSystem(
            services=services,
            stub=imports_pb2_grpc.ImportServiceStub(channel),
            database_url=database_url,
            metadata=(("authorization", f"Bearer {TENANT_TOKEN}"),),
        )
