"""Client commands: thin gRPC calls to the gateway with readable output and stable exit codes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from apptsync.shared.counts import skipped_total
from apptsync.v1 import imports_pb2, imports_pb2_grpc

EXIT_OK, EXIT_JOB_FAILED, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_OTHER = 0, 1, 2, 3, 4, 5
_SOURCES = {
    "acuity": imports_pb2.SOURCE_ACUITY,
    "calendly": imports_pb2.SOURCE_CALENDLY,
    "google_calendar": imports_pb2.SOURCE_GOOGLE_CALENDAR,
}
_POLICIES = {
    "no-new-records": imports_pb2.STOP_POLICY_NO_NEW_RECORDS,
    "no-changes": imports_pb2.STOP_POLICY_NO_CHANGES,
    "never": imports_pb2.STOP_POLICY_NEVER,
}
_TERMINAL = {imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED}
_R = TypeVar("_R")


def message_dict(message: Message) -> dict[str, object]:
    """JSON-ready dict with proto field names and zero-valued fields included."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def job_summary_lines(job: imports_pb2.Job) -> list[str]:
    c = job.counts
    skipped = skipped_total(c)
    return [
        f"job        {job.job_id}",
        f"state      {imports_pb2.JobState.Name(job.state).removeprefix('JOB_STATE_')}",
        f"pages      {c.pages_fetched} fetched, {c.pages_written} written",
        f"records    {c.records_fetched} fetched: {c.inserted} inserted, {c.updated} updated, "
        f"{c.unchanged} unchanged, {c.stale} stale, {skipped} skipped",
        f"stopped    {job.stop_reason or '-'}" + (f" (error: {job.error})" if job.error else ""),
        f"trace id   {job.trace_id or '-'}",
    ]


def _print(args: argparse.Namespace, message: Message, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(message_dict(message), indent=2, sort_keys=True))
    else:
        print("\n".join(lines))


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    token: str = args.token
    return (("authorization", f"Bearer {token}"),) if token else ()


def _exit_code(exc: grpc.RpcError) -> int:
    code = exc.code()
    print(f"error: {code.name}: {exc.details() or ''}", file=sys.stderr)
    return {
        grpc.StatusCode.INVALID_ARGUMENT: EXIT_INVALID,
        grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    }.get(code, EXIT_OTHER)


def _call(args: argparse.Namespace, call: Callable[[imports_pb2_grpc.ImportServiceStub], _R]) -> _R | int:
    """Runs a call; on an RPC error prints it and returns the exit code instead."""
    with grpc.insecure_channel(args.address) as channel:
        try:
            return call(imports_pb2_grpc.ImportServiceStub(channel))
        except grpc.RpcError as exc:
            return _exit_code(exc)


def _timestamp(text: str) -> Timestamp:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise SystemExit(f"error: {text!r} needs a UTC offset, e.g. {text}+00:00")
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def start_import(args: argparse.Namespace) -> int:
    window = imports_pb2.TimeWindow()
    if args.window_start:
        window.start.CopyFrom(_timestamp(args.window_start))
    if args.window_end:
        window.end.CopyFrom(_timestamp(args.window_end))
    options = imports_pb2.ImportOptions(
        page_size=args.page_size,
        max_pages=args.max_pages,
        max_in_flight_pages=args.max_in_flight_pages,
        stop_policy=_POLICIES[args.policy] if args.policy else imports_pb2.STOP_POLICY_UNSPECIFIED,
        stop_after_pages=args.stop_after_pages,
    )
    if args.deadline_seconds:
        deadline = Duration()
        deadline.FromSeconds(int(args.deadline_seconds))
        options.deadline.CopyFrom(deadline)
    request = imports_pb2.StartImportRequest(
        tenant_id=args.tenant,
        source=_SOURCES[args.source],
        connection_id=args.connection,
        window=window,
        options=options,
        idempotency_key=args.idempotency_key,
    )
    response = _call(
        args, lambda stub: stub.StartImport(request, timeout=args.timeout_seconds, metadata=_metadata(args))
    )
    if isinstance(response, int):
        return response
    job = response.job
    if args.wait:
        final = wait_for_job(args, job.job_id)
        if isinstance(final, int):
            return final
        job = final
    note = ["(an active job already existed; returned it)"] if response.already_exists else []
    _print(args, job, note + job_summary_lines(job))
    if args.wait and job.state != imports_pb2.JOB_STATE_SUCCEEDED:
        return EXIT_JOB_FAILED
    return EXIT_OK


def wait_for_job(args: argparse.Namespace, job_id: str, poll_seconds: float = 0.25) -> imports_pb2.Job | int:
    request = imports_pb2.GetJobRequest(tenant_id=args.tenant, job_id=job_id)
    while True:
        job = _call(args, lambda stub: stub.GetJob(request, timeout=args.timeout_seconds, metadata=_metadata(args)))
        if isinstance(job, int) or job.state in _TERMINAL:
            return job
        time.sleep(poll_seconds)


def get_job(args: argparse.Namespace) -> int:
    request = imports_pb2.GetJobRequest(tenant_id=args.tenant, job_id=args.job)
    job = _call(args, lambda stub: stub.GetJob(request, timeout=args.timeout_seconds, metadata=_metadata(args)))
    if isinstance(job, int):
        return job
    _print(args, job, job_summary_lines(job))
    return EXIT_OK


