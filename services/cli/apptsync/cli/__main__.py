"""`apptsync`: one command for every process and task. Wiring only: parse, build settings, run.

The client commands reach the gateway in plaintext unless a TLS setting is given: --tls-ca-file
(APPTSYNC_CLI_TLS_CA_FILE) for TLS, with --tls-cert-file and --tls-key-file for mutual TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from apptsync.cli.exits import EXIT_INVALID, EXIT_OK, EXIT_OTHER, EXIT_UNAVAILABLE, exit_code_table
from apptsync.cli.moments import EXAMPLES
from apptsync.shared.appointments import Source
from apptsync.shared.errors import InvalidArgumentError
from apptsync.shared.provider_access import credential_summary
from apptsync.shared.settings import CliSettings, CredentialSettings, DatabaseSettings, SettingsGroup
from apptsync.shared.telemetry import process_telemetry
from apptsync.shared.telemetry.logs import configure_logging, dsn_secrets, keyring_secrets, register_secrets

if TYPE_CHECKING:
    from apptsync.fetcher.providers import RateBudget

_log = logging.getLogger("apptsync.cli")
EPILOG = (
    "exit codes (for scripts; sync-all exits 0 when every connection has its job, else with the\n"
    "highest code among its connections):\n" + exit_code_table()
)


_Group = TypeVar("_Group", bound=SettingsGroup)


def _from_environment(group: type[_Group]) -> _Group:
    """`group` as this process's environment sets it: the one place os.environ is handed in."""
    return group.from_environment(os.environ)


def _register_service_secrets(database: DatabaseSettings, credentials: CredentialSettings) -> None:
    """The process's own secrets never reach a log line, whatever carries them (see telemetry.logs)."""
    register_secrets(*dsn_secrets(database.url.get_secret_value()))
    keyring_text = credentials.keyring.get_secret_value()
    if credentials.keyring_file:
        keyring_text = Path(credentials.keyring_file).read_text("utf-8").strip()
    register_secrets(*keyring_secrets(keyring_text))


def _run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Runs a service coroutine; SIGTERM or SIGINT sets its stop event (graceful drain)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(stop)

    asyncio.run(main())
    return EXIT_OK


def _cmd_gateway(_args: argparse.Namespace) -> int:
    from apptsync.gateway.server import run_gateway
    from apptsync.shared.credentials import Keyring
    from apptsync.shared.outbound import OutboundPolicy
    from apptsync.shared.settings import GatewaySettings, OutboundSettings, WebhookSettings

    settings = _from_environment(GatewaySettings)
    database, credentials = _from_environment(DatabaseSettings), _from_environment(CredentialSettings)
    _register_service_secrets(database, credentials)
    # Before anything starts: a malformed allowed origin fails start-up instead of a request.
    outbound = OutboundPolicy.from_settings(_from_environment(OutboundSettings))
    webhooks = _from_environment(WebhookSettings)

    async def serve(stop: asyncio.Event) -> None:
        await run_gateway(
            database, Keyring.from_settings(credentials), settings, outbound=outbound, stop=stop, webhooks=webhooks
        )

    with process_telemetry(
        service_name="apptsync-gateway",
        host_name=socket.gethostname(),
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
    ):
        return _run_until_signalled(serve)


def _cmd_webhook_receiver(_args: argparse.Namespace) -> int:
    from apptsync.gateway.webhooks import run_webhook_receiver
    from apptsync.shared.credentials import Keyring
    from apptsync.shared.settings import WebhookSettings

    settings = _from_environment(WebhookSettings)
    database, credentials = _from_environment(DatabaseSettings), _from_environment(CredentialSettings)
    _register_service_secrets(database, credentials)

    async def serve(stop: asyncio.Event) -> None:
        await run_webhook_receiver(database, Keyring.from_settings(credentials), settings, stop=stop)

    with process_telemetry(
        service_name="apptsync-webhook-receiver",
        host_name=socket.gethostname(),
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
    ):
        return _run_until_signalled(serve)


