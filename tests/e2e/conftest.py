"""End-to-end fixtures (see system.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from apptsync.cli.devstack import ServiceSet, format_dev_keyring
from apptsync.v1 import imports_pb2_grpc
from tests.containers.fixtures import BrokerContainer
from tests.e2e.system import TENANT_TOKEN, RunningSystem, system_env


@pytest.fixture
async def running_system(
    database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> AsyncIterator[RunningSystem]:
    # The services connect as a role row-level security binds; `migrate` and the tests' checks of
    # the truth use the owner.
    services = ServiceSet(
        database_url=service_database_url,
        migration_database_url=database_url,
        bootstrap_servers=broker.bootstrap_servers,
        log_dir=tmp_path / "logs",
        credentials_keyring=format_dev_keyring(uuid.uuid4().bytes * 2),
        extra_env=system_env(tmp_path),
    )
    async with services, grpc.aio.insecure_channel(services.addresses.gateway_address) as channel:
        yield RunningSystem(
            services=services,
            stub=imports_pb2_grpc.ImportServiceStub(channel),
            database_url=database_url,
            metadata=(("authorization", f"Bearer {TENANT_TOKEN}"),),
        )
