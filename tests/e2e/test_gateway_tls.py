"""The gateway's TLS and mutual TLS as a real process: it serves clients that trust its CA (and, with a
client CA set, present a certificate from that CA), and refuses plaintext clients, clients that trust
another CA, clients without a certificate and clients with a certificate from another CA. A partial
TLS configuration (a key or client CA without a certificate, a certificate without a key) stops the
gateway at startup instead of letting it serve plaintext or hang.

Certificates are made here (EC P-256, valid for an hour): a CA, a server certificate for IP 127.0.0.1
and a client certificate signed by it, and an unrelated CA with a client certificate of its own. Only
`migrate` and the gateway run (the gateway needs no broker); the devstack's readiness probe speaks
plaintext, so the gateway's probe is replaced by a health check over TLS with the test's credentials.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2

from apptsync.cli.devstack import ProcessStartError, ServiceSet, env_var, format_dev_keyring
from apptsync.shared.settings import GatewaySettings
from apptsync.v1 import imports_pb2, imports_pb2_grpc
from tests.e2e.system import TENANT_ID, TENANT_TOKEN, system_env

pytestmark = pytest.mark.e2e

# Every call is bounded; a refused handshake fails at once, well within this.
CALL_TIMEOUT_SECONDS = 5.0
READY_TIMEOUT_SECONDS = 30.0
# The gateway does not use the broker: nothing listens here, and nothing connects to it.
UNUSED_BOOTSTRAP_SERVERS = "127.0.0.1:9"
# Loopback only: never through a configured proxy.
CHANNEL_OPTIONS = (("grpc.enable_http_proxy", 0),)
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Issued:
    """A PEM certificate, its PEM private key, and what signed it (for issuing more)."""

    cert_pem: bytes
    key_pem: bytes
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    other_ca: Issued
    other_client: Issued


def _issue(
    common_name: str,
    *,
    issuer: Issued | None,
    server_ip: str | None = None,
    client: bool = False,
) -> Issued:
    """A CA certificate (issuer None, self-signed) or a leaf signed by `issuer`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server_ip is not None else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
        )
        if server_ip is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(server_ip))]), critical=False
            )
    certificate = builder.sign(key if issuer is None else issuer.key, hashes.SHA256())
    return Issued(
        cert_pem=certificate.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        certificate=certificate,
        key=key,
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = _issue("apptsync test CA", issuer=None)
    other_ca = _issue("unrelated test CA", issuer=None)
    return Pki(
        ca=ca,
        server=_issue("apptsync gateway", issuer=ca, server_ip="127.0.0.1"),
        client=_issue("apptsync client", issuer=ca, client=True),
        other_ca=other_ca,
        other_client=_issue("stranger client", issuer=other_ca, client=True),
    )


def tls_credentials(trusted_ca: Issued, client: Issued | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=trusted_ca.cert_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=trusted_ca.cert_pem, private_key=client.key_pem, certificate_chain=client.cert_pem
    )


def open_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    """A new channel to `address`: plaintext when `credentials` is None."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


async def health_status(address: str, credentials: grpc.ChannelCredentials | None) -> int:
    """Health/Check of the whole server over a fresh channel; raises AioRpcError when refused."""
    async with open_channel(address, credentials) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        response = await check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_SECONDS)
    return int(response.status)


async def refused_with(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """The status code of a Health/Check that must fail (the connection is refused, not the call)."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await health_status(address, credentials)
    code: grpc.StatusCode = failure.value.code()
    return code


async def get_unknown_job(address: str, credentials: grpc.ChannelCredentials) -> grpc.aio.AioRpcError:
    """GetJob of a job that does not exist, with a valid token: NOT_FOUND proves the call went through
    the transport, authentication and the database."""
    async with open_channel(address, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await imports_pb2_grpc.ImportServiceStub(channel).GetJob(
                imports_pb2.GetJobRequest(tenant_id=TENANT_ID, job_id=str(uuid.uuid4())),
                metadata=(("authorization", f"Bearer {TENANT_TOKEN}"),),
                timeout=CALL_TIMEOUT_SECONDS,
            )
    return failure.value


class TlsHealthProbe:
    """Ready when Health/Check answers SERVING over TLS with the given credentials (the devstack's
    GrpcHealthProbe speaks plaintext, which a TLS gateway refuses)."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials) -> None:
        self.address = address
        self._credentials = credentials

    @property
    def description(self) -> str:
        return f"gRPC health over TLS at {self.address} is SERVING"

    async def is_ready(self) -> bool:
        try:
            return await health_status(self.address, self._credentials) == SERVING
        except grpc.aio.AioRpcError:
            return False


@asynccontextmanager
async def tls_gateway(
    *, database_url: str, service_database_url: str, tmp_path: Path, pki: Pki, client_ca: Issued | None
) -> AsyncIterator[str]:
    """Migrates the database, runs the gateway serving TLS (mTLS when `client_ca` is given) until ready
    over TLS, yields its address; stops it on exit."""
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    (tls_dir / "server.crt").write_bytes(pki.server.cert_pem)
    (tls_dir / "server.key").write_bytes(pki.server.key_pem)
    env = {
        env_var(GatewaySettings, "tls_cert_file"): str(tls_dir / "server.crt"),
        env_var(GatewaySettings, "tls_key_file"): str(tls_dir / "server.key"),
    }
    if client_ca is not None:
        (tls_dir / "client-ca.crt").write_bytes(client_ca.cert_pem)
        env[env_var(GatewaySettings, "tls_client_ca_file")] = str(tls_dir / "client-ca.crt")
    services = ServiceSet(
        database_url=service_database_url,
        migration_database_url=database_url,
        bootstrap_servers=UNUSED_BOOTSTRAP_SERVERS,
        log_dir=tmp_path / "logs",
        credentials_keyring=format_dev_keyring(uuid.uuid4().bytes * 2),
        services=("gateway",),
        extra_env=system_env(tmp_path, **env),
        ready_timeout_seconds=READY_TIMEOUT_SECONDS,
        migrate_timeout_seconds=READY_TIMEOUT_SECONDS,
    )
    address = services.addresses.gateway_address
    assert address.startswith("127.0.0.1:")
    # Ready means: answers SERVING to a client the gateway must accept.
    probe_client = pki.client if client_ca is not None else None
    services.process("gateway").readiness = TlsHealthProbe(address, tls_credentials(pki.ca, probe_client))
    async with services:
        yield address


async def test_tls_serves_clients_trusting_its_ca_and_refuses_plaintext_and_other_cas(
    database_url: str, service_database_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with tls_gateway(
        database_url=database_url,
        service_database_url=service_database_url,
        tmp_path=tmp_path,
        pki=pki,
        client_ca=None,
    ) as address:
        trusting = tls_credentials(pki.ca)
        assert await health_status(address, trusting) == SERVING
        assert (await get_unknown_job(address, trusting)).code() == grpc.StatusCode.NOT_FOUND

        assert await refused_with(address, None) == grpc.StatusCode.UNAVAILABLE
        assert await refused_with(address, tls_credentials(pki.other_ca)) == grpc.StatusCode.UNAVAILABLE
        # Without a client CA the gateway asks for no certificate: one from a stranger is no obstacle.
        assert await health_status(address, tls_credentials(pki.ca, pki.other_client)) == SERVING

        # The refusals were the handshake's, not a gateway gone away.
        assert await health_status(address, trusting) == SERVING


async def test_mutual_tls_serves_only_clients_with_a_certificate_from_the_client_ca(
    database_url: str, service_database_url: str, tmp_path: Path, pki: Pki
) -> None:
    async with tls_gateway(
        database_url=database_url,
        service_database_url=service_database_url,
        tmp_path=tmp_path,
        pki=pki,
        client_ca=pki.ca,
    ) as address:
        with_client_cert = tls_credentials(pki.ca, pki.client)
        assert await health_status(address, with_client_cert) == SERVING
        assert (await get_unknown_job(address, with_client_cert)).code() == grpc.StatusCode.NOT_FOUND

        assert await refused_with(address, tls_credentials(pki.ca)) == grpc.StatusCode.UNAVAILABLE
        assert await refused_with(address, tls_credentials(pki.ca, pki.other_client)) == grpc.StatusCode.UNAVAILABLE
        assert await refused_with(address, None) == grpc.StatusCode.UNAVAILABLE
        # A refused client gets no further than the handshake: a bearer token does not help it.
        refused_call = await get_unknown_job(address, tls_credentials(pki.ca))
        assert refused_call.code() == grpc.StatusCode.UNAVAILABLE

        assert await health_status(address, with_client_cert) == SERVING


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        pytest.param(("tls_client_ca_file", "tls_key_file"), "tls_cert_file", id="client-ca-and-key-without-cert"),
        pytest.param(("tls_cert_file",), "tls_key_file", id="cert-without-key"),
    ],
)
async def test_a_partial_tls_configuration_stops_the_gateway_instead_of_serving_plaintext(
    given: tuple[str, ...], missing: str, database_url: str, service_database_url: str, tmp_path: Path, pki: Pki
) -> None:
    files = {
        "tls_cert_file": pki.server.cert_pem,
        "tls_key_file": pki.server.key_pem,
        "tls_client_ca_file": pki.ca.cert_pem,
    }
    env = {}
    for setting in given:
        (tmp_path / setting).write_bytes(files[setting])
        env[env_var(GatewaySettings, setting)] = str(tmp_path / setting)
    # The devstack's plaintext probe: a gateway that fell back to plaintext would pass it.
    services = ServiceSet(
        database_url=service_database_url,
        migration_database_url=database_url,
        bootstrap_servers=UNUSED_BOOTSTRAP_SERVERS,
        log_dir=tmp_path / "logs",
        credentials_keyring=format_dev_keyring(uuid.uuid4().bytes * 2),
        services=("gateway",),
        run_migrations=False,
        extra_env=system_env(tmp_path, **env),
        ready_timeout_seconds=READY_TIMEOUT_SECONDS,
    )
    with pytest.raises(ProcessStartError, match="exited with code") as failure:
        async with services:
            pass
    assert env_var(GatewaySettings, missing) in str(failure.value)
