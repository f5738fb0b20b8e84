"""The Acuity targeted session: the appointments named by webhook notifications, fetched one by one.

An Acuity notification carries only `action, id, calendarID, appointmentTypeID`; the record itself is
`GET /appointments/{id}` (through the shared Acuity budget like every Acuity request). Each page holds
up to `page_size` of the targets, in the order they arrived. A 404 (the appointment was deleted) is
not a record: the nightly full sync's complete walk marks it deleted (a targeted job never reconciles).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from opentelemetry import trace

from apptsync.fetcher.providers._http import ProviderHttp
from apptsync.fetcher.providers._model import ConnectionConfig, JobWindow, JsonValue, ProviderPage
from apptsync.fetcher.providers._money import is_currency_code
from apptsync.fetcher.providers.acuity._normalizer import acuity_page, acuity_start
from apptsync.fetcher.providers.acuity._paginator import AcuityRequest
from apptsync.fetcher.providers.acuity._session import (
    ACUITY_PUBLIC_API,
    ACUITY_RATE_BUDGET,
    DEFAULT_CURRENCY,
    acuity_auth_headers,
)
from apptsync.shared.appointments import Source
from apptsync.shared.errors import InvalidArgumentError, ProviderRejectedError

_tracer = trace.get_tracer("apptsync.fetcher")


def targeted_cursor_position(cursor: JsonValue | None, target_count: int) -> int:
    """Where a targeted session resumes: the index of the next target (a cursor `{"next": n}`).

    Raises InvalidArgumentError for a cursor of another shape or beyond the targets."""
    if cursor is None:
        return 0
    if isinstance(cursor, dict):
        position = cursor.get("next")
        if isinstance(position, int) and not isinstance(position, bool) and 0 <= position <= target_count:
            return position
    raise InvalidArgumentError("cursor", "not a targeted-sync cursor")


class AcuityTargetedSession:
    """A ProviderSession over `GET /appointments/{id}` for each target id."""

    def __init__(
        self,
        *,
        http: ProviderHttp,
        connection: ConnectionConfig,
        window: JobWindow,
        page_size: int,
        targets: Sequence[str],
        cursor: JsonValue | None,
        clock: Callable[[], datetime],
    ) -> None:
        if page_size < 1:
            raise InvalidArgumentError("page_size", "must be at least 1")
        currency = connection.settings.get("currency", DEFAULT_CURRENCY).strip().upper()
        if not is_currency_code(currency):
            raise InvalidArgumentError("currency", f"not an ISO 4217 code: {currency!r}")
        bad = [target for target in targets if not target.isdigit()]
        if bad:
            raise InvalidArgumentError("targets", f"{len(bad)} Acuity target(s) are not appointment ids")
        self._http = http
        self._credentials = connection.credentials
        self._base_url = (connection.base_url or ACUITY_PUBLIC_API).rstrip("/")
        self._window = window
        self._page_size = page_size
        self._targets = list(targets)
        self._next = targeted_cursor_position(cursor, len(self._targets))
        self._currency = currency
        self._clock = clock
        self._retries = 0
        # Every target page is filed under the whole job window (the record's day is whatever it is now).
        self._request_days = (window.start.date(), (window.end - timedelta(microseconds=1)).date())

    @property
    def retries(self) -> int:
        return self._retries

    @property
    def near_term_pages(self) -> int:
        return 0

    def cursor(self) -> JsonValue:
        return {"next": self._next}

    async def next_page(self) -> ProviderPage | None:
        """The next batch of targets that Acuity still has; None once every target was asked for."""
        headers = acuity_auth_headers(self._credentials)
        while self._next < len(self._targets):
            batch = self._targets[self._next : self._next + self._page_size]
            records: list[JsonValue] = []
            for appointment_id in batch:
                try:
                    response = await self._http.get_json(
                        source=Source.ACUITY,
                        budget=ACUITY_RATE_BUDGET,
                        url=f"{self._base_url}/appointments/{appointment_id}",
                        params={},
                        headers=headers,
                    )
                except ProviderRejectedError as exc:
                    if exc.status_code in (400, 404):  # deleted (or never ours): the nightly walk decides
                        continue
                    raise
                self._retries += response.retries
                if isinstance(response.body, dict):
                    records.append(response.body)
            self._next += len(batch)
            if not records:
                continue
            starts = [acuity_start(record) for record in records]
            request = AcuityRequest(
                min_date=self._request_days[0], max_date=self._request_days[1], max_records=len(records)
            )
            with _tracer.start_as_current_span("normalize", attributes={"apptsync.records": len(records)}):
                return acuity_page(
                    records,
                    request=request,
                    window=self._window,
                    observed_at=self._clock(),
                    currency=self._currency,
                    starts=starts,
                )
        return None
