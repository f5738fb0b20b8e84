"""Acuity Scheduling (API v1): date-window paging, normalization, and the session over ProviderHttp."""

from apptsync.fetcher.providers.acuity._normalizer import (
    OUT_OF_WINDOW,
    acuity_local_day,
    acuity_page,
    acuity_start,
    money_from_acuity,
    normalize_acuity_record,
    parse_acuity_datetime,
)
from apptsync.fetcher.providers.acuity._paginator import (
    COVERAGE_MARGIN,
    FIRST_SPAN_DAYS,
    MAX_RECORDS_PER_REQUEST,
    MAX_SPAN_DAYS,
    MAX_UTC_OFFSET,
    AcuityPaginator,
    AcuityRequest,
    WindowVerdict,
)
from apptsync.fetcher.providers.acuity._session import (
    ACUITY_PUBLIC_API,
    ACUITY_RATE_BUDGET,
    AcuitySession,
    acuity_auth_headers,
    open_acuity_session,
)

__all__ = [
    "ACUITY_PUBLIC_API",
    "ACUITY_RATE_BUDGET",
    "COVERAGE_MARGIN",
    "FIRST_SPAN_DAYS",
    "MAX_RECORDS_PER_REQUEST",
    "MAX_SPAN_DAYS",
    "MAX_UTC_OFFSET",
    "OUT_OF_WINDOW",
    "AcuityPaginator",
    "AcuityRequest",
    "AcuitySession",
    "WindowVerdict",
    "acuity_auth_headers",
    "acuity_local_day",
    "acuity_page",
    "acuity_start",
    "money_from_acuity",
    "normalize_acuity_record",
    "open_acuity_session",
    "parse_acuity_datetime",
]
