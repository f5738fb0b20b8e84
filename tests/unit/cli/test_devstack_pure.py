"""The pure parts of the dev stack: port choice, stale postmaster.pid logic, env and argv building."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apptsync.cli.devstack.broker import broker_argv
from apptsync.cli.devstack.environment import (
    SERVICE_NAMES,
    ServicePorts,
    build_service_env,
    dev_stack_env_defaults,
    env_var,
    format_address_table,
    plan_addresses,
)
from apptsync.cli.devstack.keyring import format_dev_keyring
from apptsync.cli.devstack.ports import choose_port
from apptsync.cli.devstack.postgres import (
    DEFAULT_SERVER_SETTINGS,
    initdb_argv,
    plan_postgres_layout,
    postgres_argv,
    postgres_url,
    quote_identifier,
    server_settings_for,
)
from apptsync.cli.devstack.postmaster import PostmasterState, classify_postmaster, parse_postmaster_pid
from apptsync.cli.devstack.probes import GrpcHealthProbe, HttpGetProbe
from apptsync.cli.devstack.process import tail_lines
from apptsync.cli.devstack.services import (
    assign_service_ports,
    readiness_probe_for,
    run_to_end_despite_cancellation,
    stop_all,
)
from apptsync.shared.appointments import Source
from apptsync.shared.credentials import Keyring
from apptsync.shared.outbound import OutboundPolicy
from apptsync.shared.settings import (
    CredentialSettings,
    DatabaseSettings,
    FetcherSettings,
    GatewaySettings,
    KafkaSettings,
    OutboundSettings,
    SimulatorSettings,
    WriterSettings,
)

pytestmark = pytest.mark.unit

PORTS = ServicePorts(
    gateway=50051,
    gateway_metrics=41001,
    fetcher_health=41002,
    fetcher_metrics=41003,
    writer_health=41004,
    writer_metrics=41005,
    simulator=41006,
)


# ---------------------------------------------------------------- ports


def test_choose_port_takes_the_preferred_port_when_it_is_free() -> None:
    assert choose_port(50051, is_free=lambda port: True, pick_free=lambda: 40000) == 50051


def test_choose_port_picks_another_when_the_preferred_port_is_taken() -> None:
    assert choose_port(50051, is_free=lambda port: False, pick_free=lambda: 40000) == 40000


@pytest.mark.parametrize("preferred", [None, 0])
def test_choose_port_without_preference_picks_a_free_port(preferred: int | None) -> None:
    asked: list[int] = []

    def is_free(port: int) -> bool:
        asked.append(port)
        return True

    assert choose_port(preferred, is_free=is_free, pick_free=lambda: 40000) == 40000
    assert asked == []


EIGHT_PORTS = [1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008]


def test_assign_service_ports_gives_the_gateway_its_preferred_port_when_free() -> None:
    ports = assign_service_ports(
        EIGHT_PORTS, preferred_gateway_port=50051, preferred_gateway_port_is_free=True
    )
    assert ports.gateway == 50051
    assert ports.simulator == 1007
    assert len({*vars(ports).values()}) == 8


def test_assign_service_ports_falls_back_when_the_preferred_gateway_port_is_taken() -> None:
    ports = assign_service_ports(
        EIGHT_PORTS, preferred_gateway_port=50051, preferred_gateway_port_is_free=False
    )
    assert ports.gateway == 1001
    assert len({*vars(ports).values()}) == 8


def test_assign_service_ports_never_gives_the_gateway_a_port_another_service_got() -> None:
    ports = assign_service_ports(
        EIGHT_PORTS, preferred_gateway_port=1003, preferred_gateway_port_is_free=True
    )
    assert ports.gateway == 1001
    assert len({*vars(ports).values()}) == 8


def test_assign_service_ports_needs_eight_ports() -> None:
    with pytest.raises(ValueError, match="8 free ports"):
        assign_service_ports([1, 2, 3], preferred_gateway_port=None, preferred_gateway_port_is_free=False)


# ---------------------------------------------------------------- postmaster.pid


@pytest.mark.parametrize(
    ("text", "pid"),
    [("4242\n/data\n1700000000\n5432\n", 4242), ("  77  \n", 77), ("", None), ("abc\n", None), ("-3\n", None)],
)
def test_parse_postmaster_pid_reads_the_first_line(text: str, pid: int | None) -> None:
    assert parse_postmaster_pid(text) == pid


def test_no_pid_file_is_a_clean_start() -> None:
    assert classify_postmaster(None, lambda pid: "postgres") is PostmasterState.ABSENT


def test_pid_file_of_a_dead_process_is_stale() -> None:
    assert classify_postmaster("4242\n", lambda pid: None) is PostmasterState.STALE


def test_pid_file_whose_pid_was_reused_by_another_program_is_stale() -> None:
    assert classify_postmaster("4242\n", lambda pid: "python3") is PostmasterState.STALE


def test_unreadable_pid_file_is_stale() -> None:
    assert classify_postmaster("garbage", lambda pid: "postgres") is PostmasterState.STALE


def test_pid_file_of_a_running_postgres_is_live() -> None:
    seen: list[int] = []

    def process_name(pid: int) -> str:
        seen.append(pid)
        return "postgres"

    assert classify_postmaster("4242\n/data\n", process_name) is PostmasterState.LIVE
    assert seen == [4242]


# ---------------------------------------------------------------- environment


def test_env_var_names_come_from_the_settings_classes() -> None:
    assert env_var(DatabaseSettings, "url") == "APPTSYNC_DATABASE_URL"
    assert env_var(GatewaySettings, "listen_address") == "APPTSYNC_GATEWAY_LISTEN_ADDRESS"
    with pytest.raises(KeyError):
        env_var(GatewaySettings, "no_such_setting")


def test_plan_addresses_puts_everything_on_loopback() -> None:
    addresses = plan_addresses(
        database_url="postgresql://apptsync@127.0.0.1:5999/apptsync", bootstrap_servers="127.0.0.1:19092", ports=PORTS
    )
    assert addresses.gateway_address == "127.0.0.1:50051"
    assert addresses.simulator_url == "http://127.0.0.1:41006"
    assert addresses.simulator_health_url == "http://127.0.0.1:41006/_admin/health"
    assert addresses.fetcher_health_address == "127.0.0.1:41002"
    if "metrics_port" in WriterSettings.model_fields:
        assert addresses.writer_metrics_url == "http://127.0.0.1:41005/metrics"
    else:
        assert addresses.writer_metrics_url is None


def test_services_reading_the_built_env_get_the_planned_addresses() -> None:
    addresses = plan_addresses(
        database_url="postgresql://apptsync@127.0.0.1:5999/apptsync", bootstrap_servers="127.0.0.1:19092", ports=PORTS
    )
    keyring = format_dev_keyring(bytes(range(32)))
    env = build_service_env(
        addresses,
        PORTS,
        credentials_keyring=keyring,
        runs_simulator=True,
        extra={"APPTSYNC_KAFKA_SESSION_TIMEOUT_MS": "1000"},
    )

    assert DatabaseSettings.from_environment(env).url.get_secret_value() == addresses.database_url
    assert KafkaSettings.from_environment(env).bootstrap_servers == "127.0.0.1:19092"
    assert KafkaSettings.from_environment(env).session_timeout_ms == 1000
    assert CredentialSettings.from_environment(env).keyring.get_secret_value() == keyring
    assert GatewaySettings.from_environment(env).listen_address == "127.0.0.1:50051"
    assert FetcherSettings.from_environment(env).health_address == "127.0.0.1:41002"
    assert WriterSettings.from_environment(env).health_address == "127.0.0.1:41004"
    assert SimulatorSettings.from_environment(env).listen_address == "127.0.0.1:41006"
    assert OutboundPolicy.from_settings(OutboundSettings.from_environment(env)) == OutboundPolicy.allowing("http://127.0.0.1:41006")


def test_the_outbound_policy_allows_the_stacks_simulator_and_nothing_else() -> None:
    addresses = plan_addresses(
        database_url="postgresql://x@127.0.0.1:1/x", bootstrap_servers="127.0.0.1:2", ports=PORTS
    )
    with_simulator = build_service_env(addresses, PORTS, credentials_keyring="dev:AAAA", runs_simulator=True)
    assert with_simulator["APPTSYNC_OUTBOUND_ALLOWED_ORIGINS"] == addresses.simulator_url
    policy = OutboundPolicy.from_settings(OutboundSettings.from_environment(with_simulator))
    assert policy.refusal(f"{addresses.simulator_url}/acuity/api/v1", source=Source.ACUITY) is None
    for other_port in (PORTS.gateway, PORTS.fetcher_health, PORTS.writer_metrics, 5432, 9092):
        assert policy.refusal(f"http://127.0.0.1:{other_port}/", source=Source.ACUITY) is not None
    # A set without the simulator (e.g. only a gateway) allows no origin at all.
    without = build_service_env(addresses, PORTS, credentials_keyring="dev:AAAA", runs_simulator=False)
    assert "APPTSYNC_OUTBOUND_ALLOWED_ORIGINS" not in without


def test_extra_env_overrides_the_planned_values() -> None:
    addresses = plan_addresses(
        database_url="postgresql://x@127.0.0.1:1/x", bootstrap_servers="127.0.0.1:2", ports=PORTS
    )
    env = build_service_env(
        addresses,
        PORTS,
        credentials_keyring="dev:AAAA",
        runs_simulator=True,
        extra={"APPTSYNC_DATABASE_URL": "postgresql://other"},
    )
    assert env["APPTSYNC_DATABASE_URL"] == "postgresql://other"


def test_the_dev_stack_gateway_accepts_unauthenticated_calls() -> None:
    assert GatewaySettings.from_environment(dev_stack_env_defaults()).allow_unauthenticated is True


def test_the_dev_stack_writer_rejoins_its_group_fast() -> None:
    kafka = KafkaSettings.from_environment(dev_stack_env_defaults())
    assert (kafka.session_timeout_ms, kafka.heartbeat_interval_ms) == (1000, 200)
    assert kafka.writer_group_instance_id == ""  # static membership would add the broker's 6 s of pauses


def test_dev_keyring_is_a_valid_credentials_keyring() -> None:
    text = format_dev_keyring(b"\x01" * 32)
    assert text.startswith("dev:")
    assert Keyring.parse(text).primary_key_id == "dev"
    with pytest.raises(ValueError, match="32 bytes"):
        format_dev_keyring(b"short")


def test_address_table_shows_the_grpcurl_example_and_every_address() -> None:
    addresses = plan_addresses(
        database_url="postgresql://apptsync@127.0.0.1:5999/apptsync", bootstrap_servers="127.0.0.1:19092", ports=PORTS
    )
    text = "\n".join(format_address_table(addresses, log_dir="/state/logs"))
    assert "grpcurl -plaintext 127.0.0.1:50051 list" in text
    for value in (addresses.database_url, addresses.bootstrap_servers, addresses.simulator_url, "/state/logs"):
        assert value in text


def test_each_service_has_a_readiness_probe_on_its_own_address() -> None:
    addresses = plan_addresses(
        database_url="postgresql://x@127.0.0.1:1/x", bootstrap_servers="127.0.0.1:2", ports=PORTS
    )
    probes = {name: readiness_probe_for(name, addresses) for name in SERVICE_NAMES}
    assert isinstance(probes["gateway"], GrpcHealthProbe)
    assert probes["gateway"].address == "127.0.0.1:50051"
    assert isinstance(probes["writer"], GrpcHealthProbe)
    assert probes["writer"].address == "127.0.0.1:41004"
    assert isinstance(probes["fetcher"], GrpcHealthProbe)
    assert probes["fetcher"].address == "127.0.0.1:41002"
    assert isinstance(probes["simulator"], HttpGetProbe)
    assert probes["simulator"].url == "http://127.0.0.1:41006/_admin/health"


# ---------------------------------------------------------------- argv and paths


def test_postgres_listens_on_loopback_with_the_settings_asked_for() -> None:
    layout = plan_postgres_layout(Path("/state"))
    argv = postgres_argv(Path("/pg/bin"), layout, 5999, {"fsync": "off"})
    assert argv[0] == "/pg/bin/postgres"
    assert argv[argv.index("-h") + 1] == "127.0.0.1"
    assert argv[argv.index("-p") + 1] == "5999"
    assert argv[argv.index("-k") + 1] == "/state/postgres/run"
    assert argv[argv.index("-D") + 1] == "/state/postgres/data"
    assert "fsync=off" in argv


def test_postgres_is_durable_unless_the_fast_unsafe_mode_is_asked_for() -> None:
    layout = plan_postgres_layout(Path("/state"))
    durable = postgres_argv(Path("/pg/bin"), layout, 5999, DEFAULT_SERVER_SETTINGS)
    fast = postgres_argv(Path("/pg/bin"), layout, 5999, server_settings_for(fast_unsafe=True))

    assert server_settings_for(fast_unsafe=False) == DEFAULT_SERVER_SETTINGS
    assert {"fsync=on", "synchronous_commit=on", "full_page_writes=on"} <= set(durable)
    assert {"fsync=off", "synchronous_commit=off", "full_page_writes=off"} <= set(fast)


def test_initdb_uses_trust_auth_and_the_postgres_superuser() -> None:
    argv = initdb_argv(Path("/pg/bin"), Path("/state/postgres/data"))
    assert argv[0] == "/pg/bin/initdb"
    assert "--auth=trust" in argv
    assert argv[argv.index("-U") + 1] == "postgres"


def test_socket_dir_moves_to_a_short_path_when_the_state_dir_is_deep() -> None:
    deep = Path("/" + "/".join(["a-rather-long-directory-name"] * 5))
    layout = plan_postgres_layout(deep, short_runtime_dir=Path("/run-short"))
    assert layout.socket_dir.parent == Path("/run-short")
    assert layout.data_dir == deep / "postgres" / "data"
    assert plan_postgres_layout(deep, short_runtime_dir=Path("/run-short")) == layout


def test_postgres_url_and_identifier_quoting() -> None:
    assert (
        postgres_url(user="apptsync", port=5999, database="apptsync") == "postgresql://apptsync@127.0.0.1:5999/apptsync"
    )
    assert quote_identifier('we"ird') == '"we""ird"'
    with pytest.raises(ValueError, match="identifier"):
        quote_identifier("")


def test_broker_listens_and_advertises_loopback_in_memory() -> None:
    argv = broker_argv("/bin/tansu", 19092)
    assert argv[1] == "broker"
    assert argv[argv.index("--listener-url") + 1] == "tcp://127.0.0.1:19092"
    assert argv[argv.index("--advertised-listener-url") + 1] == "tcp://127.0.0.1:19092"
    assert argv[argv.index("--storage-engine") + 1].startswith("memory://")


def test_tail_lines_keeps_the_last_lines() -> None:
    assert tail_lines("a\nb\nc\n", 2) == "b\nc"
    assert tail_lines("a", 5) == "a"
    assert tail_lines("a\nb", 0) == ""


# ---------------------------------------------------------------- clean-up helpers


async def test_clean_up_runs_to_its_end_even_when_the_caller_is_cancelled() -> None:
    release = asyncio.Event()
    finished: list[str] = []

    async def clean_up() -> None:
        await release.wait()
        finished.append("done")

    caller = asyncio.ensure_future(run_to_end_despite_cancellation(clean_up()))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, timeout=5)
    assert finished == ["done"]


async def test_stop_all_runs_every_stop_and_reports_the_first_failure() -> None:
    calls: list[str] = []

    async def failing() -> None:
        calls.append("failing")
        raise RuntimeError("first")

    async def fine() -> None:
        calls.append("fine")

    with pytest.raises(RuntimeError, match="first"):
        await stop_all([failing, fine])
    assert calls == ["failing", "fine"]
