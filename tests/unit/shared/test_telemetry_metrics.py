"""Metric names follow the Prometheus conventions; provider requests are metered per attempt."""

from __future__ import annotations

import re

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from apptsync.shared.counts import STREAM_COUNTERS
from apptsync.shared.telemetry.http_metrics import MeteredTransport
from apptsync.shared.telemetry.metrics import RECORD_OUTCOMES, Metrics
from apptsync.v1 import pages_pb2

pytestmark = pytest.mark.unit

# What dashboards, alert rules (deploy/alerts) and the runbook refer to.
EXPECTED_FAMILIES = {
    "apptsync_fetcher_pages_fetched_total": "counter",
    "apptsync_provider_requests_total": "counter",
    "apptsync_provider_request_duration_seconds": "histogram",
    "apptsync_provider_retries_total": "counter",
    "apptsync_fetcher_pages_in_flight": "gauge",
    "apptsync_jobs_finished_total": "counter",
    "apptsync_job_duration_seconds": "histogram",
    "apptsync_writer_pages_written_total": "counter",
    "apptsync_writer_records_total": "counter",
    "apptsync_writer_page_upsert_duration_seconds": "histogram",
    "apptsync_writer_dead_letters_total": "counter",
    "apptsync_writer_consumer_lag_messages": "gauge",
    "apptsync_writer_change_events_published_total": "counter",
    "apptsync_writer_change_outbox_pending": "gauge",
    "apptsync_gateway_imports_started_total": "counter",
    "apptsync_webhook_notifications_total": "counter",
    "apptsync_webhook_handoff_duration_seconds": "histogram",
    "apptsync_webhook_subscription_changes_total": "counter",
    "apptsync_webhook_subscriptions_unhealthy": "gauge",
}


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_every_metric_is_exposed_with_a_conventional_name_and_type() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition(registry), flags=re.MULTILINE))
    assert types == EXPECTED_FAMILIES
    for name, kind in types.items():
        assert name.startswith("apptsync_")
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name


def test_no_label_can_grow_with_tenants_jobs_or_records() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    labels = set()
    for family in registry.collect():
        for sample in family.samples:
            labels |= set(sample.labels)
    forbidden = {"tenant", "tenant_id", "job", "job_id", "connection_id", "external_id", "url"}
    assert not labels & forbidden


def test_in_flight_pages_are_summed_over_running_jobs() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.pages_in_flight.set("job-a", 3)
    metrics.pages_in_flight.set("job-b", 2)
    metrics.pages_in_flight.set("job-a", 1)
    assert registry.get_sample_value("apptsync_fetcher_pages_in_flight") == 3.0
    metrics.pages_in_flight.forget("job-a")
    metrics.pages_in_flight.forget("job-unknown")
    assert registry.get_sample_value("apptsync_fetcher_pages_in_flight") == 2.0


def test_record_outcomes_cover_every_count_of_a_page_result() -> None:
    """Every per-record outcome a PageResult carries is a metric label, and nothing else is."""
    not_outcomes = {"job_id", "page_no", "records_fetched", "contacts_unmatched", "redelivered", "skipped",
                    *STREAM_COUNTERS}
    fields = {f.name for f in pages_pb2.PageResult.DESCRIPTOR.fields} - not_outcomes
    skips = {f"skipped_{f.name}" for f in pages_pb2.SkipCounts.DESCRIPTOR.fields}
    assert set(RECORD_OUTCOMES) == fields | skips


async def test_provider_requests_are_counted_by_status_and_timed_each_attempt() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    statuses = iter([429, 200])

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(statuses), json=[])

    ticks = iter([10.0, 10.25, 20.0, 20.5])
    transport = MeteredTransport(
        httpx.MockTransport(answer),
        provider_of=lambda _request: "acuity",
        metrics=metrics,
        monotonic=lambda: next(ticks),
    )
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://provider.invalid/appointments")).status_code == 429
        assert (await client.get("http://provider.invalid/appointments")).status_code == 200

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"provider": "acuity", **labels})

    assert sample("apptsync_provider_requests_total", status_code="429") == 1.0
    assert sample("apptsync_provider_requests_total", status_code="200") == 1.0
    assert sample("apptsync_provider_request_duration_seconds_count") == 2.0
    assert sample("apptsync_provider_request_duration_seconds_sum") == pytest.approx(0.75)


async def test_a_request_without_a_response_counts_as_error_and_still_raises() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    transport = MeteredTransport(httpx.MockTransport(refuse), provider_of=lambda _request: "acuity", metrics=metrics)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://provider.invalid/appointments")
    assert (
        registry.get_sample_value("apptsync_provider_requests_total", {"provider": "acuity", "status_code": "error"})
        == 1.0
    )
