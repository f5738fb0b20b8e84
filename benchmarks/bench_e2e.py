"""End-to-end benchmark (`make bench`): one import through gateway, fetcher, broker and writer, measured
against the legacy algorithm and the COPY floor on the same rows, in the same run.

    .venv/bin/python benchmarks/bench_e2e.py [--appointments 100000] [--large-appointments 1000000]
                                             [--resync-runs 20] [--page-size 1000] [--max-in-flight 64]

What it does (every process is real and listens on 127.0.0.1 only):
  1. starts the embedded stack (`apptsync.cli.devstack.DevStack`: PostgreSQL, Tansu, simulator,
     writer, fetcher, gateway) with one simulated Acuity account of `--appointments` appointments, and
     imports all of them (one job, `--page-size` records per provider page, `--max-in-flight` pages
     without a result); wall time from StartImport to SUCCEEDED on WatchJob; peak RSS of each service
     (VmRSS of /proc/PID/status sampled every 50 ms during the job) and the CPU seconds each process
     used (where the time goes);
  2. `--resync-runs` early-stopping re-syncs of the now up-to-date tenant (NO_NEW_RECORDS): p50/p95
     of StartImport -> SUCCEEDED;
  3. the legacy algorithm (one connection, autocommit, per row UPDATE then INSERT when nothing was
     updated) and the COPY floor (one COPY into a logged table with the unique index), on the rows
     the import stored, in the same PostgreSQL;
  4. a second stack whose account holds `--large-appointments` appointments (0 skips it): one import,
     peak RSS per service, compared with step 1 (memory must not grow with job size).
The fetcher's provider rate budget is lifted (`--provider-requests-per-second`, injected by starting the
fetcher through tests/hooked_services.py; production settings have no such knob): the simulator is
ours, and Acuity's 10 requests/s would measure Acuity's limit, not apptsync.

Every import is checked (state SUCCEEDED, inserted == appointments == rows in PostgreSQL, exact
counts); a wrong result exits 1 (a benchmark of a broken pipeline measures nothing). Nothing about
time is asserted. Prints a table, writes it to `--output`; the last line is one JSON object with every
figure in base units (seconds, bytes, appointments), also written to `bench-results/e2e.json` (the README's
figures table is rendered from it: `make bench-report`): `e2e_appointments_per_second` (the main import),
`resync_p50_seconds`, `postgres_fsync` ("on"/"off", as the server reported it), `e2e_vs_copy_floor_ratio`
(against the durable COPY floor measured in the same run and PostgreSQL),
`cpu_microseconds_per_appointment` (CPU of every process of the stack, PostgreSQL's backends included,
per imported appointment), `peak_rss_bytes` (the largest peak of gateway, fetcher and writer over both
imports), `e2e_vs_legacy_ratio`, and per service and job `*_peak_rss_bytes` / `*_cpu_seconds`.

The simulator's appointments are read once through its admin API before each import: that checks the
result against the provider's own data set and makes the simulator keep every appointment's JSON, so
the import measures apptsync, not the simulator's JSON encoding (a real provider renders on its CPUs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx

from apptsync.cli.devstack import DevStack, durability_settings
from apptsync.shared.counts import counts_add_up
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2, imports_pb2_grpc

# The legacy algorithm and the COPY floor are bench_writer's (one definition for both benchmarks).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_writer import COPY_COLUMNS, LEGACY_INSERT, LEGACY_UPDATE, jsonb_binary, jsonb_text
from benchmarks.results import write_result
from tests.hooked_services import LIFTED_REQUESTS_PER_SECOND, hooked_command

TENANT_ID = str(uuid.UUID("5b0c4a2e-7d1f-4e3a-9c8b-6a5f4e3d2c1b"))
CONNECTION_ID = "bench-e2e"
ACUITY_USER_ID = "1001"
ACUITY_API_KEY = "demo-acuity-key"
SERVICES = ("gateway", "fetcher", "writer")
TERMINAL = {imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED}
RSS_SAMPLE_SECONDS = 0.05
# The simulator spreads appointments over anchor (today) +-N days; a window this much wider holds all.
WINDOW_MARGIN_DAYS = 5
MiB = 1024 * 1024


# --------------------------------------------------------------------------- /proc


def proc_status_bytes(pid: int, field_name: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM) in bytes; 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """utime + stime of `pid` (and of its live direct children: PostgreSQL's backends)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def own(one: int) -> float:
        try:
            with open(f"/proc/{one}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / ticks

    total = own(pid)
    if with_children:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _parent_of(int(entry)) == pid:
                total += own(int(entry))
    return total


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class ProcessWatch:
    """Peak VmRSS (sampled) and CPU seconds of named processes over one measured interval."""

    pids: dict[str, int]
    with_children: frozenset[str] = frozenset()
    peak_rss_bytes: dict[str, int] = field(default_factory=dict)
    cpu_start: dict[str, float] = field(default_factory=dict)
    cpu_used_seconds: dict[str, float] = field(default_factory=dict)

    def _cpu(self, name: str) -> float:
        return cpu_seconds(self.pids[name], with_children=name in self.with_children)

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        self.cpu_start = {name: self._cpu(name) for name in self.pids}
        self.peak_rss_bytes = {name: proc_status_bytes(pid, "VmRSS") for name, pid in self.pids.items()}
        sampler = asyncio.ensure_future(self._sample())
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            self._sample_once()
            self.cpu_used_seconds = {name: self._cpu(name) - self.cpu_start[name] for name in self.pids}

    def _sample_once(self) -> None:
        for name, pid in self.pids.items():
            self.peak_rss_bytes[name] = max(self.peak_rss_bytes.get(name, 0), proc_status_bytes(pid, "VmRSS"))

    async def _sample(self) -> None:
        while True:
            self._sample_once()
            await asyncio.sleep(RSS_SAMPLE_SECONDS)


# --------------------------------------------------------------------------- the stack


def stack_env(appointments: int, spread_days: int, paid_share: float) -> dict[str, str]:
    return {
        "APPTSYNC_SIMULATOR_ACUITY_SPREAD_DAYS": str(spread_days),
        "APPTSYNC_SIMULATOR_ACUITY_PAID_SHARE": str(paid_share),
        "APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": str(appointments),
        "APPTSYNC_SIMULATOR_ACCOUNTS_PER_PROVIDER": "1",
        "APPTSYNC_SIMULATOR_SEEDED_PROVIDERS": "acuity",
        "APPTSYNC_CLI_LOG_LEVEL": "WARNING",
    }


def watched_processes(stack: DevStack) -> ProcessWatch:
    pids = {name: stack.services.process(name).pid for name in (*SERVICES, "simulator")}
    pids |= {"postgres": stack.postgres.process.pid, "broker": stack.broker.process.pid}
    known = {name: pid for name, pid in pids.items() if pid is not None}
    return ProcessWatch(known, with_children=frozenset({"postgres"}))


def import_request(
    spread_days: int, page_size: int, max_in_flight: int, policy: imports_pb2.StopPolicy.ValueType
) -> imports_pb2.StartImportRequest:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    window = imports_pb2.TimeWindow(
        start=timestamp(today - timedelta(days=spread_days + WINDOW_MARGIN_DAYS)),
        end=timestamp(today + timedelta(days=spread_days + WINDOW_MARGIN_DAYS)),
    )
    options = imports_pb2.ImportOptions(page_size=page_size, max_in_flight_pages=max_in_flight, stop_policy=policy)
    return imports_pb2.StartImportRequest(
        tenant_id=TENANT_ID, source=imports_pb2.SOURCE_ACUITY, connection_id=CONNECTION_ID, window=window,
        options=options,
    )  # fmt: skip


async def put_connection(stub: imports_pb2_grpc.ImportServiceAsyncStub, simulator_url: str) -> None:
    await stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=TENANT_ID, connection_id=CONNECTION_ID, source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{simulator_url}/acuity/api/v1",
            credentials={"user_id": ACUITY_USER_ID, "api_key": ACUITY_API_KEY},
        ),
        timeout=30,
    )  # fmt: skip


