"""Freshness benchmark (`make bench-freshness`): provider change -> row in PostgreSQL, with webhooks on,
and how long the polling reconciliation takes when every notification is lost.

    .venv/bin/python benchmarks/bench_freshness.py [--mutations 200] [--dropped-mutations 20]
                                                   [--mutations-per-second 5] [--poll-interval-seconds 15]

What it does (every process is real and listens on 127.0.0.1 only):
  1. starts the embedded stack (`apptsync.cli.devstack.DevStack`) with the webhook receiver
     (`WITH_WEBHOOKS`: the gateway's public base URL is the receiver's loopback URL), one simulated
     Acuity account, PutConnection (which subscribes the connection's webhooks at the simulator) and one
     full import, so the mirror is up to date;
  2. webhooks on: `--mutations` provider changes through the simulator's admin API at
     `--mutations-per-second` (new bookings over the coming days, reschedules and cancellations of
     stored ones, each on its own appointment); the simulator notifies the receiver with Acuity's
     signature, the receiver queues targeted jobs (coalesced per connection), the fetcher asks Acuity
     for each appointment, the writer stores it. Freshness of one change = the row's `updated_at`
     (PostgreSQL's clock, the writing transaction's start) minus the moment just before the
     mutation's admin request was sent (the same machine's clock): p50 / p95 / max. Where the time goes:
     the simulator's delivery lag (notification sent - change made, from its delivery log), the
     receiver's answer time (answered - sent: verification and the durable handoff), and the
     targeted jobs' queue wait (claimed - queued) and run time (finished - claimed). Meanwhile forged
     notifications are sent to the connection's real notification URL (wrong signature, no signature)
     and to unknown tokens; `notifications_forged_accepted` counts those answered 2xx (must be 0);
  3. notifications dropped (the simulator's `drop_probability` = 1): the frequent sync (StartImport
     NO_NEW_RECORDS, what the every-15-minutes CronJob starts) runs every `--poll-interval-seconds`
     (shortened so the benchmark ends), and `--dropped-mutations` changes of the coming days fall at
     random moments over two intervals: change -> row p50 / max is the reconciliation's catch-up (at
     most one interval plus one sync).

Every change is checked (the row holds the new state); a change never stored within `--timeout-seconds`
exits 1. Nothing about time is asserted. The last line is one JSON object: `freshness_p50_seconds`,
`freshness_p95_seconds`, `freshness_max_seconds`, `notifications_forged_accepted`, `mutations`,
`notifications_delivered`, `targeted_jobs`, `reconciliation_catch_up_p50_seconds`,
`reconciliation_catch_up_max_seconds`, `frequent_sync_p50_seconds`, `poll_interval_seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import httpx

from apptsync.cli.devstack import WITH_WEBHOOKS, DevStack
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2, imports_pb2_grpc

TENANT_ID = str(uuid.UUID("8c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"))
CONNECTION_ID = "bench-freshness"
ACUITY_USER_ID = "1001"
ACUITY_API_KEY = "demo-acuity-key"
ADMIN = f"/_admin/acuity/accounts/{ACUITY_USER_ID}/appointments"
TERMINAL = {imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED}
WATCH_SECONDS = 0.05


@dataclass
class Change:
    """One provider change and what its row must show once it is stored."""

    external_id: str
    status: str
    starts_at: datetime
    sent_at: datetime  # just before the admin request (wall clock, UTC)
    stored_at: datetime | None = None

    @property
    def freshness_seconds(self) -> float:
        assert self.stored_at is not None
        return (self.stored_at - self.sent_at).total_seconds()


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


class Pending(list[Change]):
    """The changes sent so far; `closed` once no more will be."""

    closed = False


async def tenant_connection(database_url: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(database_url)
    await connection.execute("SELECT set_config('app.tenant_id', $1, false)", TENANT_ID)
    return connection


async def watch(database_url: str, pending: Pending, *, timeout_seconds: float) -> list[Change]:
    """Polls the tenant's rows every WATCH_SECONDS until every change in `pending` (which may still
    grow) is stored; returns those never stored within `timeout_seconds` of the last change sent."""
    connection = await tenant_connection(database_url)
    try:
        last_progress = time.monotonic()
        while True:
            open_changes = [c for c in pending if c.stored_at is None]
            if not open_changes and pending.closed:
                return []
            if open_changes:
                seen_at = datetime.now(UTC)
                rows = await connection.fetch(
                    "SELECT external_id, status, starts_at, updated_at FROM appointments"
                    " WHERE external_source = 'acuity' AND external_id = ANY($1::text[])",
                    [c.external_id for c in open_changes],
                )
                found = {row["external_id"]: row for row in rows}
                for change in open_changes:
                    row = found.get(change.external_id)
                    if row is not None and row["status"] == change.status and row["starts_at"] == change.starts_at:
                        # When we saw it committed (an upper bound by at most WATCH_SECONDS and one query);
                        # the row's updated_at is its transaction's start, before the commit.
                        change.stored_at = seen_at
                        last_progress = time.monotonic()
            if time.monotonic() - last_progress > timeout_seconds and pending.closed:
                return [c for c in pending if c.stored_at is None]
            await asyncio.sleep(WATCH_SECONDS)
    finally:
        await connection.close()


async def mutate(
    simulator: httpx.AsyncClient, kind: str, appointment: dict[str, object] | None, at: datetime
) -> Change:
    """One provider change through the simulator's admin API (which notifies the subscriptions)."""
    sent_at = datetime.now(UTC)
    if kind == "new":
        response = await simulator.post(ADMIN, json={"datetime": at.isoformat()})
        response.raise_for_status()
        return Change(str(response.json()["id"]), "scheduled", at, sent_at)
    assert appointment is not None
    path = f"{ADMIN}/{appointment['id']}"
    if kind == "reschedule":
        (await simulator.post(f"{path}/reschedule", json={"datetime": at.isoformat()})).raise_for_status()
        return Change(str(appointment["id"]), "scheduled", at, sent_at)
    (await simulator.post(f"{path}/cancel", json={})).raise_for_status()
    return Change(str(appointment["id"]), "canceled", datetime.fromisoformat(str(appointment["datetime"])), sent_at)


