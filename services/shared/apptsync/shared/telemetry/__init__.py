"""Observability of every apptsync process: traces (OpenTelemetry), metrics (Prometheus), JSON logs.

- `tracing`: `setup_tracing(...)`, configured only by the standard OTEL_* variables;
- `propagation`: W3C trace context in Kafka headers and job rows; consumer spans;
- `metrics`: `METRICS` and the `/metrics` endpoint; `http_metrics.MeteredTransport` for providers;
- `logs`: `configure_logging(...)` (JSON lines), `log_event`, `bound_log_fields`, secret redaction.

`process_telemetry(...)` wires tracing and the metrics endpoint for one service process.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from contextlib import contextmanager

from apptsync.shared.telemetry.metrics import start_metrics_server
from apptsync.shared.telemetry.tracing import Tracing, setup_tracing


def apptsync_version() -> str:
    """The installed apptsync version ("unknown" when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("apptsync")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@contextmanager
def process_telemetry(
    *, service_name: str, host_name: str, metrics_host: str = "127.0.0.1", metrics_port: int = 0
) -> Iterator[Tracing]:
    """Tracing (see `setup_tracing`) and, unless `metrics_port` is 0, the `/metrics` endpoint, for the
    duration of the block; afterwards the endpoint stops and pending spans are flushed.

    Raises OSError when the metrics port cannot be bound; tracing problems never raise."""
    tracing = setup_tracing(service_name=service_name, version=apptsync_version(), host_name=host_name)
    try:
        server = start_metrics_server(metrics_host, metrics_port)
        try:
            yield tracing
        finally:
            if server is not None:
                server.stop()
    finally:
        tracing.shutdown()