async def timed_import(
    stub: imports_pb2_grpc.ImportServiceAsyncStub, request: imports_pb2.StartImportRequest, timeout_seconds: float
) -> tuple[float, imports_pb2.Job]:
    """Seconds from sending StartImport to the terminal snapshot on WatchJob, and that snapshot."""
    started = time.perf_counter()
    job = (await stub.StartImport(request, timeout=30)).job
    watch = imports_pb2.WatchJobRequest(tenant_id=TENANT_ID, job_id=job.job_id)
    async for snapshot in stub.WatchJob(watch, timeout=timeout_seconds):
        job = snapshot
        if job.state in TERMINAL:
            break
    return time.perf_counter() - started, job


@dataclass
class ImportRun:
    appointments: int
    seconds: float
    job: imports_pb2.Job
    rows_in_database: int
    peak_rss_bytes: dict[str, int]
    cpu_seconds: dict[str, float]
    problems: list[str]

    @property
    def appointments_per_second(self) -> float:
        return self.appointments / self.seconds


def check_import(job: imports_pb2.Job, appointments: int, rows: int, distinct: int) -> list[str]:
    """What is wrong with a full first import of `appointments` (empty when nothing is)."""
    c = job.counts
    problems = []
    if job.state != imports_pb2.JOB_STATE_SUCCEEDED:
        problems.append(f"job ended {imports_pb2.JobState.Name(job.state)}: {job.error or job.stop_reason}")
    if not counts_add_up(c):
        problems.append(f"counts do not add up: {c}")
    if c.pages_written != c.pages_fetched:
        problems.append(f"pages_written {c.pages_written} != pages_fetched {c.pages_fetched}")
    if not c.inserted == rows == distinct == appointments:
        problems.append(f"inserted {c.inserted}, rows {rows}, distinct ids {distinct}, expected {appointments}")
    return problems


