"""The provider layer: page a scheduling provider's appointments as canonical pages.

The fetcher's job runner uses only what is exported here: `open_session(...)` gives a
ProviderSession whose `next_page()` returns ProviderPages until None; `ProviderHttp` is the one HTTP
client (retries, shared rate budgets, per-account rate-limit pauses) of a fetcher process; a
`ConnectionStateStore` (implemented by the fetcher over PostgreSQL) keeps provider state between jobs
and serializes OAuth refreshes per connection.
"""

from apptsync.fetcher.providers._http import (
    RATE_LIMIT_REASONS,
    JsonResponse,
    ProviderHttp,
    ProviderTransport,
    RateBudget,
    RetryPolicy,
    SharedBudget,
    UnauthorizedError,
    backoff_seconds,
    provider_error_reasons,
    rate_limit_pause_seconds,
    retry_after_seconds,
    shared_pause_seconds,
)
from apptsync.fetcher.providers._model import (
    ConnectionConfig,
    JobWindow,
    JsonValue,
    ProviderPage,
    ProviderSession,
)
from apptsync.fetcher.providers._near_term import NEAR_TERM_LOOKBACK, near_term_window
from apptsync.fetcher.providers._registry import (
    SessionFactory,
    open_session,
    open_targeted_session,
    supported_sources,
)
from apptsync.fetcher.providers._state import (
    ConnectionStateStore,
    CredentialRefresh,
    InMemoryConnectionStateStore,
    StoredPayments,
)

__all__ = [
    "NEAR_TERM_LOOKBACK",
    "RATE_LIMIT_REASONS",
    "ConnectionConfig",
    "ConnectionStateStore",
    "CredentialRefresh",
    "InMemoryConnectionStateStore",
    "JobWindow",
    "JsonResponse",
    "JsonValue",
    "ProviderHttp",
    "ProviderPage",
    "ProviderSession",
    "ProviderTransport",
    "RateBudget",
    "RetryPolicy",
    "SessionFactory",
    "SharedBudget",
    "StoredPayments",
    "UnauthorizedError",
    "backoff_seconds",
    "near_term_window",
    "open_session",
    "open_targeted_session",
    "provider_error_reasons",
    "rate_limit_pause_seconds",
    "retry_after_seconds",
    "shared_pause_seconds",
    "supported_sources",
]
