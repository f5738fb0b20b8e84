"""The mirror-fidelity harness: the shipped sync schedule through the real services, judged against the
simulator's truth.

One seed: a tenant with an Acuity, a Calendly and a Google Calendar connection to the simulator (its
data seeded with the same seed), then a full sync (the nightly CronJob's `sync-all`), then `rounds`
times: `frequent_per_round` times (seeded mutations, the frequent CronJob's `sync-all`), then a full
sync. After every full sync the tenant's rows are compared with the truth field by field; after
every frequent sync the near-term changes of its batch (new, rescheduled, canceled bookings starting
within `near_term_days`) still missing in the mirror are counted, and so are the provider requests
it made (the simulator's counters).

`sync-all` runs as the CronJobs run it: `python -m apptsync.cli <the CronJob's args>` with the bearer
token in the file `APPTSYNC_CLI_TOKEN_FILE` names, plus `--address` (the test gateway), `--json` (to
learn the jobs it started) and `--idempotency-window-seconds 1`: CronJob runs are minutes apart and
never share an idempotency slot, while this harness compresses their schedule into seconds (and
waits a slot between runs)."""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import httpx

from apptsync.gateway.auth import token_digest
from apptsync.v1 import imports_pb2, imports_pb2_grpc
from tests.fidelity.compare import Divergence, Expected, Stored, Window, compare, missed_changes, money
from tests.fidelity.schedule import CronSync, SyncSchedule

PROVIDERS = ("acuity", "calendly", "google")
SOURCES = {
    "acuity": imports_pb2.SOURCE_ACUITY,
    "calendly": imports_pb2.SOURCE_CALENDLY,
    "google": imports_pb2.SOURCE_GOOGLE_CALENDAR,
}
TERMINAL = frozenset({imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED})
# Kinds whose near-term instances the frequent sync must catch (Google's deletion is its cancellation).
NEAR_TERM_KINDS = frozenset({"new", "reschedule", "cancel", "new_series", "delete_instance"})
# The gateway's default window is now +- half of 365 days; records this close to its edges are not judged.
SYNC_WINDOW_HALF = timedelta(days=365) / 2
WINDOW_MARGIN = timedelta(days=2)
# CronJob runs never share an idempotency slot; here runs come seconds apart (see the module doc).
IDEMPOTENCY_WINDOW_SECONDS = 1


@dataclass(frozen=True, slots=True)
class FidelityConfig:
    seed: int
    rounds: int = 2
    frequent_per_round: int = 3
    mutations_per_batch: int = 6
    near_term_days: int = 14
    # Diagnosis only: each connection on a tenant of its own (the specified run is one tenant with
    # all three connections); it shows each provider's divergences when a tenant-wide problem of
    # sync-all would hide them.
    tenant_per_connection: bool = False
    job_timeout_seconds: float = 180.0
    sync_all_timeout_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class FidelitySystem:
    """Where the running services answer, and how to reach them as the CronJobs do."""

    gateway_address: str
    simulator_url: str
    owner_database_url: str  # the tables' owner: reads every tenant's rows
    token_file: Path  # a gateway bearer token whose tenants are ["*"], as the CronJobs mount it
    cli_env: dict[str, str]  # the environment `sync-all` runs in (no proxy for 127.0.0.1)


@dataclass
class SyncRun:
    cron: str
    connections: int
    jobs: list[imports_pb2.Job]
    shared_job_connections: list[str]  # connections sync-all answered with another connection's job

    def summary(self) -> str:
        parts = [
            f"{j.connection_id}:{imports_pb2.JobState.Name(j.state).removeprefix('JOB_STATE_')}"
            f"({j.counts.records_fetched} fetched, {j.stop_reason or j.error or '-'})"
            for j in self.jobs
        ]
        shared = ""
        if self.shared_job_connections:
            shared = f"; no job of their own: {', '.join(self.shared_job_connections)}"
        return f"{self.cron}: " + "; ".join(parts) + shared


