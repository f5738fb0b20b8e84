"""Calendly (API v2): scheduled events paged by token, one appointment per invitee, OAuth refresh."""

from apptsync.fetcher.providers.calendly._normalizer import (
    OUT_OF_WINDOW,
    FetchedEvent,
    calendly_page,
    event_skip,
    event_start,
    event_uuid,
    normalize_calendly_invitee,
)
from apptsync.fetcher.providers.calendly._paginator import (
    MAX_COUNT,
    CalendlyEventsRequest,
    CalendlyListing,
    CalendlyPaginator,
    CalendlyScope,
    calendly_scope,
    calendly_time,
)
from apptsync.fetcher.providers.calendly._session import (
    CALENDLY_PUBLIC_API,
    CALENDLY_RATE_BUDGET,
    CALENDLY_TOKEN_URL,
    CalendlySession,
    collection_and_next_token,
    open_calendly_session,
)

__all__ = [
    "CALENDLY_PUBLIC_API",
    "CALENDLY_RATE_BUDGET",
    "CALENDLY_TOKEN_URL",
    "MAX_COUNT",
    "OUT_OF_WINDOW",
    "CalendlyEventsRequest",
    "CalendlyListing",
    "CalendlyPaginator",
    "CalendlyScope",
    "CalendlySession",
    "FetchedEvent",
    "calendly_page",
    "calendly_scope",
    "calendly_time",
    "collection_and_next_token",
    "event_skip",
    "event_start",
    "event_uuid",
    "normalize_calendly_invitee",
    "open_calendly_session",
]
