"""Prometheus metrics of every apptsync process, and the `/metrics` HTTP endpoint that serves them.

Names follow the Prometheus conventions: the `apptsync_` namespace, the base unit in the name
(`_seconds`, `_messages`), `_total` on counters. Labels have small, bounded value sets (source,
state, outcome, HTTP status code, topic/partition): never a tenant, job or record id, which would
grow without bound. `Metrics` registers on the registry it is given (tests pass a fresh one);
`METRICS` is the process's instance on prometheus_client's default registry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from apptsync.shared import counts

# `*_created` series double the series count and no rule or dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Provider calls take tens of milliseconds to tens of seconds (timeouts, slow pages).
PROVIDER_LATENCY_BUCKETS_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# One transaction per batch of pages: milliseconds for a replay, seconds for a large page under load.
UPSERT_LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Jobs run from under a second (an early stop) to the one-hour default deadline.
JOB_DURATION_BUCKETS_SECONDS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
# The record outcomes a page result reports (`apptsync_writer_records_total{outcome}`).
RECORD_OUTCOMES = counts.RECORD_OUTCOMES


class InFlightPages:
    """Pages sent without a result, per running job; the gauge reports their sum when scraped."""

    def __init__(self, gauge: Gauge) -> None:
        self._by_job: dict[str, int] = {}
        gauge.set_function(self.total)

    def set(self, job_id: str, pages: int) -> None:
        self._by_job[job_id] = pages

    def forget(self, job_id: str) -> None:
        self._by_job.pop(job_id, None)

    def total(self) -> float:
        # A copy: the scrape runs on the metrics server's thread while the event loop updates.
        return float(sum(list(self._by_job.values())))


class Metrics:
    """Every metric apptsync exports. Each process fills the ones of its service; the others stay empty."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # fetcher
        self.pages_fetched = Counter(
            "apptsync_fetcher_pages_fetched_total",
            "Provider pages the fetcher normalized and handed to Kafka.",
            ["source"],
            registry=registry,
        )
        self.provider_requests = Counter(
            "apptsync_provider_requests_total",
            "HTTP requests to providers (each retry counts), by HTTP status code ('error': no response).",
            ["provider", "status_code"],
            registry=registry,
        )
        self.provider_request_duration = Histogram(
            "apptsync_provider_request_duration_seconds",
            "Duration of one HTTP request to a provider (each retry counts).",
            ["provider"],
            buckets=PROVIDER_LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self.provider_retries = Counter(
            "apptsync_provider_retries_total",
            "Provider requests retried after a transient failure (429, 5xx, timeouts, malformed bodies).",
            ["provider"],
            registry=registry,
        )
        self.pages_in_flight_gauge = Gauge(
            "apptsync_fetcher_pages_in_flight",
            "Pages handed to Kafka whose PageResult has not arrived yet (all jobs of this process).",
            registry=registry,
        )
        self.pages_in_flight = InFlightPages(self.pages_in_flight_gauge)
        self.jobs_finished = Counter(
            "apptsync_jobs_finished_total",
            "Import jobs that reached a terminal state, by state (SUCCEEDED, FAILED, CANCELED).",
            ["source", "state"],
            registry=registry,
        )
        self.job_duration = Histogram(
            "apptsync_job_duration_seconds",
            "Time from a job's first claim to its terminal state.",
            ["source", "state"],
            buckets=JOB_DURATION_BUCKETS_SECONDS,
            registry=registry,
        )
        # writer
        self.pages_written = Counter(
            "apptsync_writer_pages_written_total",
            "Pages the writer committed (redelivered: replayed from the page ledger, nothing rewritten).",
            ["redelivered"],
            registry=registry,
        )
        self.records = Counter(
            "apptsync_writer_records_total",
            "Records of committed pages by outcome (replayed pages are not counted again).",
            ["outcome"],
            registry=registry,
        )
        self.page_upsert_duration = Histogram(
            "apptsync_writer_page_upsert_duration_seconds",
            "Time from the start to the commit of the transaction that stored a page (observed per page).",
            buckets=UPSERT_LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self.dead_letters = Counter(
            "apptsync_writer_dead_letters_total",
            "Messages copied to the dead-letter topic (whole pages or single refused records).",
            ["kind"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "apptsync_writer_consumer_lag_messages",
            "Messages of the pages topic not yet processed by this writer, per assigned partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.change_events_published = Counter(
            "apptsync_writer_change_events_published_total",
            "Change events the relay published and the broker acknowledged (a redelivery after a crash counts again).",
            ["kind"],
            registry=registry,
        )
        self.change_outbox_pending = Gauge(
            "apptsync_writer_change_outbox_pending",
            "Committed changes not yet published (read by the relay when it finds nothing to claim or after a batch).",
            registry=registry,
        )
        # gateway
        self.imports_started = Counter(
            "apptsync_gateway_imports_started_total",
            "StartImport calls that queued a job (created) or returned an active or same-key job (existing).",
            ["source", "result"],
            registry=registry,
        )
        # webhook receiver
        self.webhook_notifications = Counter(
            "apptsync_webhook_notifications_total",
            "Provider notifications the webhook receiver answered, by outcome (accepted, ignored, duplicate, "
            "forged, replayed, malformed, oversized, unknown_connection, overflowed).",
            ["source", "outcome"],
            registry=registry,
        )
        self.webhook_handoff_duration = Histogram(
            "apptsync_webhook_handoff_duration_seconds",
            "Time from a notification's arrival to its answer (verification and the durable handoff).",
            ["source"],
            buckets=UPSERT_LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        # subscription lifecycle (gateway: PutConnection/DeleteConnection; renewal)
        self.webhook_subscription_changes = Counter(
            "apptsync_webhook_subscription_changes_total",
            "Webhook subscriptions created, renewed or removed at a provider, by result (ok, failed).",
            ["source", "action", "result"],
            registry=registry,
        )
        self.webhook_subscriptions_unhealthy = Gauge(
            "apptsync_webhook_subscriptions_unhealthy",
            "Subscriptions the last renewal pass found FAILED or expiring without a successful renewal.",
            ["source"],
            registry=registry,
        )


METRICS = Metrics(REGISTRY)


@dataclass
class MetricsServer:
    """A running `/metrics` endpoint (prometheus_client's WSGI server on a daemon thread)."""

    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def start_metrics_server(host: str, port: int, *, registry: CollectorRegistry = REGISTRY) -> MetricsServer | None:
    """Serves `registry` in the Prometheus text format on http://host:port/metrics; None when port is 0.

    Raises OSError when the port cannot be bound (a misconfiguration the process should not hide)."""
    if port == 0:
        return None
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(port=server.server_port, _server=server, _thread=thread)
