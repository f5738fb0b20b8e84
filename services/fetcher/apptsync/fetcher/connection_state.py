"""The fetcher's ConnectionStateStore over PostgreSQL: provider state in `provider_sync_state`, and
OAuth refreshes serialized per connection by a row lock on `connections`. Every statement runs in a
tenant transaction (row-level security, migrations 0004/0005).

Why a row lock: a refresh token is single-use (Calendly rotates it on every refresh). Two fetchers
that both saw a 401 must not both spend it; `SELECT ... FOR UPDATE` on the connection row makes the
second wait until the first has stored the rotated credentials, and then it finds credentials other
than the ones it saw refused and uses them without refreshing (a compare-and-swap under the lock).
The token request runs while the lock is held: the lock is only as long as one bounded HTTP call.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime

import asyncpg

from apptsync.fetcher.providers import CredentialRefresh, JobWindow, JsonValue
from apptsync.shared.credentials import Keyring
from apptsync.shared.db.pool import DATABASE_ERRORS, tenant_transaction, translate_database_error
from apptsync.shared.errors import ProviderAuthError


class PostgresConnectionStateStore:
    """The ConnectionStateStore of one (tenant, connection), over the fetcher's pool.

    Raises StorageUnavailableError (transient) or PermanentError for database failures."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        keyring: Keyring,
        tenant_id: str,
        connection_id: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._pool = pool
        self._keyring = keyring
        self._tenant = uuid.UUID(tenant_id)
        self._tenant_id = tenant_id
        self._connection_id = connection_id
        self._clock = clock

    async def load(self, key: str) -> JsonValue | None:
        try:
            async with self._pool.acquire() as conn, tenant_transaction(conn, self._tenant_id):
                text = await conn.fetchval(
                    """SELECT state::text FROM provider_sync_state
                       WHERE tenant_id = $1 AND connection_id = $2 AND scope_key = $3""",
                    self._tenant,
                    self._connection_id,
                    key,
                )
        except DATABASE_ERRORS as exc:
            raise translate_database_error(exc) from exc
        if text is None:
            return None
        value: JsonValue = json.loads(text)
        return value

    async def stored_external_ids(self, window: JobWindow) -> set[str]:
        try:
            async with self._pool.acquire() as conn, tenant_transaction(conn, self._tenant_id):
                rows = await conn.fetch(
                    """SELECT a.external_id FROM appointments AS a
                       JOIN connections AS c ON c.tenant_id = a.tenant_id AND c.connection_id = a.connection_id
                       WHERE a.tenant_id = $1 AND a.connection_id = $2 AND a.external_source = c.external_source
                         AND a.starts_at >= $3 AND a.starts_at < $4 AND a.deleted_at IS NULL""",
                    self._tenant,
                    self._connection_id,
                    window.start,
                    window.end,
                )
        except DATABASE_ERRORS as exc:
            raise translate_database_error(exc) from exc
        return {row["external_id"] for row in rows}

    async def save(self, key: str, value: JsonValue | None) -> None:
        try:
            async with self._pool.acquire() as conn, tenant_transaction(conn, self._tenant_id):
                if value is None:
                    await conn.execute(
                        """DELETE FROM provider_sync_state
                           WHERE tenant_id = $1 AND connection_id = $2 AND scope_key = $3""",
                        self._tenant,
                        self._connection_id,
                        key,
                    )
                    return
                # The connection may have been deleted meanwhile: then there is nothing to keep.
                await conn.execute(
                    """INSERT INTO provider_sync_state (tenant_id, connection_id, scope_key, state, updated_at)
                       SELECT $1, $2, $3, $4::jsonb, $5
                       WHERE EXISTS (SELECT 1 FROM connections WHERE tenant_id = $1 AND connection_id = $2)
                       ON CONFLICT (tenant_id, connection_id, scope_key)
                       DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at""",
                    self._tenant,
                    self._connection_id,
                    key,
                    json.dumps(value),
                    self._clock(),
                )
        except DATABASE_ERRORS as exc:
            raise translate_database_error(exc) from exc

    async def refresh_credentials(self, *, rejected: Mapping[str, str], refresh: CredentialRefresh) -> dict[str, str]:
        """See ConnectionStateStore.refresh_credentials. Raises what `refresh` raises (the transaction
        rolls back: nothing changes), ProviderAuthError when the connection no longer exists."""
        try:
            async with self._pool.acquire() as conn, tenant_transaction(conn, self._tenant_id):
                ciphertext = await conn.fetchval(
                    """SELECT credentials_ciphertext FROM connections
                       WHERE tenant_id = $1 AND connection_id = $2 FOR UPDATE""",
                    self._tenant,
                    self._connection_id,
                )
                if ciphertext is None:
                    raise ProviderAuthError(
                        f"reauthorization required: connection {self._connection_id!r} no longer exists"
                    )
                stored = self._keyring.decrypt(
                    bytes(ciphertext), tenant_id=self._tenant_id, connection_id=self._connection_id
                )
                if stored != dict(rejected):
                    return stored  # another fetcher refreshed while we waited for the lock
                fresh = dict(await refresh(stored))
                await conn.execute(
                    """UPDATE connections SET credentials_ciphertext = $3, credential_fields = $4, updated_at = $5
                       WHERE tenant_id = $1 AND connection_id = $2""",
                    self._tenant,
                    self._connection_id,
                    self._keyring.encrypt(fresh, tenant_id=self._tenant_id, connection_id=self._connection_id),
                    sorted(fresh),
                    self._clock(),
                )
                return fresh
        except DATABASE_ERRORS as exc:
            raise translate_database_error(exc) from exc
