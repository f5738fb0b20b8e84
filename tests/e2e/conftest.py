"""End-to-end fixtures (see system.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.containers.fixtures import BrokerContainer
from tests.e2e.system import TENANT_TOKEN, RunningSystem, running, service_set, system_env


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
    async with running(services, database_url=database_url, token=TENANT_TOKEN) as system:
        yield system
