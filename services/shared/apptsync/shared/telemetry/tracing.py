"""OpenTelemetry tracing of one apptsync process, configured only by the standard OTEL_* variables.

The OpenTelemetry SDK reads the environment itself (nothing here does):
- `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` (e.g. `k8s.pod.name=$(POD_NAME)`); the defaults
  given to `setup_tracing` (service name, version, host) apply where the environment says nothing;
- `OTEL_TRACES_EXPORTER`: `otlp` (OTLP/gRPC to `OTEL_EXPORTER_OTLP_ENDPOINT`; `OTEL_EXPORTER_OTLP_*`
  for headers, certificates, timeout), `console` (spans as JSON on stdout, for local use), `none` or
  unset (spans are still made, for trace ids in job rows, Kafka headers and logs, but not exported);
- `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (e.g. `parentbased_traceidratio`, `0.1`);
- `OTEL_BSP_*` (batching), `OTEL_SDK_DISABLED`.

Telemetry never breaks an import: a setup failure leaves tracing off (logged), an unreachable
collector only costs dropped spans (exported from a background thread, bounded queue), and every
library instrumentation that fails to apply is skipped with a warning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk._configuration import _get_exporter_names, _import_exporters
from opentelemetry.sdk.resources import HOST_NAME, SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status
from opentelemetry.util.types import Attributes, AttributeValue

from apptsync.shared.telemetry.logs import SECRETS, SecretRedactor

_log = logging.getLogger("apptsync.telemetry")
_UNKNOWN_SERVICE = "unknown_service"
# Flushing spans at exit waits at most this long: an unreachable collector must not hold up a
# graceful stop (the supervisor or Kubernetes would kill the process before it released its jobs).
SHUTDOWN_BUDGET_SECONDS = 5.0


def service_resource(*, service_name: str, version: str, host_name: str) -> Resource:
    """The process's resource: the SDK's view of the environment (`OTEL_SERVICE_NAME`,
    `OTEL_RESOURCE_ATTRIBUTES`) over our defaults for service.name, service.version and host.name."""
    detected = dict(Resource.create().attributes)
    if str(detected.get(SERVICE_NAME, "")).startswith(_UNKNOWN_SERVICE):
        del detected[SERVICE_NAME]
    defaults = Resource({SERVICE_NAME: service_name, SERVICE_VERSION: version, HOST_NAME: host_name})
    return defaults.merge(Resource(detected))


@dataclass
class Tracing:
    """The installed tracer provider (None when setup failed); `shutdown()` flushes pending spans."""

    provider: TracerProvider | None
    instrumented: tuple[str, ...] = ()

    def shutdown(self, budget_seconds: float = SHUTDOWN_BUDGET_SECONDS) -> None:
        """Exports what is queued and stops, waiting at most `budget_seconds` (spans still queued
        then are lost). Never raises."""
        if self.provider is None:
            return
        provider = self.provider

        def shut_down() -> None:
            try:
                provider.shutdown()
            except Exception as exc:  # a telemetry failure must not turn a clean exit into a crash
                _log.warning("tracing shutdown failed: %s", type(exc).__name__)

        # A daemon thread: if the collector does not answer in time, the process exits without it.
        flusher = threading.Thread(target=shut_down, name="apptsync-tracing-shutdown", daemon=True)
        flusher.start()
        flusher.join(timeout=budget_seconds)


class RedactingSpanExporter(SpanExporter):
    """Wraps an exporter; every registered secret (see telemetry.logs) is replaced by [REDACTED] in
    span names, attributes, event attributes (exception messages and stack traces of library
    instrumentations included) and status descriptions before export. Spans without a secret pass as
    they are."""

    def __init__(self, inner: SpanExporter, redactor: SecretRedactor = SECRETS) -> None:
        self._inner = inner
        self._redactor = redactor

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([self._clean(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def _text(self, value: AttributeValue) -> AttributeValue:
        if isinstance(value, str):
            return self._redactor.redact(value)
        if isinstance(value, Sequence) and not isinstance(value, bytes):
            return [self._redactor.redact(v) if isinstance(v, str) else v for v in value]
        return value

    def _attributes(self, attributes: Attributes) -> dict[str, AttributeValue]:
        return {key: self._text(value) for key, value in (attributes or {}).items()}

    def _clean(self, span: ReadableSpan) -> ReadableSpan:
        if not self._redactor.has_secrets:
            return span
        as_json = span.to_json(indent=None)
        if self._redactor.redact(as_json) == as_json:
            return span
        status = span.status
        return ReadableSpan(
            name=self._redactor.redact(span.name),
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=self._attributes(span.attributes),
            events=[Event(e.name, self._attributes(e.attributes), e.timestamp) for e in span.events],
            links=span.links,
            kind=span.kind,
            status=Status(status.status_code, self._redactor.redact(status.description or "") or None),
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )


def build_tracer_provider(resource: Resource) -> TracerProvider:
    """A provider with the sampler and the exporters the OTEL_* environment names (see module doc).

    Raises RuntimeError for an exporter name no installed package provides."""
    # The SDK reads OTEL_TRACES_SAMPLER itself. Exit goes through Tracing.shutdown (bounded), not atexit.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    exporters, _metric_exporters, _log_exporters = _import_exporters(_get_exporter_names("traces"), [], [])
    for exporter_class in exporters.values():
        provider.add_span_processor(BatchSpanProcessor(RedactingSpanExporter(exporter_class())))
    return provider


def setup_tracing(*, service_name: str, version: str, host_name: str) -> Tracing:
    """Installs the global tracer provider and instruments gRPC (server and aio client), httpx,
    asyncpg and aiokafka. Call once per process, before creating servers, clients or pools.

    Never raises: on failure tracing stays a no-op and a warning is logged."""
    try:
        provider = build_tracer_provider(
            service_resource(service_name=service_name, version=version, host_name=host_name)
        )
        trace.set_tracer_provider(provider)
    except Exception as exc:
        _log.warning("tracing is off: its setup failed (%s: %s)", type(exc).__name__, exc)
        return Tracing(provider=None)
    return Tracing(provider=provider, instrumented=instrument_libraries())


def _instrument_grpc_server() -> None:
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer, filters

    # Probes call health every few seconds and grpcurl calls reflection: neither belongs in a trace.
    untraced = filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection"))
    GrpcAioInstrumentorServer(filter_=filters.negate(untraced)).instrument()  # type: ignore[no-untyped-call]


def _instrument_grpc_client() -> None:
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, filters

    # Only the asyncio client: the OTLP exporter's own (synchronous) channel must stay untraced.
    GrpcAioInstrumentorClient(filter_=filters.negate(filters.health_check())).instrument()  # type: ignore[no-untyped-call]


def _instrument_httpx() -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument()


def _instrument_asyncpg() -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    # Statements only: parameters carry appointment data and credential ciphertexts.
    AsyncPGInstrumentor(capture_parameters=False).instrument()  # type: ignore[no-untyped-call]


def _instrument_aiokafka() -> None:
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor

    # Its producer span injects `traceparent` into every message's headers.
    AIOKafkaInstrumentor().instrument()


INSTRUMENTATIONS: dict[str, Callable[[], None]] = {
    "grpc-server": _instrument_grpc_server,
    "grpc-client": _instrument_grpc_client,
    "httpx": _instrument_httpx,
    "asyncpg": _instrument_asyncpg,
    "aiokafka": _instrument_aiokafka,
}


def instrument_libraries() -> tuple[str, ...]:
    """Applies every instrumentation in INSTRUMENTATIONS; returns the names that applied."""
    applied = []
    for name, instrument in INSTRUMENTATIONS.items():
        try:
            instrument()
        except Exception as exc:
            _log.warning("the %s instrumentation is off: %s: %s", name, type(exc).__name__, exc)
        else:
            applied.append(name)
    return tuple(applied)


@contextmanager
def untraced() -> Iterator[None]:
    """Library instrumentations make no spans in this block: for idle polling (claiming jobs every
    few seconds), which would otherwise start a new trace per poll."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield
