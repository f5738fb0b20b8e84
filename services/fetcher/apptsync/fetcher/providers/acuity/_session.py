"""The Acuity session: the paginator and normalizer driven over ProviderHttp (no business branching)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime

from opentelemetry import trace

from apptsync.fetcher.providers._fan_out import fan_out
from apptsync.fetcher.providers._http import ProviderHttp, RateBudget
from apptsync.fetcher.providers._model import ConnectionConfig, JobWindow, JsonValue, ProviderPage
from apptsync.fetcher.providers._money import is_currency_code
from apptsync.fetcher.providers._state import ConnectionStateStore
from apptsync.fetcher.providers.acuity._clients_payments import (
    acuity_clients,
    acuity_payments,
    needs_payments,
    pays,
    with_payments,
    without_payments,
)
from apptsync.fetcher.providers.acuity._normalizer import acuity_page, acuity_start
from apptsync.fetcher.providers.acuity._paginator import AcuityPaginator, WindowVerdict
from apptsync.shared.appointments import CanonicalAppointment, Contact, PageRecord, Source
from apptsync.shared.errors import InvalidArgumentError, ProviderRejectedError
from apptsync.shared.provider_access import PUBLIC_API_URLS, auth_headers

_tracer = trace.get_tracer("apptsync.fetcher")

ACUITY_PUBLIC_API = PUBLIC_API_URLS[Source.ACUITY]
# Acuity allows 10 requests/s and 20 concurrent connections per source IP (all tenants share it).
# 10 per 1.1 s leaves a 10 % margin for network jitter between our clock and Acuity's counter.
ACUITY_RATE_BUDGET = RateBudget(requests_per_period=10, period_seconds=1.1, max_concurrent=20)
# Payment lists of one page asked for at once: sequential requests at a real round trip (~0.2 s) would
# use half the budget; a few at once fill it while leaving connections to the other jobs.
PAYMENT_REQUESTS_AT_ONCE = 4
DEFAULT_CURRENCY = "USD"


def acuity_auth_headers(credentials: Mapping[str, str]) -> dict[str, str]:
    """Bearer (`access_token`) or Basic (`user_id` + `api_key`) headers (the fields and the header
    are apptsync.shared.provider_access's, which the gateway's verification probe uses too).

    Raises ProviderAuthError when neither is present; the message never contains a credential."""
    return auth_headers(Source.ACUITY, credentials)


# The near-term sweep asks for at most this many appointments one by one; more (a mass reschedule)
# wait for the nightly full sync, which lists every day.
NEAR_TERM_LOOKUPS_PER_JOB = 50


# The cursor of a session still sending the clients stream: the clients sent so far and the
# appointment walk's own cursor (not started yet).
_CLIENTS_OFFSET = "clients_offset"
_APPOINTMENTS_CURSOR = "appointments"


class AcuitySession:
    """A ProviderSession over Acuity's `GET /appointments` (see AcuityPaginator for the paging).

    The clients stream: a session opened with `clients` and without a cursor first lists
    `GET /clients` (one request: Acuity pages it no further) and sends it as pages of `page_size`
    contacts and no records (they neither stop a job nor break a streak), so clients without an
    appointment in the window are imported too; a job resumed during the clients stream lists them
    again and continues after the ones it sent (the cursor holds `clients_offset`). A job resumed in
    the appointment walk does not list them again (the next full sync does).

    Payments: an appointment whose `amountPaid` is not zero and not what the mirror holds (with its
    entries) gets its entries from `GET /appointments/{id}/payments`, inside the shared rate budget
    (`payment_requests` counts them): an up-to-date tenant's sync asks for none. One that paid
    nothing has a known empty list (see acuity._clients_payments).

    The near-term sweep: the near term is walked first and completely, so a stored row of the near
    term that the walk did not return has moved out of it (rescheduled to a later or earlier day) or
    is gone. Before leaving the near term the session asks Acuity for each such appointment by id
    (`GET /appointments/{id}`, at most NEAR_TERM_LOOKUPS_PER_JOB, inside the shared rate budget) and
    returns what it finds as one more near-term page, so an early-stopping sync also catches a booking
    moved from tomorrow to next month. A 404 is left to the nightly full sync (a complete walk marks
    it deleted). The sweep runs only in a session that walked the near term from its beginning (a
    resumed session no longer knows which keys the walk returned)."""

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
        state: ConnectionStateStore | None = None,
        clients: bool = False,
    ) -> None:
        currency = connection.settings.get("currency", DEFAULT_CURRENCY).strip().upper()
        if not is_currency_code(currency):
            raise InvalidArgumentError("currency", f"not an ISO 4217 code: {currency!r}")
        self._clients_offset: int | None = 0 if cursor is None and clients else None
        if isinstance(cursor, dict) and _CLIENTS_OFFSET in cursor:
            offset = cursor.get(_CLIENTS_OFFSET)
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise InvalidArgumentError("cursor", f"`{_CLIENTS_OFFSET}` is not a count: {offset!r}")
            self._clients_offset, cursor = offset, cursor.get(_APPOINTMENTS_CURSOR)
        self._page_size = page_size
        self._clients: list[Contact] | None = None
        self.payment_requests = 0
        walk_started = cursor is not None
        self._paginator = AcuityPaginator(window=window, page_size=page_size, cursor=cursor, near_term=near_term)
        self._http = http
        self._credentials = connection.credentials
        self._url = (connection.base_url or ACUITY_PUBLIC_API).rstrip("/") + "/appointments"
        self._window = window
        self._currency = currency
        self._clock = clock
        self._retries = 0
        self._base_url = (connection.base_url or ACUITY_PUBLIC_API).rstrip("/")
        self._state = state
        # The sweep needs the whole near-term walk of this session (see the class docstring).
        self._sweep_window = near_term if state is not None and not walk_started else None
        self._near_term_seen: set[str] = set()
        self.near_term_lookups = 0

    @property
    def retries(self) -> int:
        return self._retries

    def cursor(self) -> JsonValue:
        if self._clients_offset is not None:
            return {_CLIENTS_OFFSET: self._clients_offset, _APPOINTMENTS_CURSOR: None}
        return self._paginator.cursor()

    @property
    def near_term_pages(self) -> int:
        return self._paginator.near_term_pages

    async def next_page(self) -> ProviderPage | None:
        """See ProviderSession.next_page. Windows that come back empty are walked past, not returned."""
        headers = acuity_auth_headers(self._credentials)
        if self._clients_offset is not None:
            clients = await self._clients_page(headers)
            if clients is not None:
                return clients
        while True:
            request = self._paginator.next_request()
            if self._sweep_window is not None and (request is None or not request.near_term):
                swept = await self._near_term_sweep(self._sweep_window, headers)
                self._sweep_window = None
                if swept is not None:
                    return swept
            if request is None:
                return None
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
                page = acuity_page(
                    records,
                    request=request,
                    window=self._window,
                    observed_at=observed_at,
                    currency=self._currency,
                    starts=starts,
                )
            page = await self._with_payments(page, headers)
            if request.near_term:
                self._near_term_seen.update(record.external_id for record in page.appointments)
            return page

    async def _near_term_sweep(self, near_term: JobWindow, headers: Mapping[str, str]) -> ProviderPage | None:
        """The stored near-term appointments the walk did not return, as Acuity has them now; None
        when there are none (or Acuity has none of them any more)."""
        assert self._state is not None  # noqa: S101 -- narrows the type; the session loads its state before this is called
        missing = sorted(await self._state.stored_external_ids(near_term) - self._near_term_seen)
        records: list[JsonValue] = []
        for appointment_id in missing[:NEAR_TERM_LOOKUPS_PER_JOB]:
            self.near_term_lookups += 1
            try:
                response = await self._http.get_json(
                    source=Source.ACUITY,
                    budget=ACUITY_RATE_BUDGET,
                    url=f"{self._base_url}/appointments/{appointment_id}",
                    params={},
                    headers=headers,
                )
            except ProviderRejectedError as exc:
                if exc.status_code in (400, 404):  # gone (or never an appointment id): the nightly run decides
                    continue
                raise
            self._retries += response.retries
            if isinstance(response.body, dict):
                records.append(response.body)
        if not records:
            return None
        starts = [acuity_start(record) for record in records]
        # Whatever day they moved to: the page covers every day of the job window (the normalizer
        # still counts a record outside the window as skipped out of window).
        lookup = self._paginator.whole_window_request(len(records))
        with _tracer.start_as_current_span("normalize", attributes={"apptsync.records": len(records)}):
            page = acuity_page(
                records, request=lookup, window=self._window, observed_at=self._clock(), currency=self._currency,
                starts=starts,
            )
        return await self._with_payments(page, headers)

    async def _clients_page(self, headers: Mapping[str, str]) -> ProviderPage | None:
        """The next page of the clients stream; None (and the stream ends) after the last one."""
        assert self._clients_offset is not None  # noqa: S101 -- narrows the type; the caller checked
        if self._clients is None:
            response = await self._http.get_json(
                source=Source.ACUITY, budget=ACUITY_RATE_BUDGET, url=f"{self._base_url}/clients", params={},
                headers=headers,
            )
            self._retries += response.retries
            if not isinstance(response.body, list):
                raise ProviderRejectedError(
                    f"acuity /clients answered a JSON {type(response.body).__name__}, not a list", status_code=200
                )
            self._clients = acuity_clients(response.body)
        chunk = self._clients[self._clients_offset:self._clients_offset + self._page_size]
        if not chunk:
            self._clients_offset = None
            return None
        self._clients_offset += len(chunk)
        return ProviderPage(records_fetched=0, appointments=[], skipped_out_of_window=0, skipped_invalid=0,
                            skip_details=[], contacts=chunk)

    async def _with_payments(self, page: ProviderPage, headers: Mapping[str, str]) -> ProviderPage:
        """`page` with the payment lists it needs (acuity._clients_payments.needs_payments): asked for
        when `amountPaid` is not zero and the mirror does not hold that amount with its entries yet;
        a known empty list when nothing was paid; left unknown (the stored entries stay) otherwise."""
        paying = [a.external_id for a in page.appointments if isinstance(a, CanonicalAppointment) and pays(a)]
        stored = await self._state.stored_payments(Source.ACUITY.value, paying) if self._state and paying else {}

        appointments: list[PageRecord] = []
        to_ask: list[tuple[int, CanonicalAppointment]] = []  # (position in the page, record)
        for record in page.appointments:
            if isinstance(record, CanonicalAppointment) and not pays(record):
                record = without_payments(record)
            elif isinstance(record, CanonicalAppointment) and needs_payments(record, stored.get(record.external_id)):
                to_ask.append((len(appointments), record))
            appointments.append(record)

        async def with_entries(record: CanonicalAppointment) -> CanonicalAppointment:
            response = await self._http.get_json(
                source=Source.ACUITY,
                budget=ACUITY_RATE_BUDGET,
                url=f"{self._base_url}/appointments/{record.external_id}/payments",
                params={},
                headers=headers,
            )
            self._retries += response.retries
            return with_payments(record, acuity_payments(response.body, self._currency))

        self.payment_requests += len(to_ask)
        completed = await fan_out([record for _, record in to_ask], with_entries, at_once=PAYMENT_REQUESTS_AT_ONCE)
        for (position, _), record in zip(to_ask, completed, strict=True):
            appointments[position] = record
        return dataclasses.replace(page, appointments=appointments)


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
    clients: bool = False,
) -> AcuitySession:
    """Raises InvalidArgumentError (bad currency, cursor or page size). `near_term` is walked first
    (see AcuityPaginator); `state` tells the near-term sweep which rows are stored (see AcuitySession)."""
    return AcuitySession(
        http=http,
        connection=connection,
        window=window,
        page_size=page_size,
        cursor=cursor,
        clock=clock,
        near_term=near_term,
        state=state,
        clients=clients,
    )