def cancel_job(args: argparse.Namespace) -> int:
    request = imports_pb2.CancelJobRequest(tenant_id=args.tenant, job_id=args.job)
    job = _call(args, lambda stub: stub.CancelJob(request, timeout=args.timeout_seconds, metadata=_metadata(args)))
    if isinstance(job, int):
        return job
    _print(args, job, job_summary_lines(job))
    return EXIT_OK


def put_connection(args: argparse.Namespace) -> int:
    credentials = json.loads(Path(args.credentials_file).read_text("utf-8"))
    if not isinstance(credentials, dict):
        print("error: the credentials file must hold a JSON object", file=sys.stderr)
        return EXIT_INVALID
    settings = dict(item.split("=", 1) for item in args.setting)
    request = imports_pb2.PutConnectionRequest(
        tenant_id=args.tenant,
        connection_id=args.connection,
        source=_SOURCES[args.source],
        base_url=args.base_url,
        credentials={str(k): str(v) for k, v in credentials.items()},
        settings=settings,
    )
    connection = _call(
        args, lambda stub: stub.PutConnection(request, timeout=args.timeout_seconds, metadata=_metadata(args))
    )
    if isinstance(connection, int):
        return connection
    _print(
        args,
        connection,
        [
            f"connection {connection.connection_id} stored "
            f"(credential fields: {', '.join(connection.credential_fields)})"
        ],
    )
    return EXIT_OK


def list_jobs(args: argparse.Namespace) -> int:
    request = imports_pb2.ListJobsRequest(
        tenant_id=args.tenant,
        page_size=args.limit,
        states=[imports_pb2.JobState.Value("JOB_STATE_" + state.upper()) for state in args.state],
    )
    response = _call(args, lambda stub: stub.ListJobs(request, timeout=args.timeout_seconds, metadata=_metadata(args)))
    if isinstance(response, int):
        return response
    lines = [
        f"{job.job_id}  {imports_pb2.JobState.Name(job.state).removeprefix('JOB_STATE_'):9}  "
        f"{job.counts.inserted:>7} inserted  {job.stop_reason or job.error}"
        for job in response.jobs
    ]
    _print(args, response, lines or ["no jobs"])
    return EXIT_OK


def watch_job(args: argparse.Namespace) -> int:
    """Follows a job through WatchJob with a live progress display; exit 1 unless it SUCCEEDED."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    request = imports_pb2.WatchJobRequest(tenant_id=args.tenant, job_id=args.job)
    last: imports_pb2.Job | None = None
    with grpc.insecure_channel(args.address) as channel:
        stub = imports_pb2_grpc.ImportServiceStub(channel)
        try:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                disable=args.json,
                transient=True,
            ) as progress:
                task = progress.add_task("import", total=None, detail="")
                for job in stub.WatchJob(request, metadata=_metadata(args)):
                    last = job
                    c = job.counts
                    progress.update(
                        task,
                        completed=c.pages_written,
                        total=max(c.pages_fetched, 1),
                        description=imports_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_"),
                        detail=f"pages {c.pages_written}/{c.pages_fetched}  records {c.records_fetched}  "
                        f"inserted {c.inserted}",
                    )
        except grpc.RpcError as exc:
            return _exit_code(exc)
    if last is None:
        return EXIT_OTHER
    _print(args, last, job_summary_lines(last))
    return EXIT_OK if last.state == imports_pb2.JOB_STATE_SUCCEEDED else EXIT_JOB_FAILED


def sync_all(args: argparse.Namespace) -> int:
    """Starts an import for every connection the token may act for.

    Safe when a CronJob fires twice: an active job is returned instead of a duplicate, and calls in the
    same `--idempotency-window-seconds` slot share an idempotency key, so they return the same job."""
    slot = int(time.time() // args.idempotency_window_seconds)
    failures = 0
    token = ""
    started = []
    with grpc.insecure_channel(args.address) as channel:
        stub = imports_pb2_grpc.ImportServiceStub(channel)
        while True:
            try:
                page = stub.ListConnections(
                    imports_pb2.ListConnectionsRequest(tenant_id=args.tenant or "", page_token=token),
                    timeout=args.timeout_seconds,
                    metadata=_metadata(args),
                )
            except grpc.RpcError as exc:
                return _exit_code(exc)
            for connection in page.connections:
                request = imports_pb2.StartImportRequest(
                    tenant_id=connection.tenant_id,
                    source=connection.source,
                    connection_id=connection.connection_id,
                    options=imports_pb2.ImportOptions(stop_policy=_POLICIES[args.policy]),
                    idempotency_key=f"sync-all.{args.policy}.{slot}",
                )
                try:
                    response = stub.StartImport(request, timeout=args.timeout_seconds, metadata=_metadata(args))
                except grpc.RpcError as exc:
                    failures += 1
                    print(
                        f"{connection.tenant_id}/{connection.connection_id}: {exc.code().name}: {exc.details()}",
                        file=sys.stderr,
                    )
                    continue
                started.append(response)
                note = "already running" if response.already_exists else "started"
                if not args.json:
                    print(f"{connection.tenant_id}/{connection.connection_id}: job {response.job.job_id} {note}")
            token = page.next_page_token
            if not token:
                break
    if args.json:
        print(json.dumps([message_dict(r) for r in started], indent=2, sort_keys=True))
    return EXIT_OTHER if failures else EXIT_OK
