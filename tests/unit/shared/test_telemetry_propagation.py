"""Trace context across processes: job rows and Kafka headers carry W3C traceparent; consumer spans
continue the producer's trace; exceptions mark spans by type only."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from apptsync.shared.telemetry.propagation import (
    ConsumerSpans,
    consumer_span,
    context_from_headers,
    context_from_traceparent,
    current_traceparent,
    start_consumer_span,
    trace_id_hex,
    use_span_safely,
)

pytestmark = pytest.mark.unit


def trace_headers() -> list[tuple[str, bytes]]:
    """`traceparent`/`tracestate` headers of the current span, as a producer's instrumentation adds them."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return [(name, value.encode("utf-8")) for name, value in carrier.items()]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exported: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider()  # local: the global provider stays untouched
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider.get_tracer("test")


def by_name(exported: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = [s for s in exported.get_finished_spans() if s.name == name]
    return span


def test_a_stored_traceparent_becomes_the_remote_parent() -> None:
    parent = trace.get_current_span(context_from_traceparent(TRACEPARENT)).get_span_context()
    assert parent.is_remote
    assert trace.format_trace_id(parent.trace_id) == "0af7651916cd43dd8448eb211c80319c"
    assert trace.format_span_id(parent.span_id) == "b7ad6b7169203331"


@pytest.mark.parametrize("stored", ["", "not-a-traceparent", "00-00000000000000000000000000000000-b7ad6b7169203331-01"])
def test_an_empty_or_malformed_traceparent_starts_a_new_trace(stored: str) -> None:
    assert not trace.get_current_span(context_from_traceparent(stored)).get_span_context().is_valid


def test_the_current_span_gives_the_traceparent_and_trace_id_a_job_row_stores(tracer: trace.Tracer) -> None:
    assert current_traceparent() == ""
    assert trace_id_hex() == ""
    with tracer.start_as_current_span("StartImport") as span:
        traceparent = current_traceparent()
        trace_id = trace_id_hex()
    context = span.get_span_context()
    assert trace_id == trace.format_trace_id(context.trace_id)
    assert traceparent == f"00-{trace_id}-{trace.format_span_id(context.span_id)}-{context.trace_flags:02x}"
    continued = trace.get_current_span(context_from_traceparent(traceparent)).get_span_context()
    assert (continued.trace_id, continued.span_id) == (context.trace_id, context.span_id)


def test_kafka_headers_round_trip_and_the_first_traceparent_wins(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("send") as span:
        headers = [("apptsync-job-id", b"j1"), *trace_headers()]
    assert [name for name, _ in headers] == ["apptsync-job-id", "traceparent"]
    second = (
        "traceparent",
        b"00-11111111111111111111111111111111-2222222222222222-01",
    )
    parent = trace.get_current_span(context_from_headers([*headers, second])).get_span_context()
    assert parent.span_id == span.get_span_context().span_id


def test_headers_without_a_traceparent_give_an_empty_context() -> None:
    for headers in (None, [], [("traceparent", None)], [("other", b"x")]):
        assert not trace.get_current_span(context_from_headers(headers)).get_span_context().is_valid


def test_a_consumer_span_is_a_child_of_the_producer_span_in_the_headers(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    with tracer.start_as_current_span("pages send", kind=trace.SpanKind.PRODUCER) as producer:
        headers = trace_headers()
    with consumer_span(
        tracer, topic="pages", headers=headers, partition=3, offset=42, attributes={"apptsync.page_no": 1}
    ):
        assert trace.get_current_span().get_span_context().trace_id == producer.get_span_context().trace_id
    consumed = by_name(exported, "pages process")
    assert consumed.kind is trace.SpanKind.CONSUMER
    assert consumed.parent is not None
    assert consumed.parent.span_id == producer.get_span_context().span_id
    assert consumed.attributes is not None
    assert consumed.attributes["messaging.destination.partition.id"] == "3"
    assert consumed.attributes["messaging.kafka.offset"] == 42
    assert consumed.attributes["apptsync.page_no"] == 1


def test_a_failure_marks_the_span_by_exception_type_never_its_message(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    span = tracer.start_span("write pages")
    with pytest.raises(ValueError, match=r"jane@example\.com"), use_span_safely(span, end_on_exit=True):
        raise ValueError("duplicate key (email)=(jane@example.com)")
    (finished,) = exported.get_finished_spans()
    assert finished.status.status_code is trace.StatusCode.ERROR
    assert finished.attributes is not None
    assert finished.attributes["error.type"] == "ValueError"
    assert "jane@example.com" not in repr(finished.to_json())
    assert not finished.events


def test_pages_written_together_keep_their_own_traces_and_share_one_linked_span(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    producers = []
    for page_no in (1, 2):
        with tracer.start_as_current_span(f"send {page_no}") as producer:
            producers.append((producer, trace_headers()))
    spans = ConsumerSpans(
        tracer,
        [
            ((f"job-{n}", n), start_consumer_span(tracer, topic="pages", headers=headers, partition=0, offset=n))
            for n, (_producer, headers) in enumerate(producers, start=1)
        ],
    )
    with spans.shared_work("write pages", {"apptsync.pages": 2}):
        pass
    with spans.use(("job-2", 2)) as second:
        assert second.get_span_context().trace_id == producers[1][0].get_span_context().trace_id
    assert spans.span(("unknown", 9)) is spans.span(("job-1", 1))
    spans.end()
    shared = by_name(exported, "write pages")
    consumed = [s for s in exported.get_finished_spans() if s.name == "pages process"]
    assert shared.parent is not None
    assert shared.parent.span_id == consumed[0].context.span_id
    assert [link.context.span_id for link in shared.links] == [consumed[1].context.span_id]
    for span, (producer, _headers) in zip(consumed, producers, strict=True):
        assert span.parent is not None
        assert span.parent.span_id == producer.get_span_context().span_id


def test_consumer_spans_need_a_message(tracer: trace.Tracer) -> None:
    with pytest.raises(ValueError, match="at least one"):
        ConsumerSpans(tracer, [])
