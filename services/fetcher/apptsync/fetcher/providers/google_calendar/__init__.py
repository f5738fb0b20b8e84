"""Google Calendar (API v3): events.list per calendar, incremental by sync token, OAuth refresh."""

from apptsync.fetcher.providers.google_calendar._listing import (
    MAX_RESULTS,
    GoogleListing,
    GoogleRequest,
    ListingPass,
    PendingSync,
    SyncState,
    rfc3339,
    sync_state_key,
)
from apptsync.fetcher.providers.google_calendar._normalizer import (
    OUT_OF_WINDOW,
    CalendarListing,
    google_moment,
    google_page,
    normalize_google_event,
    zone_or_utc,
)
from apptsync.fetcher.providers.google_calendar._session import (
    GOOGLE_CALENDAR_PUBLIC_API,
    GOOGLE_CALENDAR_RATE_BUDGET,
    GOOGLE_TOKEN_URL,
    GoogleCalendarSession,
    calendar_ids,
    events_answer,
    open_google_calendar_session,
)

__all__ = [
    "GOOGLE_CALENDAR_PUBLIC_API",
    "GOOGLE_CALENDAR_RATE_BUDGET",
    "GOOGLE_TOKEN_URL",
    "MAX_RESULTS",
    "OUT_OF_WINDOW",
    "CalendarListing",
    "GoogleCalendarSession",
    "GoogleListing",
    "GoogleRequest",
    "ListingPass",
    "PendingSync",
    "SyncState",
    "calendar_ids",
    "events_answer",
    "google_moment",
    "google_page",
    "normalize_google_event",
    "open_google_calendar_session",
    "rfc3339",
    "sync_state_key",
    "zone_or_utc",
]
