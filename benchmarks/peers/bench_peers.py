"""`make bench-peers`: apptsync and dlt's REST API source side by side, on the same simulator data set
and the same durable PostgreSQL, interleaved.

    .venv/bin/python benchmarks/peers/bench_peers.py [--rounds 3] [--appointments 20000]
        [--providers calendly,acuity] [--changed-fraction 0.05] [--dlt-python .venv-peers/bin/python]

One embedded stack (PostgreSQL durable: fsync, synchronous_commit, full_page_writes on; Tansu, the
simulator, gateway, fetcher, writer) holds one simulated account per provider of `--appointments`
records (Calendly: invitees). Each round, per provider, both sides run three phases on a tenant
(apptsync) and a dataset (dlt) of their own, so every round's first load is a first load:
  1. first load;
  2. an unchanged full re-run (apptsync: STOP_POLICY_NEVER, no early stop; dlt: the same pipeline
     again, which re-reads everything and merges);
  3. a re-run after `--changed-fraction` of the account changed (the simulator's seeded mutations,
     `POST /_admin/mutations`: new bookings, reschedules, cancellations, deletions, no-shows,
     payments), both sides again in full.
Which side goes first alternates by round and phase. Measured per side: wall time (apptsync:
StartImport to SUCCEEDED on WatchJob; dlt: its `pipeline.run`, interpreter start and imports
excluded), CPU seconds (apptsync: gateway, fetcher, writer, broker; dlt: its process; both sides
plus PostgreSQL, backends included; the simulator is the provider and counted on neither side),
provider requests (the simulator's counters), row writes (apptsync: inserted + updated, the rows it
wrote; dlt: the rows it normalized and loaded: a merge load writes each one to staging and
replaces it in the table) and a correctness check of both results against the simulator's truth:
the ids present (apptsync: rows not marked deleted; dlt: every row of its table) against the ids the
provider has in the window.

The simulator's rate limits are lifted for both sides (Calendly's per-user window, apptsync's
request budget): the comparison is of the two programs, not of a provider's limit. Prints a table
per provider; the last line is one JSON object with `calendly_first_load_speedup_vs_dlt`,
`calendly_full_rerun_speedup_vs_dlt`, `acuity_first_load_speedup_vs_dlt`,
`acuity_full_rerun_speedup_vs_dlt` (dlt's wall time over apptsync's, medians over the rounds), the
same for the changed re-run, CPU ratios and every median; also written to `bench-results/peers.json`.
A wrong apptsync result exits 1; dlt's divergences are reported, not fatal (they are its design: a
merge load never removes a record the provider deleted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx

from apptsync.cli.devstack import DevStack, durability_settings
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2, imports_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
from benchmarks.bench_e2e import cpu_seconds
from benchmarks.results import write_result
from tests.hooked_services import LIFTED_REQUESTS_PER_SECOND, hooked_command

REPOSITORY = Path(__file__).resolve().parent.parent.parent
DLT_PIPELINE = Path(__file__).resolve().parent / "dlt_pipeline.py"
SOURCES = {"calendly": imports_pb2.SOURCE_CALENDLY, "acuity": imports_pb2.SOURCE_ACUITY}
PAGE_SIZES = {"calendly": 100, "acuity": 1000}  # Calendly's largest `count`; Acuity: as `make bench`
ACUITY_USER_ID, ACUITY_API_KEY = "1001", "demo-acuity-key"
TERMINAL = {imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED}
APPTSYNC_PROCESSES = ("gateway", "fetcher", "writer")
PHASES = ("first_load", "full_rerun", "changed_rerun")
SPREAD_DAYS = 180  # the simulator's seeded records start within anchor +-180 days
WINDOW_MARGIN_DAYS = 5
MAX_MUTATIONS_PER_CALL = 1000


def postgres_cpu_seconds(postmaster_pid: int) -> float:
    """CPU of PostgreSQL: the postmaster, its live backends and every backend that already exited
    (the postmaster waits for them, so their time is in its cutime/cstime)."""
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{postmaster_pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    waited_children = (int(fields[13]) + int(fields[14])) / ticks
    return cpu_seconds(postmaster_pid, with_children=True) + waited_children


@dataclass
class SideRun:
    """One side's run of one phase."""

    wall_seconds: float
    cpu_seconds: float  # the side's own processes
    postgres_cpu_seconds: float
    provider_requests: int
    row_writes: int
    present: int  # ids the side holds as present after the run
    missing: int  # the provider's ids it lacks
    extra: int  # ids it holds that the provider no longer has
    detail: str = ""

    @property
    def total_cpu_seconds(self) -> float:
        return self.cpu_seconds + self.postgres_cpu_seconds


