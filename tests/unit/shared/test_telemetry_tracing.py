"""Tracing setup: resource and exporters come from the standard OTEL_* variables, read by the SDK;
exported spans never carry a registered secret."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.resources import HOST_NAME, SERVICE_NAME, SERVICE_VERSION
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from apptsync.shared.telemetry.logs import REDACTED, SecretRedactor
from apptsync.shared.telemetry.tracing import RedactingSpanExporter, build_tracer_provider, service_resource

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_our_defaults_name_the_service_version_and_host() -> None:
    attributes = service_resource(service_name="apptsync-writer", version="1.2.3", host_name="box").attributes
    assert (attributes[SERVICE_NAME], attributes[SERVICE_VERSION], attributes[HOST_NAME]) == (
        "apptsync-writer",
        "1.2.3",
        "box",
    )


def test_the_environment_wins_over_our_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "writer-canary")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=writer-7f9c,service.version=2.0.0")
    attributes = service_resource(service_name="apptsync-writer", version="1.2.3", host_name="box").attributes
    assert attributes[SERVICE_NAME] == "writer-canary"
    assert attributes["k8s.pod.name"] == "writer-7f9c"
    assert attributes[SERVICE_VERSION] == "2.0.0"


@pytest.mark.parametrize(("exporters", "processors"), [(None, 0), ("none", 0), ("console", 1), ("otlp", 1)])
def test_exporters_are_the_ones_otel_traces_exporter_names(
    monkeypatch: pytest.MonkeyPatch, exporters: str | None, processors: int
) -> None:
    if exporters is not None:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", exporters)
    provider = build_tracer_provider(service_resource(service_name="s", version="v", host_name="h"))
    try:
        # The SDK has no public accessor for its processors; their count is what this test is about.
        assert len(provider._active_span_processor._span_processors) == processors
    finally:
        provider.shutdown()


def test_an_exporter_no_package_provides_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "carrier-pigeon")
    with pytest.raises(RuntimeError):
        build_tracer_provider(service_resource(service_name="s", version="v", host_name="h"))


def test_secrets_are_redacted_from_exported_spans_whatever_carries_them() -> None:
    canary = "canary-4f1e9d2b"
    redactor = SecretRedactor()
    redactor.add(canary)
    exported = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(RedactingSpanExporter(exported, redactor)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("clean", attributes={"apptsync.page_no": 1}):
        pass

    def refused_call() -> None:
        with tracer.start_as_current_span(f"GET /{canary}") as span:
            span.set_attribute("url.full", f"https://provider.invalid/?key={canary}")
            span.set_attribute("tags", ["a", canary])
            raise RuntimeError(f"provider refused {canary}")

    with pytest.raises(RuntimeError):
        refused_call()
    clean, dirty = exported.get_finished_spans()
    assert clean.attributes == {"apptsync.page_no": 1}
    text = dirty.to_json()
    assert canary not in text
    assert dirty.name == f"GET /{REDACTED}"
    assert dirty.attributes is not None
    assert dirty.attributes["url.full"] == f"https://provider.invalid/?key={REDACTED}"
    assert list(dirty.attributes["tags"]) == ["a", REDACTED]  # type: ignore[arg-type]
    assert dirty.events[0].attributes is not None
    assert dirty.events[0].attributes["exception.message"] == f"provider refused {REDACTED}"
    provider.shutdown()
