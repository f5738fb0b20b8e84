"""A writer killed (SIGKILL) mid-import and started again: pages flow again within seconds, inside
the fetcher's result timeout, and the import lands exactly.

The restarted writer must take its partitions back from the group although the killed member never
left it: with production's group settings (static membership, the default session) that is what
this test runs, not the 1 s sessions of the other tests. The timing is printed (`-s` shows it); the
only timed assertion is a generous bound.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apptsync.cli.devstack import env_var
from apptsync.shared.settings import KafkaSettings
from apptsync.v1 import imports_pb2
from tests.containers.fixtures import BrokerContainer
from tests.e2e.system import get_job
from tests.faults.fault_system import (
    RESULT_TIMEOUT_SECONDS,
    acuity_source_ids,
    assert_landed_exactly,
    fault_env,
    fault_system,
    finished_job,
)
from tests.faults.test_infrastructure_faults import import_started

pytestmark = pytest.mark.e2e
APPOINTMENTS = 6_000
POLL_SECONDS = 0.05
WRITER_INSTANCE_ID = "apptsync-writer-0"


def production_group_timing(env: dict[str, str]) -> dict[str, str]:
    """`env` with the consumer-group settings of production: the settings' default session,
    heartbeat and request timeouts (not the fast rejoin of the other tests) and a static group
    instance id, as the Kubernetes writer gets from its pod name. What a restart costs there is what
    this test measures."""
    timing = ("session_timeout_ms", "heartbeat_interval_ms", "request_timeout_ms")
    dropped = {env_var(KafkaSettings, name) for name in timing}
    production = {name: value for name, value in env.items() if name not in dropped}
    production[env_var(KafkaSettings, "writer_group_instance_id")] = WRITER_INSTANCE_ID
    return production


async def test_a_writer_killed_mid_import_consumes_again_within_seconds_of_its_restart(
    database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> None:
    async with fault_system(
        owner_database_url=database_url,
        service_database_url=service_database_url,
        bootstrap_servers=broker.bootstrap_servers,
        tmp_path=tmp_path,
        env=production_group_timing(fault_env(tmp_path, appointments=APPOINTMENTS)),
    ) as system:
        tenant_id, job_id = await import_started(system, pages_written=5)
        writer = system.services.process("writer")
        writer.kill()
        await writer.wait(timeout_seconds=10)
        loop = asyncio.get_running_loop()
        written_before = (await get_job(system, tenant_id, job_id)).counts.pages_written
        restarted_at = loop.time()
        await writer.start()  # returns once the new writer reports SERVING
        ready_after = loop.time() - restarted_at
        consuming_after = None
        for _poll in range(int(2 * RESULT_TIMEOUT_SECONDS / POLL_SECONDS)):  # bounded: 30 s of polls
            job = await get_job(system, tenant_id, job_id)
            if job.counts.pages_written > written_before:
                consuming_after = loop.time() - restarted_at
                break
            await asyncio.sleep(POLL_SECONDS)
        print(  # the measurement this test exists for; shown with -s
            f"\nwriter restart: ready after {ready_after:.2f} s, first page result after "
            f"{'never' if consuming_after is None else f'{consuming_after:.2f} s'}"
        )
        assert consuming_after is not None, "no page was written after the writer's restart"
        # Inside the fetcher's result timeout: a writer crash no longer fails the job. (About 7 s
        # with the Tansu test broker, whose coordinator pauses 3 s in each of a static member's
        # JoinGroup and SyncGroup; Apache Kafka hands a returning static member its assignment.)
        assert consuming_after < RESULT_TIMEOUT_SECONDS, consuming_after

        job = await finished_job(system, tenant_id, job_id, timeout_seconds=120)
        assert job.state == imports_pb2.JOB_STATE_SUCCEEDED, job.error
        await assert_landed_exactly(system, job, await acuity_source_ids(system))
