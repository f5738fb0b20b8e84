"""W3C trace context across process boundaries: Kafka message headers and the job row.

Pages and results carry `traceparent` (and `tracestate`) headers: the aiokafka instrumentation
injects them in its producer span when a message is sent; consumers extract them here to continue
the trace. A job row stores the `traceparent` of the StartImport call that created it, so the
fetcher's job span continues the trace the gateway began, whichever fetcher claims the job and
however long after.

Everything here is pure: no exporter, no global provider needed (without one, ids are empty).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

HeaderPairs = Sequence[tuple[str, bytes | None]]
TRACEPARENT = "traceparent"

_W3C = TraceContextTextMapPropagator()


class _HeaderGetter(Getter[HeaderPairs]):
    """Reads Kafka headers (a list of (name, bytes) pairs). The first value of a name wins, as in the
    aiokafka instrumentation, so both read the same parent."""

    def get(self, carrier: HeaderPairs, key: str) -> list[str] | None:
        for name, value in carrier:
            if name.lower() == key and value is not None:
                return [value.decode("utf-8", errors="replace")]
        return None

    def keys(self, carrier: HeaderPairs) -> list[str]:
        return [name for name, _ in carrier]


_HEADER_GETTER = _HeaderGetter()


def trace_id_hex(span: Span | None = None) -> str:
    """The 32-hex-digit trace id of `span` (default: the current span), or "" when there is none."""
    context = (span or trace.get_current_span()).get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else ""


def span_id_hex(span: Span | None = None) -> str:
    """The 16-hex-digit span id of `span` (default: the current span), or "" when there is none."""
    context = (span or trace.get_current_span()).get_span_context()
    return trace.format_span_id(context.span_id) if context.is_valid else ""


def current_traceparent() -> str:
    """The W3C `traceparent` of the current span ("" when no span is recording or sampled-out
    spans are all there is), e.g. for the job row."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def context_from_traceparent(traceparent: str) -> Context:
    """A context whose remote parent is `traceparent`; an empty context (a new trace) when the value
    is empty or malformed: a bad stored value must not break the job, only start a fresh trace."""
    return _W3C.extract({TRACEPARENT: traceparent}, context=Context()) if traceparent else Context()


def context_from_headers(headers: HeaderPairs | None) -> Context:
    """The context carried by Kafka message headers; an empty context when there is none."""
    return _W3C.extract(list(headers or ()), context=Context(), getter=_HEADER_GETTER)


def start_consumer_span(
    tracer: Tracer,
    *,
    topic: str,
    headers: HeaderPairs | None,
    partition: int,
    offset: int,
    attributes: dict[str, AttributeValue] | None = None,
) -> Span:
    """A started (not current, not ended) `<topic> process` CONSUMER span whose parent is the producer
    span in `headers`. Make it current with `trace.use_span(span)` while handling the message: under
    `async for`/`getmany`, the instrumentation's receive spans have already ended."""
    return tracer.start_span(
        f"{topic} process",
        context=context_from_headers(headers),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.kafka.offset": offset,
            **(attributes or {}),
        },
    )


@contextmanager
def consumer_span(
    tracer: Tracer,
    *,
    topic: str,
    headers: HeaderPairs | None,
    partition: int,
    offset: int,
    attributes: dict[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """`start_consumer_span`, current for the block and ended after it. Exceptions are recorded by
    type only (their messages may quote data)."""
    span = start_consumer_span(
        tracer, topic=topic, headers=headers, partition=partition, offset=offset, attributes=attributes
    )
    with use_span_safely(span, end_on_exit=True):
        yield span


@contextmanager
def use_span_safely(span: Span, *, end_on_exit: bool = False) -> Iterator[Span]:
    """Makes `span` current for the block. An exception marks it ERROR with `error.type` only: exception
    messages may quote provider or database data, which never goes on a span."""
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        try:
            yield span
        except Exception as exc:
            mark_error(span, exc)
            raise
        finally:
            if end_on_exit:
                span.end()


def mark_error(span: Span, exc: BaseException) -> None:
    """Marks `span` failed by the exception's type (never its message)."""
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__qualname__))


def links_to(spans: Sequence[Span]) -> list[Link]:
    """Links to `spans` (e.g. the other pages' consumer spans of a batch written in one transaction)."""
    return [Link(span.get_span_context()) for span in spans]


class ConsumerSpans:
    """The consumer spans of messages handled together (e.g. pages stored in one transaction).

    Each message gets its own `<topic> process` span, a child of the producer span in its headers
    (so every page stays in its own import's trace); work shared by all of them runs in a span under
    the first one, linked to the others. `use(key)` makes one message's span current (e.g. while
    producing its reply); keys are the caller's (e.g. (job_id, page_no)); an unknown key falls back
    to the first message's span. Call `end()` once, whatever happened (exceptions: `fail`)."""

    def __init__(self, tracer: Tracer, spans: Sequence[tuple[object, Span]]) -> None:
        if not spans:
            raise ValueError("ConsumerSpans needs at least one message")
        self._tracer = tracer
        self._first = spans[0][1]
        self._all = [span for _key, span in spans]
        self._by_key = dict(spans)

    def span(self, key: object = None) -> Span:
        return self._by_key.get(key, self._first)

    @contextmanager
    def use(self, key: object = None) -> Iterator[Span]:
        with use_span_safely(self.span(key)) as span:
            yield span

    @contextmanager
    def shared_work(self, name: str, attributes: dict[str, AttributeValue] | None = None) -> Iterator[Span]:
        """A span for work done once for all messages: child of the first, linked to the others."""
        with trace.use_span(self._first, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            span = self._tracer.start_span(name, links=links_to(self._all[1:]), attributes=attributes)
        with use_span_safely(span, end_on_exit=True):
            yield span

    def fail(self, exc: BaseException) -> None:
        for span in self._all:
            mark_error(span, exc)

    def end(self) -> None:
        for span in self._all:
            span.end()
