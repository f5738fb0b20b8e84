"""The one error tree of apptsync.

Every error we raise says whether trying again can help (`retriable`). Adapters translate library
errors into these at the boundary (`raise ... from exc`), so business code never branches on
httpx, asyncpg or aiokafka exception types.
"""

from __future__ import annotations


class ApptsyncError(Exception):
    """Base of every apptsync error. `retriable` tells callers whether a retry can succeed."""

    retriable: bool = False


class RetriableError(ApptsyncError):
    """A transient failure: the same operation may succeed later (timeouts, 5xx, restarts)."""

    retriable = True


class PermanentError(ApptsyncError):
    """A failure that repeating the same operation cannot fix."""

    retriable = False


class InvalidArgumentError(PermanentError):
    """A request or setting is malformed. `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFoundError(PermanentError):
    """The addressed object does not exist (or belongs to another tenant: we do not say which)."""


class ProviderError(ApptsyncError):
    """Base of errors from a scheduling provider's API."""


class ProviderUnavailableError(ProviderError, RetriableError):
    """The provider answered 429 / 5xx, timed out or reset the connection.

    `retry_after_seconds` is the provider's own hint (Retry-After or a rate-limit reset header)."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after_seconds: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_seconds = retry_after_seconds


class ProviderAuthError(ProviderError, PermanentError):
    """The provider rejected our credentials (401/403 after any refresh): reauthorization required."""


class ProviderRejectedError(ProviderError, PermanentError):
    """The provider refused the request (4xx other than 429); the message is the provider's."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class OutboundRefusedError(PermanentError):
    """A URL the outbound policy (`apptsync.shared.outbound`) does not allow: not a provider host of the
    connection's source over https on the default port, nor an origin the deployment allows. The
    request was never sent. `reason` says why without repeating the URL's userinfo, path or query."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"outbound request refused: {reason}")
        self.reason = reason


class PaginationLoopError(ProviderError, PermanentError):
    """The provider handed back a cursor we already followed: paging would never end."""


class StorageUnavailableError(RetriableError):
    """PostgreSQL is unreachable or the transaction was aborted for a transient reason."""


class StorageRefusedError(PermanentError):
    """PostgreSQL refused a statement for good (a constraint, a missing table, bad SQL): a bug or a
    broken deployment, not the caller's input. The message is PostgreSQL's, for logs, not for clients."""


class BrokerUnavailableError(RetriableError):
    """The Kafka broker is unreachable or a request to it timed out."""


class PoisonMessageError(PermanentError):
    """A Kafka message cannot be decoded or stored however often it is retried: dead-letter it."""
