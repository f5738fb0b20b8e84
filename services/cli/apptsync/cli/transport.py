"""How the client commands reach the gateway: plaintext, TLS, or mutual TLS, from three file settings.

Plaintext only when no TLS file is set: a half-configured client must not quietly send its bearer
token in the clear, so partial settings are refused before anything connects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from apptsync.shared.errors import InvalidArgumentError

CA_FILE = "--tls-ca-file (APPTSYNC_CLI_TLS_CA_FILE)"
CERT_FILE = "--tls-cert-file (APPTSYNC_CLI_TLS_CERT_FILE)"
KEY_FILE = "--tls-key-file (APPTSYNC_CLI_TLS_KEY_FILE)"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS channel: the CA the gateway's certificate must chain to, and (mutual TLS)
    the client's certificate chain and private key, both or neither."""

    ca_file: str
    cert_file: str = ""
    key_file: str = ""


def tls_files(ca_file: str, cert_file: str, key_file: str) -> TlsFiles | None:
    """None (plaintext) when all three are empty; TLS when the CA is set; mutual TLS when the
    certificate and key are set too. Raises InvalidArgumentError for anything else: a certificate
    without its key (or the reverse), or a client certificate without the CA to check the gateway."""
    if not (ca_file or cert_file or key_file):
        return None
    if bool(cert_file) != bool(key_file):
        missing, given = (KEY_FILE, CERT_FILE) if cert_file else (CERT_FILE, KEY_FILE)
        raise InvalidArgumentError(missing, f"required when {given} is set (mutual TLS needs both)")
    if not ca_file:
        raise InvalidArgumentError(CA_FILE, "required when a client certificate and key are set (TLS)")
    return TlsFiles(ca_file=ca_file, cert_file=cert_file, key_file=key_file)


def _read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def channel_credentials(
    files: TlsFiles | None, read: Callable[[str], bytes] = _read_bytes
) -> grpc.ChannelCredentials | None:
    """The credentials of a channel with `files`, None for plaintext. Raises InvalidArgumentError
    naming the setting whose file cannot be read (missing, unreadable)."""
    if files is None:
        return None

    def load(path: str, field: str) -> bytes:
        try:
            return read(path)
        except OSError as exc:
            raise InvalidArgumentError(field, f"cannot read {path}: {exc.strerror or exc}") from exc

    root = load(files.ca_file, CA_FILE)
    if not files.cert_file:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=load(files.key_file, KEY_FILE),
        certificate_chain=load(files.cert_file, CERT_FILE),
    )


def open_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A new channel to `address`: secure with `credentials`, plaintext when they are None."""
    if credentials is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, credentials)
