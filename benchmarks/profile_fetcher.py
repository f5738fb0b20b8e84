"""CPU per record of the fetcher's per-page path (no PostgreSQL, no broker): a profiling harness.

    .venv/bin/python benchmarks/profile_fetcher.py [--appointments 100000] [--pages 12] [--page-size 1000]
                                                   [--repeat 3] [--profile out.pstats] [--online]

Offline (default): the Acuity simulator's own responses (seeded data, rendered by its store exactly
as it serves them) are captured once as bytes, request by request as AcuitySession asks for them;
then each stage of the fetcher's page path runs over those bytes and is timed in CPU seconds
(time.process_time) per record fetched:
  decode     the response body's JSON decode (what ProviderHttp does)
  accept     acuity_start of every record + AcuityPaginator.accept (the pager's verdict)
  normalize  acuity_page (records -> CanonicalAppointment / SkippedRecord)
  build      build_page (AppointmentPage protobuf, content hashes included)
  serialize  AppointmentPage.SerializeToString
  batch      aiokafka's record batch of the page, zstd-compressed (what the producer does)
  telemetry  the page span and the per-page counts, metrics and log event (runner.page_sent)
`--online` also runs AcuitySession over real HTTP against the simulator in a child process (httpx,
the metered transport, the whole session loop) and reports its CPU per record.
`--profile FILE` writes a cProfile of the offline stages (read it with `python -m pstats FILE`).
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
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import httpx
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from apptsync.fetcher.providers import (
    ConnectionConfig,
    JobWindow,
    ProviderHttp,
    ProviderPage,
    RateBudget,
    open_session,
)
from apptsync.fetcher.providers._json_fields import loads_json
from apptsync.fetcher.providers.acuity import AcuityPaginator, AcuityRequest, WindowVerdict, acuity_page, acuity_start
from apptsync.fetcher.providers.acuity._session import DEFAULT_CURRENCY
from apptsync.fetcher.runner import page_sent
from apptsync.shared.appointments import Source
from apptsync.shared.messages.appointment_pages import build_page
from apptsync.shared.outbound import OutboundPolicy
from apptsync.shared.telemetry.http_metrics import MeteredTransport
from apptsync.simulator._acuity_data import AcuityStore, select_appointments

ANCHOR = date(2026, 1, 15)
USER_ID = 1001
SEED = 42
# zstd is the producer's default compression (KafkaSettings.compression_type); 2 = CODEC_ZSTD magic v2.
_ZSTD = 0x04


def job_window() -> JobWindow:
    start = datetime.combine(ANCHOR - timedelta(days=400), datetime.min.time(), UTC)
    return JobWindow(start, start + timedelta(days=800))


@dataclass
class Capture:
    request: AcuityRequest
    body: bytes


def capture(appointments: int, page_size: int, max_pages: int = 0) -> list[Capture]:
    """The simulator's answers to the requests AcuityPaginator makes, in order (bytes as served),
    up to `max_pages` complete pages (0: all)."""
    store = AcuityStore(seed=SEED, accounts=1, appointments_per_account=appointments, anchor=ANCHOR)
    paginator = AcuityPaginator(window=job_window(), page_size=page_size, cursor=None)
    captured: list[Capture] = []
    pages = 0
    while (request := paginator.next_request()) is not None:
        params = request.query_params()
        candidates = store.candidates(USER_ID, params, ignore_min_date=False)
        selected = select_appointments(candidates, params)
        body = b"[" + b", ".join(store.rendered(a, include_forms=False) for a in selected) + b"]"
        captured.append(Capture(request, body))
        records = json.loads(body)
        verdict = paginator.accept(request, [acuity_start(r) for r in records])
        pages += verdict is WindowVerdict.COMPLETE and bool(records)
        if max_pages and pages >= max_pages:
            break
    return captured


@dataclass
class StageTimes:
    seconds: dict[str, float]
    records: int
    pages: int


def run_stages(captured: list[Capture], page_size: int) -> StageTimes:
    stages = ("decode", "accept", "normalize", "build", "serialize", "batch", "telemetry")
    seconds = dict.fromkeys(stages, 0.0)
    window = job_window()
    paginator = AcuityPaginator(window=window, page_size=page_size, cursor=None)
    observed_at = datetime(2026, 1, 15, 12, tzinfo=UTC)
    from opentelemetry import trace

    tracer = trace.get_tracer("apptsync.fetcher")
    clock = time.process_time
    records_total = pages = 0
    for item in captured:
        t0 = clock()
        records = loads_json(item.body)
        assert isinstance(records, list)
        t1 = clock()
        starts = [acuity_start(r) for r in records]
        verdict = paginator.accept(item.request, starts)
        t2 = clock()
        seconds["decode"] += t1 - t0
        seconds["accept"] += t2 - t1
        records_total += len(records)
        if verdict is WindowVerdict.TRUNCATED or not records:
            continue
        t3 = clock()
        page: ProviderPage = acuity_page(
            records, request=item.request, window=window, observed_at=observed_at, currency=DEFAULT_CURRENCY,
            starts=starts,
        )  # fmt: skip
        t4 = clock()
        message = build_page(
            job_id="00000000-0000-0000-0000-000000000001",
            tenant_id="tenant-a",
            external_source="acuity",
            connection_id="conn-1",
            page_no=pages,
            fetched_at=observed_at,
            records_fetched=page.records_fetched,
            appointments=page.appointments,
            skipped_out_of_window=page.skipped_out_of_window,
            skipped_invalid=page.skipped_invalid,
        )
        t5 = clock()
        payload = message.SerializeToString()
        t6 = clock()
        builder = DefaultRecordBatchBuilder(2, _ZSTD, 0, -1, -1, -1, 16 * 1024 * 1024)
        builder.append(0, None, b"00000000-0000-0000-0000-000000000001", payload, [])
        builder.build()
        t7 = clock()
        with tracer.start_as_current_span("fetch page", attributes={"apptsync.page_no": pages}) as span:
            page_sent("acuity", pages, page, span)
        t8 = clock()
        seconds["normalize"] += t4 - t3
        seconds["build"] += t5 - t4
        seconds["serialize"] += t6 - t5
        seconds["batch"] += t7 - t6
        seconds["telemetry"] += t8 - t7
        pages += 1
    return StageTimes(seconds, records_total, pages)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run_online(base_url: str, page_size: int) -> tuple[float, int, int]:
    """CPU seconds of this process, records in pages and pages, for one AcuitySession over real HTTP
    (the whole job window: every page of the account)."""
    transport = MeteredTransport(httpx.AsyncHTTPTransport(), provider_of=lambda _request: "acuity")
    budget = RateBudget(requests_per_period=1, period_seconds=0.001, max_concurrent=20)
    http = ProviderHttp(
        timeout_seconds=30.0,
        outbound=OutboundPolicy.allowing(base_url),
        transport=transport,
        rate_budget_overrides={Source.ACUITY: budget},
    )
    session = open_session(
        Source.ACUITY,
        http=http,
        connection=ConnectionConfig(
            base_url=f"{base_url}/acuity/api/v1", credentials={"user_id": str(USER_ID), "api_key": "demo-acuity-key"}
        ),
        window=job_window(),
        page_size=page_size,
        cursor=None,
        clock=lambda: datetime.now(UTC),
    )
    started = time.process_time()
    records = pages = 0
    while (page := await session.next_page()) is not None:
        message = build_page(
            job_id="job", tenant_id="t", external_source="acuity", connection_id="c", page_no=pages,
            fetched_at=datetime.now(UTC), records_fetched=page.records_fetched, appointments=page.appointments,
            skipped_out_of_window=page.skipped_out_of_window, skipped_invalid=page.skipped_invalid,
        )  # fmt: skip
        message.SerializeToString()
        records += page.records_fetched
        pages += 1
    cpu = time.process_time() - started
    await http.aclose()
    return cpu, records, pages


def start_simulator(appointments: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "APPTSYNC_SIMULATOR_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": str(appointments),
        "APPTSYNC_SIMULATOR_ACCOUNTS_PER_PROVIDER": "1",
        "APPTSYNC_SIMULATOR_SEEDED_PROVIDERS": "acuity",
        "APPTSYNC_SIMULATOR_ANCHOR_DATE": ANCHOR.isoformat(),
        "APPTSYNC_SIMULATOR_SEED": str(SEED),
    }
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "apptsync"), "simulator"], env=env, stdout=subprocess.DEVNULL
    )
    base_url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            # Reading the data set once makes the simulator keep every rendering (as bench_e2e does).
            httpx.get(f"{base_url}/_admin/acuity/accounts/{USER_ID}/appointments?excludeForms=true", timeout=60)
            return process, base_url
        except httpx.TransportError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError("simulator did not start")


def report(label: str, runs: list[StageTimes]) -> None:
    records = runs[0].records
    print(f"{label}: {records} records fetched, {runs[0].pages} pages, {len(runs)} runs (CPU us per record fetched)")
    total_per_run = [sum(r.seconds.values()) for r in runs]
    for stage in runs[0].seconds:
        values = [r.seconds[stage] * 1e6 / records for r in runs]
        print(f"  {stage:<10} median {statistics.median(values):7.2f}   runs " + " ".join(f"{v:7.2f}" for v in values))
    totals = [t * 1e6 / records for t in total_per_run]
    print(f"  {'total':<10} median {statistics.median(totals):7.2f}   runs " + " ".join(f"{v:7.2f}" for v in totals))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appointments", type=int, default=100_000, help="the simulated account's size")
    parser.add_argument("--pages", type=int, default=12, help="complete pages captured (0: all) offline")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", default="")
    parser.add_argument("--online", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)
    from apptsync.shared.telemetry.tracing import setup_tracing

    setup_tracing(service_name="apptsync-fetcher", version="profile", host_name="profile")
    captured = capture(args.appointments, args.page_size, args.pages)
    run_stages(captured, args.page_size)  # warm-up
    runs = [run_stages(captured, args.page_size) for _ in range(args.repeat)]
    report("offline stages", runs)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run_stages, captured, args.page_size)
        profiler.dump_stats(args.profile)
        print(f"profile written to {args.profile}")
    if args.online:
        process, base_url = start_simulator(args.appointments)
        try:
            asyncio.run(run_online(base_url, args.page_size))  # warm-up (and the simulator's cache)
            for _ in range(args.repeat):
                cpu, records, pages = asyncio.run(run_online(base_url, args.page_size))
                print(f"online session: {records} records, {pages} pages, {cpu * 1e6 / records:7.2f} us CPU per record")
        finally:
            process.terminate()
            process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
