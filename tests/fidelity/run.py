"""`make fidelity`: the mirror-fidelity harness over many seeds on the embedded stack (no Docker).

    .venv/bin/python tests/fidelity/run.py [--seeds 1 2 3 | --seed-count 20] [--rounds 2]
                                           [--frequent-per-round 3] [--mutations 6] [--appointments 60]

Starts the embedded PostgreSQL and broker once; per seed a fresh database, fresh topics and fresh
services (gateway, fetcher, writer, the simulator seeded with the seed), then tests/fidelity/harness.py
`run_seed` (the shipped CronJobs' `sync-all` from deploy/k8s, seeded mutations, comparison with the
simulator's truth). Prints a line per seed as it goes, a table, each diverging seed's first differing
row with the command that replays it, and last one JSON line: `seeds`, `divergences_after_full_sync`,
`near_term_changes`, `near_term_caught_by_next_frequent_sync`, `near_term_caught_share`,
`provider_requests_per_frequent_sync` {`p50`, `max`}. Exit 0 when every full sync left the mirror
equal to the truth and >= 99% of near-term changes were caught by the next frequent sync, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import asyncpg

# Run as a script from the repository root: make `tests.*` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from apptsync.cli.devstack import (
    FAST_UNSAFE_SERVER_SETTINGS,
    EmbeddedBroker,
    EmbeddedPostgres,
    ServiceSet,
    format_dev_keyring,
)
from apptsync.cli.devstack.postgres import postgres_url, quote_identifier
from tests.e2e.system import system_env
from tests.fidelity.harness import (
    FidelityConfig,
    FidelitySystem,
    SeedReport,
    cli_environment,
    run_seed,
    simulator_env,
    summarize,
    table,
    utc_now,
    write_tokens,
)
from tests.fidelity.schedule import shipped_schedule

MIN_NEAR_TERM_CAUGHT_SHARE = 0.99


async def fresh_database(postgres: EmbeddedPostgres, name: str) -> tuple[str, str]:
    """A new database owned by the stack's owner role: (owner URL, service-role URL)."""
    connection = await asyncpg.connect(postgres.superuser_url, ssl=False)
    try:
        await connection.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE)")
        await connection.execute(f"CREATE DATABASE {quote_identifier(name)} OWNER {quote_identifier(postgres.role)}")
    finally:
        await connection.close()
    return (
        postgres_url(user=postgres.role, port=postgres.port, database=name),
        postgres_url(user=postgres.service_role, port=postgres.port, database=name),
    )


async def one_seed(
    postgres: EmbeddedPostgres, broker: EmbeddedBroker, state_dir: Path, config: FidelityConfig, appointments: int
) -> SeedReport:
    seed_dir = state_dir / f"seed-{config.seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    owner_url, service_url = await fresh_database(postgres, f"fidelity_{config.seed}")
    token_file, gateway_tokens = write_tokens(seed_dir)
    env = system_env(
        seed_dir, APPTSYNC_GATEWAY_AUTH_TOKENS_FILE=str(gateway_tokens), **simulator_env(config.seed, appointments)
    )
    services = ServiceSet(
        database_url=service_url,
        migration_database_url=owner_url,
        bootstrap_servers=broker.bootstrap_servers,
        log_dir=seed_dir / "logs",
        credentials_keyring=format_dev_keyring(uuid.uuid4().bytes * 2),
        extra_env=env,
        ready_timeout_seconds=120,
    )
    async with services:
        system = FidelitySystem(
            gateway_address=services.addresses.gateway_address,
            simulator_url=services.addresses.simulator_url,
            owner_database_url=owner_url,
            token_file=token_file,
            cli_env=cli_environment(os.environ),
        )
        return await run_seed(system, shipped_schedule(), config, clock=utc_now)


async def main(args: argparse.Namespace) -> int:
    seeds: list[int] = args.seeds or list(range(1, args.seed_count + 1))
    with tempfile.TemporaryDirectory(prefix="apptsync-fidelity-") as scratch:
        state_dir = Path(args.state_dir) if args.state_dir else Path(scratch)
        reports: list[SeedReport] = []
        # A correctness harness on throwaway data, not a source of figures: fsync off is fine here.
        fast = FAST_UNSAFE_SERVER_SETTINGS
        async with (
            EmbeddedPostgres(state_dir / "postgres", server_settings=fast) as postgres,
            EmbeddedBroker(state_dir / "logs") as broker,
        ):
            for seed in seeds:
                config = FidelityConfig(
                    seed=seed,
                    rounds=args.rounds,
                    frequent_per_round=args.frequent_per_round,
                    mutations_per_batch=args.mutations,
                    tenant_per_connection=args.tenant_per_connection,
                )
                print(f"seed {seed}: starting", flush=True)
                report = await one_seed(postgres, broker, state_dir, config, args.appointments)
                reports.append(report)
                print(f"seed {seed}: {report.divergences} divergences, near-term caught "
                      f"{report.near_term_caught}/{report.near_term_changes}", flush=True)  # fmt: skip
    for line in table(reports):
        print(line)
    summary = summarize(reports)
    print(json.dumps(summary.to_json(), sort_keys=True), flush=True)
    exact = summary.divergences_after_full_sync == 0 and summary.caught_share >= MIN_NEAR_TERM_CAUGHT_SHARE
    return 0 if exact else 1


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="seeds to run (default: 1..--seed-count)")
    parser.add_argument("--seed-count", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="full syncs after the first one")
    parser.add_argument("--frequent-per-round", type=int, default=3, help="mutation batches + frequent syncs per round")
    parser.add_argument("--mutations", type=int, default=6, help="mutations per batch")
    parser.add_argument("--appointments", type=int, default=60, help="seeded records per provider account")
    parser.add_argument(
        "--tenant-per-connection",
        action="store_true",
        help="diagnosis: each connection on a tenant of its own (shows every provider's divergences when a "
        "tenant-wide sync-all problem hides them)",
    )
    parser.add_argument("--state-dir", default="", help="where data and logs go (default: a temporary directory)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_arguments())))