async def send_forged(receiver_url: str, notification_url: str, rng: random.Random) -> tuple[int, int]:
    """Forged notifications: a wrong signature and none on the real URL, and a right-looking one to an
    unknown token. Returns (sent, answered 2xx)."""
    body = f"action=appointment.changed&id={rng.randint(1, 10**9)}&calendarID=1&appointmentTypeID=1".encode()
    wrong = base64.b64encode(rng.randbytes(32)).decode()
    unknown = f"{receiver_url}/webhooks/acuity/{base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip('=')}"
    attempts = [
        (notification_url, {"X-Acuity-Signature": wrong}),
        (notification_url, {}),
        (unknown, {"X-Acuity-Signature": wrong}),
    ]
    accepted = 0
    async with httpx.AsyncClient(timeout=10) as client:
        for url, headers in attempts:
            response = await client.post(
                url, content=body, headers={**headers, "Content-Type": "application/x-www-form-urlencoded"}
            )
            accepted += 200 <= response.status_code < 300
    return len(attempts), accepted


async def start_sync(stub: imports_pb2_grpc.ImportServiceAsyncStub, policy: int, days: int) -> imports_pb2.Job:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    request = imports_pb2.StartImportRequest(
        tenant_id=TENANT_ID, source=imports_pb2.SOURCE_ACUITY, connection_id=CONNECTION_ID,
        window=imports_pb2.TimeWindow(start=timestamp(today - timedelta(days=days)),
                                      end=timestamp(today + timedelta(days=days))),
        options=imports_pb2.ImportOptions(stop_policy=policy),  # type: ignore[arg-type]
    )  # fmt: skip
    job = (await stub.StartImport(request, timeout=30)).job
    watch_request = imports_pb2.WatchJobRequest(tenant_id=TENANT_ID, job_id=job.job_id)
    async for snapshot in stub.WatchJob(watch_request, timeout=600):
        job = snapshot
        if job.state in TERMINAL:
            break
    return job


