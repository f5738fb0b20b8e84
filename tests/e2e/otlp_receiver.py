"""A minimal OTLP/gRPC trace receiver (the collector's TraceService) for tests, on 127.0.0.1.

It runs as its own process (`python -m tests.e2e.otlp_receiver PORT_FILE OUT_FILE`): a gRPC server
polling in the test process would be inherited half-alive by every service process the test forks
(gRPC's poller aborts the child). It writes its port to PORT_FILE once listening and appends every
export request to OUT_FILE (4-byte big-endian length, then the serialized request). Services export
to it with `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<port>`; the test reads the spans back with
`ReceiverProcess.spans()`, flattened to what assertions need.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SPAN_KIND_SERVER = trace_pb2.Span.SPAN_KIND_SERVER
SPAN_KIND_CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
SPAN_KIND_PRODUCER = trace_pb2.Span.SPAN_KIND_PRODUCER
SPAN_KIND_CONSUMER = trace_pb2.Span.SPAN_KIND_CONSUMER
_LENGTH = struct.Struct(">I")
START_TIMEOUT_SECONDS = 20.0
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, object]


def _value(value: common_pb2.AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class _FileSink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out_file: Path) -> None:
        self._out_file = out_file

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        payload = request.SerializeToString()
        with self._out_file.open("ab") as out:
            out.write(_LENGTH.pack(len(payload)) + payload)
        return trace_service_pb2.ExportTraceServiceResponse()


def _announce(port_file: Path, port: int) -> None:
    port_file.write_text(str(port))


async def _serve(port_file: Path, out_file: Path) -> None:
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_FileSink(out_file), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _announce(port_file, port)
    await server.wait_for_termination()


class ReceiverProcess:
    """The receiver process as the test sees it: its port and what it received so far."""

    def __init__(self, port: int, out_file: Path) -> None:
        self.port = port
        self._out_file = out_file

    def requests(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        data = self._out_file.read_bytes()
        requests, position = [], 0
        while position + _LENGTH.size <= len(data):
            (length,) = _LENGTH.unpack_from(data, position)
            end = position + _LENGTH.size + length
            if end > len(data):
                break  # a request being written right now
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(data[position + _LENGTH.size : end])
            requests.append(request)
            position = end
        return requests

    @property
    def raw_bytes(self) -> bytes:
        """Everything received, serialized: for "this value appears nowhere" checks."""
        return self._out_file.read_bytes()

    def spans(self) -> list[ReceivedSpan]:
        received = []
        for request in self.requests():
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        received.append(
                            ReceivedSpan(
                                service=str(resource.get("service.name", "")),
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                name=span.name,
                                kind=span.kind,
                                attributes={a.key: _value(a.value) for a in span.attributes},
                            )
                        )
        return received


@asynccontextmanager
async def trace_receiver(work_dir: Path) -> AsyncIterator[ReceiverProcess]:
    """Starts the receiver process (files in `work_dir`), yields once it listens, stops it on exit.

    Raises AssertionError when it does not listen within START_TIMEOUT_SECONDS."""
    port_file, out_file = work_dir / "otlp-receiver.port", work_dir / "otlp-receiver.bin"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.otlp_receiver", str(port_file), str(out_file), cwd=REPO_ROOT
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"the OTLP receiver did not start (exit code {process.returncode})")
            await asyncio.sleep(0.05)
        yield ReceiverProcess(int(port_file.read_text()), out_file)
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)


if __name__ == "__main__":
    Path(sys.argv[2]).touch()
    asyncio.run(_serve(Path(sys.argv[1]), Path(sys.argv[2])))
