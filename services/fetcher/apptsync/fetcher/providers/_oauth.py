"""OAuth 2 bearer tokens with refresh (Calendly, Google Calendar): a 401 refreshes once, through the
connection's state store so that concurrent fetchers never spend one refresh token twice."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from apptsync.fetcher.providers._http import ProviderHttp, RateBudget, UnauthorizedError
from apptsync.fetcher.providers._model import JsonValue
from apptsync.fetcher.providers._state import ConnectionStateStore
from apptsync.shared.appointments import Source
from apptsync.shared.errors import ProviderAuthError, ProviderRejectedError
from apptsync.shared.provider_access import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, auth_headers

T = TypeVar("T")
# Guards against a provider that accepts every refresh and then refuses every token.
MAX_REFRESHES_PER_SESSION = 5


def bearer_headers(credentials: Mapping[str, str], *, source: Source) -> dict[str, str]:
    """`Authorization: Bearer <access_token>` (apptsync.shared.provider_access builds it, for the
    gateway's verification probe too). Raises ProviderAuthError when there is no token (the message
    never contains a credential)."""
    return auth_headers(source, credentials)


def refresh_form(credentials: Mapping[str, str], *, source: Source) -> dict[str, str]:
    """The token request body of `grant_type=refresh_token`. Raises ProviderAuthError when the
    connection has no refresh token (e.g. a personal access token)."""
    refresh_token = credentials.get(REFRESH_TOKEN, "").strip()
    if not refresh_token:
        raise ProviderAuthError(
            f"reauthorization required: the {source.value} access token was refused and there is no refresh_token"
        )
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    for name in (CLIENT_ID, CLIENT_SECRET):
        value = credentials.get(name, "").strip()
        if value:
            form[name] = value
    return form


def merge_refreshed_credentials(
    current: Mapping[str, str], token_response: JsonValue, *, source: Source
) -> dict[str, str]:
    """`current` with the new `access_token` and, when the provider rotated it, the new
    `refresh_token` (Calendly always does; Google usually keeps the old one). Raises ProviderAuthError
    when the response holds no access token."""
    body = token_response if isinstance(token_response, dict) else {}
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProviderAuthError(f"reauthorization required: the {source.value} token endpoint returned no access_token")
    merged = dict(current)
    merged["access_token"] = access_token
    refresh_token = body.get("refresh_token")
    if isinstance(refresh_token, str) and refresh_token:
        merged["refresh_token"] = refresh_token
    return merged


class OAuthBearer:
    """The current bearer credentials of one session, refreshed when the provider answers 401.

    `call(send)` runs `send(headers)`; on a 401 it refreshes (through the store: one refresher per
    connection, the rotated refresh token stored as soon as the provider returns it) and sends once
    more. A 401 right after a refresh, or a refused refresh, is ProviderAuthError("reauthorization
    required ...")."""

    def __init__(
        self,
        *,
        http: ProviderHttp,
        source: Source,
        budget: RateBudget,
        token_url: str,
        credentials: Mapping[str, str],
        store: ConnectionStateStore,
    ) -> None:
        self._http = http
        self._source = source
        self._budget = budget
        self._token_url = token_url
        self._credentials = dict(credentials)
        self._store = store
        self.refreshes = 0

    async def call(self, send: Callable[[dict[str, str]], Awaitable[T]]) -> T:
        try:
            return await send(bearer_headers(self._credentials, source=self._source))
        except UnauthorizedError as exc:
            if self.refreshes >= MAX_REFRESHES_PER_SESSION:
                raise ProviderAuthError(
                    f"reauthorization required: {self._source.value} refused {self.refreshes} refreshed tokens"
                ) from exc
        self._credentials = await self._store.refresh_credentials(rejected=self._credentials, refresh=self._refresh)
        self.refreshes += 1
        try:
            return await send(bearer_headers(self._credentials, source=self._source))
        except UnauthorizedError as exc:
            raise ProviderAuthError(
                f"reauthorization required: {self._source.value} refused the refreshed access token"
            ) from exc

    async def _refresh(self, rejected: Mapping[str, str]) -> Mapping[str, str]:
        try:
            response = await self._http.post_form(
                source=self._source,
                budget=self._budget,
                url=self._token_url,
                form=refresh_form(rejected, source=self._source),
                headers={},
            )
        except (ProviderRejectedError, UnauthorizedError) as exc:
            # invalid_grant: the refresh token was revoked, expired or already spent.
            raise ProviderAuthError(
                f"reauthorization required: the {self._source.value} refresh was refused ({exc})"
            ) from exc
        return merge_refreshed_credentials(rejected, response.body, source=self._source)