@dataclass
class SeedReport:
    seed: int
    divergences_after_full_sync: list[list[Divergence]] = field(default_factory=list)
    near_term_changes: int = 0
    near_term_caught: int = 0
    near_term_missed: list[Divergence] = field(default_factory=list)
    requests_per_frequent_sync: list[int] = field(default_factory=list)
    syncs: list[SyncRun] = field(default_factory=list)
    failed_jobs: list[str] = field(default_factory=list)

    @property
    def divergences(self) -> int:
        return sum(len(found) for found in self.divergences_after_full_sync)

    @property
    def first_divergence(self) -> Divergence | None:
        return next((found[0] for found in self.divergences_after_full_sync if found), None)

    def problems(self) -> list[str]:
        """What breaks fidelity in this seed, most telling first; [] when the mirror was exact."""
        lines = []
        for number, found in enumerate(self.divergences_after_full_sync):
            if found:
                lines.append(f"full sync {number}: {len(found)} divergences, first: {found[0].line()}")
                lines += [f"  {line}" for line in by_provider(found)]
        if self.near_term_caught < self.near_term_changes:
            first = self.near_term_missed[0].line() if self.near_term_missed else "-"
            lines.append(f"near-term changes caught by the next frequent sync: {self.near_term_caught}/"
                         f"{self.near_term_changes}, first missed: {first}")  # fmt: skip
            lines += [f"  {line}" for line in by_provider(self.near_term_missed)]
        lines += [f"job not SUCCEEDED: {text}" for text in self.failed_jobs]
        shared = sorted({c for s in self.syncs for c in s.shared_job_connections})
        if shared:
            lines.append(f"sync-all gave these connections no job of their own: {', '.join(shared)}")
        return lines


def by_provider(found: Sequence[Divergence]) -> list[str]:
    """Per provider: how many divergences, by field, and the first one."""
    lines = []
    for provider in sorted({d.provider for d in found}):
        mine = [d for d in found if d.provider == provider]
        fields = Counter(d.field for d in mine)
        counts = ", ".join(f"{name} {n}" for name, n in sorted(fields.items()))
        lines.append(f"{provider}: {len(mine)} ({counts}); first: {mine[0].line()}")
    return lines


def tenants_for(seed: int, *, per_connection: bool = False) -> dict[str, str]:
    """The tenant of each provider's connection: one tenant per seed, or one per connection."""
    return {
        p: str(uuid.uuid5(uuid.NAMESPACE_URL, f"apptsync-fidelity:{seed}" + (f":{p}" if per_connection else "")))
        for p in PROVIDERS
    }


def simulator_env(seed: int, appointments_per_account: int) -> dict[str, str]:
    """The simulator's settings for one seed: its data seeded with the seed, one account per provider."""
    return {
        "APPTSYNC_SIMULATOR_SEED": str(seed),
        "APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": str(appointments_per_account),
        "APPTSYNC_SIMULATOR_ACCOUNTS_PER_PROVIDER": "1",
    }


def batch_seed(seed: int, round_number: int, step: int) -> int:
    """The mutation seed of one batch: a function of the run's seed only, so a seed replays."""
    return seed * 10_000 + round_number * 100 + step


