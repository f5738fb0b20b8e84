"""The provider layer: page a scheduling provider's appointments as canonical pages.

The fetcher's job runner uses only what is exported here: `open_session(...)` gives a
ProviderSession whose `next_page()` returns ProviderPages until None; `ProviderHttp` is the one HTTP
client (retries, shared rate budgets) of a fetcher process.
"""

from apptsync.fetcher.providers._http import (
    JsonResponse,
    ProviderHttp,
    RateBudget,
    RetryPolicy,
    backoff_seconds,
    retry_after_seconds,
)
from apptsync.fetcher.providers._model import (
    ConnectionConfig,
    JobWindow,
    JsonValue,
    ProviderPage,
    ProviderSession,
)
from apptsync.fetcher.providers._registry import SessionFactory, open_session, supported_sources

__all__ = [
    "ConnectionConfig",
    "JobWindow",
    "JsonResponse",
    "JsonValue",
    "ProviderHttp",
    "ProviderPage",
    "ProviderSession",
    "RateBudget",
    "RetryPolicy",
    "SessionFactory",
    "backoff_seconds",
    "open_session",
    "retry_after_seconds",
    "supported_sources",
]
