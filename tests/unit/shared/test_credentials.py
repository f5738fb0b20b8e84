"""Credentials at rest: AES-GCM bound to tenant and connection, keys rotate."""

import base64
import os

import pytest

from apptsync.shared.credentials import CredentialDecryptError, Keyring
from apptsync.shared.errors import InvalidArgumentError

pytestmark = pytest.mark.unit


def generate_key_text(key_id: str) -> str:
    """A new keyring entry `key_id:base64(32 random bytes)`."""
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"
SECRET = {"user_id": "1001", "api_key": "canary-5b1f"}


def test_round_trip_and_ciphertext_hides_the_secret() -> None:
    keyring = Keyring.parse(generate_key_text("k1"))
    blob = keyring.encrypt(SECRET, tenant_id="t", connection_id="c")
    assert b"canary" not in blob
    assert keyring.decrypt(blob, tenant_id="t", connection_id="c") == SECRET


@pytest.mark.parametrize(("tenant", "connection"), [("other", "c"), ("t", "other")])
def test_a_row_copied_to_another_tenant_or_connection_does_not_decrypt(tenant: str, connection: str) -> None:
    keyring = Keyring.parse(generate_key_text("k1"))
    blob = keyring.encrypt(SECRET, tenant_id="t", connection_id="c")
    with pytest.raises(CredentialDecryptError):
        keyring.decrypt(blob, tenant_id=tenant, connection_id=connection)


def test_rotation_new_key_encrypts_old_key_still_decrypts() -> None:
    old = generate_key_text("old")
    blob = Keyring.parse(old).encrypt(SECRET, tenant_id="t", connection_id="c")
    rotated = Keyring.parse(generate_key_text("new") + "," + old)
    assert rotated.primary_key_id == "new"
    assert rotated.decrypt(blob, tenant_id="t", connection_id="c") == SECRET
    with pytest.raises(CredentialDecryptError, match="unknown key id"):
        Keyring.parse(generate_key_text("new")).decrypt(blob, tenant_id="t", connection_id="c")


def test_repr_never_shows_key_material() -> None:
    text = generate_key_text("k1")
    assert text.split(":")[1] not in repr(Keyring.parse(text))


@pytest.mark.parametrize("text", ["", "nokey", "k1:not-base64!", "k1:c2hvcnQ="])
def test_malformed_keyrings_are_rejected(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        Keyring.parse(text)