class Simulator:
    """The simulator's admin API."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def get(self, path: str) -> object:
        return (await self._client.get(path)).raise_for_status().json()

    async def mutate(self, seed: int, count: int, near_term_days: int) -> list[dict[str, object]]:
        body = {"seed": seed, "count": count, "near_term_days": near_term_days}
        answer = (await self._client.post("/_admin/mutations", json=body)).raise_for_status().json()
        applied: list[dict[str, object]] = answer["applied"]
        return applied

    async def truth(self) -> dict[tuple[str, str], Expected]:
        expected = {}
        for provider, account in (("acuity", 1001), ("calendly", 1), ("google", 1)):
            records = await self.get(f"/_admin/{provider}/truth/{account}")
            assert isinstance(records, list)
            for record in records:
                item = Expected.from_truth(provider, record)
                expected[(provider, item.external_id)] = item
        return expected

    async def reset_counters(self) -> None:
        for provider in PROVIDERS:
            (await self._client.delete(f"/_admin/{provider}/counters")).raise_for_status()

    async def requests(self) -> int:
        total = 0
        for provider in PROVIDERS:
            snapshot = await self.get(f"/_admin/{provider}/counters")
            assert isinstance(snapshot, dict)
            total += int(snapshot["requests"])
        return total


async def put_connections(
    stub: imports_pb2_grpc.ImportServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    simulator: Simulator,
    *,
    tenants: Mapping[str, str],
    simulator_url: str,
) -> None:
    """One connection per provider to the simulator's first account: ids `acuity`, `calendly`, `google`."""
    calendly_accounts = await simulator.get("/_admin/calendly/accounts")
    google_accounts = await simulator.get("/_admin/google/accounts")
    assert isinstance(calendly_accounts, list) and isinstance(google_accounts, list)
    calendly, google = calendly_accounts[0], google_accounts[0]
    oauth = ("access_token", "refresh_token", "client_id", "client_secret")
    requests = [
        imports_pb2.PutConnectionRequest(
            tenant_id=tenants["acuity"], connection_id="acuity", source=SOURCES["acuity"],
            base_url=f"{simulator_url}/acuity/api/v1", credentials={"user_id": "1001", "api_key": "demo-acuity-key"},
        ),
        imports_pb2.PutConnectionRequest(
            tenant_id=tenants["calendly"], connection_id="calendly", source=SOURCES["calendly"],
            base_url=f"{simulator_url}/calendly", credentials={k: str(calendly[k]) for k in oauth},
            settings={"organization": str(calendly["organization"])},
        ),
        imports_pb2.PutConnectionRequest(
            tenant_id=tenants["google"], connection_id="google", source=SOURCES["google"],
            base_url=f"{simulator_url}/google/calendar/v3", credentials={k: str(google[k]) for k in oauth},
            settings={"calendar_ids": ",".join(str(c["id"]) for c in google["calendars"]),
                      "token_url": f"{simulator_url}/google/oauth2/token"},
        ),
    ]  # fmt: skip
    for request in requests:
        await stub.PutConnection(request, metadata=metadata, timeout=30)


async def stored_rows(database_url: str, tenant_ids: Iterable[str]) -> tuple[list[Stored], list[str]]:
    """The tenants' rows, and the judged columns the schema lacks (`deleted_at`,
    `rescheduled_to_external_id`: read only when present)."""
    stored: list[Stored] = []
    missing: list[str] = []
    for tenant_id in dict.fromkeys(tenant_ids):
        rows, missing = await _tenant_rows(database_url, tenant_id)
        stored += rows
    return stored, missing


async def _tenant_rows(database_url: str, tenant_id: str) -> tuple[list[Stored], list[str]]:
    connection = await asyncpg.connect(database_url)
    try:
        # Row-level security binds the tables' owner too (FORCE): act as the tenant (a superuser
        # would see every row anyway).
        await connection.execute("SELECT set_config('app.tenant_id', $1, false)", tenant_id)
        columns = {
            row["column_name"]
            for row in await connection.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'appointments'"
            )
        }
        optional = ["deleted_at", "rescheduled_to_external_id"]
        present = [c for c in optional if c in columns]
        extra = "".join(f", {c}" for c in present)
        rows = await connection.fetch(
            "SELECT connection_id, external_id, status, starts_at, ends_at, price_minor, price_currency, "
            f"amount_paid_minor, amount_paid_currency, contact_email, contact_phone{extra} "
            "FROM appointments WHERE tenant_id = $1",
            uuid.UUID(tenant_id),
        )
    finally:
        await connection.close()
    stored = [
        Stored(
            provider=row["connection_id"],
            external_id=row["external_id"],
            status=row["status"],
            deleted=(row["deleted_at"] is not None) if "deleted_at" in present else None,
            starts_at=row["starts_at"],
            ends_at=row["ends_at"],
            price=money(row["price_minor"], row["price_currency"]),
            amount_paid=money(row["amount_paid_minor"], row["amount_paid_currency"]),
            contact_email=row["contact_email"],
            contact_phone=row["contact_phone"],
            rescheduled_to=(row["rescheduled_to_external_id"] or "")
            if "rescheduled_to_external_id" in present
            else None,
        )
        for row in rows
    ]
    return stored, [c for c in optional if c not in present]