@dataclass
class Phase:
    provider: str
    round_number: int
    name: str
    expected: int
    apptsync: SideRun
    dlt: SideRun


@dataclass
class Stack:
    stack: DevStack
    stub: imports_pb2_grpc.ImportServiceAsyncStub
    admin: httpx.AsyncClient
    calendly: dict[str, Any]
    window: tuple[datetime, datetime]
    pids: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- the provider's truth


async def provider_requests(admin: httpx.AsyncClient, provider: str) -> int:
    return int((await admin.get(f"/_admin/{provider}/counters")).raise_for_status().json()["requests"])


async def truth_ids(admin: httpx.AsyncClient, provider: str, window: tuple[datetime, datetime]) -> set[str]:
    """The ids the provider has (not deleted) with a start inside the window."""
    account = ACUITY_USER_ID if provider == "acuity" else "1"
    records = (await admin.get(f"/_admin/{provider}/truth/{account}")).raise_for_status().json()
    return {
        str(r["external_id"]) for r in records
        if not r["deleted"] and window[0] <= datetime.fromisoformat(r["starts_at"]) < window[1]
    }  # fmt: skip


async def mutate(admin: httpx.AsyncClient, provider: str, count: int, seed: int) -> int:
    """`count` seeded mutations of the provider's account; how many were applied."""
    applied = 0
    for chunk in range(0, count, MAX_MUTATIONS_PER_CALL):
        body = {"seed": seed * 1000 + chunk, "count": min(MAX_MUTATIONS_PER_CALL, count - chunk),
                "providers": [provider]}  # fmt: skip
        applied += len((await admin.post("/_admin/mutations", json=body)).raise_for_status().json()["applied"])
    return applied


# --------------------------------------------------------------------------- apptsync's side


async def put_connection(bench: Stack, provider: str, tenant_id: str) -> None:
    url = bench.stack.addresses.simulator_url
    if provider == "acuity":
        request = imports_pb2.PutConnectionRequest(
            tenant_id=tenant_id, connection_id=provider, source=SOURCES[provider], base_url=f"{url}/acuity/api/v1",
            credentials={"user_id": ACUITY_USER_ID, "api_key": ACUITY_API_KEY},
        )  # fmt: skip
    else:
        oauth = ("access_token", "refresh_token", "client_id", "client_secret")
        request = imports_pb2.PutConnectionRequest(
            tenant_id=tenant_id, connection_id=provider, source=SOURCES[provider], base_url=f"{url}/calendly",
            credentials={k: str(bench.calendly[k]) for k in oauth},
            settings={"organization": str(bench.calendly["organization"])},
        )  # fmt: skip
    await bench.stub.PutConnection(request, timeout=60)


async def stored_ids(database_url: str, tenant_id: str) -> set[str]:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("SELECT set_config('app.tenant_id', $1, false)", tenant_id)
        rows = await connection.fetch(
            "SELECT external_id FROM appointments WHERE tenant_id = $1 AND deleted_at IS NULL", uuid.UUID(tenant_id)
        )
        return {row["external_id"] for row in rows}
    finally:
        await connection.close()


async def run_apptsync(bench: Stack, provider: str, tenant_id: str, expected: set[str],
                       timeout_seconds: float) -> SideRun:  # fmt: skip
    window = imports_pb2.TimeWindow(start=timestamp(bench.window[0]), end=timestamp(bench.window[1]))
    options = imports_pb2.ImportOptions(page_size=PAGE_SIZES[provider], max_in_flight_pages=16,
                                        stop_policy=imports_pb2.STOP_POLICY_NEVER)  # fmt: skip
    request = imports_pb2.StartImportRequest(tenant_id=tenant_id, source=SOURCES[provider], connection_id=provider,
                                             window=window, options=options)  # fmt: skip
    requests_before = await provider_requests(bench.admin, provider)
    cpu_before = sum(cpu_seconds(bench.pids[name]) for name in (*APPTSYNC_PROCESSES, "broker"))
    postgres_before = postgres_cpu_seconds(bench.pids["postgres"])
    started = time.perf_counter()
    job = (await bench.stub.StartImport(request, timeout=30)).job
    async for snapshot in bench.stub.WatchJob(
        imports_pb2.WatchJobRequest(tenant_id=tenant_id, job_id=job.job_id), timeout=timeout_seconds
    ):
        job = snapshot
        if job.state in TERMINAL:
            break
    wall = time.perf_counter() - started
    cpu = sum(cpu_seconds(bench.pids[name]) for name in (*APPTSYNC_PROCESSES, "broker")) - cpu_before
    postgres = postgres_cpu_seconds(bench.pids["postgres"]) - postgres_before
    requests = await provider_requests(bench.admin, provider) - requests_before
    present = await stored_ids(bench.stack.postgres.database_url, tenant_id)
    detail = "" if job.state == imports_pb2.JOB_STATE_SUCCEEDED else f"job {imports_pb2.JobState.Name(job.state)}"
    return SideRun(
        wall_seconds=wall, cpu_seconds=cpu, postgres_cpu_seconds=postgres, provider_requests=requests,
        row_writes=job.counts.inserted + job.counts.updated, present=len(present),
        missing=len(expected - present), extra=len(present - expected), detail=detail or job.error,
    )  # fmt: skip


