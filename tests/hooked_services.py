"""`apptsync fetcher` and `apptsync writer` with the hooks production never has, for tests and benchmarks.

Production settings hold no test hook or benchmark knob; the processes that need one are started
through this script instead of `python -m apptsync.cli` (it imports only apptsync, so it runs as a
plain script from any working directory):

    python tests/hooked_services.py fetcher --provider-requests-per-second 500
    python tests/hooked_services.py writer --crash-after-commit-probability 0.2 --fault-seed 7

- `--provider-requests-per-second`: every provider's published request budget replaced (against our
  own simulator a real provider's limit would measure the limit, not apptsync).
- `--crash-after-commit-probability` / `--fault-seed`: the writer SIGKILLs itself after a database
  commit with this chance, before its results or offsets are committed (a node lost mid-batch).

`hooked_command(...)` gives the `CommandFactory` a ServiceSet or DevStack starts its services with.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from apptsync.cli.__main__ import run_fetcher_process, run_writer_process
from apptsync.cli.devstack.services import CommandFactory, apptsync_cli_command
from apptsync.fetcher.providers import RateBudget
from apptsync.shared.appointments import Source
from apptsync.shared.settings import CliSettings
from apptsync.shared.telemetry.logs import configure_logging

SCRIPT = Path(__file__).resolve()
_log = logging.getLogger("apptsync.tests.hooked_services")


# A rate the benchmarks give "lifted" limits: the simulator is ours, so its limits would measure
# nothing of apptsync. It must lie far above what is reached: a one-request bucket refilled every
# 1/rate seconds waits on asyncio timers, and at 1,000/s Calendly's invitee fetches reached 506/s.
LIFTED_REQUESTS_PER_SECOND = 100_000.0


def rate_budgets(requests_per_second: float) -> dict[Source, RateBudget]:
    """Every provider's budget replaced by one request per 1/`requests_per_second` seconds (a leaky
    bucket of one request; see RateBudget), at most 20 at once."""
    budget = RateBudget(requests_per_period=1, period_seconds=1.0 / requests_per_second, max_concurrent=20)
    return dict.fromkeys(Source, budget)


def crash_after_commit_hook(probability: float, rng: random.Random) -> Callable[[], None]:
    """With `probability` per call, the process SIGKILLs itself (no cleanup, no offset commit), like a
    node lost right after PostgreSQL committed."""

    def maybe_crash() -> None:
        if probability > 0 and rng.random() < probability:
            _log.warning("writer: fault hook: SIGKILL after a database commit")
            os.kill(os.getpid(), signal.SIGKILL)

    return maybe_crash


def hooked_command(
    *,
    provider_requests_per_second: float | None = None,
    crash_after_commit_probability: float | None = None,
    fault_seed: int = 0,
    python_executable: str = sys.executable,
) -> CommandFactory:
    """Starts the fetcher (with the rate override) and the writer (with the crash fault) through this
    script when their hook is given; every other service as `apptsync NAME`."""

    def command(name: str) -> Sequence[str]:
        if name == "fetcher" and provider_requests_per_second is not None:
            return (python_executable, str(SCRIPT), name, "--provider-requests-per-second",
                    str(provider_requests_per_second))  # fmt: skip
        if name == "writer" and crash_after_commit_probability is not None:
            return (python_executable, str(SCRIPT), name, "--crash-after-commit-probability",
                    str(crash_after_commit_probability), "--fault-seed", str(fault_seed))  # fmt: skip
        return apptsync_cli_command(name, python_executable=python_executable)

    return command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("service", choices=["fetcher", "writer"])
    parser.add_argument("--provider-requests-per-second", type=float, default=None)
    parser.add_argument("--crash-after-commit-probability", type=float, default=0.0)
    parser.add_argument("--fault-seed", type=int, default=0)
    args = parser.parse_args(argv)
    configure_logging(CliSettings.from_environment(os.environ).log_level, service=f"apptsync-{args.service}")
    if args.service == "fetcher":
        overrides = None
        if args.provider_requests_per_second is not None:
            overrides = rate_budgets(args.provider_requests_per_second)
        return run_fetcher_process(rate_budget_overrides=overrides)
    # The page writer crashes after a database commit, the change relay after the broker acknowledged
    # a batch (before its outbox commit): each by its own seeded chance.
    return run_writer_process(
        after_commit=crash_after_commit_hook(args.crash_after_commit_probability, random.Random(args.fault_seed)),
        after_send=crash_after_commit_hook(args.crash_after_commit_probability, random.Random(args.fault_seed + 1)),
    )


if __name__ == "__main__":
    sys.exit(main())