async def connect_as_tenant(database_url: str) -> asyncpg.Connection:
    """A connection that row-level security lets see the benchmark tenant's rows (session-wide)."""
    connection = await asyncpg.connect(database_url)
    await connection.execute("SELECT set_config('app.tenant_id', $1, false)", TENANT_ID)
    return connection


async def tenant_rows(database_url: str) -> tuple[int, int]:
    connection = await connect_as_tenant(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS rows, count(DISTINCT external_id) AS ids FROM appointments WHERE tenant_id = $1",
            uuid.UUID(TENANT_ID),
        )
        assert row is not None
        return int(row["rows"]), int(row["ids"])
    finally:
        await connection.close()


async def measured_import(
    stack: DevStack, stub: imports_pb2_grpc.ImportServiceAsyncStub, request: imports_pb2.StartImportRequest,
    appointments: int, timeout_seconds: float,
) -> ImportRun:  # fmt: skip
    watch = watched_processes(stack)
    async with watch.watching():
        seconds, job = await timed_import(stub, request, timeout_seconds)
    rows, distinct = await tenant_rows(stack.postgres.database_url)
    return ImportRun(
        appointments=appointments, seconds=seconds, job=job, rows_in_database=rows,
        peak_rss_bytes=watch.peak_rss_bytes, cpu_seconds=watch.cpu_used_seconds,
        problems=check_import(job, appointments, rows, distinct),
    )  # fmt: skip


async def simulator_ids(simulator_url: str, *, keep: bool) -> tuple[int, set[str]]:
    """The simulator's whole data set of the account (`GET /_admin/acuity/accounts/ID/appointments`):
    how many appointments, and their ids when `keep`. Reading it also makes the simulator keep every
    appointment's rendering, so the import measures apptsync, not the simulator's JSON encoding (a real
    provider does not render on our CPUs)."""
    url = f"{simulator_url}/_admin/acuity/accounts/{ACUITY_USER_ID}/appointments?excludeForms=true"
    async with httpx.AsyncClient(timeout=600) as client:
        if keep:
            records = (await client.get(url)).raise_for_status().json()
            return len(records), {str(record["id"]) for record in records}
        accounts = (await client.get(f"{simulator_url}/_admin/acuity/accounts")).raise_for_status().json()
        async with client.stream("GET", url) as response:
            async for _chunk in response.aiter_raw():
                pass  # rendered and sent is all that is wanted here
        count = next(a["appointments"] for a in accounts if str(a["user_id"]) == ACUITY_USER_ID)
        return int(count), set()


