"""`apptsync`: one command for every process and task. Wiring only: parse, build settings, run.

Exit codes (for scripts): 0 success; 1 the job ended FAILED or CANCELED, or the demo's checks
failed; 2 invalid arguments; 3 not found; 4 unavailable (retry later); 5 other errors; 6 refused:
the idempotency key is held by a job another request started. sync-all exits 0 when every
connection has its job, else with the highest code among its connections.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from apptsync.shared.settings import CliSettings, CredentialSettings, DatabaseSettings
from apptsync.shared.telemetry import process_telemetry
from apptsync.shared.telemetry.logs import configure_logging, dsn_secrets, keyring_secrets, register_secrets

EXIT_OK, EXIT_JOB_FAILED, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_OTHER = 0, 1, 2, 3, 4, 5


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
    from apptsync.gateway.server import serve_gateway
    from apptsync.shared.credentials import Keyring
    from apptsync.shared.db.pool import create_pool
    from apptsync.shared.outbound import OutboundPolicy
    from apptsync.shared.settings import GatewaySettings, OutboundSettings

    settings, database, credentials = GatewaySettings(), DatabaseSettings(), CredentialSettings()
    _register_service_secrets(database, credentials)
    # Before anything starts: a malformed allowed origin fails start-up instead of a request.
    outbound = OutboundPolicy.from_settings(OutboundSettings())

    async def serve(stop: asyncio.Event) -> None:
        pool = await create_pool(database, application_name="apptsync-gateway")
        try:
            await serve_gateway(pool, Keyring.from_settings(credentials), settings, outbound=outbound, stop=stop)
        finally:
            await pool.close()

    with process_telemetry(
        service_name="apptsync-gateway",
        host_name=socket.gethostname(),
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
    ):
        return _run_until_signalled(serve)


def _cmd_fetcher(_args: argparse.Namespace) -> int:
    from apptsync.fetcher.runner import new_worker_id
    from apptsync.fetcher.service import run_fetcher
    from apptsync.shared.credentials import Keyring
    from apptsync.shared.outbound import OutboundPolicy
    from apptsync.shared.settings import FetcherSettings, KafkaSettings, OutboundSettings

    settings, database, credentials = FetcherSettings(), DatabaseSettings(), CredentialSettings()
    _register_service_secrets(database, credentials)
    outbound = OutboundPolicy.from_settings(OutboundSettings())
    worker_id = settings.worker_id or new_worker_id(socket.gethostname(), os.getpid())

    async def serve(stop: asyncio.Event) -> None:
        await run_fetcher(
            database,
            KafkaSettings(),
            settings,
            Keyring.from_settings(credentials),
            outbound=outbound,
            worker_id=worker_id,
            stop=stop,
        )

    with process_telemetry(
        service_name="apptsync-fetcher",
        host_name=socket.gethostname(),
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
    ):
        return _run_until_signalled(serve)


def _cmd_writer(_args: argparse.Namespace) -> int:
    from apptsync.shared.settings import KafkaSettings, WriterSettings
    from apptsync.writer import run_writer

    settings, database = WriterSettings(), DatabaseSettings()
    _register_service_secrets(database, CredentialSettings())

    async def serve(stop: asyncio.Event) -> None:
        await run_writer(database, KafkaSettings(), settings, stop=stop)

    with process_telemetry(
        service_name="apptsync-writer",
        host_name=socket.gethostname(),
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
    ):
        return _run_until_signalled(serve)


def _cmd_simulator(_args: argparse.Namespace) -> int:
    from apptsync.shared.settings import SimulatorSettings
    from apptsync.simulator import serve as serve_simulator

    async def serve(stop: asyncio.Event) -> None:
        task = asyncio.create_task(serve_simulator(SimulatorSettings()))
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
        connection = await connect(DatabaseSettings().for_migrations(), application_name="apptsync-migrate")
        try:
            return await migrate(connection)
        finally:
            await connection.close()

    applied = asyncio.run(run())
    print(f"applied migrations: {applied or 'none (up to date)'}")
    return EXIT_OK


def _cmd_dev_up(args: argparse.Namespace) -> int:
    from apptsync.cli.devstack import dev_up

    return asyncio.run(dev_up(Path(args.state_dir)))


def _cmd_demo(args: argparse.Namespace) -> int:
    from apptsync.cli.demo import run_demo

    return asyncio.run(run_demo(Path(args.state_dir), as_json=args.json))


def _client(args: argparse.Namespace, *, name: str) -> int:
    from apptsync.cli import client

    handler: Callable[[argparse.Namespace], int] = getattr(client, name)
    return handler(args)


def build_parser(cli_settings: CliSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apptsync", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, handler, text in (
        ("gateway", _cmd_gateway, "run the gRPC gateway"),
        ("fetcher", _cmd_fetcher, "run a fetcher (claims and runs import jobs)"),
        ("writer", _cmd_writer, "run a writer (stores pages from Kafka)"),
        ("simulator", _cmd_simulator, "run the provider simulator (Acuity-shaped API over HTTP)"),
        ("migrate", _cmd_migrate, "apply database migrations"),
    ):
        commands.add_parser(name, help=text).set_defaults(handler=handler)

    dev = commands.add_parser("dev", help="the embedded local stack")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True, metavar="DEV_COMMAND")
    up = dev_commands.add_parser("up", help="start PostgreSQL, the broker, the simulator and all services")
    up.add_argument("--state-dir", default=".apptsync/dev", help="where data and logs live")
    up.set_defaults(handler=_cmd_dev_up)

    demo = commands.add_parser("demo", help="start the embedded stack and run two real imports")
    demo.add_argument("--state-dir", default=".apptsync/demo", help="where data and logs live")
    demo.add_argument("--json", action="store_true", help="print both final jobs as JSON")
    demo.set_defaults(handler=_cmd_demo)

    def client_command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--address",
            default=cli_settings.gateway_address,
            help="gateway host:port (default from APPTSYNC_CLI_GATEWAY_ADDRESS)",
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
    start.add_argument("--window-start", help="ISO 8601 start of the window (default: server default)")
    start.add_argument("--window-end", help="ISO 8601 end of the window")
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
        help="JSON object of credential fields (secrets never go on the command line, "
        "which other users of the machine can read)",
    )
    put.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    cli_settings = CliSettings()
    args = build_parser(cli_settings).parse_args(argv)
    configure_logging(cli_settings.log_level, service=f"apptsync-{args.command}")
    register_secrets(cli_settings.token.get_secret_value())
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