# --------------------------------------------------------------------------- dlt's side


async def dlt_ids(database_url: str, provider: str, dataset: str) -> set[str]:
    connection = await asyncpg.connect(database_url)
    try:
        if provider == "acuity":
            rows = await connection.fetch(f'SELECT id::text AS id FROM "{dataset}".appointments')
            return {row["id"] for row in rows}
        rows = await connection.fetch(f'SELECT uri FROM "{dataset}".invitees')
        return {str(row["uri"]).rsplit("/", 1)[-1] for row in rows}
    finally:
        await connection.close()


def dlt_database_url(database_url: str) -> str:
    """The embedded PostgreSQL trusts loopback connections; dlt insists on a password in its
    credentials, which trust authentication never asks for."""
    scheme, rest = database_url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:unused@{host}" if ":" not in user else database_url


async def run_dlt(bench: Stack, args: argparse.Namespace, provider: str, dataset: str, pipelines_dir: Path,
                  expected: set[str]) -> SideRun:  # fmt: skip
    url = bench.stack.addresses.simulator_url
    argv = [str(args.dlt_python), str(DLT_PIPELINE), "--provider", provider,
            "--window-start", bench.window[0].isoformat().replace("+00:00", "Z"),
            "--window-end", bench.window[1].isoformat().replace("+00:00", "Z"),
            "--database-url", dlt_database_url(bench.stack.postgres.database_url), "--dataset", dataset,
            "--pipelines-dir", str(pipelines_dir)]  # fmt: skip
    if provider == "acuity":
        argv += ["--base-url", f"{url}/acuity/api/v1", "--user-id", ACUITY_USER_ID, "--api-key", ACUITY_API_KEY]
    else:
        argv += ["--base-url", f"{url}/calendly", "--access-token", str(bench.calendly["access_token"]),
                 "--organization", str(bench.calendly["organization"])]  # fmt: skip
    requests_before = await provider_requests(bench.admin, provider)
    postgres_before = postgres_cpu_seconds(bench.pids["postgres"])
    env = {**os.environ, "RUNTIME__LOG_LEVEL": "WARNING", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=pipelines_dir
    )
    out, err = await asyncio.wait_for(process.communicate(), args.timeout_seconds)
    postgres = postgres_cpu_seconds(bench.pids["postgres"]) - postgres_before
    requests = await provider_requests(bench.admin, provider) - requests_before
    if process.returncode != 0:
        raise SystemExit(f"dlt failed ({process.returncode}):\n{err.decode(errors='replace')[-4000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    present = await dlt_ids(bench.stack.postgres.database_url, provider, dataset)
    return SideRun(
        wall_seconds=result["wall_seconds"], cpu_seconds=result["cpu_seconds"], postgres_cpu_seconds=postgres,
        provider_requests=requests, row_writes=sum(result["row_counts"].values()), present=len(present),
        missing=len(expected - present), extra=len(present - expected),
    )  # fmt: skip


# --------------------------------------------------------------------------- the rounds


async def provider_round(bench: Stack, args: argparse.Namespace, provider: str, round_number: int,
                         scratch: Path) -> list[Phase]:  # fmt: skip
    tenant_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"apptsync-bench-peers:{provider}:{round_number}"))
    dataset = f"dlt_{provider}_round_{round_number}"
    pipelines_dir = scratch / dataset
    pipelines_dir.mkdir(parents=True)
    await put_connection(bench, provider, tenant_id)
    phases = []
    for index, name in enumerate(PHASES):
        if name == "changed_rerun":
            size = len(await truth_ids(bench.admin, provider, bench.window))
            applied = await mutate(bench.admin, provider, max(1, round(size * args.changed_fraction)), round_number)
            print(f"  {provider}: {applied} mutations applied", flush=True)
        expected = await truth_ids(bench.admin, provider, bench.window)
        apptsync_first = (round_number + index) % 2 == 0
        runs: dict[str, SideRun] = {}
        for side in ("apptsync", "dlt") if apptsync_first else ("dlt", "apptsync"):
            if side == "apptsync":
                runs[side] = await run_apptsync(bench, provider, tenant_id, expected, args.timeout_seconds)
            else:
                runs[side] = await run_dlt(bench, args, provider, dataset, pipelines_dir, expected)
        phase = Phase(provider, round_number, name, len(expected), runs["apptsync"], runs["dlt"])
        print(f"  round {round_number} {provider} {name}: apptsync {phase.apptsync.wall_seconds:.2f} s, "
              f"dlt {phase.dlt.wall_seconds:.2f} s ({phase.dlt.wall_seconds / phase.apptsync.wall_seconds:.2f}x)",
              flush=True)  # fmt: skip
        phases.append(phase)
    return phases


