"""The Calendly session: paginator and normalizer driven over ProviderHttp (no business branching)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from apptsync.fetcher.providers._fan_out import fan_out
from apptsync.fetcher.providers._http import ProviderHttp, RateBudget
from apptsync.fetcher.providers._model import ConnectionConfig, JobWindow, JsonValue, ProviderPage
from apptsync.fetcher.providers._oauth import OAuthBearer
from apptsync.fetcher.providers._page_tokens import PageTokenTrail
from apptsync.fetcher.providers._state import ConnectionStateStore, InMemoryConnectionStateStore
from apptsync.fetcher.providers.calendly._normalizer import (
    FetchedEvent,
    calendly_page,
    event_skip,
    event_start,
    event_uuid,
)
from apptsync.fetcher.providers.calendly._paginator import MAX_COUNT, CalendlyPaginator, calendly_scope
from apptsync.shared.appointments import Source
from apptsync.shared.errors import ProviderRejectedError
from apptsync.shared.provider_access import PUBLIC_API_URLS

CALENDLY_PUBLIC_API = PUBLIC_API_URLS[Source.CALENDLY]
CALENDLY_TOKEN_URL = "https://auth.calendly.com/oauth/token"  # noqa: S105 (a URL, not a secret)
# Calendly's limits are per user (500/min on paid plans) and announced in X-RateLimit-* headers, which
# ProviderHttp honours per connection; this process-wide budget only caps our own burst.
CALENDLY_RATE_BUDGET = RateBudget(requests_per_period=1000, period_seconds=1.0, max_concurrent=20)
# Invitee lists of one page fetched at once (one job stays well inside the process-wide budget).
INVITEE_FETCH_CONCURRENCY = 16


def collection_and_next_token(body: JsonValue, *, path: str) -> tuple[list[JsonValue], str | None]:
    """`{collection: [...], pagination: {next_page_token}}` -> (records, next token or None).

    Raises ProviderRejectedError when the body has no `collection` list."""
    collection = body.get("collection") if isinstance(body, dict) else None
    if not isinstance(collection, list):
        raise ProviderRejectedError(f"calendly {path} answered without a `collection` list", status_code=200)
    pagination = body.get("pagination") if isinstance(body, dict) else None
    token = pagination.get("next_page_token") if isinstance(pagination, dict) else None
    return collection, token if isinstance(token, str) and token else None


class CalendlySession:
    """A ProviderSession over `GET /scheduled_events` and each in-window event's invitees."""

    def __init__(
        self,
        *,
        http: ProviderHttp,
        connection: ConnectionConfig,
        window: JobWindow,
        page_size: int,
        cursor: JsonValue | None,
        clock: Callable[[], datetime],
        state: ConnectionStateStore,
        near_term: JobWindow | None = None,
    ) -> None:
        self._scope = calendly_scope(connection.settings)
        self._paginator = CalendlyPaginator(window=window, page_size=page_size, cursor=cursor, near_term=near_term)
        self._http = http
        base_url = (connection.base_url or CALENDLY_PUBLIC_API).rstrip("/")
        self._events_url = base_url + "/scheduled_events"
        token_url = connection.settings.get("token_url", "").strip()
        if not token_url:
            token_url = base_url + "/oauth/token" if connection.base_url else CALENDLY_TOKEN_URL
        self._auth = OAuthBearer(
            http=http,
            source=Source.CALENDLY,
            budget=CALENDLY_RATE_BUDGET,
            token_url=token_url,
            credentials=connection.credentials,
            store=state,
        )
        self._rate_limit_scope = connection.scope_key or f"session-{id(self)}"
        self._window = window
        self._clock = clock
        self._retries = 0

    @property
    def retries(self) -> int:
        return self._retries

    @property
    def refreshes(self) -> int:
        return self._auth.refreshes

    def cursor(self) -> JsonValue:
        return self._paginator.cursor()

    @property
    def near_term_pages(self) -> int:
        return self._paginator.near_term_pages

    async def next_page(self) -> ProviderPage | None:
        """See ProviderSession.next_page. Empty event pages are walked past, not returned; an event
        another listing of the walk lists (at a shared boundary) is left to that listing."""
        while (request := self._paginator.next_request()) is not None:
            body = await self._get(self._events_url, request.query_params(self._scope))
            listed, next_token = collection_and_next_token(body, path="/scheduled_events")
            events = [event for event in listed if not self._paginator.listed_elsewhere(event_start(event))]
            fetched = await self._with_invitees(events)
            self._paginator.accept(request, next_token, listed=len(fetched))
            if fetched:
                return calendly_page(
                    fetched, window=self._window, fetched_at=self._clock(), near_term=request.near_term
                )
        return None

    async def _with_invitees(self, events: list[JsonValue]) -> list[FetchedEvent]:
        """Each event with its invitees (None for an event skipped before they were fetched), fetched
        a few events at a time; the first failure fails the page."""
        async def fetch(event: JsonValue) -> FetchedEvent:
            if event_skip(event, window=self._window) is not None:
                return FetchedEvent(event, None)
            return FetchedEvent(event, await self._invitees(event_uuid(event)))

        return await fan_out(events, fetch, at_once=INVITEE_FETCH_CONCURRENCY)

    async def _invitees(self, uuid: str) -> list[JsonValue]:
        url = f"{self._events_url}/{uuid}/invitees"
        trail = PageTokenTrail(f"calendly invitees of event {uuid}")
        invitees: list[JsonValue] = []
        page_token: str | None = None
        while True:
            params = {"count": str(MAX_COUNT)}
            if page_token is not None:
                params["page_token"] = page_token
            body = await self._get(url, params)
            page, page_token = collection_and_next_token(body, path="/scheduled_events/{uuid}/invitees")
            invitees.extend(page)
            if page_token is None:
                return invitees
            trail.follow(page_token)

    async def _get(self, url: str, params: dict[str, str]) -> JsonValue:
        async def send(headers: dict[str, str]) -> JsonValue:
            response = await self._http.get_json(
                source=Source.CALENDLY,
                budget=CALENDLY_RATE_BUDGET,
                url=url,
                params=params,
                headers=headers,
                rate_limit_scope=self._rate_limit_scope,
            )
            self._retries += response.retries
            return response.body

        return await self._auth.call(send)


def open_calendly_session(
    *,
    http: ProviderHttp,
    connection: ConnectionConfig,
    window: JobWindow,
    page_size: int,
    cursor: JsonValue | None,
    clock: Callable[[], datetime],
    state: ConnectionStateStore | None = None,
    near_term: JobWindow | None = None,
    clients: bool = False,  # no client list at this provider: attendees come with the events
) -> CalendlySession:
    """Raises InvalidArgumentError (no organization/user setting, bad cursor or page size). Without a
    `state` store, refreshed tokens live only as long as the session. `near_term` is listed first
    (see CalendlyPaginator)."""
    return CalendlySession(
        http=http,
        connection=connection,
        window=window,
        page_size=page_size,
        cursor=cursor,
        clock=clock,
        state=state if state is not None else InMemoryConnectionStateStore(connection.credentials),
        near_term=near_term,
    )