class SyncAll:
    """Runs one CronJob's `sync-all` as a subprocess and waits for the jobs it started."""

    def __init__(
        self,
        system: FidelitySystem,
        stub: imports_pb2_grpc.ImportServiceAsyncStub,
        metadata: tuple[tuple[str, str], ...],
        config: FidelityConfig,
    ) -> None:
        self._system = system
        self._stub = stub
        self._metadata = metadata
        self._config = config
        self._last_started = 0.0

    async def run(self, cron: CronSync, tenant_ids: Iterable[str]) -> SyncRun:
        loop = asyncio.get_running_loop()
        # A new idempotency slot for every run, as CronJob runs minutes apart always are.
        await asyncio.sleep(max(0.0, self._last_started + IDEMPOTENCY_WINDOW_SECONDS + 0.05 - loop.time()))
        self._last_started = loop.time()
        argv = [sys.executable, "-m", "apptsync.cli", *cron.args, "--address", self._system.gateway_address,
                "--json", "--idempotency-window-seconds", str(IDEMPOTENCY_WINDOW_SECONDS)]  # fmt: skip
        env = {**self._system.cli_env, "APPTSYNC_CLI_TOKEN_FILE": str(self._system.token_file)}
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), self._config.sync_all_timeout_seconds)
        except TimeoutError as exc:
            process.kill()  # ours: the pid this call started
            await process.wait()
            limit = self._config.sync_all_timeout_seconds
            raise AssertionError(f"{cron.name}: sync-all did not finish in {limit} s") from exc
        if process.returncode != 0:
            raise AssertionError(f"{cron.name}: sync-all exited {process.returncode}: {err.decode()[-2000:]}")
        responses = json.loads(out)
        tenants = set(tenant_ids)
        mine = {r["job"]["job_id"]: r["job"]["tenant_id"] for r in responses if r["job"]["tenant_id"] in tenants}
        jobs = [await self._wait(tenant_id, job_id) for job_id, tenant_id in mine.items()]
        # A connection none of whose answers is a job of its own was not synced by this run.
        names = []
        for tenant_id in sorted(tenants):
            listed = await self._stub.ListConnections(
                imports_pb2.ListConnectionsRequest(tenant_id=tenant_id), metadata=self._metadata, timeout=30
            )
            names += [c.connection_id for c in listed.connections]
        synced = {job.connection_id for job in jobs}
        return SyncRun(cron=cron.name, connections=len(names), jobs=jobs,
                       shared_job_connections=[n for n in names if n not in synced])  # fmt: skip

    async def _wait(self, tenant_id: str, job_id: str) -> imports_pb2.Job:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.job_timeout_seconds
        request = imports_pb2.GetJobRequest(tenant_id=tenant_id, job_id=job_id)
        for _poll in range(int(self._config.job_timeout_seconds / 0.1) + 1):
            job = await self._stub.GetJob(request, metadata=self._metadata, timeout=30)
            if job.state in TERMINAL or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        if job.state not in TERMINAL:
            raise AssertionError(f"job {job_id} did not end within {self._config.job_timeout_seconds} s: {job}")
        return job