async def start(args: argparse.Namespace, state_dir: Path) -> tuple[list[Phase], dict[str, str]]:
    env = {
        "APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": str(args.appointments),
        "APPTSYNC_SIMULATOR_ACCOUNTS_PER_PROVIDER": "1",
        "APPTSYNC_SIMULATOR_SEEDED_PROVIDERS": "acuity,calendly",
        "APPTSYNC_SIMULATOR_ACUITY_SPREAD_DAYS": str(SPREAD_DAYS),
        "APPTSYNC_CLI_LOG_LEVEL": "WARNING",
    }
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    window = (today - timedelta(days=SPREAD_DAYS + WINDOW_MARGIN_DAYS),
              today + timedelta(days=SPREAD_DAYS + WINDOW_MARGIN_DAYS))  # fmt: skip
    async with (
        # Both sides: lifted limits (apptsync's budgets through the hook, the simulator's below).
        DevStack(state_dir / "stack", gateway_port=None, extra_env=env, ready_timeout_seconds=600,
                 command=hooked_command(provider_requests_per_second=LIFTED_REQUESTS_PER_SECOND)) as stack,
        httpx.AsyncClient(base_url=stack.addresses.simulator_url, timeout=600) as admin,
        grpc.aio.insecure_channel(stack.addresses.gateway_address) as channel,
    ):
        # The same lifted limit for both sides: Calendly's per-user window would otherwise pace both.
        (await admin.put("/_admin/calendly/faults", json={"rate_limit_requests": 1_000_000_000})).raise_for_status()
        calendly = (await admin.get("/_admin/calendly/accounts")).raise_for_status().json()[0]
        pids = {name: stack.services.process(name).pid for name in APPTSYNC_PROCESSES}
        pids |= {"postgres": stack.postgres.process.pid, "broker": stack.broker.process.pid}
        bench = Stack(stack, imports_pb2_grpc.ImportServiceStub(channel), admin, calendly, window,
                      {name: pid for name, pid in pids.items() if pid is not None})  # fmt: skip
        owner = await asyncpg.connect(stack.postgres.database_url)
        try:
            durability = await durability_settings(owner)
        finally:
            await owner.close()
        phases = []
        for round_number in range(args.rounds):
            for provider in args.providers:
                phases += await provider_round(bench, args, provider, round_number, state_dir / "dlt")
    return phases, durability


# --------------------------------------------------------------------------- report


def medians(phases: Sequence[Phase], provider: str, name: str) -> dict[str, float]:
    mine = [p for p in phases if p.provider == provider and p.name == name]
    return {
        "apptsync_wall_seconds": statistics.median(p.apptsync.wall_seconds for p in mine),
        "dlt_wall_seconds": statistics.median(p.dlt.wall_seconds for p in mine),
        "speedup_vs_dlt": statistics.median(p.dlt.wall_seconds / p.apptsync.wall_seconds for p in mine),
        "apptsync_cpu_seconds": statistics.median(p.apptsync.total_cpu_seconds for p in mine),
        "dlt_cpu_seconds": statistics.median(p.dlt.total_cpu_seconds for p in mine),
        "cpu_ratio_vs_dlt": statistics.median(p.dlt.total_cpu_seconds / p.apptsync.total_cpu_seconds for p in mine),
        "apptsync_provider_requests": statistics.median(p.apptsync.provider_requests for p in mine),
        "dlt_provider_requests": statistics.median(p.dlt.provider_requests for p in mine),
        "apptsync_row_writes": statistics.median(p.apptsync.row_writes for p in mine),
        "dlt_row_writes": statistics.median(p.dlt.row_writes for p in mine),
    }


