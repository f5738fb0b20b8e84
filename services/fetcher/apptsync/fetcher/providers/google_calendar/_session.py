"""The Google Calendar session: GoogleListing and the normalizer driven over ProviderHttp, with sync
state kept in the connection's state store (no business branching beyond what the listing says)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from datetime import datetime
from urllib.parse import quote

from apptsync.fetcher.providers._http import ProviderHttp, RateBudget
from apptsync.fetcher.providers._json_fields import text_field
from apptsync.fetcher.providers._model import ConnectionConfig, JobWindow, JsonValue, ProviderPage
from apptsync.fetcher.providers._oauth import OAuthBearer
from apptsync.fetcher.providers._state import ConnectionStateStore, InMemoryConnectionStateStore
from apptsync.fetcher.providers.google_calendar._listing import GoogleListing, GoogleRequest, sync_state_key
from apptsync.fetcher.providers.google_calendar._normalizer import CalendarListing, google_page
from apptsync.shared.appointments import Source
from apptsync.shared.errors import ProviderRejectedError
from apptsync.shared.provider_access import PUBLIC_API_URLS, google_calendar_ids

GOOGLE_CALENDAR_PUBLIC_API = PUBLIC_API_URLS[Source.GOOGLE_CALENDAR]
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL, not a secret)
# 10,000 requests/minute per project (all tenants share it): stay a little below.
GOOGLE_CALENDAR_RATE_BUDGET = RateBudget(requests_per_period=150, period_seconds=1.0, max_concurrent=20)
# Bounds the empty pages walked past in one next_page() call (Google may send several in a row).
_MAX_REQUESTS_PER_CALL = 10_000


def calendar_ids(settings: dict[str, str] | None) -> list[str]:
    """Connection setting `calendar_ids` (comma-separated); `primary` when absent (the gateway's
    verification probe reads the same calendars: apptsync.shared.provider_access)."""
    return google_calendar_ids(settings)


def events_answer(body: JsonValue) -> tuple[list[JsonValue], str | None, str | None]:
    """(items, nextPageToken, nextSyncToken) of an `events.list` answer. Raises ProviderRejectedError
    when the body is not an object or `items` is not a list."""
    items = body.get("items", []) if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ProviderRejectedError("google_calendar events.list answered without an `items` list", status_code=200)
    return items, text_field(body, "nextPageToken") or None, text_field(body, "nextSyncToken") or None


class GoogleCalendarSession:
    """A ProviderSession over `events.list` of every calendar in the connection's settings."""

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
    ) -> None:
        self._listing = GoogleListing(
            calendar_ids=calendar_ids(dict(connection.settings)), window=window, page_size=page_size, cursor=cursor
        )
        self._http = http
        self._base_url = (connection.base_url or GOOGLE_CALENDAR_PUBLIC_API).rstrip("/")
        self._auth = OAuthBearer(
            http=http,
            source=Source.GOOGLE_CALENDAR,
            budget=GOOGLE_CALENDAR_RATE_BUDGET,
            token_url=connection.settings.get("token_url", "").strip() or GOOGLE_TOKEN_URL,
            credentials=connection.credentials,
            store=state,
        )
        self._state = state
        self._window = window
        self._clock = clock
        self._retries = 0
        self.full_syncs_after_gone = 0

    @property
    def retries(self) -> int:
        return self._retries

    @property
    def refreshes(self) -> int:
        return self._auth.refreshes

    @property
    def incremental(self) -> bool:
        """Whether the calendar being listed is listed incrementally (by sync token)."""
        return self._listing.incremental

    def cursor(self) -> JsonValue:
        return self._listing.cursor()

    @property
    def near_term_pages(self) -> int:
        """Every page: each one is always fetched (see next_page), so every page the job sent before
        a resume was one too (JobProgress.resume caps this at the pages actually sent)."""
        return sys.maxsize

    async def next_page(self) -> ProviderPage | None:
        """See ProviderSession.next_page. Empty pages are walked past (never taken as the end); a
        sync token is stored once its listing's pages were all handed out and this call asks for
        more."""
        for _ in range(_MAX_REQUESTS_PER_CALL):
            pending = self._listing.pending_sync()
            if pending is not None:
                await self._state.save(sync_state_key(pending.calendar_id), pending.state.to_json())
                self._listing.sync_stored()
                continue
            calendar_id = self._listing.calendar_to_start()
            if calendar_id is not None:
                self._listing.start_calendar(await self._state.load(sync_state_key(calendar_id)))
                continue
            request = self._listing.next_request()
            if request is None:
                return None
            try:
                body = await self._get(request)
            except ProviderRejectedError as exc:
                if exc.status_code != 410 or request.sync_token is None:
                    raise
                dropped = self._listing.full_sync_required(request)
                await self._state.save(sync_state_key(dropped), None)
                self.full_syncs_after_gone += 1
                continue
            items, next_page_token, next_sync_token = events_answer(body)
            self._listing.accept(request, next_page_token=next_page_token, next_sync_token=next_sync_token)
            if items:
                listing = CalendarListing(
                    calendar_id=request.calendar_id,
                    timezone=text_field(body, "timeZone"),
                    name=text_field(body, "summary"),
                )
                page = google_page(items, listing=listing, window=self._window, fetched_at=self._clock())
                # Never a reason to stop early: a sync-token pass holds only changes (each calendar's
                # must be read to its end, or a later calendar's changes wait for the nightly run),
                # and a full pass happens only where no token is valid, which a full read repairs.
                return dataclasses.replace(page, near_term=True)
        raise ProviderRejectedError(
            f"google_calendar sent {_MAX_REQUESTS_PER_CALL} pages in a row without an event", status_code=200
        )

    async def _get(self, request: GoogleRequest) -> JsonValue:
        url = f"{self._base_url}/calendars/{quote(request.calendar_id, safe='')}/events"

        async def send(headers: dict[str, str]) -> JsonValue:
            response = await self._http.get_json(
                source=Source.GOOGLE_CALENDAR,
                budget=GOOGLE_CALENDAR_RATE_BUDGET,
                url=url,
                params=request.query_params(),
                headers=headers,
            )
            self._retries += response.retries
            return response.body

        return await self._auth.call(send)


def open_google_calendar_session(
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
) -> GoogleCalendarSession:
    """Raises InvalidArgumentError (bad cursor or page size). Without a `state` store, sync tokens and
    refreshed tokens live only as long as the session (every import is then a full sync).
    `near_term` is ignored: an incremental sync lists every change whatever its start time, and every
    page counts as near-term (always fetched, never a reason to stop early)."""
    del near_term
    return GoogleCalendarSession(
        http=http,
        connection=connection,
        window=window,
        page_size=page_size,
        cursor=cursor,
        clock=clock,
        state=state if state is not None else InMemoryConnectionStateStore(connection.credentials),
    )
