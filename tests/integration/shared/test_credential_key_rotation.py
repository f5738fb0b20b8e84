"""`apptsync rotate-credentials-key` against real PostgreSQL: credentials of two tenants under an
old key are re-encrypted under the new one in batches; a run interrupted after its first batch
leaves every credential readable, a rerun (through the CLI) finishes, a third changes nothing, and
the old key can then be dropped from the keyring."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from apptsync.cli.__main__ import main
from apptsync.shared.credentials import Keyring, ciphertext_key_id
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db.migrator import migrate

pytestmark = pytest.mark.integration

OLD_KEY, NEW_KEY = bytes(range(32)), bytes(range(100, 132))
OLD_ONLY = Keyring([("old", OLD_KEY)])
ROTATING = Keyring([("new", NEW_KEY), ("old", OLD_KEY)])
NEW_ONLY = Keyring([("new", NEW_KEY)])
TENANTS = ["1a2b3c4d-0000-4000-8000-000000000001", "1a2b3c4d-0000-4000-8000-000000000002"]
CONNECTIONS = [(tenant, f"conn-{n}") for tenant in TENANTS for n in range(2)]


def secret_of(tenant_id: str, connection_id: str) -> dict[str, str]:
    return {"access_token": f"access-{tenant_id}-{connection_id}", "refresh_token": f"refresh-{connection_id}-x9"}


class Interrupted(Exception):
    pass


@pytest.fixture
async def owner(database_url: str, service_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """An owner connection over a migrated database holding CONNECTIONS under the old key."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        service = await asyncpg.connect(service_database_url)
        try:
            for tenant_id, connection_id in CONNECTIONS:
                await connections_db.put_connection(
                    service, keyring=OLD_ONLY, tenant_id=tenant_id, connection_id=connection_id,
                    external_source="calendly", base_url="", credentials=secret_of(tenant_id, connection_id),
                    settings={}, now=datetime.now(UTC),
                )  # fmt: skip
        finally:
            await service.close()
        yield conn
    finally:
        await conn.close()


async def stored(owner: asyncpg.Connection) -> dict[tuple[str, str], bytes]:
    rows = await owner.fetch("SELECT tenant_id, connection_id, credentials_ciphertext FROM connections")
    return {(str(r["tenant_id"]), r["connection_id"]): bytes(r["credentials_ciphertext"]) for r in rows}


def decrypt_all(keyring: Keyring, ciphertexts: dict[tuple[str, str], bytes]) -> dict[tuple[str, str], dict[str, str]]:
    return {key: keyring.decrypt(blob, tenant_id=key[0], connection_id=key[1]) for key, blob in ciphertexts.items()}


async def test_an_interrupted_rotation_leaves_everything_readable_and_a_rerun_finishes(
    owner: asyncpg.Connection,
    service_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = {key: secret_of(*key) for key in CONNECTIONS}
    batches_seen: list[int] = []

    async def crash_after_first_batch(report: connections_db.KeyRotationReport) -> None:
        batches_seen.append(report.reencrypted)
        raise Interrupted

    service = await asyncpg.connect(service_database_url)
    try:
        with pytest.raises(Interrupted):
            await connections_db.reencrypt_credentials(
                service, keyring=ROTATING, batch_size=1, after_batch=crash_after_first_batch
            )
    finally:
        await service.close()
    assert batches_seen == [1]
    midway = await stored(owner)
    assert sorted(str(ciphertext_key_id(blob)) for blob in midway.values()) == ["new", "old", "old", "old"]
    assert decrypt_all(ROTATING, midway) == expected

    # The rerun, as an operator runs it: the CLI with the services' settings.
    monkeypatch.setenv("APPTSYNC_DATABASE_URL", service_database_url)
    monkeypatch.setenv(
        "APPTSYNC_CREDENTIALS_KEYRING",
        f"new:{base64.b64encode(NEW_KEY).decode()},old:{base64.b64encode(OLD_KEY).decode()}",
    )
    capsys.readouterr()
    # In a thread: the command runs its own event loop, as it does from a shell.
    assert await asyncio.to_thread(main, ["rotate-credentials-key", "--batch-size", "1"]) == 0
    output = capsys.readouterr()
    assert "4 scanned, 3 re-encrypted, 1 already current, 0 unreadable" in output.out
    for secret in (base64.b64encode(NEW_KEY).decode(), base64.b64encode(OLD_KEY).decode()):
        assert secret not in output.out + output.err
    for fields in expected.values():
        for value in fields.values():
            assert value not in output.out + output.err

    finished = await stored(owner)
    assert {ciphertext_key_id(blob) for blob in finished.values()} == {"new"}
    assert decrypt_all(NEW_ONLY, finished) == expected  # the old key can go

    # Idempotent: nothing left to do, nothing rewritten.
    assert await asyncio.to_thread(main, ["rotate-credentials-key", "--batch-size", "3"]) == 0
    assert "4 scanned, 0 re-encrypted, 4 already current, 0 unreadable" in capsys.readouterr().out
    assert await stored(owner) == finished


async def test_credentials_no_key_decrypts_are_reported_by_id_and_left_alone(
    owner: asyncpg.Connection, service_database_url: str
) -> None:
    tenant_id, connection_id = CONNECTIONS[0]
    foreign = Keyring([("gone", bytes(range(50, 82)))]).encrypt(
        secret_of(tenant_id, connection_id), tenant_id=tenant_id, connection_id=connection_id
    )
    await owner.execute(
        "UPDATE connections SET credentials_ciphertext = $3 WHERE tenant_id = $1 AND connection_id = $2",
        uuid.UUID(tenant_id),
        connection_id,
        foreign,
    )
    service = await asyncpg.connect(service_database_url)
    try:
        report = await connections_db.reencrypt_credentials(service, keyring=ROTATING, batch_size=2)
    finally:
        await service.close()
    assert (report.scanned, report.reencrypted, report.already_current, report.batches) == (4, 3, 0, 2)
    assert report.unreadable == [(tenant_id, connection_id)]
    assert (await stored(owner))[(tenant_id, connection_id)] == foreign
