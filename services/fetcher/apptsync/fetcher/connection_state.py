"""The fetcher's ConnectionStateStore over PostgreSQL: provider state in `provider_sync_state`, and
OAuth refreshes serialized per connection by a committed marker on `connections` (migration 0009).
Every statement runs in a tenant transaction (row-level security, migrations 0004/0005).

A refresh token is single-use (Calendly rotates it on every refresh): spending it and then failing
to store its successor needs the customer to re-authorize. So no transaction is open while the
token request runs, and the refresh is three short steps:

1. Under the row lock, in one committed transaction: if the stored credentials are no longer the
   refused ones, use them (someone refreshed). If another fetcher's marker is younger than the
   refresh timeout, wait and look again. Otherwise write our marker (owner, started_at).
2. Call the provider, holding no lock and no transaction.
3. At once, in a transaction of its own, store the result and clear our marker; a transient failure
   (connection lost, server restarting, a commit that failed) is retried on a fresh connection, and
   a retry after a commit whose acknowledgement was lost finds the result already there.

Invariants: (a) at most one fetcher spends a connection's refresh token at a time, as long as a
refresh finishes within the marker timeout (the timeout exceeds the token request's retries); (b) the
stored credentials always hold the newest refresh token any refresher has committed, and step 3
never overwrites credentials replaced meanwhile (a re-authorization wins); (c) a refresher that died
leaves a marker that expires, after which the next one claims it: if the dead one stored a result,
step 1 returns that result, else its token was never spent (refresh from it) or the process died in
the milliseconds between reading the token response and step 3's commit, the one window no client
can close against a provider that invalidates the old token when it issues the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from apptsync.fetcher.providers import CredentialRefresh, JobWindow, JsonValue, StoredPayments
from apptsync.fetcher.refresh_protocol import RefreshMarker, RefreshStep, next_refresh_step
from apptsync.shared.credentials import Keyring
from apptsync.shared.db.pool import (
    DATABASE_ERRORS,
    is_transient_database_error,
    tenant_transaction,
    translate_database_error,
)
from apptsync.shared.errors import ProviderAuthError, StorageUnavailableError

if TYPE_CHECKING:
    from apptsync.shared.db import DbConnection

# Longer than a token request with all its 429/5xx retries (RetryPolicy.max_total_seconds is 120 s by
# default): a live refresher's marker must never look abandoned.
DEFAULT_REFRESH_MARKER_TIMEOUT_SECONDS = 180.0
DEFAULT_REFRESH_POLL_SECONDS = 0.25
# Storing a spent token's successor is worth more patience than an ordinary write.
DEFAULT_STORE_ATTEMPTS = 6
DEFAULT_STORE_BACKOFF_SECONDS = 0.5

# The stored amount paid and payment entries of the given appointments of this connection: one probe
# of the appointments' unique index per key (the tenant and source hidden from the planner, as in the
# writer's SELECT_STORED_VERSIONS) and one of the payments' per found row. The connection is checked
# on the probe's result, outside the LIMIT (where the planner cannot move it): inside, on a table with
# no statistics yet, appointments_by_connection_start (tenant_id, connection_id, ...) cost the same
# as the unique key and each probe read the connection's whole range (21 ms a key at 20,000 rows).
STORED_PAYMENTS = """
SELECT k.external_id, a.amount_paid_minor,
    (SELECT count(*) FROM payments AS p
     WHERE p.tenant_id = (SELECT $1::uuid) AND p.external_source = (SELECT $2::text)
       AND p.appointment_external_id = k.external_id)::integer AS entries
