"""Provider credentials at rest: AES-256-GCM with a rotating keyring.

Ciphertext layout: b"A1" | len(key_id) (1 byte) | key_id | 12-byte nonce | AES-GCM ciphertext+tag.
The associated data binds a ciphertext to its tenant and connection, so a row copied to another
tenant or connection fails to decrypt instead of leaking credentials across tenants.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from apptsync.shared.errors import InvalidArgumentError, PermanentError
from apptsync.shared.settings import CredentialSettings

_MAGIC = b"A1"
_NONCE_BYTES = 12


class CredentialDecryptError(PermanentError):
    """Stored credentials cannot be decrypted: unknown key id, tampering, or another tenant's row."""


class Keyring:
    """AES-GCM keys by id; the first key encrypts, every key decrypts (so keys can rotate).

    Never put a Keyring or its keys into a log line or an exception message: `repr` shows key ids only.
    """

    def __init__(self, keys: list[tuple[str, bytes]], *, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if not keys:
            raise InvalidArgumentError("keyring", "no credential encryption key configured")
        for key_id, key in keys:
            if not key_id or len(key_id.encode()) > 255 or ":" in key_id:
                raise InvalidArgumentError("keyring", "key ids must be 1-255 bytes without ':'")
            if len(key) != 32:
                raise InvalidArgumentError("keyring", f"key {key_id!r} must be 32 bytes (AES-256)")
        self._keys = dict(keys)
        self._primary_id = keys[0][0]
        self._random_bytes = random_bytes

    def __repr__(self) -> str:
        return f"Keyring(key_ids={list(self._keys)!r})"

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """Parses `id:base64key,id2:base64key2` (newest first). Raises InvalidArgumentError."""
        keys = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            key_id, sep, encoded = item.partition(":")
            if not sep:
                raise InvalidArgumentError("keyring", "entries must look like key_id:base64key")
            try:
                keys.append((key_id, base64.b64decode(encoded, validate=True)))
            except binascii.Error as exc:
                raise InvalidArgumentError("keyring", f"key {key_id!r} is not valid base64") from exc
        return cls(keys)

    @classmethod
    def from_settings(cls, settings: CredentialSettings) -> Keyring:
        text = settings.keyring.get_secret_value()
        if settings.keyring_file:
            text = Path(settings.keyring_file).read_text("utf-8")
        return cls.parse(text)

    @property
    def primary_key_id(self) -> str:
        return self._primary_id

    def is_current(self, ciphertext: bytes) -> bool:
        """True when `ciphertext` is sealed under the primary key (nothing to re-encrypt). Reads the
        header only: no decryption, so it is cheap enough to scan every stored credential."""
        return ciphertext_key_id(ciphertext) == self._primary_id

    def encrypt(self, credentials: Mapping[str, str], *, tenant_id: str, connection_id: str) -> bytes:
        plaintext = json.dumps(dict(credentials), sort_keys=True).encode()
        nonce = self._random_bytes(_NONCE_BYTES)
        key_id = self._primary_id.encode()
        sealed = AESGCM(self._keys[self._primary_id]).encrypt(nonce, plaintext, _aad(tenant_id, connection_id))
        return _MAGIC + bytes([len(key_id)]) + key_id + nonce + sealed

    def decrypt(self, ciphertext: bytes, *, tenant_id: str, connection_id: str) -> dict[str, str]:
        """Raises CredentialDecryptError (never revealing any plaintext) when the blob is not ours."""
        if ciphertext[:2] != _MAGIC or len(ciphertext) < 3:
            raise CredentialDecryptError("unknown credential format")
        id_length = ciphertext[2]
        key_id = ciphertext[3 : 3 + id_length].decode(errors="replace")
        nonce = ciphertext[3 + id_length : 3 + id_length + _NONCE_BYTES]
        sealed = ciphertext[3 + id_length + _NONCE_BYTES :]
        key = self._keys.get(key_id)
        if key is None:
            raise CredentialDecryptError(f"credentials were encrypted with unknown key id {key_id!r}")
        try:
            plaintext = AESGCM(key).decrypt(nonce, sealed, _aad(tenant_id, connection_id))
        except InvalidTag as exc:
            raise CredentialDecryptError("credentials failed authentication (wrong tenant, connection or key)") from exc
        decoded = json.loads(plaintext)
        return {str(k): str(v) for k, v in decoded.items()}


def ciphertext_key_id(ciphertext: bytes) -> str | None:
    """The id of the key that sealed `ciphertext`, None when it is not in our format."""
    if ciphertext[:2] != _MAGIC or len(ciphertext) < 3:
        return None
    return ciphertext[3 : 3 + ciphertext[2]].decode(errors="replace")


def _aad(tenant_id: str, connection_id: str) -> bytes:
    return f"apptsync.credentials/{tenant_id}/{connection_id}".encode()
