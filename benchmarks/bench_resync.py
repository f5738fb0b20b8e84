"""Re-sync latency: StartImport -> SUCCEEDED for a tenant that is already up to date.

Starts the embedded stack (PostgreSQL, Tansu, simulator, gateway, fetcher, writer as real processes on
127.0.0.1), imports one tenant fully, then runs `--runs` early-stopping re-syncs (NO_NEW_RECORDS: the
first page has nothing new, so the job stops after page 1) and reports p50 / p95 of the wall time from
sending StartImport to receiving the SUCCEEDED snapshot on WatchJob. Prints a table; the last line is
one JSON object with the figures in seconds and the PostgreSQL durability settings the server reported
(`postgres_fsync` ...). Asserts nothing about time.

    .venv/bin/python benchmarks/bench_resync.py [--runs 20] [--appointments 2000] [--fsync on|off]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc

from apptsync.cli.devstack import DevStack, durability_settings
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2, imports_pb2_grpc

# The result file is benchmarks/results.py's (run as a script, only benchmarks/ itself is on the path).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.results import write_result

TENANT_ID = str(uuid.UUID("0c4f3e2a-1b5d-4c6e-8f70-9a1b2c3d4e5f"))
TERMINAL = {imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED}


async def timed_import(
    stub: imports_pb2_grpc.ImportServiceAsyncStub, request: imports_pb2.StartImportRequest
) -> tuple[float, imports_pb2.Job]:
    started = time.perf_counter()
    response = await stub.StartImport(request, timeout=30)
    job = response.job
    async for snapshot in stub.WatchJob(
        imports_pb2.WatchJobRequest(tenant_id=TENANT_ID, job_id=job.job_id), timeout=300
    ):
        job = snapshot
        if job.state in TERMINAL:
            break
    return time.perf_counter() - started, job


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def main(runs: int, appointments: int, *, fast_unsafe_postgres: bool) -> dict[str, float | int | str]:
    state_dir = Path(tempfile.mkdtemp(prefix="apptsync-bench-resync-"))
    env = {"APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": str(appointments)}
    try:
        async with (
            DevStack(state_dir, gateway_port=None, extra_env=env, fast_unsafe_postgres=fast_unsafe_postgres) as stack,
            grpc.aio.insecure_channel(stack.addresses.gateway_address) as channel,
        ):
            owner = await asyncpg.connect(stack.postgres.database_url)
            try:
                durability = await durability_settings(owner)
            finally:
                await owner.close()
            stub = imports_pb2_grpc.ImportServiceStub(channel)
            await stub.PutConnection(
                imports_pb2.PutConnectionRequest(
                    tenant_id=TENANT_ID,
                    connection_id="bench",
                    source=imports_pb2.SOURCE_ACUITY,
                    base_url=f"{stack.addresses.simulator_url}/acuity/api/v1",
                    credentials={"user_id": "1001", "api_key": "demo-acuity-key"},
                ),
                timeout=30,
            )
            now = datetime.now(UTC)
            window = imports_pb2.TimeWindow(
                start=timestamp(now - timedelta(days=180)), end=timestamp(now + timedelta(days=180))
            )
            request = imports_pb2.StartImportRequest(
                tenant_id=TENANT_ID, source=imports_pb2.SOURCE_ACUITY, connection_id="bench", window=window
            )
            full_seconds, full = await timed_import(stub, request)
            if full.state != imports_pb2.JOB_STATE_SUCCEEDED:
                raise SystemExit(f"initial import failed: {full.error}")
            latencies = []
            for _ in range(runs):
                seconds, job = await timed_import(stub, request)
                if job.state != imports_pb2.JOB_STATE_SUCCEEDED or job.counts.inserted:
                    raise SystemExit(f"re-sync did not stop early cleanly: {job}")
                latencies.append(seconds)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return {
        "machine": f"{platform.machine()} {platform.system()}, {len(__import__('os').sched_getaffinity(0))} cores",
        **{f"postgres_{name}": value for name, value in durability.items()},
        "initial_import_records": full.counts.records_fetched,
        "initial_import_seconds": round(full_seconds, 4),
        "resync_runs": runs,
        "resync_p50_seconds": round(statistics.median(latencies), 4),
        "resync_p95_seconds": round(percentile(latencies, 0.95), 4),
        "resync_min_seconds": round(min(latencies), 4),
        "resync_max_seconds": round(max(latencies), 4),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--appointments", type=int, default=2000)
    parser.add_argument(
        "--fsync", choices=["on", "off"], default="on",
        help="on: PostgreSQL durable (fsync, synchronous_commit, full_page_writes on), as production runs; "
             "off: all three off (fast, unsafe)",
    )
    arguments = parser.parse_args()
    figures = asyncio.run(main(arguments.runs, arguments.appointments, fast_unsafe_postgres=arguments.fsync == "off"))
    for name, value in figures.items():
        print(f"{name:28} {value}")
    print(json.dumps(figures))
    write_result("resync", figures)
