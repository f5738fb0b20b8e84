"""An httpx transport that meters every request it carries: latency and HTTP status per provider."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from apptsync.shared.telemetry.metrics import METRICS, Metrics


class MeteredTransport(httpx.AsyncBaseTransport):
    """Wraps `inner`; observes `apptsync_provider_request_duration_seconds` and counts
    `apptsync_provider_requests_total{status_code}` ("error" when no response came back).

    `provider_of(request)` names the provider label (a small, fixed set: never a URL or tenant).
    Exceptions of `inner` propagate unchanged; metering never raises."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        provider_of: Callable[[httpx.Request], str],
        metrics: Metrics = METRICS,
        monotonic: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._inner = inner
        self._provider_of = provider_of
        self._metrics = metrics
        self._monotonic = monotonic

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        provider = self._provider_of(request)
        started = self._monotonic()
        status = "error"
        try:
            response = await self._inner.handle_async_request(request)
            status = str(response.status_code)
            return response
        finally:
            self._metrics.provider_request_duration.labels(provider).observe(self._monotonic() - started)
            self._metrics.provider_requests.labels(provider, status).inc()

    async def aclose(self) -> None:
        await self._inner.aclose()