async def run_seed(
    system: FidelitySystem,
    schedule: SyncSchedule,
    config: FidelityConfig,
    *,
    clock: Callable[[], datetime],
    log: Callable[[str], object] = print,
) -> SeedReport:
    """One seed of the fidelity run (see the module doc) against running services whose simulator was
    seeded with `config.seed` (see simulator_env). `clock` is now (the window judged is derived from
    it). Raises AssertionError when the system misbehaves outright (sync-all fails, a job hangs)."""
    report = SeedReport(seed=config.seed)
    tenants = tenants_for(config.seed, per_connection=config.tenant_per_connection)
    token = system.token_file.read_text("utf-8").strip()
    metadata = (("authorization", f"Bearer {token}"),)
    async with (
        httpx.AsyncClient(base_url=system.simulator_url, timeout=60, trust_env=False) as client,
        grpc.aio.insecure_channel(system.gateway_address) as channel,
    ):
        simulator = Simulator(client)
        stub = imports_pb2_grpc.ImportServiceStub(channel)
        sync_all = SyncAll(system, stub, metadata, config)
        await put_connections(stub, metadata, simulator, tenants=tenants, simulator_url=system.simulator_url)

        async def sync(crons: Sequence[CronSync]) -> None:
            for cron in crons:
                run = await sync_all.run(cron, tenants.values())
                report.syncs.append(run)
                report.failed_jobs += [
                    f"{cron.name} {j.connection_id} {imports_pb2.JobState.Name(j.state)}: {j.error}"
                    for j in run.jobs if j.state != imports_pb2.JOB_STATE_SUCCEEDED
                ]  # fmt: skip
                log(f"  seed {config.seed} {run.summary()}")

        async def full_sync_and_compare() -> None:
            await sync(schedule.full)
            now = clock()
            window = Window(now - SYNC_WINDOW_HALF + WINDOW_MARGIN, now + SYNC_WINDOW_HALF - WINDOW_MARGIN)
            stored, missing_columns = await stored_rows(system.owner_database_url, tenants.values())
            found = compare((await simulator.truth()).values(), stored, window)
            report.divergences_after_full_sync.append(found)
            note = f" (schema lacks {', '.join(missing_columns)})" if missing_columns else ""
            first = f"; first: {found[0].line()}" if found else ""
            log(f"  seed {config.seed} full sync {len(report.divergences_after_full_sync) - 1}: "
                f"{len(found)} divergences{note}{first}")  # fmt: skip

        await full_sync_and_compare()
        for round_number in range(config.rounds):
            for step in range(config.frequent_per_round):
                applied = await simulator.mutate(
                    batch_seed(config.seed, round_number, step), config.mutations_per_batch, config.near_term_days
                )
                changed = near_term_keys(applied)
                await simulator.reset_counters()
                await sync(schedule.frequent)
                report.requests_per_frequent_sync.append(await simulator.requests())
                stored, _ = await stored_rows(system.owner_database_url, tenants.values())
                by_key = {(row.provider, row.external_id): row for row in stored}
                missed = missed_changes(changed, await simulator.truth(), by_key)
                report.near_term_changes += len(changed)
                report.near_term_caught += len(changed) - len(missed)
                report.near_term_missed += missed
            await full_sync_and_compare()
    return report


def near_term_keys(applied: Sequence[Mapping[str, object]]) -> list[tuple[str, str]]:
    """(provider, key) of every record a near-term new booking, reschedule or cancellation touched
    (a Google deletion is its cancellation), once each, in order.

    A record is near-term when it was before the batch (as the mirror may hold it: the first
    mutation's `near_term_before`) or is after it (the last mutation's `near_term_after`); what it
    was between two mutations of one batch no sync could see (a booking made for tomorrow and moved
    to next month before the next sync is a far-future booking). Records a mutation creates besides
    its own (a Calendly reschedule's new booking) count when that mutation was near-term."""
    before: dict[tuple[str, str], bool] = {}
    after: dict[tuple[str, str], bool] = {}
    related_of_near: list[tuple[str, str]] = []
    touched: list[tuple[str, str]] = []
    for m in applied:
        key = (str(m["provider"]), str(m["key"]))
        before.setdefault(key, bool(m["near_term_before"]))
        after[key] = bool(m["near_term_after"])
        cancels = m["kind"] in NEAR_TERM_KINDS or (m["provider"] == "google" and m["kind"] == "delete")
        if not cancels:
            continue
        touched.append(key)
        related = m["related_keys"]
        assert isinstance(related, list)
        if m["near_term_before"] or m["near_term_after"]:
            related_of_near += [(key[0], str(related_key)) for related_key in related]
    near = [key for key in touched if before[key] or after[key]]
    return list(dict.fromkeys(near + related_of_near))


