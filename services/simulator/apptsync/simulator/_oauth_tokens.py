"""Simulated OAuth 2 tokens (pure): access tokens per account, refresh tokens that are single-use and
rotate on every refresh (Calendly's documented behaviour; a reused one is `invalid_grant`)."""

from __future__ import annotations

from dataclasses import dataclass

SIMULATOR_CLIENT_ID = "apptsync-simulator"
SIMULATOR_CLIENT_SECRET = "apptsync-simulator-secret"  # noqa: S105 (a documented fake)


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str


class OAuthError(ValueError):
    """A token request OAuth refuses: `error` is the OAuth error code (400 `invalid_grant`, ...)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class OAuthTokenBook:
    """Tokens of one simulated provider. Token texts are deterministic: `<prefix>-access-<account>-<n>`."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._access: dict[str, int] = {}  # live access token -> account
        self._refresh: dict[str, int] = {}  # unspent refresh token -> account
        self._current: dict[int, TokenPair] = {}
        self._generation: dict[int, int] = {}
        self.refreshes = 0
        self.invalid_grants = 0

    def issue(self, account: int) -> TokenPair:
        """The account's first pair (called once per account when seeding)."""
        self._generation[account] = 0
        pair = self._pair(account, 0)
        self._grant(account, pair)
        return pair

    def current(self, account: int) -> TokenPair:
        """Raises KeyError for an unknown account."""
        return self._current[account]

    def account_of(self, access_token: str) -> int | None:
        return self._access.get(access_token)

    def refresh(self, form: dict[str, str]) -> tuple[int, TokenPair]:
        """Spends `form["refresh_token"]` and returns the account and its new pair; the old access
        token stays valid until it expires (`expire_access_tokens`). Raises OAuthError."""
        if form.get("grant_type") != "refresh_token":
            raise OAuthError(400, "unsupported_grant_type", "Only grant_type=refresh_token is supported here.")
        if form.get("client_id") != SIMULATOR_CLIENT_ID or form.get("client_secret") != SIMULATOR_CLIENT_SECRET:
            raise OAuthError(401, "invalid_client", "Client authentication failed.")
        account = self._refresh.pop(form.get("refresh_token", ""), None)
        if account is None:
            self.invalid_grants += 1
            raise OAuthError(400, "invalid_grant", "The grant is invalid, expired, revoked or already used.")
        self._generation[account] += 1
        pair = self._pair(account, self._generation[account])
        self._grant(account, pair)
        self.refreshes += 1
        return account, pair

    def expire_access_tokens(self) -> int:
        """Every access token expires (as after 2 hours); returns how many did."""
        expired = len(self._access)
        self._access.clear()
        return expired

    def _pair(self, account: int, generation: int) -> TokenPair:
        return TokenPair(
            access_token=f"{self._prefix}-access-{account}-{generation}",
            refresh_token=f"{self._prefix}-refresh-{account}-{generation}",
        )

    def _grant(self, account: int, pair: TokenPair) -> None:
        self._access[pair.access_token] = account
        self._refresh[pair.refresh_token] = account
        self._current[account] = pair
