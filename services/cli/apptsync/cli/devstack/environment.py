"""What the services are told: their addresses and the environment variables that carry them (pure).

Variable names are derived from the settings classes (`apptsync.shared.settings`), so renaming a field
there cannot silently leave the dev stack setting a variable nobody reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pydantic_settings import BaseSettings

from apptsync.cli.devstack.ports import LOOPBACK_HOST
from apptsync.shared.settings import (
    CredentialSettings,
    DatabaseSettings,
    FetcherSettings,
    GatewaySettings,
    KafkaSettings,
    OutboundSettings,
    SimulatorSettings,
    WebhookSettings,
    WriterSettings,
)

# Start order; they stop in reverse. The writer is up before the fetcher produces its first page,
# and the gateway (the front door) opens last, when everything behind it is ready.
SERVICE_NAMES: Final[tuple[str, ...]] = ("simulator", "writer", "fetcher", "gateway")
# The webhook receiver runs only when asked for (e.g. `services=WITH_WEBHOOKS`): then the gateway
# subscribes connections at the simulator with the receiver's loopback URL as the public base URL.
WEBHOOK_RECEIVER: Final[str] = "webhook-receiver"
# Every service in start order (the receiver before the gateway, whose PutConnection subscribes).
KNOWN_SERVICE_NAMES: Final[tuple[str, ...]] = ("simulator", "writer", "fetcher", WEBHOOK_RECEIVER, "gateway")
WITH_WEBHOOKS: Final[tuple[str, ...]] = KNOWN_SERVICE_NAMES
SIMULATOR_HEALTH_PATH: Final[str] = "/_admin/health"
DEFAULT_GATEWAY_PORT: Final[int] = 50051


@dataclass(frozen=True)
class ServicePorts:
    """The loopback ports the services bind."""

    gateway: int
    gateway_metrics: int
    fetcher_health: int
    fetcher_metrics: int
    writer_health: int
    writer_metrics: int
    simulator: int
    webhook_receiver: int = 0


@dataclass(frozen=True)
class StackAddresses:
    """Where everything of a running stack answers (all on 127.0.0.1)."""

    database_url: str
    bootstrap_servers: str
    simulator_url: str
    gateway_address: str
    fetcher_health_address: str
    writer_health_address: str
    webhook_receiver_url: str
    # None while the service's settings have no `metrics_port` (the field is optional per service).
    gateway_metrics_url: str | None
    fetcher_metrics_url: str | None
    writer_metrics_url: str | None

    @property
    def simulator_health_url(self) -> str:
        return self.simulator_url + SIMULATOR_HEALTH_PATH


def plan_addresses(
    *, database_url: str, bootstrap_servers: str, ports: ServicePorts, host: str = LOOPBACK_HOST
) -> StackAddresses:
    return StackAddresses(
        database_url=database_url,
        bootstrap_servers=bootstrap_servers,
        simulator_url=f"http://{host}:{ports.simulator}",
        gateway_address=f"{host}:{ports.gateway}",
        fetcher_health_address=f"{host}:{ports.fetcher_health}",
        writer_health_address=f"{host}:{ports.writer_health}",
        webhook_receiver_url=f"http://{host}:{ports.webhook_receiver}",
        gateway_metrics_url=_metrics_url(GatewaySettings, host, ports.gateway_metrics),
        fetcher_metrics_url=_metrics_url(FetcherSettings, host, ports.fetcher_metrics),
        writer_metrics_url=_metrics_url(WriterSettings, host, ports.writer_metrics),
    )


def _metrics_url(settings_class: type[BaseSettings], host: str, port: int) -> str | None:
    return f"http://{host}:{port}/metrics" if "metrics_port" in settings_class.model_fields else None


def env_var(settings_class: type[BaseSettings], field_name: str) -> str:
    """The environment variable of one setting, e.g. (DatabaseSettings, "url") -> APPTSYNC_DATABASE_URL.

    Raises KeyError when the settings class has no such field.
    """
    if field_name not in settings_class.model_fields:
        raise KeyError(f"{settings_class.__name__} has no setting {field_name!r}")
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    return (prefix + field_name).upper()


def build_service_env(
    addresses: StackAddresses,
    ports: ServicePorts,
    *,
    credentials_keyring: str,
    runs_simulator: bool,
    runs_webhook_receiver: bool = False,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables every service process gets (the same set for all: each reads its own groups).

    With `runs_simulator`, the outbound policy allows the simulator's origin and nothing else, so that
    connections may name it (`http://127.0.0.1:<simulator port>`); without, no origin beyond the real
    providers'. `extra` goes on top (e.g. shorter Kafka session timeouts in tests).
    """
    env = {
        env_var(DatabaseSettings, "url"): addresses.database_url,
        env_var(KafkaSettings, "bootstrap_servers"): addresses.bootstrap_servers,
        env_var(CredentialSettings, "keyring"): credentials_keyring,
        env_var(GatewaySettings, "listen_address"): addresses.gateway_address,
        env_var(FetcherSettings, "health_address"): addresses.fetcher_health_address,
        env_var(WriterSettings, "health_address"): addresses.writer_health_address,
        env_var(SimulatorSettings, "listen_address"): f"{LOOPBACK_HOST}:{ports.simulator}",
        # Service-to-service traffic is loopback only: never route it through a configured proxy.
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if runs_simulator:
        env[env_var(OutboundSettings, "allowed_origins")] = addresses.simulator_url
    if runs_webhook_receiver:
        env[env_var(WebhookSettings, "listen_address")] = f"{LOOPBACK_HOST}:{ports.webhook_receiver}"
        env[env_var(WebhookSettings, "public_base_url")] = addresses.webhook_receiver_url
    metrics_ports = (
        (GatewaySettings, ports.gateway_metrics),
        (FetcherSettings, ports.fetcher_metrics),
        (WriterSettings, ports.writer_metrics),
    )
    for settings_class, port in metrics_ports:
        if "metrics_port" in settings_class.model_fields:
            env[env_var(settings_class, "metrics_port")] = str(port)
    env.update(extra or {})
    return env


def dev_stack_env_defaults() -> dict[str, str]:
    """What only the local dev stack sets: a gateway without bearer tokens (loopback only), so that
    `grpcurl -plaintext 127.0.0.1:50051 list` works out of the box; and the fast consumer-group
    rejoin of the end-to-end tests (the embedded broker accepts a 1 s session), so that a writer the
    dev stack restarts after a crash consumes again within about 3 s instead of about 12 s."""
    return {
        env_var(GatewaySettings, "allow_unauthenticated"): "true",
        env_var(KafkaSettings, "session_timeout_ms"): "1000",
        env_var(KafkaSettings, "heartbeat_interval_ms"): "200",
    }


def format_address_table(addresses: StackAddresses, *, log_dir: str) -> list[str]:
    """The lines `apptsync dev up` prints: what answers where, and commands to try."""
    metrics = [
        ("gateway metrics", addresses.gateway_metrics_url),
        ("fetcher metrics", addresses.fetcher_metrics_url),
        ("writer metrics", addresses.writer_metrics_url),
    ]
    rows = [
        ("gateway (gRPC)", addresses.gateway_address),
        ("PostgreSQL", addresses.database_url),
        ("Kafka bootstrap", addresses.bootstrap_servers),
        ("provider simulator", addresses.simulator_url),
        ("fetcher health (gRPC)", addresses.fetcher_health_address),
        ("writer health (gRPC)", addresses.writer_health_address),
        *[(what, url) for what, url in metrics if url is not None],
        ("logs", log_dir),
    ]
    width = max(len(what) for what, _ in rows)
    lines = ["apptsync dev stack is up:", ""]
    lines += [f"  {what.ljust(width)}  {where}" for what, where in rows]
    lines += [
        "",
        "Try:",
        f"  grpcurl -plaintext {addresses.gateway_address} list",
        f"  psql {addresses.database_url}",
        f"  curl {addresses.simulator_health_url}",
        *[f"  curl {url}" for _what, url in metrics if url is not None],
        "",
        "Press Ctrl-C to stop everything.",
    ]
    return lines
