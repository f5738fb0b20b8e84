"""Mirror fidelity in CI: a few seeds of the shipped sync schedule through the real services (gateway,
fetcher, writer, simulator as processes against the testcontainers PostgreSQL and broker). After
every full sync the tenant's rows equal the simulator's truth; every frequent sync catches (>= 99%)
the near-term new, rescheduled and canceled bookings of the batch before it. A failure names the
seed, the first differing row and the command that replays it (see tests/fidelity/harness.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.containers.fixtures import BrokerContainer
from tests.e2e.system import service_set, system_env
from tests.fidelity.harness import (
    FidelityConfig,
    FidelitySystem,
    cli_environment,
    replay_command,
    run_seed,
    simulator_env,
    table,
    utc_now,
    write_tokens,
)
from tests.fidelity.schedule import shipped_schedule

pytestmark = pytest.mark.fidelity

CI_SEEDS = (101, 202, 303)
APPOINTMENTS_PER_ACCOUNT = 60
MIN_NEAR_TERM_CAUGHT_SHARE = 0.99


@pytest.mark.parametrize("seed", CI_SEEDS)
async def test_the_mirror_equals_the_provider_through_the_shipped_schedule(
    seed: int, database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> None:
    token_file, gateway_tokens = write_tokens(tmp_path)
    env = system_env(
        tmp_path,
        APPTSYNC_GATEWAY_AUTH_TOKENS_FILE=str(gateway_tokens),
        **simulator_env(seed, APPOINTMENTS_PER_ACCOUNT),
    )
    services = service_set(
        database_url=database_url,
        service_database_url=service_database_url,
        bootstrap_servers=broker.bootstrap_servers,
        tmp_path=tmp_path,
        env=env,
    )
    async with services:
        system = FidelitySystem(
            gateway_address=services.addresses.gateway_address,
            simulator_url=services.addresses.simulator_url,
            owner_database_url=database_url,
            token_file=token_file,
            cli_env=cli_environment(os.environ),
        )
        report = await run_seed(
            system, shipped_schedule(), FidelityConfig(seed=seed, rounds=2, frequent_per_round=3), clock=utc_now
        )
    print("\n".join(table([report])))
    problems = f"seed {seed} (replay: {replay_command(seed)}):\n" + "\n".join(report.problems())
    divergences, changes, caught = report.divergences, report.near_term_changes, report.near_term_caught
    assert divergences == 0, problems
    assert changes > 0
    assert caught >= MIN_NEAR_TERM_CAUGHT_SHARE * changes, problems
    assert not report.failed_jobs, problems