async def stored_ids(database_url: str) -> set[str]:
    connection = await connect_as_tenant(database_url)
    try:
        records = await connection.fetch(
            "SELECT external_id FROM appointments WHERE tenant_id = $1", uuid.UUID(TENANT_ID)
        )
        return {record["external_id"] for record in records}
    finally:
        await connection.close()


# --------------------------------------------------------------------------- legacy and floor


@dataclass
class Baseline:
    name: str
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


async def stored_rows(owner: asyncpg.Connection) -> list[tuple[Any, ...]]:
    """The tenant's rows as the import stored them, in COPY_COLUMNS order (raw as JSON text)."""
    records = await owner.fetch(
        f"SELECT {', '.join(COPY_COLUMNS)} FROM appointments WHERE tenant_id = $1 ORDER BY external_id",
        uuid.UUID(TENANT_ID),
    )
    return [tuple(record) for record in records]


async def copy_floor(owner: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> Baseline:
    """One COPY of every row into a logged table with the unique index: what no upsert can beat."""
    await owner.execute("DROP TABLE IF EXISTS bench_e2e_copy_floor")
    await owner.execute("CREATE TABLE bench_e2e_copy_floor (LIKE appointments INCLUDING DEFAULTS)")
    await owner.execute("ALTER TABLE bench_e2e_copy_floor DROP COLUMN appointment_id, DROP COLUMN contact_id")
    await owner.execute("CREATE UNIQUE INDEX ON bench_e2e_copy_floor (tenant_id, external_source, external_id)")
    # COPY is binary: jsonb's binary form is a version byte (1) and the JSON text.
    await owner.set_type_codec("jsonb", encoder=jsonb_binary, decoder=jsonb_text, schema="pg_catalog", format="binary")
    started = time.perf_counter()
    await owner.copy_records_to_table("bench_e2e_copy_floor", records=rows, columns=COPY_COLUMNS)
    return Baseline("COPY floor", len(rows), time.perf_counter() - started)


async def legacy(owner_url: str, rows: Sequence[tuple[Any, ...]]) -> Baseline:
    """The replaced algorithm: one connection, autocommit, per row UPDATE, then INSERT if none was updated."""
    connection = await asyncpg.connect(owner_url)
    try:
        await connection.execute("DROP TABLE IF EXISTS bench_legacy")
        await connection.execute("CREATE TABLE bench_legacy (LIKE appointments INCLUDING DEFAULTS)")
        await connection.execute("ALTER TABLE bench_legacy DROP COLUMN appointment_id, DROP COLUMN contact_id")
        await connection.execute("CREATE UNIQUE INDEX ON bench_legacy (tenant_id, external_source, external_id)")
        started = time.perf_counter()
        for values in rows:
            if await connection.execute(LEGACY_UPDATE, *values) == "UPDATE 0":
                await connection.execute(LEGACY_INSERT, *values)
        return Baseline("legacy", len(rows), time.perf_counter() - started)
    finally:
        await connection.close()


# --------------------------------------------------------------------------- phases


@dataclass
class MainPhase:
    run: ImportRun
    resync_seconds: list[float]
    resync_problems: list[str]
    legacy: Baseline
    floor: Baseline
    durability: dict[str, str]  # as the server reported it (SHOW)


async def main_phase(args: argparse.Namespace, state_dir: Path) -> MainPhase:
    env = stack_env(args.appointments, args.spread_days, args.paid_share)
    async with DevStack(
        state_dir, gateway_port=None, extra_env=env,
        command=hooked_command(provider_requests_per_second=args.provider_requests_per_second),
        ready_timeout_seconds=600,
        fast_unsafe_postgres=args.fsync == "off",
    ) as stack:
        count, expected_ids = await simulator_ids(stack.addresses.simulator_url, keep=True)
        async with grpc.aio.insecure_channel(stack.addresses.gateway_address) as channel:
            stub = imports_pb2_grpc.ImportServiceStub(channel)
            await put_connection(stub, stack.addresses.simulator_url)
            full = import_request(args.spread_days, args.page_size, args.max_in_flight, imports_pb2.STOP_POLICY_NEVER)
            run = await measured_import(stack, stub, full, count, args.timeout_seconds)
            stored = await stored_ids(stack.postgres.database_url)
            if stored != expected_ids:
                run.problems.append(
                    f"{len(expected_ids - stored)} appointments of the simulator missing, "
                    f"{len(stored - expected_ids)} rows the simulator does not have"
                )
            print(
                f"import of {count:,}: {run.seconds:.2f} s, {run.appointments_per_second:,.0f}/s",
                *run.problems,
                flush=True,
            )
            resync = import_request(
                args.spread_days, args.resync_page_size, args.max_in_flight, imports_pb2.STOP_POLICY_NO_NEW_RECORDS
            )
            latencies, resync_problems = [], []
            for _ in range(args.resync_runs):
                seconds, job = await timed_import(stub, resync, 120)
                latencies.append(seconds)
                if job.state != imports_pb2.JOB_STATE_SUCCEEDED or job.counts.inserted or job.counts.updated:
                    resync_problems.append(f"re-sync {job.job_id}: {imports_pb2.JobState.Name(job.state)} {job.counts}")
        owner = await connect_as_tenant(stack.postgres.database_url)
        try:
            durability = await durability_settings(owner)
            rows = await stored_rows(owner)
            floor = await copy_floor(owner, rows)
        finally:
            await owner.close()
        print(f"COPY floor: {floor.rows_per_second:,.0f} rows/s; legacy algorithm on {len(rows):,} rows...", flush=True)
        old = await legacy(stack.postgres.database_url, rows[: args.legacy_rows or None])
    return MainPhase(run, latencies, resync_problems, old, floor, durability)


async def large_phase(args: argparse.Namespace, state_dir: Path) -> ImportRun:
    env = stack_env(args.large_appointments, args.large_spread_days, args.paid_share)
    async with DevStack(
        state_dir, gateway_port=None, extra_env=env,
        command=hooked_command(provider_requests_per_second=args.provider_requests_per_second),
        ready_timeout_seconds=900,
        fast_unsafe_postgres=args.fsync == "off",
    ) as stack:
        count, _ = await simulator_ids(stack.addresses.simulator_url, keep=False)
        async with grpc.aio.insecure_channel(stack.addresses.gateway_address) as channel:
            stub = imports_pb2_grpc.ImportServiceStub(channel)
            await put_connection(stub, stack.addresses.simulator_url)
            full = import_request(
                args.large_spread_days, args.page_size, args.max_in_flight, imports_pb2.STOP_POLICY_NEVER
            )
            run = await measured_import(stack, stub, full, count, args.timeout_seconds * 10)
            print(
                f"import of {count:,}: {run.seconds:.2f} s, {run.appointments_per_second:,.0f}/s",
                *run.problems,
                flush=True,
            )
            return run


# --------------------------------------------------------------------------- report


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def report_lines(
    args: argparse.Namespace, main: MainPhase, large: ImportRun | None
) -> tuple[list[str], dict[str, Any]]:
    run = main.run
    e2e = run.appointments_per_second
    lines = [
        f"apptsync end-to-end benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {platform.machine()} {platform.system()} {platform.release()}, "
        f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}",
        f"import: Acuity simulator -> fetcher -> Tansu -> writer -> PostgreSQL (embedded stack, 127.0.0.1), "
        f"pages of {args.page_size}, {args.max_in_flight} pages in flight, provider budget lifted to "
        f"{args.provider_requests_per_second:g} requests/s; {args.paid_share:.0%} of the appointments paid "
        "(each asks Acuity for its payment list)",
        f"PostgreSQL as it reported itself: {', '.join(f'{name}={value}' for name, value in main.durability.items())}",
        "",
        f"{'approach':<34}{'rows':>11}{'seconds':>10}{'rows/s':>11}{'vs legacy':>11}{'vs COPY floor':>15}",
    ]
    for name, rows, seconds in (
        ("apptsync end to end", run.appointments, run.seconds),
        ("legacy (per row UPDATE/INSERT)", main.legacy.rows, main.legacy.seconds),
        ("COPY floor (one COPY, unique idx)", main.floor.rows, main.floor.seconds),
    ):
        rate = rows / seconds
        lines.append(
            f"{name:<34}{rows:>11,}{seconds:>10.2f}{rate:>11,.0f}"
            f"{rate / main.legacy.rows_per_second:>10.2f}x{rate / main.floor.rows_per_second:>14.2f}x"
        )
    if large is not None:
        lines.append(
            f"{'apptsync end to end, large job':<34}{large.appointments:>11,}{large.seconds:>10.2f}"
            f"{large.appointments_per_second:>11,.0f}"
            f"{large.appointments_per_second / main.legacy.rows_per_second:>10.2f}x"
            f"{large.appointments_per_second / main.floor.rows_per_second:>14.2f}x"
        )
    p50, p95 = statistics.median(main.resync_seconds), percentile(main.resync_seconds, 0.95)
    lines += [
        "",
        f"early-stop re-sync (NO_NEW_RECORDS, up-to-date tenant of {run.appointments:,}), "
        f"{len(main.resync_seconds)} runs: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {max(main.resync_seconds) * 1000:.0f} ms",
        "",
        f"{'peak RSS MiB':<14}{f'{run.appointments:,} job':>14}"
        + (f"{f'{large.appointments:,} job':>16}{'growth':>9}" if large else ""),
    ]
    for name in SERVICES:
        line = f"{name:<14}{run.peak_rss_bytes[name] / MiB:>14.1f}"
        if large is not None:
            line += (
                f"{large.peak_rss_bytes[name] / MiB:>16.1f}"
                f"{large.peak_rss_bytes[name] / run.peak_rss_bytes[name]:>8.2f}x"
            )
        lines.append(line)
    lines += [
        "",
        f"{'CPU seconds':<14}{f'{run.appointments:,} job':>14}"
        + (f"{f'{large.appointments:,} job':>16}" if large else ""),
    ]
    for name in run.cpu_seconds:
        line = f"{name:<14}{run.cpu_seconds[name]:>14.1f}"
        if large is not None:
            line += f"{large.cpu_seconds.get(name, 0.0):>16.1f}"
        lines.append(line)
    lines.append(
        f"{'all processes':<14}{sum(run.cpu_seconds.values()):>14.1f}  "
        f"({sum(run.cpu_seconds.values()) * 1e6 / run.appointments:.0f} CPU-us per appointment)"
    )
    c = run.job.counts
    lines += [
        "",
        f"job {run.job.job_id}: {c.pages_fetched} pages, {c.records_fetched:,} records, "
        f"{c.inserted:,} inserted, {c.payments_fetched:,} payment entries; rows in PostgreSQL "
        f"{run.rows_in_database:,}",
    ]
    figures: dict[str, Any] = {
        "appointments": run.appointments,
        "page_size": args.page_size,
        "max_in_flight_pages": args.max_in_flight,
        "provider_requests_per_second": args.provider_requests_per_second,
        "acuity_paid_share": args.paid_share,
        "payments_fetched": c.payments_fetched,
        **{f"postgres_{name}": value for name, value in main.durability.items()},
        "e2e_seconds": round(run.seconds, 4),
        "e2e_appointments_per_second": round(e2e, 1),
        "e2e_pages": c.pages_fetched,
        "resync_runs": len(main.resync_seconds),
        "resync_p50_seconds": round(p50, 4),
        "resync_p95_seconds": round(p95, 4),
        "resync_max_seconds": round(max(main.resync_seconds), 4),
        "legacy_rows": main.legacy.rows,
        "legacy_seconds": round(main.legacy.seconds, 4),
        "legacy_rows_per_second": round(main.legacy.rows_per_second, 1),
        "copy_floor_rows": main.floor.rows,
        "copy_floor_seconds": round(main.floor.seconds, 4),
        "copy_floor_rows_per_second": round(main.floor.rows_per_second, 1),
        "e2e_vs_legacy_ratio": round(e2e / main.legacy.rows_per_second, 3),
        "e2e_vs_copy_floor_ratio": round(e2e / main.floor.rows_per_second, 4),
        **{f"{name}_peak_rss_bytes": run.peak_rss_bytes[name] for name in SERVICES},
        **{f"{name}_cpu_seconds": round(seconds, 2) for name, seconds in run.cpu_seconds.items()},
        # Every watched process (services, simulator, broker, PostgreSQL with its backends) summed.
        "cpu_seconds": round(sum(run.cpu_seconds.values()), 2),
        "cpu_microseconds_per_appointment": round(sum(run.cpu_seconds.values()) * 1e6 / run.appointments, 1),
        "peak_rss_bytes": max(
            (r.peak_rss_bytes[name] for r in (run, *([large] if large else [])) for name in SERVICES), default=0
        ),
        "main_peak_rss_bytes": max(run.peak_rss_bytes[name] for name in SERVICES),
    }
    if large is not None:
        figures |= {
            "large_appointments": large.appointments,
            "large_seconds": round(large.seconds, 4),
            "large_appointments_per_second": round(large.appointments_per_second, 1),
            **{f"large_{name}_peak_rss_bytes": large.peak_rss_bytes[name] for name in SERVICES},
            **{f"large_{name}_cpu_seconds": round(s, 2) for name, s in large.cpu_seconds.items()},
            "large_peak_rss_bytes": max(large.peak_rss_bytes[name] for name in SERVICES),
            "large_vs_main_peak_rss_ratio": round(
                max(large.peak_rss_bytes[n] for n in SERVICES) / max(run.peak_rss_bytes[n] for n in SERVICES), 3
            ),
        }
    problems = [*run.problems, *main.resync_problems, *(large.problems if large else [])]
    if problems:
        lines += ["", "WRONG RESULTS (the figures above measure a broken pipeline):", *problems]
    figures["problems"] = len(problems)
    return lines, figures