def report(args: argparse.Namespace, phases: Sequence[Phase], durability: dict[str, str]) -> dict[str, Any]:
    settings = ", ".join(f"{k}={v}" for k, v in durability.items())
    print(f"\napptsync vs dlt on the same simulator data and PostgreSQL ({settings}), "
          f"{args.rounds} interleaved rounds, {args.appointments:,} records per account")  # fmt: skip
    header = (f"{'provider/phase':<26}{'round':>6}{'records':>9}{'side':>10}{'wall s':>9}{'CPU s':>8}{'PG CPU s':>9}"
              f"{'requests':>10}{'row writes':>11}{'present':>9}{'missing':>8}{'extra':>7}")  # fmt: skip
    print(header)
    for p in phases:
        for side, run in (("apptsync", p.apptsync), ("dlt", p.dlt)):
            print(f"{p.provider + ' ' + p.name:<26}{p.round_number:>6}{p.expected:>9,}{side:>10}"
                  f"{run.wall_seconds:>9.2f}{run.cpu_seconds:>8.2f}{run.postgres_cpu_seconds:>9.2f}"
                  f"{run.provider_requests:>10,}{run.row_writes:>11,}{run.present:>9,}{run.missing:>8,}"
                  f"{run.extra:>7,} {run.detail}")  # fmt: skip
    figures: dict[str, Any] = {
        "rounds": args.rounds, "records_per_account": args.appointments, "changed_fraction": args.changed_fraction,
        **{f"postgres_{name}": value for name, value in durability.items()},
    }  # fmt: skip
    print(f"\n{'medians':<26}{'apptsync s':>11}{'dlt s':>9}{'dlt/apptsync':>13}{'CPU dlt/apptsync':>17}")
    for provider in args.providers:
        figures[f"{provider}_records"] = statistics.median(p.expected for p in phases if p.provider == provider)
        for name in PHASES:
            values = medians(phases, provider, name)
            print(f"{provider + ' ' + name:<26}{values['apptsync_wall_seconds']:>11.2f}"
                  f"{values['dlt_wall_seconds']:>9.2f}{values['speedup_vs_dlt']:>12.2f}x"
                  f"{values['cpu_ratio_vs_dlt']:>16.2f}x")  # fmt: skip
            figures |= {f"{provider}_{name}_{key}": round(value, 4) for key, value in values.items()}
    apptsync_wrong = [p for p in phases if p.apptsync.missing or p.apptsync.extra or p.apptsync.detail]
    dlt_wrong = [p for p in phases if p.dlt.missing or p.dlt.extra]
    figures["apptsync_wrong_results"] = len(apptsync_wrong)
    figures["dlt_wrong_results"] = len(dlt_wrong)
    if apptsync_wrong:
        print("\nWRONG apptsync RESULTS:", *(f"{p.provider} {p.name} round {p.round_number}" for p in apptsync_wrong))
    return figures


async def benchmark(args: argparse.Namespace) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="apptsync-bench-peers-"))
    try:
        phases, durability = await start(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures = report(args, phases, durability)
    write_result("peers", figures)
    print(json.dumps(figures, sort_keys=True))
    return 1 if figures["apptsync_wrong_results"] else 0


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--appointments", type=int, default=20_000, help="records per simulated account")
    parser.add_argument("--providers", type=lambda text: text.split(","), default=["calendly", "acuity"])
    parser.add_argument("--changed-fraction", type=float, default=0.05)
    # Absolute: dlt runs with its pipelines directory as the working directory (`make bench-peers` passes
    # a relative path).
    parser.add_argument("--dlt-python", type=lambda text: Path(text).absolute(),
                        default=REPOSITORY / ".venv-peers" / "bin" / "python")  # fmt: skip
    parser.add_argument("--timeout-seconds", type=float, default=1800.0, help="per run of either side")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_arguments()
    if not arguments.dlt_python.exists():
        raise SystemExit(f"{arguments.dlt_python} missing: `make bench-peers` installs dlt[postgres] into .venv-peers")
    sys.exit(asyncio.run(benchmark(arguments)))
