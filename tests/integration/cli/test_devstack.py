"""The dev stack's real processes: embedded PostgreSQL, the Tansu broker, supervised stand-in services.

No Docker here: PostgreSQL and Tansu come from wheels. Services are stand-ins (a tiny gRPC health or
HTTP server) so these tests depend only on the supervisor; the real services are covered end to end
elsewhere. All traffic is on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from apptsync.cli.devstack import (
    DataDirectoryInUseError,
    DevStack,
    EmbeddedBroker,
    EmbeddedPostgres,
    GrpcHealthProbe,
    HttpGetProbe,
    ProcessExitError,
    ProcessSpec,
    ProcessStartError,
    ServiceProcess,
    ServiceSet,
    format_dev_keyring,
    pick_free_port,
    pick_free_ports,
    preferred_or_free_port,
)
from apptsync.cli.devstack.process import ChildProcess, child_environment, guarded_argv
from apptsync.cli.devstack.restart import RestartPolicy
from apptsync.cli.devstack.stack import supervise
from apptsync.shared.credentials import Keyring

pytestmark = pytest.mark.integration

INITDB_BANNER = "The files belonging to this database system will be owned by user"

# A stand-in for `python -m apptsync.cli NAME`: serves gRPC health (gateway, fetcher, writer) or
# GET /_admin/health (simulator) on the address the real service would read from its settings;
# `migrate` exits at once. SIGTERM stops it with code 0, like the real services.
STAND_IN_SOURCE = textwrap.dedent(
    """
    import os, signal, sys, threading
    from concurrent import futures

    name = sys.argv[1]
    pid_dir = os.environ.get("STAND_IN_PID_DIR")
    if pid_dir:
        with open(os.path.join(pid_dir, name + ".pid"), "w") as f:
            f.write(str(os.getpid()))
    print(f"stand-in {name} pid {os.getpid()}", flush=True)
    if name == "migrate":
        print("migrate output: " + os.environ.get("STAND_IN_MIGRATE_SAYS", "ok"), flush=True)
        sys.exit(int(os.environ.get("STAND_IN_MIGRATE_EXIT", "0")))
    crash_file = os.environ.get("STAND_IN_CRASH_FILE")
    armed = bool(crash_file) and os.path.exists(crash_file) and open(crash_file).read().strip() == name
    if os.environ.get("STAND_IN_CRASH") == name or armed:
        print(f"{name}: boom, cannot start", flush=True)
        sys.exit(3)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if name == "simulator":
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        host, port = os.environ["APPTSYNC_SIMULATOR_LISTEN_ADDRESS"].rsplit(":", 1)

        class Health(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/_admin/health" else 404)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer((host, int(port)), Health)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    elif name != "silent":
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        variable = {
            "gateway": "APPTSYNC_GATEWAY_LISTEN_ADDRESS",
            "fetcher": "APPTSYNC_FETCHER_HEALTH_ADDRESS",
            "writer": "APPTSYNC_WRITER_HEALTH_ADDRESS",
        }[name]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server.add_insecure_port(os.environ[variable])
        server.start()
    # Short waits: a signal the kernel hands to another thread runs its Python handler only when the
    # main thread wakes up. Bounded: a stand-in never lives longer than a test session could need.
    for _ in range(1500):
        if stop.wait(timeout=0.2):
            break
    print(f"stand-in {name} stopping", flush=True)
    """
)


@pytest.fixture
def stand_in(tmp_path: Path) -> Callable[[str], Sequence[str]]:
    script = tmp_path / "stand_in_service.py"
    script.write_text(STAND_IN_SOURCE)
    return lambda name: (sys.executable, str(script), name)


def process_is_gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


async def wait_until_gone(pid: int, *, timeout_seconds: float = 15.0) -> bool:
    for _ in range(int(timeout_seconds / 0.05)):
        if process_is_gone(pid):
            return True
        await asyncio.sleep(0.05)
    return process_is_gone(pid)


def grpc_stand_in(name: str, command: Callable[[str], Sequence[str]], tmp_path: Path) -> tuple[ServiceProcess, str]:
    """A stand-in serving gRPC health, and its address."""
    address = f"127.0.0.1:{pick_free_port()}"
    env = child_environment({"APPTSYNC_WRITER_HEALTH_ADDRESS": address})
    return ServiceProcess(
        ProcessSpec(name=name, argv=tuple(command("writer")), env=env, log_path=tmp_path / "logs" / f"{name}.log"),
        GrpcHealthProbe(address, timeout_seconds=0.5),
        ready_timeout_seconds=30,
    ), address


# ---------------------------------------------------------------- ports


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = pick_free_ports(5)
    assert len(set(ports)) == 5
    assert all(1024 <= port <= 65535 for port in ports)


def test_a_taken_preferred_port_is_replaced_by_a_free_one() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        assert preferred_or_free_port(taken_port) != taken_port
    free = pick_free_port()
    assert preferred_or_free_port(free) == free


# ---------------------------------------------------------------- PostgreSQL


async def test_embedded_postgres_serves_queries_and_a_restart_reuses_the_data_dir(tmp_path: Path) -> None:
    async with EmbeddedPostgres(tmp_path / "state") as postgres:
        assert postgres.database_url.startswith("postgresql://apptsync@127.0.0.1:")
        connection = await asyncpg.connect(postgres.database_url)
        try:
            assert await connection.fetchval("SELECT current_user") == "apptsync"
            assert await connection.fetchval("SELECT current_database()") == "apptsync"
            await connection.execute("CREATE TABLE kept (value text)")
            await connection.execute("INSERT INTO kept VALUES ('survives a restart')")
        finally:
            await connection.close()
        first_pid = postgres.process.pid
    assert postgres.process.returncode == 0  # SIGINT: a clean fast shutdown
    assert first_pid is not None and await wait_until_gone(first_pid)

    async with EmbeddedPostgres(tmp_path / "state") as restarted:
        connection = await asyncpg.connect(restarted.database_url)
        try:
            assert await connection.fetchval("SELECT value FROM kept") == "survives a restart"
        finally:
            await connection.close()
    initdb_log = (tmp_path / "state" / "logs" / "initdb.log").read_text()
    assert initdb_log.count(INITDB_BANNER) == 1  # the second start reused the data directory


async def test_embedded_postgres_recovers_from_a_hard_kill_with_a_reused_pid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    postgres = EmbeddedPostgres(state)
    await postgres.start()
    postgres.process.kill()
    await asyncio.wait_for(postgres.process.wait(), timeout=30)
    pid_file = postgres.layout.data_dir / "postmaster.pid"
    # The pid in the lock file now belongs to another program (this test process): PostgreSQL alone
    # would refuse to start; the dev stack sees the file is stale and removes it.
    lines = pid_file.read_text().splitlines()
    pid_file.write_text("\n".join([str(os.getpid()), *lines[1:]]) + "\n")

    port = postgres.port
    await postgres.start()  # the same object restarts on the same port: clients keep their URL
    try:
        assert postgres.port == port
        connection = await asyncpg.connect(postgres.database_url)
        try:
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()
    finally:
        await postgres.stop()


async def test_a_second_server_on_a_running_data_dir_is_refused(tmp_path: Path) -> None:
    async with EmbeddedPostgres(tmp_path / "state") as running:
        with pytest.raises(DataDirectoryInUseError, match=str(running.process.pid)):
            await EmbeddedPostgres(tmp_path / "state").start()
        connection = await asyncpg.connect(running.database_url)
        try:
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()


# ---------------------------------------------------------------- broker


async def test_embedded_broker_carries_a_message(tmp_path: Path) -> None:
    async with EmbeddedBroker(tmp_path / "logs") as broker:
        assert broker.bootstrap_servers.startswith("127.0.0.1:")
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        consumer = AIOKafkaConsumer(
            "devstack-test",
            bootstrap_servers=broker.bootstrap_servers,
            group_id="devstack-test",
            auto_offset_reset="earliest",
            session_timeout_ms=1000,
            heartbeat_interval_ms=200,
        )
        await producer.start()
        try:
            await producer.send_and_wait("devstack-test", b"hello", key=b"job-1")
        finally:
            await producer.stop()
        await consumer.start()
        try:
            message = await asyncio.wait_for(consumer.getone(), timeout=60)
        finally:
            await consumer.stop()
        assert (message.key, message.value) == (b"job-1", b"hello")
        pid = broker.process.pid
    assert pid is not None and await wait_until_gone(pid)


# ---------------------------------------------------------------- ServiceProcess


async def test_service_process_readiness_stop_and_kill(
    stand_in: Callable[[str], Sequence[str]], tmp_path: Path
) -> None:
    service, address = grpc_stand_in("health-stand-in", stand_in, tmp_path)
    await service.start()
    assert service.running
    assert await GrpcHealthProbe(address).is_ready()
    assert await service.stop(timeout_seconds=10) == 0  # SIGTERM: drained, exit 0
    assert "stand-in writer stopping" in service.log_tail()

    await service.start()  # the same process object starts again
    pid = service.pid
    service.kill()
    assert await asyncio.wait_for(service.wait(), timeout=10) == -signal.SIGKILL
    assert pid is not None and await wait_until_gone(pid)
    assert await service.stop() == -signal.SIGKILL  # idempotent on an exited child


async def test_a_paused_service_stops_answering_until_resumed(
    stand_in: Callable[[str], Sequence[str]], tmp_path: Path
) -> None:
    service, address = grpc_stand_in("pausable", stand_in, tmp_path)
    await service.start()
    try:
        probe = GrpcHealthProbe(address, timeout_seconds=0.5)
        service.pause()
        assert not await probe.is_ready()
        service.resume()
        await service.wait_ready(probe, timeout_seconds=30)
        service.pause()  # stop() must cope with a stopped process
    finally:
        assert await service.stop(timeout_seconds=10) == 0


async def test_a_service_that_exits_early_fails_with_its_log_tail(
    stand_in: Callable[[str], Sequence[str]], tmp_path: Path
) -> None:
    env = child_environment({"STAND_IN_CRASH": "writer", "APPTSYNC_WRITER_HEALTH_ADDRESS": "127.0.0.1:1"})
    service = ServiceProcess.apptsync(
        "writer", env=env, log_dir=tmp_path, readiness=GrpcHealthProbe("127.0.0.1:1"), argv=stand_in("writer")
    )
    with pytest.raises(ProcessStartError, match=r"(?s)exited with code 3.*boom, cannot start"):
        await service.start()


async def test_a_service_that_never_gets_ready_times_out_and_is_stopped(
    stand_in: Callable[[str], Sequence[str]], tmp_path: Path
) -> None:
    port = pick_free_port()
    service = ServiceProcess.apptsync(
        "silent",
        env=child_environment({}),
        log_dir=tmp_path,
        readiness=HttpGetProbe(f"http://127.0.0.1:{port}/_admin/health", timeout_seconds=0.2),
        ready_timeout_seconds=1.0,
        argv=stand_in("silent"),
    )
    with pytest.raises(ProcessStartError, match=r"(?s)not ready within 1 s.*stand-in silent pid"):
        await service.start()
    assert service.pid is not None and await wait_until_gone(service.pid)


async def test_children_die_with_a_supervisor_killed_hard(
    stand_in: Callable[[str], Sequence[str]], tmp_path: Path
) -> None:
    supervisor_source = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from apptsync.cli.devstack import GrpcHealthProbe, ProcessSpec, ServiceProcess, pick_free_port
        from apptsync.cli.devstack.process import child_environment

        async def main():
            address = f"127.0.0.1:{{pick_free_port()}}"
            service = ServiceProcess(
                ProcessSpec(name="child", argv={tuple(stand_in("writer"))!r},
                            env=child_environment({{"APPTSYNC_WRITER_HEALTH_ADDRESS": address}}),
                            log_path=Path({str(tmp_path / "child.log")!r})),
                GrpcHealthProbe(address), ready_timeout_seconds=30)
            await service.start()
            print(service.pid, flush=True)
            await asyncio.sleep(120)

        asyncio.run(main())
        """
    )
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-c", supervisor_source, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert supervisor.stdout is not None
        line = await asyncio.wait_for(supervisor.stdout.readline(), timeout=60)
        child_pid = int(line)
        assert not process_is_gone(child_pid)
        supervisor.kill()  # SIGKILL: no clean-up code runs in the supervisor
        await asyncio.wait_for(supervisor.wait(), timeout=10)
        assert await wait_until_gone(child_pid), "the child outlived its SIGKILLed supervisor"
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await asyncio.wait_for(supervisor.wait(), timeout=10)