async def benchmark(args: argparse.Namespace) -> int:
    state_root = Path(tempfile.mkdtemp(prefix="apptsync-bench-e2e-"))
    try:
        main = await main_phase(args, state_root / "main")
        large = await large_phase(args, state_root / "large") if args.large_appointments else None
    finally:
        shutil.rmtree(state_root, ignore_errors=True)
    lines, figures = report_lines(args, main, large)
    lines.append(json.dumps(figures, sort_keys=True))
    write_result("e2e", figures)
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print("\n" + text, end="")
    return 1 if figures["problems"] else 0


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appointments", type=int, default=100_000)
    parser.add_argument("--large-appointments", type=int, default=1_000_000, help="0: skip the large job")
    parser.add_argument("--resync-runs", type=int, default=20)
    parser.add_argument("--spread-days", type=int, default=180, help="appointments start within today +-N days")
    parser.add_argument(
        "--large-spread-days",
        type=int,
        default=540,
        help="the same for the large job: 1,000,000 over +-540 days fill pages as 100,000 over +-180 do",
    )
    parser.add_argument("--page-size", type=int, default=1000, help="records per provider page (gateway max 1000)")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=16,
        help="pages without a result (gateway max 64; the writer buffers up to this many pages when it lags)",
    )
    parser.add_argument("--resync-page-size", type=int, default=100, help="page size of the re-syncs (gateway default)")
    parser.add_argument("--provider-requests-per-second", type=float, default=LIFTED_REQUESTS_PER_SECOND)
    parser.add_argument(
        "--paid-share", type=float, default=0.05,
        help="share of the appointments paid at booking, each one payment request (the legacy tenant's: ~0.05; "
             "the simulator's default account: 0.6)",
    )
    parser.add_argument("--legacy-rows", type=int, default=0, help="rows the legacy algorithm writes; 0: all")
    parser.add_argument("--timeout-seconds", type=float, default=600.0, help="per import (x10 for the large one)")
    parser.add_argument("--output", type=Path, default=Path("bench-results/e2e.txt"))
    parser.add_argument(
        "--fsync", choices=["on", "off"], default="on",
        help="on: PostgreSQL durable (fsync, synchronous_commit, full_page_writes on), as production runs; "
             "off: all three off (fast, unsafe)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(benchmark(parse_arguments())))