def _cmd_renew_subscriptions(_args: argparse.Namespace) -> int:
    from apptsync.gateway.subscriptions import renew_subscriptions
    from apptsync.shared.credentials import Keyring
    from apptsync.shared.db.pool import create_pool
    from apptsync.shared.outbound import OutboundPolicy
    from apptsync.shared.settings import GatewaySettings, OutboundSettings, WebhookSettings

    database, credentials = _from_environment(DatabaseSettings), _from_environment(CredentialSettings)
    _register_service_secrets(database, credentials)
    outbound = OutboundPolicy.from_settings(_from_environment(OutboundSettings))
    webhooks, gateway = _from_environment(WebhookSettings), _from_environment(GatewaySettings)

    async def run() -> tuple[int, int]:
        pool = await create_pool(database, application_name="apptsync-renew-subscriptions")
        try:
            return await renew_subscriptions(
                pool, Keyring.from_settings(credentials), webhooks, outbound=outbound,
                timeout_seconds=gateway.credential_probe_timeout_seconds,
            )  # fmt: skip
        finally:
            await pool.close()

    renewed, failed = asyncio.run(run())
    print(json.dumps({"renewed": renewed, "failed": failed}))
    return EXIT_OK if failed == 0 else EXIT_UNAVAILABLE


def _cmd_fetcher(_args: argparse.Namespace) -> int:
    return run_fetcher_process()


def run_fetcher_process(*, rate_budget_overrides: Mapping[Source, RateBudget] | None = None) -> int:
    """`apptsync fetcher`: settings from the environment, telemetry, run until SIGTERM/SIGINT.
    `rate_budget_overrides` is for benchmarks and tests against the simulator (tests/hooked_services.py);
    the command passes none."""
    from apptsync.fetcher.runner import new_worker_id
    from apptsync.fetcher.service import run_fetcher
    from apptsync.shared.credentials import Keyring
    from apptsync.shared.outbound import OutboundPolicy
    from apptsync.shared.settings import FetcherSettings, KafkaSettings, OutboundSettings

    settings = _from_environment(FetcherSettings)
    database, credentials = _from_environment(DatabaseSettings), _from_environment(CredentialSettings)
    _register_service_secrets(database, credentials)
    outbound = OutboundPolicy.from_settings(_from_environment(OutboundSettings))
    worker_id = settings.worker_id or new_worker_id(socket.gethostname(), os.getpid())

    async def serve(stop: asyncio.Event) -> None:
        await run_fetcher(
            database,
            _from_environment(KafkaSettings),
            settings,
            Keyring.from_settings(credentials),
            outbound=outbound,
            worker_id=worker_id,
            stop=stop,
            rate_budget_overrides=rate_budget_overrides,
        )

    with process_telemetry(
        service_name="apptsync-fetcher",
        host_name=socket.gethostname(),
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
    ):
        return _run_until_signalled(serve)


def _cmd_writer(_args: argparse.Namespace) -> int:
    return run_writer_process()


def run_writer_process(
    *, after_commit: Callable[[], None] | None = None, after_send: Callable[[], None] | None = None
) -> int:
    """`apptsync writer`: settings from the environment, telemetry, run until SIGTERM/SIGINT.
    `after_commit` / `after_send` are the crash tests' fault hooks (tests/hooked_services.py: after a
    database commit, after the change relay's send); the command passes none."""
    from apptsync.shared.settings import KafkaSettings, WriterSettings
    from apptsync.writer import run_writer

    settings, database = _from_environment(WriterSettings), _from_environment(DatabaseSettings)
    _register_service_secrets(database, _from_environment(CredentialSettings))

    async def serve(stop: asyncio.Event) -> None:
        await run_writer(
            database, _from_environment(KafkaSettings), settings, stop=stop, after_commit=after_commit,
            after_send=after_send,
        )  # fmt: skip

    with process_telemetry(
        service_name="apptsync-writer",
        host_name=socket.gethostname(),
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
    ):
        return _run_until_signalled(serve)


def _embedded_parts_missing(command: str, parts: Sequence[tuple[str, str]]) -> bool:
    """True (after one line on stderr saying what to install) when `command` cannot run here."""
    from apptsync.cli.embedded import missing_parts, missing_parts_message

    missing = missing_parts(parts)
    if missing:
        print(f"error: {missing_parts_message(command, missing)}", file=sys.stderr)
    return bool(missing)


def _cmd_simulator(_args: argparse.Namespace) -> int:
    from apptsync.cli.embedded import SIMULATOR

    if _embedded_parts_missing("simulator", [SIMULATOR]):
        return EXIT_OTHER
    from apptsync.shared.settings import SimulatorSettings
    from apptsync.simulator import serve as serve_simulator

    async def serve(stop: asyncio.Event) -> None:
        task = asyncio.create_task(serve_simulator(_from_environment(SimulatorSettings)))
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return _run_until_signalled(serve)


