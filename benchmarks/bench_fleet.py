"""`make bench-fleet`: many small tenants synced by one `sync-all` round under the providers' real limits.

    .venv/bin/python benchmarks/bench_fleet.py [--tenants 1000] [--min-appointments 50]
        [--max-appointments 2000] [--rounds first,full,frequent] [--round-timeout-seconds 1800]

One embedded stack (PostgreSQL durable, Tansu, simulator, gateway, one fetcher and one writer: the dev
overlay's replica counts; the base overlay runs two fetchers) and `--tenants` tenants, one connection
each, the providers in turn (Acuity, Calendly, Google), each account's size drawn log-uniformly from
`--min-appointments`..`--max-appointments` (seeded; the simulator makes them in one call,
`POST /_admin/fleet`). No rate budget is lifted: the fetcher keeps Acuity's 10 requests per 1.1 s
(per process; the shared budget spans replicas), the simulator answers Calendly's per-user window
with 429s, Google has no enforced limit here.

Each round is one `apptsync sync-all` as the CronJobs run it (`first`: the first import of every
tenant, `--policy never`; `full`: the nightly full sync of unchanged tenants, `--policy never`;
`frequent`: the frequent sync, `--policy no-new-records`), then waits until every job it started has
ended (bounded by `--round-timeout-seconds`). Per round: round time (sync-all start to the last job's
end), per-tenant time-to-done p50/p95 (its job's end, from the round's start), jobs/s, provider
requests per provider and per 1,000 appointments, peak RSS per service, CPU seconds per process,
and the bottleneck: `provider` when the time the providers' published limits need for the requests
made (Acuity: requests x 1.1 s / 10; Calendly: the minutes beyond the first that the largest
account's requests need at 500 per minute, its requests estimated by its share of the appointments:
the simulator counts no user apart; a job waiting out its user's window lends its working slot to
another job, see apptsync.fetcher.slots) is a larger share of the round than the CPU utilisation of
the machine (all processes' CPU seconds over round time x cores), else `cpu`. The last line is one
JSON object (the first round's figures as `tenants`, `round_seconds`, `tenant_done_p95_seconds`,
`bottleneck`, the others prefixed by the round; the fetcher's slot settings), also written to
`bench-results/fleet.json` (or `fleet-<tenants>.json` with `--result-name`).
Every job must end SUCCEEDED with its account's records inserted on the first round; otherwise the
figures measure a broken pipeline and it exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx

from apptsync.cli.devstack import DevStack, durability_settings
from apptsync.shared.settings import FetcherSettings
from apptsync.v1 import imports_pb2, imports_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_e2e import ProcessWatch, percentile
from benchmarks.peers.bench_peers import postgres_cpu_seconds
from benchmarks.results import write_result

PROVIDERS = ("acuity", "calendly", "google")
SOURCES = {
    "acuity": imports_pb2.SOURCE_ACUITY,
    "calendly": imports_pb2.SOURCE_CALENDLY,
    "google": imports_pb2.SOURCE_GOOGLE_CALENDAR,
}
POLICIES = {"first": "never", "full": "never", "frequent": "no-new-records"}
SERVICES = ("gateway", "fetcher", "writer")
ACUITY_SECONDS_PER_REQUEST = 1.1 / 10  # the fetcher's Acuity budget: 10 requests per 1.1 s
CALENDLY_REQUESTS_PER_MINUTE = 500  # the simulator's per-user window (Calendly's paid plans)
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED")


def account_sizes(tenants: int, low: int, high: int, seed: int) -> list[tuple[str, int]]:
    """(provider, size) per tenant: the providers in turn, sizes log-uniform in [low, high]."""
    rng = random.Random(seed)
    return [
        (PROVIDERS[n % len(PROVIDERS)], round(math.exp(rng.uniform(math.log(low), math.log(high)))))
        for n in range(tenants)
    ]


@dataclass
class Tenant:
    tenant_id: str
    provider: str
    appointments: int
    request: imports_pb2.PutConnectionRequest


async def seed_fleet(admin: httpx.AsyncClient, simulator_url: str, args: argparse.Namespace) -> list[Tenant]:
    plan = account_sizes(args.tenants, args.min_appointments, args.max_appointments, args.seed)
    sizes = {p: [size for provider, size in plan if provider == p] for p in PROVIDERS}
    made = (await admin.post("/_admin/fleet", json={"seed": args.seed, "sizes": sizes})).raise_for_status().json()
    tenants = []
    for provider in PROVIDERS:
        for number, account in enumerate(made[provider]):
            tenant_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"apptsync-bench-fleet:{provider}:{number}"))
            request = imports_pb2.PutConnectionRequest(
                tenant_id=tenant_id, connection_id=provider, source=SOURCES[provider], skip_verification=True
            )
            oauth = {k: str(account[k]) for k in ("access_token", "refresh_token", "client_id", "client_secret")
                     if k in account}  # fmt: skip
            if provider == "acuity":
                request.base_url = f"{simulator_url}/acuity/api/v1"
                request.credentials.update({"user_id": account["user_id"], "api_key": account["api_key"]})
                size = int(account["appointments"])
            elif provider == "calendly":
                request.base_url = f"{simulator_url}/calendly"
                request.credentials.update(oauth)
                request.settings.update({"organization": str(account["organization"])})
                size = int(account["invitees"])
            else:
                request.base_url = f"{simulator_url}/google/calendar/v3"
                request.credentials.update(oauth)
                request.settings.update({"calendar_ids": ",".join(account["calendar_ids"]),
                                         "token_url": f"{simulator_url}/google/oauth2/token"})  # fmt: skip
                size = int(account["events"])
            tenants.append(Tenant(tenant_id, provider, size, request))
    return tenants


@dataclass
class Round:
    name: str
    seconds: float
    done_seconds: list[float]
    states: dict[str, int]
    inserted: int
    requests: dict[str, int]
    busiest_calendly_user_requests: int
    rate_limited: dict[str, int]  # 429 answers per provider
    peak_rss_bytes: dict[str, int]
    cpu_seconds: dict[str, float]
    problems: list[str]


async def requests_by_provider(admin: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    return {p: (await admin.get(f"/_admin/{p}/counters")).raise_for_status().json() for p in PROVIDERS}


async def run_round(stack: DevStack, admin: httpx.AsyncClient, name: str, tenants: Sequence[Tenant],
                    args: argparse.Namespace) -> Round:  # fmt: skip
    for provider in PROVIDERS:
        (await admin.delete(f"/_admin/{provider}/counters")).raise_for_status()
    pids = {n: stack.services.process(n).pid for n in (*SERVICES, "simulator")}
    pids |= {"broker": stack.broker.process.pid}
    watch = ProcessWatch({n: p for n, p in pids.items() if p is not None})
    postmaster = stack.postgres.process.pid
    assert postmaster is not None
    owner = await asyncpg.connect(stack.postgres.database_url)
    postgres_before = postgres_cpu_seconds(postmaster)
    problems: list[str] = []
    try:
        round_start = await owner.fetchval("SELECT clock_timestamp()")
        started = time.perf_counter()
        async with watch.watching():
            argv = [sys.executable, "-m", "apptsync.cli", "sync-all", "--policy", POLICIES[name],
                    "--address", stack.addresses.gateway_address, "--json"]  # fmt: skip
            env = {**os.environ, "APPTSYNC_CLI_LOG_LEVEL": "WARNING", "NO_PROXY": "127.0.0.1"}
            process = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            _out, err = await asyncio.wait_for(process.communicate(), args.round_timeout_seconds)
            if process.returncode != 0:
                problems.append(f"sync-all exited {process.returncode}: {err.decode(errors='replace')[-2000:]}")
            deadline = started + args.round_timeout_seconds
            while True:
                open_jobs = await owner.fetchval(
                    "SELECT count(*) FROM import_jobs WHERE created_at >= $1 AND state NOT IN "
                    "('SUCCEEDED', 'FAILED', 'CANCELED')",
                    round_start,
                )
                if open_jobs == 0 or time.perf_counter() > deadline:
                    break
                await asyncio.sleep(0.5)
        rows = await owner.fetch(
            "SELECT tenant_id::text AS tenant, state, inserted, "
            "extract(epoch FROM finished_at - $1) AS done FROM import_jobs WHERE created_at >= $1",
            round_start,
        )
    finally:
        await owner.close()
    postgres_cpu = postgres_cpu_seconds(postmaster) - postgres_before
    if open_jobs:
        problems.append(f"{open_jobs} jobs still open after {args.round_timeout_seconds:g} s (round bounded)")
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    expected = {t.tenant_id for t in tenants}
    if {row["tenant"] for row in rows} != expected:
        problems.append(f"jobs for {len({row['tenant'] for row in rows} & expected)} of {len(expected)} tenants")
    failed = [row for row in rows if row["state"] != "SUCCEEDED"]
    if failed:
        problems.append(f"{len(failed)} jobs not SUCCEEDED")
    inserted = sum(int(row["inserted"] or 0) for row in rows)
    if name == "first" and inserted != sum(t.appointments for t in tenants):
        problems.append(f"inserted {inserted:,}, the accounts hold {sum(t.appointments for t in tenants):,}")
    counters = await requests_by_provider(admin)
    done = [float(row["done"]) for row in rows if row["done"] is not None]
    cpu = dict(watch.cpu_used_seconds) | {"postgres": postgres_cpu}
    return Round(
        name=name, seconds=max(done, default=time.perf_counter() - started), done_seconds=done, states=states,
        inserted=inserted, requests={p: int(c["requests"]) for p, c in counters.items()},
        busiest_calendly_user_requests=max(
            (int(n) for n in counters["calendly"].get("requests_by_account", {}).values()), default=0
        ),
        rate_limited={p: int(c["statuses"].get("429", 0)) for p, c in counters.items()},
        peak_rss_bytes=watch.peak_rss_bytes, cpu_seconds=cpu, problems=problems,
    )  # fmt: skip


def round_figures(r: Round, tenants: Sequence[Tenant], cores: int) -> dict[str, Any]:
    appointments = {p: sum(t.appointments for t in tenants if t.provider == p) for p in PROVIDERS}
    cpu_utilisation = sum(r.cpu_seconds.values()) / (r.seconds * cores)
    # The busiest Calendly user (the largest account) bounds the round: its job waits out its own
    # per-user window. The simulator counts requests per provider, not per user: the largest
    # account's share of the Calendly requests, by its share of the appointments, estimates it.
    largest_calendly = max((t.appointments for t in tenants if t.provider == "calendly"), default=0)
    calendly_user_requests = r.busiest_calendly_user_requests or (
        r.requests["calendly"] * largest_calendly / max(1, appointments["calendly"])
    )
    # Calendly's limit is a window: a user's first 500 requests of a minute wait for nothing.
    calendly_floor_seconds = max(0, math.ceil(calendly_user_requests / CALENDLY_REQUESTS_PER_MINUTE) - 1) * 60.0
    provider_floor_seconds = max(r.requests["acuity"] * ACUITY_SECONDS_PER_REQUEST, calendly_floor_seconds)
    provider_share = provider_floor_seconds / r.seconds
    return {
        "round_seconds": round(r.seconds, 2),
        "tenant_done_p50_seconds": round(statistics.median(r.done_seconds), 2) if r.done_seconds else None,
        "tenant_done_p95_seconds": round(percentile(r.done_seconds, 0.95), 2) if r.done_seconds else None,
        "tenant_done_max_seconds": round(max(r.done_seconds), 2) if r.done_seconds else None,
        "jobs": sum(r.states.values()),
        "jobs_succeeded": r.states.get("SUCCEEDED", 0),
        "jobs_per_second": round(sum(r.states.values()) / r.seconds, 3),
        "inserted": r.inserted,
        "provider_requests": sum(r.requests.values()),
        **{f"{p}_provider_requests": n for p, n in r.requests.items()},
        **{f"{p}_rate_limited_answers": n for p, n in r.rate_limited.items()},
        **{f"{p}_requests_per_1000_appointments": round(n * 1000 / max(1, appointments[p]), 1)
           for p, n in r.requests.items()},
        "peak_rss_bytes": max(r.peak_rss_bytes.get(s, 0) for s in SERVICES),
        **{f"{s}_peak_rss_bytes": r.peak_rss_bytes.get(s, 0) for s in SERVICES},
        **{f"{n}_cpu_seconds": round(s, 2) for n, s in r.cpu_seconds.items()},
        "cpu_utilisation": round(cpu_utilisation, 3),
        "largest_calendly_user_requests": round(calendly_user_requests),
        "provider_floor_seconds": round(provider_floor_seconds, 1),
        "provider_floor_share": round(provider_share, 3),
        "bottleneck": "provider" if provider_share >= cpu_utilisation else "cpu",
        "problems": len(r.problems),
    }


async def benchmark(args: argparse.Namespace) -> int:
    env = {
        "APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": "0",
        "APPTSYNC_SIMULATOR_ACCOUNTS_PER_PROVIDER": "1",
        "APPTSYNC_CLI_LOG_LEVEL": "WARNING",
    }
    state_dir = Path(tempfile.mkdtemp(prefix="apptsync-bench-fleet-"))
    cores = len(os.sched_getaffinity(0))
    fetcher = FetcherSettings.from_environment(dict(os.environ))  # what the stack's fetcher inherits
    rounds: list[Round] = []
    try:
        async with (
            DevStack(state_dir, gateway_port=None, extra_env=env, ready_timeout_seconds=600) as stack,
            httpx.AsyncClient(base_url=stack.addresses.simulator_url, timeout=600) as admin,
            grpc.aio.insecure_channel(stack.addresses.gateway_address) as channel,
        ):
            seeded = time.perf_counter()
            tenants = await seed_fleet(admin, stack.addresses.simulator_url, args)
            stub = imports_pb2_grpc.ImportServiceStub(channel)
            for tenant in tenants:
                await stub.PutConnection(tenant.request, timeout=60)
            print(f"{len(tenants)} tenants, {sum(t.appointments for t in tenants):,} appointments, seeded and "
                  f"connected in {time.perf_counter() - seeded:.1f} s", flush=True)  # fmt: skip
            owner = await asyncpg.connect(stack.postgres.database_url)
            try:
                durability = await durability_settings(owner)
            finally:
                await owner.close()
            for name in args.rounds:
                result = await run_round(stack, admin, name, tenants, args)
                rounds.append(result)
                print(f"round {name}: {result.seconds:.1f} s, {result.states}", *result.problems, flush=True)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    figures: dict[str, Any] = {
        "tenants": len(tenants),
        "appointments": sum(t.appointments for t in tenants),
        **{f"{p}_tenants": sum(1 for t in tenants if t.provider == p) for p in PROVIDERS},
        **{f"{p}_appointments": sum(t.appointments for t in tenants if t.provider == p) for p in PROVIDERS},
        "min_appointments": args.min_appointments,
        "max_appointments": args.max_appointments,
        "fetchers": 1,
        "writers": 1,
        # The slot model the fetcher ran with (None: a fetcher without open-job lending).
        "fetcher_max_concurrent_jobs": fetcher.max_concurrent_jobs,
        "fetcher_max_open_jobs": getattr(fetcher, "max_open_jobs", None),
        "cores": cores,
        **{f"postgres_{k}": v for k, v in durability.items()},
    }
    print(f"\nfleet of {len(tenants)} tenants ({figures['appointments']:,} appointments), one fetcher and one writer, "
          f"real provider limits, PostgreSQL {', '.join(f'{k}={v}' for k, v in durability.items())}")  # fmt: skip
    for index, r in enumerate(rounds):
        values = round_figures(r, tenants, cores)
        print(f"round {r.name}: {values['round_seconds']} s, tenant done p50 {values['tenant_done_p50_seconds']} s "
              f"p95 {values['tenant_done_p95_seconds']} s, {values['jobs_per_second']} jobs/s, requests "
              f"{ {p: r.requests[p] for p in PROVIDERS} }, per 1,000 appointments "
              f"{ {p: values[f'{p}_requests_per_1000_appointments'] for p in PROVIDERS} }, CPU utilisation "
              f"{values['cpu_utilisation']}, provider floor {values['provider_floor_seconds']} s "
              f"({values['provider_floor_share']} of the round): bottleneck {values['bottleneck']}")  # fmt: skip
        for problem in r.problems:
            print(f"  PROBLEM: {problem}")
        figures |= values if index == 0 else {f"{r.name}_{k}": v for k, v in values.items()}
        figures["round"] = rounds[0].name
    problems = sum(len(r.problems) for r in rounds)
    figures["problems"] = problems
    write_result(args.result_name or "fleet", figures)
    print(json.dumps(figures, sort_keys=True))
    return 1 if problems else 0


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--min-appointments", type=int, default=50)
    parser.add_argument("--max-appointments", type=int, default=2000)
    parser.add_argument("--rounds", type=lambda text: text.split(","), default=["first", "full", "frequent"],
                        help="first (never), full (never, unchanged), frequent (no-new-records)")  # fmt: skip
    parser.add_argument("--round-timeout-seconds", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--result-name", default="", help="result file name (default fleet)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(benchmark(parse_arguments())))
