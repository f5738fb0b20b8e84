"""CPU per provider request of the fetcher's request path, over real HTTP against the simulator.

    .venv/bin/python benchmarks/profile_requests.py [--provider calendly] [--appointments 5000]
        [--transport httpx|aiohttp] [--repeat 3] [--profile out.pstats]

Starts the simulator in a child process (one account of `--appointments` records, its rate limit
lifted), then runs the provider's session in this process as the fetcher runs it: ProviderHttp
with the metered transport, tracing set up (httpx instrumented), the OAuth wrapper for Calendly,
every page built into its protobuf. Reports CPU microseconds of this process per provider request
(the simulator's own request counter) and per record. `--transport aiohttp` puts httpx-aiohttp's
AiohttpTransport behind the same seam (ProviderHttp's `transport`), to measure it against httpx's
own. `--profile FILE` writes a cProfile of one more run (read it with `python -m pstats FILE`).
Prints one JSON line at the end. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta

import httpx

from apptsync.fetcher.providers import (
    ConnectionConfig,
    JobWindow,
    ProviderHttp,
    ProviderTransport,
    RateBudget,
    open_session,
)
from apptsync.shared.appointments import Source
from apptsync.shared.messages.appointment_pages import build_page
from apptsync.shared.outbound import OutboundPolicy
from apptsync.shared.telemetry.http_metrics import MeteredTransport

ANCHOR = date(2026, 1, 15)
SOURCES = {"calendly": Source.CALENDLY, "acuity": Source.ACUITY}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_simulator(provider: str, appointments: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "APPTSYNC_SIMULATOR_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": str(appointments),
        "APPTSYNC_SIMULATOR_ACCOUNTS_PER_PROVIDER": "1",
        "APPTSYNC_SIMULATOR_SEEDED_PROVIDERS": provider,
        "APPTSYNC_SIMULATOR_ANCHOR_DATE": ANCHOR.isoformat(),
    }
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "apptsync"), "simulator"], env=env, stdout=subprocess.DEVNULL
    )
    base_url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.put(f"{base_url}/_admin/calendly/faults", json={"rate_limit_requests": 1_000_000_000}, timeout=60)
            return process, base_url
        except httpx.TransportError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError("simulator did not start")


def transport_for(name: str) -> httpx.AsyncBaseTransport:
    """`aiohttp`: the fetcher's ProviderTransport (httpx-aiohttp); `httpx`: httpx's own (httpcore)."""
    return ProviderTransport() if name == "aiohttp" else httpx.AsyncHTTPTransport()


def connection_for(provider: str, base_url: str) -> ConnectionConfig:
    if provider == "acuity":
        return ConnectionConfig(
            base_url=f"{base_url}/acuity/api/v1", credentials={"user_id": "1001", "api_key": "demo-acuity-key"}
        )
    account = httpx.get(f"{base_url}/_admin/calendly/accounts", timeout=60).json()[0]
    oauth = ("access_token", "refresh_token", "client_id", "client_secret")
    return ConnectionConfig(
        base_url=f"{base_url}/calendly",
        credentials={key: str(account[key]) for key in oauth},
        settings={"organization": str(account["organization"])},
    )


def requests_counted(base_url: str, provider: str) -> int:
    return int(httpx.get(f"{base_url}/_admin/{provider}/counters", timeout=60).json()["requests"])


async def run_session(provider: str, base_url: str, transport: str, page_size: int) -> tuple[float, int]:
    """CPU seconds of this process and records, for one full session over the whole account."""
    metered = MeteredTransport(transport_for(transport), provider_of=lambda _request: provider)
    budget = RateBudget(requests_per_period=1, period_seconds=0.001, max_concurrent=20)
    http = ProviderHttp(
        timeout_seconds=30.0,
        outbound=OutboundPolicy.allowing(base_url),
        transport=metered,
        rate_budget_overrides={source: budget for source in Source},
    )
    today = datetime.combine(ANCHOR, datetime.min.time(), tzinfo=UTC)
    session = open_session(
        SOURCES[provider],
        http=http,
        connection=connection_for(provider, base_url),
        window=JobWindow(start=today - timedelta(days=200), end=today + timedelta(days=200)),
        page_size=page_size,
        cursor=None,
        clock=lambda: datetime.now(UTC),
    )
    started = time.process_time()
    records = pages = 0
    while (page := await session.next_page()) is not None:
        message = build_page(
            job_id="job", tenant_id="t", external_source=provider, connection_id="c", page_no=pages,
            fetched_at=datetime.now(UTC), records_fetched=page.records_fetched, appointments=page.appointments,
            skipped_out_of_window=page.skipped_out_of_window, skipped_invalid=page.skipped_invalid,
        )  # fmt: skip
        message.SerializeToString()
        records += page.records_fetched
        pages += 1
    cpu = time.process_time() - started
    await http.aclose()
    return cpu, records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", choices=sorted(SOURCES), default="calendly")
    parser.add_argument("--appointments", type=int, default=5000)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--transport", choices=["httpx", "aiohttp"], default="httpx")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)
    from apptsync.shared.telemetry.tracing import setup_tracing

    setup_tracing(service_name="apptsync-fetcher", version="profile", host_name="profile")
    process, base_url = start_simulator(args.provider, args.appointments)
    try:
        asyncio.run(run_session(args.provider, base_url, args.transport, args.page_size))  # warm-up
        per_request, per_record, requests = [], [], 0
        for _ in range(args.repeat):
            before = requests_counted(base_url, args.provider)
            cpu, records = asyncio.run(run_session(args.provider, base_url, args.transport, args.page_size))
            requests = requests_counted(base_url, args.provider) - before
            per_request.append(cpu * 1e6 / requests)
            per_record.append(cpu * 1e6 / records)
            print(f"{args.provider} over {args.transport}: {records} records, {requests} requests, {cpu:.2f} CPU s: "
                  f"{per_request[-1]:.0f} us per request, {per_record[-1]:.0f} us per record")  # fmt: skip
        if args.profile:
            profiler = cProfile.Profile(time.process_time)  # CPU, not wall time (the simulator runs alongside)
            profiler.runcall(asyncio.run, run_session(args.provider, base_url, args.transport, args.page_size))
            profiler.dump_stats(args.profile)
            print(f"profile written to {args.profile}")
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(json.dumps({
        "provider": args.provider, "transport": args.transport, "records": records, "requests": requests,
        "cpu_microseconds_per_request": round(statistics.median(per_request), 1),
        "cpu_microseconds_per_record": round(statistics.median(per_record), 1),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