def _cmd_migrate(_args: argparse.Namespace) -> int:
    from apptsync.shared.db.migrator import migrate
    from apptsync.shared.db.pool import connect
    from apptsync.shared.settings import DatabaseSettings

    async def run() -> list[int]:
        # As the tables' owner (APPTSYNC_DATABASE_MIGRATION_URL); the services connect as apptsync_service.
        owner = _from_environment(DatabaseSettings).for_migrations()
        connection = await connect(owner, application_name="apptsync-migrate")
        try:
            return await migrate(connection)
        finally:
            await connection.close()

    applied = asyncio.run(run())
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_rotate_credentials_key(args: argparse.Namespace) -> int:
    from apptsync.shared.credentials import Keyring
    from apptsync.shared.db.connections import KeyRotationReport, reencrypt_credentials
    from apptsync.shared.db.pool import connect

    database, credentials = _from_environment(DatabaseSettings), _from_environment(CredentialSettings)
    _register_service_secrets(database, credentials)
    keyring = Keyring.from_settings(credentials)

    async def progress(report: KeyRotationReport) -> None:
        print(f"batch {report.batches}: {report.reencrypted} re-encrypted, {report.already_current} already current")

    async def run() -> KeyRotationReport:
        connection = await connect(database, application_name="apptsync-rotate-credentials-key")
        try:
            return await reencrypt_credentials(
                connection, keyring=keyring, batch_size=args.batch_size, after_batch=progress
            )
        finally:
            await connection.close()

    report = asyncio.run(run())
    # Counts and ids only: neither a key nor a credential is ever printed.
    print(
        f"credentials under key {keyring.primary_key_id!r}: {report.scanned} scanned, {report.reencrypted} "
        f"re-encrypted, {report.already_current} already current, {len(report.unreadable)} unreadable"
    )
    for tenant_id, connection_id in report.unreadable:
        print(f"unreadable with every key of the keyring: tenant {tenant_id} connection {connection_id!r}")
    return EXIT_OK if not report.unreadable else EXIT_OTHER


