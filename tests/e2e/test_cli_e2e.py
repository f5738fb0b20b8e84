"""`apptsync` client commands as subprocesses, as an operator or a CronJob runs them.

Over TLS and mutual TLS: `sync-all` against a gateway serving TLS (certificates made as in
test_gateway_tls.py) starts a job for the tenant's connection when given the CA (and, for mutual TLS,
its client certificate and key), by setting or by flag; without them the handshake is refused and
the command exits 4 (unavailable), with a rejected token 7. Only `migrate` and the gateway run: the
jobs stay QUEUED, which is all "started" means here.

A user's mistakes (a date the parser does not know, a token file that is not there, half a TLS
configuration) end with one line on stderr and exit 2, never a traceback; nothing is contacted.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import grpc.aio
import pytest

from apptsync.v1 import imports_pb2, imports_pb2_grpc
from tests.e2e.system import TENANT_ID, TENANT_TOKEN
from tests.e2e.test_gateway_tls import CHANNEL_OPTIONS, Issued, Pki, pki, tls_credentials, tls_gateway

pytestmark = pytest.mark.e2e
__all__ = ["pki"]  # the module-scoped certificates fixture, shared with test_gateway_tls.py
REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_SECONDS = 60
# No gateway listens here: a command that reached the network would fail with 4, not 2.
NOWHERE = "127.0.0.1:9"


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """`python -m apptsync.cli ARGS` with only `env` of the APPTSYNC_* settings: (exit code, stdout, stderr)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("APPTSYNC_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apptsync.cli",
        *args,
        cwd=REPO_ROOT,
        env={**inherited, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=CLI_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def write_pem(directory: Path, name: str, pem: bytes) -> str:
    path = directory / name
    path.write_bytes(pem)
    return str(path)


async def put_connection(address: str, credentials: grpc.ChannelCredentials, connection_id: str) -> None:
    async with grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS) as channel:
        await imports_pb2_grpc.ImportServiceStub(channel).PutConnection(
            imports_pb2.PutConnectionRequest(
                tenant_id=TENANT_ID,
                connection_id=connection_id,
                source=imports_pb2.SOURCE_ACUITY,
                # The provider's public API: the gateway alone runs here (no simulator, so no
                # allowed origin), no job runs and the credentials are not verified, so nothing is
                # ever sent to it (tests send no traffic beyond loopback).
                base_url="",
                credentials={"user_id": "1001", "api_key": "demo-acuity-key"},
                skip_verification=True,
            ),
            metadata=(("authorization", f"Bearer {TENANT_TOKEN}"),),
            timeout=10,
        )


def sync_all_args(*extra: str) -> tuple[str, ...]:
    return ("sync-all", "--policy", "no-new-records", "--tenant", TENANT_ID, "--timeout-seconds", "5", *extra)


def assert_one_line_error(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr


async def test_sync_all_over_tls_starts_the_jobs_and_fails_clearly_without_the_ca(
    database_url: str, service_database_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with tls_gateway(
        database_url=database_url,
        service_database_url=service_database_url,
        tmp_path=tmp_path,
        pki=pki,
        client_ca=None,
    ) as address:
        await put_connection(address, tls_credentials(pki.ca), "front-desk")
        settings = {
            "APPTSYNC_CLI_GATEWAY_ADDRESS": address,
            "APPTSYNC_CLI_TOKEN": TENANT_TOKEN,
            "APPTSYNC_CLI_TLS_CA_FILE": write_pem(tmp_path, "ca.crt", pki.ca.cert_pem),
        }
        code, stdout, stderr = await run_cli(*sync_all_args(), env=settings)
        assert code == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
        assert f"{TENANT_ID}/front-desk: job " in stdout and stdout.splitlines()[0].endswith(" started"), stdout
        assert "1 connections: 1 started" in stdout

        # The same over a plaintext channel: the TLS gateway refuses the handshake.
        plaintext = {k: v for k, v in settings.items() if k != "APPTSYNC_CLI_TLS_CA_FILE"}
        code, stdout, stderr = await run_cli(*sync_all_args(), env=plaintext)
        assert code == 4, f"stdout:\n{stdout}\nstderr:\n{stderr}"
        assert "Traceback" not in stderr and "UNAVAILABLE" in stderr

        # A CA the gateway's certificate does not chain to: refused the same way.
        other_ca = write_pem(tmp_path, "other-ca.crt", pki.other_ca.cert_pem)
        code, _stdout, stderr = await run_cli(*sync_all_args("--tls-ca-file", other_ca), env=settings)
        assert code == 4, stderr

        # Over TLS with a token the gateway does not know: its own exit code, not "other".
        code, _stdout, stderr = await run_cli(*sync_all_args(), env={**settings, "APPTSYNC_CLI_TOKEN": "unknown"})
        assert code == 7, stderr
        assert "UNAUTHENTICATED" in stderr and "Traceback" not in stderr


async def test_sync_all_over_mutual_tls_presents_the_client_certificate_from_flags(
    database_url: str, service_database_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with tls_gateway(
        database_url=database_url,
        service_database_url=service_database_url,
        tmp_path=tmp_path,
        pki=pki,
        client_ca=pki.ca,
    ) as address:
        await put_connection(address, tls_credentials(pki.ca, pki.client), "front-desk")
        await put_connection(address, tls_credentials(pki.ca, pki.client), "back-office")
        settings = {"APPTSYNC_CLI_GATEWAY_ADDRESS": address, "APPTSYNC_CLI_TOKEN": TENANT_TOKEN}
        ca = write_pem(tmp_path, "ca.crt", pki.ca.cert_pem)

        def client_flags(client: Issued) -> tuple[str, ...]:
            name = client.certificate.subject.rfc4514_string().replace("=", "-").replace(" ", "-")
            return (
                "--tls-ca-file",
                ca,
                "--tls-cert-file",
                write_pem(tmp_path, f"{name}.crt", client.cert_pem),
                "--tls-key-file",
                write_pem(tmp_path, f"{name}.key", client.key_pem),
            )

        code, stdout, stderr = await run_cli(*sync_all_args(*client_flags(pki.client)), env=settings)
        assert code == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
        assert "2 connections: 2 started" in stdout, stdout

        # TLS without a client certificate, or with one from another CA: the handshake is refused.
        code, _stdout, stderr = await run_cli(*sync_all_args("--tls-ca-file", ca), env=settings)
        assert code == 4, stderr
        code, _stdout, stderr = await run_cli(*sync_all_args(*client_flags(pki.other_client)), env=settings)
        assert code == 4, stderr

        # Half a mutual TLS configuration never connects (and never falls back to plaintext).
        code, _stdout, stderr = await run_cli(
            *sync_all_args("--tls-ca-file", ca, "--tls-cert-file", client_flags(pki.client)[3]), env=settings
        )
        assert code == 2
        assert_one_line_error(stderr)
        assert "APPTSYNC_CLI_TLS_KEY_FILE" in stderr


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        pytest.param(
            ("start-import", "--source", "acuity", "--connection", "c", "--window-start", "yesterday"),
            {},
            "--window-start: 'yesterday' is not a date",
            id="unknown-date",
        ),
        pytest.param(
            ("start-import", "--source", "acuity", "--connection", "c", "--window-end", "2026-01-01T09:00"),
            {},
            "needs a UTC offset, e.g. 2026-01-01T09:00Z",
            id="datetime-without-offset",
        ),
        pytest.param(
            ("get-job", "--job", "j"),
            {"APPTSYNC_CLI_TOKEN_FILE": "/nonexistent/apptsync/token"},
            "APPTSYNC_CLI_TOKEN_FILE: cannot read /nonexistent/apptsync/token",
            id="missing-token-file",
        ),
        pytest.param(
            ("list-jobs",),
            {"APPTSYNC_CLI_TLS_KEY_FILE": "/nonexistent/client.key"},
            "APPTSYNC_CLI_TLS_CERT_FILE",
            id="key-without-certificate",
        ),
        pytest.param(
            ("list-jobs",),
            {"APPTSYNC_CLI_TLS_CA_FILE": "/nonexistent/ca.crt"},
            "cannot read /nonexistent/ca.crt",
            id="missing-ca-file",
        ),
    ],
)
async def test_a_users_mistake_is_one_line_and_exit_2(args: tuple[str, ...], env: dict[str, str], says: str) -> None:
    code, stdout, stderr = await run_cli(
        *args[:1], "--tenant", TENANT_ID, *args[1:], env={"APPTSYNC_CLI_GATEWAY_ADDRESS": NOWHERE, **env}
    )
    assert code == 2, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    assert_one_line_error(stderr)
    assert says in stderr, stderr
    assert stdout == ""