@dataclass(frozen=True, slots=True)
class Summary:
    seeds: int
    divergences_after_full_sync: int
    near_term_changes: int
    near_term_caught: int
    requests_p50: float
    requests_max: int

    @property
    def caught_share(self) -> float:
        return self.near_term_caught / self.near_term_changes if self.near_term_changes else 1.0

    def to_json(self) -> dict[str, object]:
        return {
            "seeds": self.seeds,
            "divergences_after_full_sync": self.divergences_after_full_sync,
            "near_term_changes": self.near_term_changes,
            "near_term_caught_by_next_frequent_sync": self.near_term_caught,
            "near_term_caught_share": round(self.caught_share, 4),
            "provider_requests_per_frequent_sync": {"p50": self.requests_p50, "max": self.requests_max},
        }


def summarize(reports: Sequence[SeedReport]) -> Summary:
    requests = [n for r in reports for n in r.requests_per_frequent_sync]
    return Summary(
        seeds=len(reports),
        divergences_after_full_sync=sum(r.divergences for r in reports),
        near_term_changes=sum(r.near_term_changes for r in reports),
        near_term_caught=sum(r.near_term_caught for r in reports),
        requests_p50=statistics.median(requests) if requests else 0.0,
        requests_max=max(requests, default=0),
    )


def table(reports: Sequence[SeedReport]) -> list[str]:
    """One line per seed, then each diverging seed's problems (seed and first differing row)."""
    header = f"{'seed':>6} {'divergences':>11} {'near-term caught':>16} {'requests/frequent p50':>21}"
    lines = [header + "  first divergence"]
    for r in reports:
        first = r.first_divergence.line() if r.first_divergence else "-"
        p50 = statistics.median(r.requests_per_frequent_sync) if r.requests_per_frequent_sync else 0
        lines.append(f"{r.seed:>6} {r.divergences:>11} {f'{r.near_term_caught}/{r.near_term_changes}':>16} "
                     f"{p50:>21}  {first}")  # fmt: skip
    for r in reports:
        problems = r.problems()
        if problems:
            lines.append(f"seed {r.seed} (replay: {replay_command(r.seed)}):")
            lines += [f"  {p}" for p in problems]
    return lines


def replay_command(seed: int) -> str:
    return f"make fidelity FIDELITY_ARGS='--seeds {seed}'"


def cli_environment(inherited: Mapping[str, str]) -> dict[str, str]:
    """The environment of a `sync-all` subprocess: `inherited`, never through a proxy for 127.0.0.1."""
    return {**inherited, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def write_tokens(directory: Path) -> tuple[Path, Path]:
    """A fresh bearer token for every tenant (as the CronJobs' sync token is): (the file holding it,
    the gateway's tokens file that admits it)."""
    token = secrets.token_urlsafe(24)
    token_file = directory / "sync-token"
    token_file.write_text(token + "\n", "utf-8")
    gateway_file = directory / "gateway-tokens.json"
    gateway_file.write_text(json.dumps({"tokens": [{"name": "fidelity-sync", "sha256": token_digest(token),
                                                    "tenants": ["*"]}]}), "utf-8")  # fmt: skip
    return token_file, gateway_file


def utc_now() -> datetime:
    return datetime.now(UTC)