def _cmd_prune(args: argparse.Namespace) -> int:
    """Prunes old raw payloads and ledger rows as the services' role; prints one JSON line of counts."""
    import json
    import time
    from datetime import UTC, datetime

    from apptsync.shared.db.pool import connect
    from apptsync.shared.db.retention import prune
    from apptsync.shared.errors import ApptsyncError, StorageUnavailableError
    from apptsync.shared.retention import PruneBudget, retention_cutoffs
    from apptsync.shared.settings import RetentionSettings

    settings = _from_environment(RetentionSettings)
    database = _from_environment(DatabaseSettings)
    register_secrets(*dsn_secrets(database.url.get_secret_value()))
    cutoffs = retention_cutoffs(
        datetime.now(UTC), raw_payload_days=settings.raw_payload_days, ledger_days=settings.ledger_days
    )
    budget = PruneBudget(max_batches=args.max_batches, deadline_monotonic=time.monotonic() + settings.max_seconds)

    async def run() -> dict[str, int | bool]:
        connection = await connect(database, application_name="apptsync-prune")
        try:
            report = await prune(
                connection, cutoffs=cutoffs, batch_rows=settings.batch_rows, budget=budget, monotonic=time.monotonic
            )
        finally:
            await connection.close()
        return report.as_dict()

    try:
        counts = asyncio.run(run())
    except StorageUnavailableError as exc:
        print(f"prune: database unavailable, batches committed so far stay: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ApptsyncError as exc:
        print(f"prune: {exc}", file=sys.stderr)
        return EXIT_OTHER
    print(json.dumps(counts, sort_keys=True))
    return EXIT_OK


def _cmd_dev_up(args: argparse.Namespace) -> int:
    from apptsync.cli.embedded import EMBEDDED_STACK

    if _embedded_parts_missing("dev up", EMBEDDED_STACK):
        return EXIT_OTHER
    from apptsync.cli.devstack import dev_up

    return asyncio.run(dev_up(Path(args.state_dir), fast_unsafe_postgres=args.fast_unsafe_postgres))


def _cmd_demo(args: argparse.Namespace) -> int:
    from apptsync.cli.embedded import EMBEDDED_STACK

    if _embedded_parts_missing("demo", EMBEDDED_STACK):
        return EXIT_OTHER
    from apptsync.cli.demo import run_demo

    return asyncio.run(
        run_demo(Path(args.state_dir), as_json=args.json, fast_unsafe_postgres=args.fast_unsafe_postgres)
    )


def _client(args: argparse.Namespace, *, name: str) -> int:
    """Runs client command `name`. A caller's mistake (InvalidArgumentError: a bad date, a partial or
    unreadable TLS setting) is one line on stderr and EXIT_INVALID; anything unexpected is one line
    and EXIT_OTHER (the traceback at DEBUG level): never Python's exit status 1, which means "the
    job failed"."""
    from apptsync.cli import client
    from apptsync.cli.transport import tls_files

    handler: Callable[[argparse.Namespace], int] = getattr(client, name)
    try:
        args.tls = tls_files(args.tls_ca_file, args.tls_cert_file, args.tls_key_file)
        return handler(args)
    except InvalidArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as exc:
        _log.debug("%s failed", args.command, exc_info=True)
        print(f"error: {type(exc).__name__}: {exc} (APPTSYNC_CLI_LOG_LEVEL=DEBUG logs the traceback)", file=sys.stderr)
        return EXIT_OTHER


FAST_UNSAFE_POSTGRES_HELP = (
    "run PostgreSQL with fsync, synchronous_commit and full_page_writes off: faster, and a crash of the "
    "machine can corrupt its data (default: durable)"
)


def build_parser(cli_settings: CliSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apptsync", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, handler, text in (
        ("gateway", _cmd_gateway, "run the gRPC gateway"),
        ("webhook-receiver", _cmd_webhook_receiver, "run the HTTP receiver of provider notifications (webhooks)"),
        ("fetcher", _cmd_fetcher, "run a fetcher (claims and runs import jobs)"),
        ("writer", _cmd_writer, "run a writer (stores pages from Kafka)"),
        ("simulator", _cmd_simulator, "run the provider simulator (Acuity-shaped API over HTTP)"),
        ("migrate", _cmd_migrate, "apply database migrations"),
        ("renew-subscriptions", _cmd_renew_subscriptions, "replace Google push channels that expire soon (a CronJob)"),
    ):
        commands.add_parser(name, help=text).set_defaults(handler=handler)

    rotate = commands.add_parser(
        "rotate-credentials-key",
        help="re-encrypt every stored credential under the keyring's first key (resumable; rerun until done)",
    )
    rotate.add_argument("--batch-size", type=_positive_int, default=100, help="connections per transaction")
    rotate.set_defaults(handler=_cmd_rotate_credentials_key)


    prune = commands.add_parser(
        "prune", help="delete raw payloads and import ledger rows older than the APPTSYNC_RETENTION_* ages"
    )
    prune.add_argument(
        "--max-batches", type=int, default=1_000_000, help="bound on the run's transactions (besides its time budget)"
    )
    prune.set_defaults(handler=_cmd_prune)

    dev = commands.add_parser("dev", help="the embedded local stack")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True, metavar="DEV_COMMAND")
    up = dev_commands.add_parser("up", help="start PostgreSQL, the broker, the simulator and all services")
    up.add_argument("--state-dir", default=".apptsync/dev", help="where data and logs live")
    up.add_argument("--fast-unsafe-postgres", action="store_true", help=FAST_UNSAFE_POSTGRES_HELP)
    up.set_defaults(handler=_cmd_dev_up)

    demo = commands.add_parser("demo", help="start the embedded stack and run two real imports")
    demo.add_argument("--state-dir", default=".apptsync/demo", help="where data and logs live")
    demo.add_argument("--json", action="store_true", help="print both final jobs as JSON")
    demo.add_argument("--fast-unsafe-postgres", action="store_true", help=FAST_UNSAFE_POSTGRES_HELP)
    demo.set_defaults(handler=_cmd_demo)

    def client_command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=text, description=text, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.add_argument(
            "--address",
            default=cli_settings.gateway_address,
            help="gateway host:port (default from APPTSYNC_CLI_GATEWAY_ADDRESS)",
        )
        sub.add_argument(
            "--tls-ca-file",
            default=cli_settings.tls_ca_file,
            metavar="PATH",
            help="PEM CA the gateway's certificate must chain to: speak TLS (default from APPTSYNC_CLI_TLS_CA_FILE; "
            "plaintext when no TLS file is set)",
        )
        sub.add_argument(
            "--tls-cert-file",
            default=cli_settings.tls_cert_file,
            metavar="PATH",
            help="PEM client certificate for mutual TLS (default from APPTSYNC_CLI_TLS_CERT_FILE)",
        )
        sub.add_argument(
            "--tls-key-file",
            default=cli_settings.tls_key_file,
            metavar="PATH",
            help="PEM private key of the client certificate (default from APPTSYNC_CLI_TLS_KEY_FILE)",
        )
        sub.add_argument("--timeout-seconds", type=float, default=10.0, help="deadline of each call")
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.add_argument("--tenant", required=name != "sync-all", help="tenant id (UUID)")
        sub.set_defaults(token=cli_settings.token.get_secret_value())
        sub.set_defaults(handler=functools.partial(_client, name=name.replace("-", "_")))
        return sub

    start = client_command("start-import", "queue an import job")
    start.add_argument("--source", required=True, choices=["acuity", "calendly", "google_calendar"])
    start.add_argument("--connection", required=True, help="connection id")
    start.add_argument(
        "--window-start",
        help="start of the window: a date (midnight UTC) or a date and time with Z or an offset, "
        f"e.g. {EXAMPLES} (default: the server's)",
    )
    start.add_argument("--window-end", help="end of the window, in the same forms")
    start.add_argument("--policy", choices=["no-new-records", "no-changes", "never"], help="stop policy")
    start.add_argument("--page-size", type=int, default=0)
    start.add_argument("--max-pages", type=int, default=0)
    start.add_argument("--max-in-flight-pages", type=int, default=0)
    start.add_argument("--stop-after-pages", type=int, default=0)
    start.add_argument("--deadline-seconds", type=float, default=0)
    start.add_argument("--idempotency-key", default="")
    start.add_argument("--wait", action="store_true", help="wait until the job ends; exit 1 unless SUCCEEDED")

    get = client_command("get-job", "show a job")
    get.add_argument("--job", required=True, help="job id")
    cancel = client_command("cancel-job", "stop a job at its next page boundary")
    cancel.add_argument("--job", required=True, help="job id")

    listing = client_command("list-jobs", "list a tenant's jobs, newest first")
    listing.add_argument(
        "--state", action="append", default=[], choices=["queued", "running", "succeeded", "failed", "canceled"]
    )
    listing.add_argument("--limit", type=int, default=20)
    watch = client_command("watch-job", "follow a job with a live progress bar until it ends")
    watch.add_argument("--job", required=True, help="job id")

    sync = client_command(
        "sync-all", "start an import for every connection, one job per connection per slot (safe to fire twice)"
    )
    sync.add_argument("--policy", required=True, choices=["no-new-records", "no-changes", "never"])
    sync.add_argument(
        "--idempotency-window-seconds",
        type=int,
        default=300,
        help="slot length: calls within one slot get each connection's same job",
    )

    put = client_command("put-connection", "create or replace a provider connection")
    put.add_argument("--source", required=True, choices=["acuity", "calendly", "google_calendar"])
    put.add_argument("--connection", required=True, help="connection id")
    put.add_argument(
        "--base-url",
        default="",
        help="provider API base URL (default: the public API); the provider's own https hosts only, "
        "or an origin the deployment allows (APPTSYNC_OUTBOUND_ALLOWED_ORIGINS)",
    )
    put.add_argument(
        "--credentials-file",
        required=True,
        metavar="PATH",
        help="JSON object of credential fields (secrets never go on the command line, which other users "
        "of the machine can read): "
        + "; ".join(f"{source.value} {credential_summary(source)}" for source in Source)
        + ". Refresh needs client_id and client_secret with the refresh_token (Google: client_secret "
        "only for clients that have one)",
    )
    put.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    put.add_argument(
        "--skip-verification",
        action="store_true",
        help="store without asking the provider whether it accepts the credentials (by default a refused "
        "credential exits non-zero and nothing is stored)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cli_settings = _from_environment(CliSettings)
    except InvalidArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    args = build_parser(cli_settings).parse_args(argv)
    configure_logging(cli_settings.log_level, service=f"apptsync-{args.command}")
    register_secrets(cli_settings.token.get_secret_value())
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