async def benchmark(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    env = {
        "APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": str(args.appointments),
        "APPTSYNC_SIMULATOR_ACCOUNTS_PER_PROVIDER": "1",
        "APPTSYNC_SIMULATOR_SEEDED_PROVIDERS": "acuity",
        "APPTSYNC_SIMULATOR_ACUITY_SPREAD_DAYS": "60",
        "APPTSYNC_CLI_LOG_LEVEL": "WARNING",
    }
    with tempfile.TemporaryDirectory(prefix="apptsync-bench-freshness-") as state:
        async with DevStack(Path(state), gateway_port=None, services=WITH_WEBHOOKS, extra_env=env,
                            ready_timeout_seconds=300) as stack:  # fmt: skip
            addresses = stack.addresses
            async with (
                grpc.aio.insecure_channel(addresses.gateway_address) as channel,
                httpx.AsyncClient(base_url=addresses.simulator_url, timeout=30) as simulator,
            ):
                stub = imports_pb2_grpc.ImportServiceStub(channel)
                connection = await stub.PutConnection(
                    imports_pb2.PutConnectionRequest(
                        tenant_id=TENANT_ID, connection_id=CONNECTION_ID, source=imports_pb2.SOURCE_ACUITY,
                        base_url=f"{addresses.simulator_url}/acuity/api/v1",
                        credentials={"user_id": ACUITY_USER_ID, "api_key": ACUITY_API_KEY},
                    ),
                    timeout=30,
                )  # fmt: skip
                if connection.webhooks.state != imports_pb2.WebhookStatus.ACTIVE:
                    print(f"webhooks not active: {connection.webhooks}", file=sys.stderr)
                    return 1
                full = await start_sync(stub, imports_pb2.STOP_POLICY_NEVER, 70)
                if full.state != imports_pb2.JOB_STATE_SUCCEEDED:
                    print(f"full import failed: {full.error}", file=sys.stderr)
                    return 1
                print(f"full import: {full.counts.inserted} appointments", flush=True)
                subscriptions = (await simulator.get("/_admin/webhooks/subscriptions")).json()["acuity"]
                notification_url = subscriptions[0]["target"]
                now = datetime.now(UTC)
                upcoming = [
                    a for a in (await simulator.get(ADMIN)).json()
                    if not a["canceled"] and now + timedelta(days=1) < datetime.fromisoformat(a["datetime"])
                ]  # fmt: skip
                rng.shuffle(upcoming)
                # Phase 2's reschedules and cancels are of the coming days, which every frequent sync
                # walks completely (README "Freshness"); phase 1 takes the rest.
                near = [a for a in upcoming if datetime.fromisoformat(a["datetime"]) < now + timedelta(days=12)]
                upcoming = [a for a in upcoming if a not in near]
                (await simulator.delete("/_admin/webhooks/deliveries")).raise_for_status()

                # ---- phase 1: webhooks on
                pending = Pending()
                watcher = asyncio.create_task(
                    watch(stack.postgres.database_url, pending, timeout_seconds=args.timeout_seconds)
                )
                forged_sent = forged_accepted = 0
                spacing = 1.0 / args.mutations_per_second
                started = time.monotonic()
                for number in range(args.mutations):
                    kind = ("new", "new", "reschedule", "cancel", "new")[number % 5]
                    at = minute(now + timedelta(days=1 + rng.randint(0, 13), minutes=rng.randint(0, 600)))
                    target = upcoming.pop() if kind != "new" else None
                    pending.append(await mutate(simulator, kind, target, at))
                    if number % 10 == 0:
                        sent, accepted = await send_forged(addresses.webhook_receiver_url, notification_url, rng)
                        forged_sent, forged_accepted = forged_sent + sent, forged_accepted + accepted
                    await asyncio.sleep(max(0.0, started + (number + 1) * spacing - time.monotonic()))
                pending.closed = True
                missing = await watcher
                if missing:
                    print(f"{len(missing)} changes never stored, e.g. {missing[:3]}", file=sys.stderr)
                    return 1
                freshness = [c.freshness_seconds for c in pending]
                log = (await simulator.get("/_admin/webhooks/deliveries")).json()
                deliveries = log["counts"]
                lags = [
                    (datetime.fromisoformat(d["sent_at"]) - datetime.fromisoformat(d["mutation_at"])).total_seconds()
                    for d in log["deliveries"] if d.get("sent_at") and d.get("mutation_at")
                ]  # fmt: skip
                answers = [
                    (datetime.fromisoformat(d["answered_at"]) - datetime.fromisoformat(d["sent_at"])).total_seconds()
                    for d in log["deliveries"] if d.get("answered_at") and d.get("sent_at")
                ]  # fmt: skip
                owner = await tenant_connection(stack.postgres.database_url)
                try:
                    jobs = await owner.fetch(
                        "SELECT state, created_at, started_at, finished_at, jsonb_array_length(targets) AS targets"
                        " FROM import_jobs WHERE kind = 'targeted'"
                    )
                finally:
                    await owner.close()
                targeted = len(jobs)
                failed = sum(j["state"] != "SUCCEEDED" for j in jobs)
                waits = [(j["started_at"] - j["created_at"]).total_seconds() for j in jobs if j["started_at"]]
                runs = [(j["finished_at"] - j["started_at"]).total_seconds() for j in jobs if j["finished_at"]]
                targets_per_job = [j["targets"] for j in jobs]
                print(
                    f"webhooks on: {len(pending)} changes, freshness p50 {statistics.median(freshness):.3f} s, "
                    f"p95 {percentile(freshness, 0.95):.3f} s, max {max(freshness):.3f} s; "
                    f"{deliveries.get('delivered')} notifications delivered, {targeted} targeted jobs "
                    f"({failed} not SUCCEEDED); forged: {forged_sent} sent, {forged_accepted} accepted",
                    flush=True,
                )
                print(
                    f"  where the time goes: simulator delivery lag p50 {statistics.median(lags):.3f} s, "
                    f"p95 {percentile(lags, 0.95):.3f} s; receiver answer (verified, stored) p50 "
                    f"{statistics.median(answers):.3f} s, p95 {percentile(answers, 0.95):.3f} s; "
                    f"targeted job queue wait p50 {statistics.median(waits):.3f} s, "
                    f"p95 {percentile(waits, 0.95):.3f} s; run p50 {statistics.median(runs):.3f} s, "
                    f"p95 {percentile(runs, 0.95):.3f} s; targets per job p50 {statistics.median(targets_per_job):g}, "
                    f"max {max(targets_per_job)}",
                    flush=True,
                )

                # ---- phase 2: every notification lost; the frequent sync (on its schedule) reconciles
                (await simulator.put("/_admin/webhooks/faults", json={"drop_probability": 1.0})).raise_for_status()
                dropped = Pending()
                watcher = asyncio.create_task(
                    watch(stack.postgres.database_url, dropped, timeout_seconds=args.timeout_seconds + 600)
                )
                sync_seconds: list[float] = []

                async def schedule() -> None:
                    """The CronJob's frequent sync every poll interval, whatever else happens."""
                    while True:
                        tick = time.monotonic()
                        job = await start_sync(stub, imports_pb2.STOP_POLICY_NO_NEW_RECORDS, 180)
                        if job.state != imports_pb2.JOB_STATE_SUCCEEDED:
                            print(f"frequent sync failed: {job.error}", file=sys.stderr)
                        sync_seconds.append(time.monotonic() - tick)
                        await asyncio.sleep(max(0.0, tick + args.poll_interval_seconds - time.monotonic()))

                scheduler = asyncio.create_task(schedule())
                # The changes fall at random moments over two intervals (a change waits for the next sync).
                moments = sorted(rng.uniform(0, 2 * args.poll_interval_seconds) for _ in range(args.dropped_mutations))
                began = time.monotonic()
                for number, moment in enumerate(moments):
                    await asyncio.sleep(max(0.0, began + moment - time.monotonic()))
                    kind = ("new", "reschedule", "cancel")[number % 3]
                    at = minute(now + timedelta(days=1 + rng.randint(0, 10), minutes=rng.randint(0, 600)))
                    dropped.append(await mutate(simulator, kind, near.pop() if kind != "new" else None, at))
                dropped.closed = True
                missing = await watcher
                scheduler.cancel()
                await asyncio.gather(scheduler, return_exceptions=True)
                if missing:
                    print(f"{len(missing)} dropped changes never reconciled", file=sys.stderr)
                    return 1
                delivered_dropped = (await simulator.get("/_admin/webhooks/deliveries")).json()["counts"]
                catch_up = [c.freshness_seconds for c in dropped]
                print(
                    f"notifications dropped ({delivered_dropped.get('dropped', '?')} dropped by the simulator): "
                    f"{len(dropped)} changes reconciled by the frequent sync every {args.poll_interval_seconds:g} s "
                    f"(each run {statistics.median(sync_seconds):.2f} s at p50): change -> row p50 "
                    f"{statistics.median(catch_up):.1f} s, max {max(catch_up):.1f} s",
                    flush=True,
                )
    figures = {
        "freshness_p50_seconds": round(statistics.median(freshness), 4),
        "freshness_p95_seconds": round(percentile(freshness, 0.95), 4),
        "freshness_max_seconds": round(max(freshness), 4),
        "notifications_forged_accepted": forged_accepted,
        "notifications_forged_sent": forged_sent,
        "mutations": len(pending),
        "notifications_delivered": deliveries.get("delivered"),
        "targeted_jobs": targeted,
        "targets_per_job_max": max(targets_per_job),
        "delivery_lag_p95_seconds": round(percentile(lags, 0.95), 4),
        "receiver_answer_p50_seconds": round(statistics.median(answers), 4),
        "receiver_answer_p95_seconds": round(percentile(answers, 0.95), 4),
        "targeted_queue_wait_p95_seconds": round(percentile(waits, 0.95), 4),
        "targeted_run_p95_seconds": round(percentile(runs, 0.95), 4),
        "reconciliation_catch_up_p50_seconds": round(statistics.median(catch_up), 2),
        "reconciliation_catch_up_max_seconds": round(max(catch_up), 2),
        "frequent_sync_p50_seconds": round(statistics.median(sync_seconds), 3),
        "poll_interval_seconds": args.poll_interval_seconds,
        "dropped_mutations": len(dropped),
        "host": {"cpus": os.cpu_count()},
    }
    print(json.dumps(figures))
    return 0 if forged_accepted == 0 else 1


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutations", type=int, default=200, help="changes with webhooks on (default 200)")
    parser.add_argument("--dropped-mutations", type=int, default=20, help="changes whose notifications are dropped")
    parser.add_argument("--mutations-per-second", type=float, default=5.0, help="pace of the changes")
    parser.add_argument("--poll-interval-seconds", type=float, default=15.0,
                        help="pause between frequent syncs in the reconciliation phase (the CronJob's 15 minutes, "
                             "shortened so the benchmark ends)")  # fmt: skip
    parser.add_argument("--appointments", type=int, default=500, help="seeded appointments of the account")
    parser.add_argument("--timeout-seconds", type=float, default=120.0, help="longest wait for any change")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(benchmark(parse_arguments(argv)))


if __name__ == "__main__":
    sys.exit(main())