async def test_children_spawned_while_grpc_is_busy_all_start(tmp_path: Path) -> None:
    """A forked child of a process running gRPC could abort before exec (grpc/grpc#43055: a service
    died with SIGABRT and "epoll_wait error: Bad file descriptor" in CI); children are vfork'ed."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    calls_stopped = asyncio.Event()

    async def keep_calling() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # generated stub: no method types
            for _ in range(100_000):  # bounded; stopped as soon as the spawning is done
                if calls_stopped.is_set():
                    return
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)

    callers = [asyncio.create_task(keep_calling()) for _ in range(4)]
    exit_codes: list[int] = []
    try:
        for n in range(60):  # the forking spawn failed ~3 in 60 here
            child = ChildProcess(ProcessSpec(name=f"true-{n}", argv=("true",), env={}, log_path=tmp_path / "true.log"))
            await child.start()
            exit_codes.append(await child.wait(timeout_seconds=10))
    finally:
        calls_stopped.set()
        await asyncio.gather(*callers)
        await server.stop(None)
    assert exit_codes == [0] * 60, f"children died before exec: {exit_codes}; log {child.log_tail()}"


def test_children_run_as_the_requested_user_with_its_groups() -> None:
    argv = guarded_argv(("id",), death_signal=signal.SIGTERM, user="nobody")
    assert argv[-2:] == ("--", "id")
    output = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    nobody = pwd.getpwnam("nobody")
    assert f"uid={nobody.pw_uid}(" in output and f"gid={nobody.pw_gid}(" in output
    with pytest.raises(ProcessStartError, match="unknown user"):
        guarded_argv(("id",), death_signal=signal.SIGTERM, user="no-such-user-apptsync")


# ---------------------------------------------------------------- ServiceSet and DevStack


async def test_service_set_runs_migrate_then_the_services_and_leaves_no_process(
    stand_in: Callable[[str], Sequence[str]], tmp_path: Path
) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    keyring = format_dev_keyring(bytes(32))
    async with ServiceSet(
        database_url="postgresql://apptsync@127.0.0.1:1/apptsync",
        bootstrap_servers="127.0.0.1:2",
        log_dir=tmp_path / "logs",
        credentials_keyring=keyring,
        extra_env={"STAND_IN_PID_DIR": str(pid_dir), "APPTSYNC_KAFKA_SESSION_TIMEOUT_MS": "1000"},
        command=stand_in,
        ready_timeout_seconds=30,
    ) as services:
        assert (pid_dir / "migrate.pid").exists()
        assert list(services.processes) == ["simulator", "writer", "fetcher", "gateway"]
        assert await GrpcHealthProbe(services.addresses.gateway_address).is_ready()
        assert await HttpGetProbe(services.addresses.simulator_health_url).is_ready()
        assert services.service_env["APPTSYNC_KAFKA_SESSION_TIMEOUT_MS"] == "1000"
        assert services.service_env["APPTSYNC_DATABASE_URL"] == "postgresql://apptsync@127.0.0.1:1/apptsync"
        assert Keyring.parse(services.service_env["APPTSYNC_CREDENTIALS_KEYRING"]).primary_key_id == "dev"

        old_writer_pid = services.process("writer").pid
        await services.restart("writer")
        assert services.process("writer").pid != old_writer_pid
        assert await GrpcHealthProbe(services.addresses.writer_health_address).is_ready()
        pids = [process.pid for process in services.processes.values()]
    for pid in pids:
        assert pid is not None and await wait_until_gone(pid)
    assert all(process.returncode == 0 for process in services.processes.values())


async def test_a_failed_migration_stops_the_start_with_its_log(
    stand_in: Callable[[str], Sequence[str]], tmp_path: Path
) -> None:
    services = ServiceSet(
        database_url="postgresql://apptsync@127.0.0.1:1/apptsync",
        bootstrap_servers="127.0.0.1:2",
        log_dir=tmp_path / "logs",
        credentials_keyring=format_dev_keyring(bytes(32)),
        extra_env={"STAND_IN_MIGRATE_EXIT": "2", "STAND_IN_MIGRATE_SAYS": "relation exploded"},
        command=stand_in,
    )
    with pytest.raises(ProcessExitError, match=r"(?s)migrate exited with code 2.*relation exploded"):
        await services.start()
    assert all(process.pid is None for process in services.processes.values())


async def test_dev_stack_starts_everything_in_order_and_stops_it_all(
    stand_in: Callable[[str], Sequence[str]], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    async with DevStack(state, gateway_port=None, command=stand_in, ready_timeout_seconds=30) as stack:
        addresses = stack.addresses
        connection = await asyncpg.connect(addresses.database_url)
        try:
            # The services connect as a member of apptsync_service, not as the tables' owner.
            assert await connection.fetchval("SELECT current_user") == "apptsync_app"
        finally:
            await connection.close()
        assert stack.service_env["APPTSYNC_KAFKA_BOOTSTRAP_SERVERS"] == addresses.bootstrap_servers
        assert stack.service_env["APPTSYNC_GATEWAY_ALLOW_UNAUTHENTICATED"] == "true"
        keyring_file = state / "credentials.keyring"
        assert keyring_file.stat().st_mode & 0o777 == 0o600
        assert stack.service_env["APPTSYNC_CREDENTIALS_KEYRING"] == keyring_file.read_text().strip()
        pids = [process.pid for process in stack.processes()]
        assert len(pids) == 6  # postgres, broker, 4 services
    for pid in pids:
        assert pid is not None and await wait_until_gone(pid)

    # The keyring is kept: credentials stored in the kept database still decrypt next time.
    async with DevStack(state, gateway_port=None, command=stand_in, services=("writer",)) as again:
        assert again.service_env["APPTSYNC_CREDENTIALS_KEYRING"] == keyring_file.read_text().strip()


async def test_dev_stack_cancelled_during_start_leaves_no_process(
    stand_in: Callable[[str], Sequence[str]], tmp_path: Path
) -> None:
    stack = DevStack(tmp_path / "state", gateway_port=None, command=stand_in, ready_timeout_seconds=30)
    starting = asyncio.ensure_future(stack.start())
    for _ in range(600):  # until PostgreSQL runs, at most 30 s
        if stack.postgres.running:
            break
        await asyncio.sleep(0.05)
    postgres_pid = stack.postgres.process.pid
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(starting, timeout=60)
    assert postgres_pid is not None and await wait_until_gone(postgres_pid)


async def test_dev_stack_restarts_a_killed_service_and_gives_up_on_one_that_keeps_crashing(
    stand_in: Callable[[str], Sequence[str]], tmp_path: Path
) -> None:
    crash_file = tmp_path / "crash"
    stack = DevStack(
        tmp_path / "state",
        gateway_port=None,
        command=stand_in,
        services=("simulator", "writer"),
        inherited_env=child_environment({"STAND_IN_CRASH_FILE": str(crash_file)}),
        ready_timeout_seconds=30,
    )
    console: list[str] = []
    policy = RestartPolicy(max_attempts=2, base_seconds=0.2, cap_seconds=1.0, stable_after_seconds=600.0)
    stop_requested = asyncio.Event()
    async with stack:
        writer = stack.services.process("writer")
        simulator_pid = stack.services.process("simulator").pid
        supervising = asyncio.ensure_future(supervise(stack, stop_requested, print_fn=console.append, policy=policy))
        try:
            killed_pid = writer.pid
            writer.kill()
            for _ in range(300):  # until the writer runs again, at most 30 s
                if writer.running and writer.pid != killed_pid and any("restarted" in line for line in console):
                    break
                await asyncio.sleep(0.1)
            assert writer.running and writer.pid != killed_pid, console
            assert f"writer exited on its own with code {-signal.SIGKILL}; restarting it in 0.2 s" in console[0]
            assert console[1] == f"writer restarted (pid {writer.pid})."
            assert stack.services.process("simulator").pid == simulator_pid  # the others were left alone

            # From now on the writer dies as it starts: one more restart is allowed, then it gives up.
            crash_file.write_text("writer")
            writer.kill()
            gave_up = await asyncio.wait_for(supervising, timeout=60)
        finally:
            stop_requested.set()
            await asyncio.gather(supervising, return_exceptions=True)
        assert gave_up is writer
        assert "restarting it in 0.4 s (attempt 2 of 2)" in console[2]
        assert "writer did not come back" in console[3]
        assert console[-1] == "writer crashed 3 times in a row; giving up."


async def test_dev_up_serves_until_sigint_and_exits_zero(
    stand_in: Callable[[str], Sequence[str]], tmp_path: Path
) -> None:
    source = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from apptsync.cli.devstack import dev_up
        command = lambda name: {tuple(stand_in("NAME"))[:-1]!r} + (name,)
        sys.exit(asyncio.run(dev_up(Path({str(tmp_path / "state")!r}), gateway_port=None, command=command,
                                    print_fn=lambda line: print(line, flush=True))))
        """
    )
    env = child_environment({"STAND_IN_PID_DIR": str(tmp_path)})
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-c", source, stdout=subprocess.PIPE, env=env, start_new_session=True
    )
    assert up.stdout is not None
    output: list[str] = []
    try:
        for _ in range(200):
            line = (await asyncio.wait_for(up.stdout.readline(), timeout=90)).decode()
            output.append(line)
            if not line or "Press Ctrl-C" in line:
                break
        text = "".join(output)
        assert "grpcurl -plaintext 127.0.0.1:" in text, text
        pids = [int((tmp_path / f"{name}.pid").read_text()) for name in ("simulator", "writer", "fetcher", "gateway")]
        postmaster = tmp_path / "state" / "postgres" / "data" / "postmaster.pid"
        pids.append(int(postmaster.read_text().splitlines()[0]))
        up.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(up.stdout.read(), timeout=60)).decode()
        assert await asyncio.wait_for(up.wait(), timeout=60) == 0, text + rest
        assert "Stopped." in rest
        for pid in pids:
            assert await wait_until_gone(pid)
    finally:
        if up.returncode is None:
            up.kill()
            await asyncio.wait_for(up.wait(), timeout=10)
