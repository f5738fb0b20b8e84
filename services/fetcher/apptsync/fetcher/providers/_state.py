"""What a provider session may keep between jobs: per-connection state and rotated credentials.

Providers stay free of I/O apart from ProviderHttp: the fetcher hands each session a
`ConnectionStateStore` (PostgreSQL in production: `apptsync.fetcher.connection_state`), and
`InMemoryConnectionStateStore` serves unit tests and callers without a database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from apptsync.fetcher.providers._model import JobWindow, JsonValue

# Given the credentials that were refused, returns fresh ones (spends the refresh token).
CredentialRefresh = Callable[[Mapping[str, str]], Awaitable[Mapping[str, str]]]


@dataclass(frozen=True, slots=True)
class StoredPayments:
    """What the mirror holds about one appointment's money: decides whether its payments are asked
    for again (see acuity._clients_payments.needs_payments)."""

    amount_paid_minor: int | None
    entries: int


class ConnectionStateStore(Protocol):
    """One connection's provider state (e.g. Google sync tokens by calendar) and its credentials."""

    async def load(self, key: str) -> JsonValue | None:
        """The state stored under `key`, or None. Raises StorageUnavailableError."""
        ...

    async def save(self, key: str, value: JsonValue | None) -> None:
        """Stores `value` under `key` (None deletes it). Raises StorageUnavailableError."""
        ...

    async def stored_external_ids(self, window: JobWindow) -> set[str]:
        """The external ids of this connection's stored rows (not marked deleted) that start inside
        `window`. Raises StorageUnavailableError."""
        ...

    async def stored_payments(self, source: str, external_ids: Sequence[str]) -> dict[str, StoredPayments]:
        """For those of `external_ids` stored for this connection: the stored amount paid (minor
        units, None when unknown) and how many payment entries are stored for it. Raises
        StorageUnavailableError."""
        ...

    async def refresh_credentials(self, *, rejected: Mapping[str, str], refresh: CredentialRefresh) -> dict[str, str]:
        """Fresh credentials after the provider refused `rejected`.

        One refresher per connection across every fetcher process: if the stored credentials are no
        longer `rejected` (another fetcher refreshed meanwhile) they are returned as they are;
        otherwise `refresh` is called once, with no database transaction open, and its result is
        stored (encrypted) at once in a transaction of its own, retried while the database failure is
        transient, so a single-use refresh token is neither spent twice nor lost with a failed commit.
        Raises what `refresh` raises (nothing is stored then), ProviderAuthError when the connection
        is gone, StorageUnavailableError."""
        ...


class InMemoryConnectionStateStore:
    """A ConnectionStateStore in this process's memory (tests; sessions opened without a store)."""

    def __init__(self, credentials: Mapping[str, str] | None = None) -> None:
        self.values: dict[str, JsonValue] = {}
        self.credentials: dict[str, str] = dict(credentials or {})
        # external id -> start of the rows "stored" for this connection (see stored_external_ids)
        self.stored_starts: dict[str, datetime] = {}
        # external id -> its stored amount paid and payment entries (see stored_payments)
        self.stored_money: dict[str, StoredPayments] = {}
        self.refreshes = 0
        self._lock = asyncio.Lock()

    async def load(self, key: str) -> JsonValue | None:
        return self.values.get(key)

    async def save(self, key: str, value: JsonValue | None) -> None:
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value

    async def stored_external_ids(self, window: JobWindow) -> set[str]:
        return {external_id for external_id, starts_at in self.stored_starts.items() if window.contains(starts_at)}

    async def stored_payments(self, source: str, external_ids: Sequence[str]) -> dict[str, StoredPayments]:
        return {external_id: self.stored_money[external_id] for external_id in external_ids
                if external_id in self.stored_money}

    async def refresh_credentials(self, *, rejected: Mapping[str, str], refresh: CredentialRefresh) -> dict[str, str]:
        async with self._lock:
            if self.credentials and self.credentials != dict(rejected):
                return dict(self.credentials)
            fresh = dict(await refresh(rejected))
            self.refreshes += 1
            self.credentials = fresh
            return dict(fresh)
