"""The Acuity session: the paginator and normalizer driven over ProviderHttp (no business branching)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from datetime import datetime

from opentelemetry import trace

from apptsync.fetcher.providers._http import ProviderHttp, RateBudget
from apptsync.fetcher.providers._model import ConnectionConfig, JobWindow, JsonValue, ProviderPage
from apptsync.fetcher.providers._money import is_currency_code
from apptsync.fetcher.providers._state import ConnectionStateStore
from apptsync.fetcher.providers.acuity._normalizer import acuity_page, acuity_start
from apptsync.fetcher.providers.acuity._paginator import AcuityPaginator, WindowVerdict
from apptsync.shared.appointments import Source
from apptsync.shared.errors import InvalidArgumentError, ProviderAuthError, ProviderRejectedError

_tracer = trace.get_tracer("apptsync.fetcher")

ACUITY_PUBLIC_API = "https://acuityscheduling.com/api/v1"
# Acuity allows 10 requests/s and 20 concurrent connections per source IP (all tenants share it).
# 10 per 1.1 s leaves a 10 % margin for network jitter between our clock and Acuity's counter.
ACUITY_RATE_BUDGET = RateBudget(requests_per_period=10, period_seconds=1.1, max_concurrent=20)
DEFAULT_CURRENCY = "USD"


def acuity_auth_headers(credentials: Mapping[str, str]) -> dict[str, str]:
    """Bearer (`access_token`) or Basic (`user_id` + `api_key`) headers.

    Raises ProviderAuthError when neither is present; the message never contains a credential."""
    token = credentials.get("access_token", "").strip()
    if token:
        return {"Authorization": f"Bearer {token}"}
    user_id, api_key = credentials.get("user_id", "").strip(), credentials.get("api_key", "").strip()
    if user_id and api_key:
        basic = base64.b64encode(f"{user_id}:{api_key}".encode()).decode("ascii")
        return {"Authorization": f"Basic {basic}"}
    raise ProviderAuthError("reauthorization required: the acuity connection has no user_id/api_key or access_token")


class AcuitySession:
    """A ProviderSession over Acuity's `GET /appointments` (see AcuityPaginator for the paging)."""

    def __init__(
        self,
        *,
        http: ProviderHttp,
        connection: ConnectionConfig,
        window: JobWindow,
        page_size: int,
        cursor: JsonValue | None,
        clock: Callable[[], datetime],
        near_term: JobWindow | None = None,
    ) -> None:
        currency = connection.settings.get("currency", DEFAULT_CURRENCY).strip().upper()
        if not is_currency_code(currency):
            raise InvalidArgumentError("currency", f"not an ISO 4217 code: {currency!r}")
        self._paginator = AcuityPaginator(window=window, page_size=page_size, cursor=cursor, near_term=near_term)
        self._http = http
        self._credentials = connection.credentials
        self._url = (connection.base_url or ACUITY_PUBLIC_API).rstrip("/") + "/appointments"
        self._window = window
        self._currency = currency
        self._clock = clock
        self._retries = 0

    @property
    def retries(self) -> int:
        return self._retries

    def cursor(self) -> JsonValue:
        return self._paginator.cursor()

    @property
    def near_term_pages(self) -> int:
        return self._paginator.near_term_pages

    async def next_page(self) -> ProviderPage | None:
        """See ProviderSession.next_page. Windows that come back empty are walked past, not returned."""
        headers = acuity_auth_headers(self._credentials)
        while (request := self._paginator.next_request()) is not None:
            response = await self._http.get_json(
                source=Source.ACUITY,
                budget=ACUITY_RATE_BUDGET,
                url=self._url,
                params=request.query_params(),
                headers=headers,
            )
            self._retries += response.retries
            observed_at = self._clock()
            records = response.body
            if not isinstance(records, list):
                raise ProviderRejectedError(
                    f"acuity /appointments answered a JSON {type(records).__name__}, not a list",
                    status_code=200,
                )
            starts = [acuity_start(record) for record in records]
            verdict = self._paginator.accept(request, starts)
            if verdict is WindowVerdict.TRUNCATED or not records:
                continue
            with _tracer.start_as_current_span("normalize", attributes={"apptsync.records": len(records)}):
                return acuity_page(
                    records,
                    request=request,
                    window=self._window,
                    observed_at=observed_at,
                    currency=self._currency,
                    starts=starts,
                )
        return None


def open_acuity_session(
    *,
    http: ProviderHttp,
    connection: ConnectionConfig,
    window: JobWindow,
    page_size: int,
    cursor: JsonValue | None,
    clock: Callable[[], datetime],
    state: ConnectionStateStore | None = None,
    near_term: JobWindow | None = None,
) -> AcuitySession:
    """Raises InvalidArgumentError (bad currency, cursor or page size). Acuity keeps no state between
    jobs, so `state` is not used. `near_term` is walked first (see AcuityPaginator)."""
    del state
    return AcuitySession(
        http=http,
        connection=connection,
        window=window,
        page_size=page_size,
        cursor=cursor,
        clock=clock,
        near_term=near_term,
    )