FROM unnest($3::text[]) AS k(external_id)
CROSS JOIN LATERAL (
    SELECT s.amount_paid_minor, s.connection_id FROM appointments AS s
    WHERE s.tenant_id = (SELECT $1::uuid) AND s.external_source = (SELECT $2::text)
      AND s.external_id = k.external_id
    LIMIT 1
) AS a
WHERE a.connection_id = $4
"""


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
        refresh_owner: str,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        refresh_marker_timeout_seconds: float = DEFAULT_REFRESH_MARKER_TIMEOUT_SECONDS,
        refresh_poll_seconds: float = DEFAULT_REFRESH_POLL_SECONDS,
        store_attempts: int = DEFAULT_STORE_ATTEMPTS,
        store_backoff_seconds: float = DEFAULT_STORE_BACKOFF_SECONDS,
    ) -> None:
        """`refresh_owner` names this refresher in the marker (unique per job run: the job's lease
        owner); `sleep` paces waiting for another refresher and retrying a failed store."""
        if refresh_poll_seconds <= 0 or refresh_marker_timeout_seconds <= 0 or store_attempts < 1:
            raise ValueError("refresh timeouts must be positive and store_attempts at least 1")
        self._refresh_owner = refresh_owner
        self._sleep = sleep
        self._marker_timeout_seconds = refresh_marker_timeout_seconds
        self._poll_seconds = refresh_poll_seconds
        self._store_attempts = store_attempts
        self._store_backoff_seconds = store_backoff_seconds
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

    async def stored_payments(self, source: str, external_ids: Sequence[str]) -> dict[str, StoredPayments]:
        if not external_ids:
            return {}
        try:
            async with self._pool.acquire() as conn, tenant_transaction(conn, self._tenant_id):
                rows = await conn.fetch(STORED_PAYMENTS, self._tenant, source, list(external_ids), self._connection_id)
        except DATABASE_ERRORS as exc:
            raise translate_database_error(exc) from exc
        return {row["external_id"]: StoredPayments(row["amount_paid_minor"], row["entries"]) for row in rows}

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
        """See ConnectionStateStore.refresh_credentials; the two-phase protocol of the module docstring.

        Raises what `refresh` raises (after releasing our marker) unless the refusal was because a
        slower refresher's result was stored meanwhile (then that is returned), ProviderAuthError when
        the connection no longer exists, StorageUnavailableError when the database stays away through
        every attempt to store the result, or when another refresher's marker never cleared."""
        refused = dict(rejected)
        claimed, basis = await self._wait_or_claim(refused)
        if not claimed:
            return basis
        try:
            fresh = dict(await refresh(basis))
        except ProviderAuthError:
            # invalid_grant: perhaps a refresher whose marker we took over spent the token and stored
            # its result after all; that result is as good as ours would have been.
            current = await self._release_marker()
            if current is not None and current != refused:
                return current
            raise
        except BaseException:
            # The token may or may not be spent (a timeout is ambiguous); either way the next
            # refresher need not wait for a marker whose owner has given up.
            with contextlib.suppress(Exception):
                await self._release_marker()
            raise
        return await self._store_result(basis=basis, fresh=fresh)

    async def _wait_or_claim(self, refused: dict[str, str]) -> tuple[bool, dict[str, str]]:
        """Phase 1: (True, the credentials to refresh from) once our marker is committed, or (False,
        the stored credentials) when they are no longer `refused` (use them). Waits, polling, while
        another fetcher's marker is live."""
        max_polls = int(self._marker_timeout_seconds / self._poll_seconds) + 2
        for _ in range(max_polls):
            try:
                async with self._pool.acquire() as conn, tenant_transaction(conn, self._tenant_id):
                    row = await self._lock_row(conn)
                    stored = self._decrypt_row(row)
                    marker = None
                    if row["refresh_owner"] is not None:
                        marker = RefreshMarker(owner=row["refresh_owner"], started_at=row["refresh_started_at"])
                    step = next_refresh_step(
                        stored_is_rejected=stored == refused,
                        marker=marker,
                        owner=self._refresh_owner,
                        now=self._clock(),
                        marker_timeout_seconds=self._marker_timeout_seconds,
                    )
                    if step is RefreshStep.USE_STORED:
                        return False, stored
                    if step is RefreshStep.CLAIM:
                        await conn.execute(
                            """UPDATE connections SET refresh_owner = $3, refresh_started_at = $4
                               WHERE tenant_id = $1 AND connection_id = $2""",
                            self._tenant,
                            self._connection_id,
                            self._refresh_owner,
                            self._clock(),
                        )
                        return True, stored
            except DATABASE_ERRORS as exc:
                raise translate_database_error(exc) from exc
            await self._sleep(self._poll_seconds)
        raise StorageUnavailableError(
            f"another fetcher's refresh of connection {self._connection_id!r} did not finish "
            f"within {self._marker_timeout_seconds:.0f} s"
        )

    async def _store_result(self, *, basis: dict[str, str], fresh: dict[str, str]) -> dict[str, str]:
        """Phase 3: stores `fresh` (refreshed from `basis`) and clears our marker, in a transaction of
        its own, retried on a new connection while the failure is transient. A retry after a commit
        whose acknowledgement was lost finds `fresh` stored and returns it (idempotent)."""
        for attempt in range(1, self._store_attempts + 1):
            try:
                async with self._pool.acquire() as conn, tenant_transaction(conn, self._tenant_id):
                    current = self._decrypt_row(await self._lock_row(conn))
                    # Replaced since we read them (a re-authorization through PutConnection, or a
                    # provider that does not rotate refresh tokens): those are as valid and newer.
                    kept = current if current not in (basis, fresh) else fresh
                    await conn.execute(
                        """UPDATE connections SET credentials_ciphertext = $3, credential_fields = $4, updated_at = $5,
                               refresh_owner = NULLIF(refresh_owner, $6),
                               refresh_started_at = CASE WHEN refresh_owner = $6 THEN NULL ELSE refresh_started_at END
                           WHERE tenant_id = $1 AND connection_id = $2""",
                        self._tenant,
                        self._connection_id,
                        self._keyring.encrypt(kept, tenant_id=self._tenant_id, connection_id=self._connection_id),
                        sorted(kept),
                        self._clock(),
                        self._refresh_owner,
                    )
                    return kept
            except DATABASE_ERRORS as exc:
                if attempt == self._store_attempts or not is_transient_database_error(exc):
                    raise translate_database_error(exc) from exc
            await self._sleep(self._store_backoff_seconds * attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _release_marker(self) -> dict[str, str] | None:
        """Clears our marker (if it is still ours) and returns the stored credentials, None when the
        connection is gone."""
        try:
            async with self._pool.acquire() as conn, tenant_transaction(conn, self._tenant_id):
                ciphertext = await conn.fetchval(
                    """UPDATE connections SET refresh_owner = NULLIF(refresh_owner, $3),
                           refresh_started_at = CASE WHEN refresh_owner = $3 THEN NULL ELSE refresh_started_at END
                       WHERE tenant_id = $1 AND connection_id = $2 RETURNING credentials_ciphertext""",
                    self._tenant,
                    self._connection_id,
                    self._refresh_owner,
                )
        except DATABASE_ERRORS as exc:
            raise translate_database_error(exc) from exc
        if ciphertext is None:
            return None
        return self._keyring.decrypt(bytes(ciphertext), tenant_id=self._tenant_id, connection_id=self._connection_id)

    async def _lock_row(self, conn: DbConnection) -> asyncpg.Record:
        """The connection's row (credentials and refresh marker), locked until the transaction ends.
        Raises ProviderAuthError when the connection no longer exists."""
        row = await conn.fetchrow(
            """SELECT credentials_ciphertext, refresh_owner, refresh_started_at FROM connections
               WHERE tenant_id = $1 AND connection_id = $2 FOR UPDATE""",
            self._tenant,
            self._connection_id,
        )
        if row is None:
            raise ProviderAuthError(f"reauthorization required: connection {self._connection_id!r} no longer exists")
        return row

    def _decrypt_row(self, row: asyncpg.Record) -> dict[str, str]:
        return self._keyring.decrypt(
            bytes(row["credentials_ciphertext"]), tenant_id=self._tenant_id, connection_id=self._connection_id
        )
