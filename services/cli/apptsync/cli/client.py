"""Client commands: thin gRPC calls to the gateway with readable output and stable exit codes."""

from __future__ import annotations

import argparse
import enum
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from apptsync.cli.exits import (
    EXIT_AUTH,
    EXIT_INVALID,
    EXIT_JOB_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OTHER,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    exit_code_for,
)
from apptsync.cli.moments import parse_moment
from apptsync.cli.transport import channel_credentials, open_channel
from apptsync.shared.counts import skipped_total
from apptsync.shared.errors import InvalidArgumentError
from apptsync.v1 import imports_pb2, imports_pb2_grpc

__all__ = [
    "EXIT_AUTH",
    "EXIT_INVALID",
    "EXIT_JOB_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_OTHER",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "exit_code_for",
]
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
_SOURCE_NAMES = {value: name for name, value in _SOURCES.items()}
_TERMINAL = {imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED}
# The gateway's bound on idempotency keys (1-128 letters, digits or . _ : @ -).
MAX_IDEMPOTENCY_KEY_CHARS = 128
# A connection id too long for its sync-all key is replaced by this many hex digits of its SHA-256.
_CONNECTION_DIGEST_HEX_CHARS = 32
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
    return exit_code_for(code)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to the gateway as the command's TLS settings say (`args.tls`, see transport.tls_files).
    Raises InvalidArgumentError when a TLS file cannot be read."""
    return open_channel(args.address, channel_credentials(args.tls))


def _call(
    args: argparse.Namespace,
    call: Callable[[imports_pb2_grpc.ImportServiceStub], _R],
    channel: grpc.Channel | None = None,
) -> _R | int:
    """Runs a call (on `channel`, or a channel of its own); on an RPC error prints it and returns the
    exit code instead."""
    if channel is not None:
        try:
            return call(imports_pb2_grpc.ImportServiceStub(channel))
        except grpc.RpcError as exc:
            return _exit_code(exc)
    with _channel(args) as own:
        return _call(args, call, own)


def _timestamp(text: str, field: str) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(parse_moment(text, field))
    return message


def start_import(args: argparse.Namespace) -> int:
    window = imports_pb2.TimeWindow()
    if args.window_start:
        window.start.CopyFrom(_timestamp(args.window_start, "--window-start"))
    if args.window_end:
        window.end.CopyFrom(_timestamp(args.window_end, "--window-end"))
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
    """Polls GetJob on one channel (one TLS handshake) until the job ends or a call fails.
    Bounded by the job's own deadline: every job reaches a terminal state."""
    request = imports_pb2.GetJobRequest(tenant_id=args.tenant, job_id=job_id)
    with _channel(args) as channel:
        while True:
            job = _call(
                args,
                lambda stub: stub.GetJob(request, timeout=args.timeout_seconds, metadata=_metadata(args)),
                channel,
            )
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


def _credentials_file(path: str) -> dict[str, str]:
    """The JSON object of `path` with its values as text. Raises InvalidArgumentError when the file
    cannot be read or holds anything but a JSON object."""
    try:
        credentials = json.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise InvalidArgumentError("--credentials-file", f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise InvalidArgumentError("--credentials-file", f"{path} is not JSON ({exc})") from exc
    if not isinstance(credentials, dict):
        raise InvalidArgumentError("--credentials-file", f"{path} must hold a JSON object")
    return {str(k): str(v) for k, v in credentials.items()}


def parse_settings(items: Iterable[str]) -> dict[str, str]:
    """`--setting NAME=VALUE` items as a dict. Raises InvalidArgumentError for an item without `=` or a name."""
    settings = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise InvalidArgumentError("--setting", f"{item!r} is not NAME=VALUE")
        settings[name] = value
    return settings


def put_connection(args: argparse.Namespace) -> int:
    credentials = _credentials_file(args.credentials_file)
    settings = parse_settings(args.setting)
    request = imports_pb2.PutConnectionRequest(
        tenant_id=args.tenant,
        connection_id=args.connection,
        source=_SOURCES[args.source],
        base_url=args.base_url,
        credentials=credentials,
        settings=settings,
        skip_verification=args.skip_verification,
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
    lines = [job_list_line(job) for job in response.jobs]
    _print(args, response, [JOB_LIST_HEADER, *lines] if lines else ["no jobs"])
    return EXIT_OK


def _moment_text(stamp: Timestamp, present: bool) -> str:
    """A job time as `2026-01-01T09:30:00Z` (UTC, to the second), `-` when the job has none."""
    if not present:
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


JOB_LIST_HEADER = (
    f"{'job':36}  {'state':9}  {'source':15}  {'connection':20}  {'created':20}  {'finished':20}  "
    f"{'inserted':>8}  stopped"
)


def job_list_line(job: imports_pb2.Job) -> str:
    """One row of list-jobs: job, state, source, connection, created and finished (UTC), inserted, and
    why it stopped (or its error). Long connection ids are printed whole: a column never cuts a name."""
    state = imports_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
    source = _SOURCE_NAMES.get(job.source, str(job.source))
    created = _moment_text(job.created_at, job.HasField("created_at"))
    finished = _moment_text(job.finished_at, job.HasField("finished_at"))
    return (
        f"{job.job_id:36}  {state:9}  {source:15}  {job.connection_id:20}  {created:20}  {finished:20}  "
        f"{job.counts.inserted:>8}  {job.stop_reason or job.error or '-'}"
    )


def progress_line(job: imports_pb2.Job) -> str:
    """One line of watch-job's progress where there is no terminal to redraw a bar on (a pipe, a log):
    `<STATE> pages <written>/<fetched> records <fetched> inserted <n> updated <n> unchanged <n>`."""
    c = job.counts
    state = imports_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
    return (
        f"{state} pages {c.pages_written}/{c.pages_fetched} records {c.records_fetched} "
        f"inserted {c.inserted} updated {c.updated} unchanged {c.unchanged}"
    )


def watch_job(args: argparse.Namespace, *, is_terminal: Callable[[], bool] | None = None) -> int:
    """Follows a job through WatchJob until it ends; exit 1 unless it SUCCEEDED.

    On a terminal a live progress bar; elsewhere (a pipe, a CI log) one `progress_line` per change,
    flushed at once and never cut to a width; with --json only the final job."""
    request = imports_pb2.WatchJobRequest(tenant_id=args.tenant, job_id=args.job)
    last: imports_pb2.Job | None = None
    with _channel(args) as channel:
        stub = imports_pb2_grpc.ImportServiceStub(channel)
        on_terminal = sys.stdout.isatty() if is_terminal is None else is_terminal()
        if args.json or not on_terminal:
            try:
                printed = ""
                for job in stub.WatchJob(request, metadata=_metadata(args)):
                    last = job
                    line = progress_line(job)
                    if not args.json and line != printed:
                        print(line, flush=True)
                        printed = line
            except grpc.RpcError as exc:
                return _exit_code(exc)
        else:
            watched = _watch_with_bar(args, stub, request)
            if isinstance(watched, int):
                return watched
            last = watched
    if last is None:
        return EXIT_OTHER
    _print(args, last, job_summary_lines(last))
    return EXIT_OK if last.state == imports_pb2.JOB_STATE_SUCCEEDED else EXIT_JOB_FAILED


def _watch_with_bar(
    args: argparse.Namespace, stub: imports_pb2_grpc.ImportServiceStub, request: imports_pb2.WatchJobRequest
) -> imports_pb2.Job | int | None:
    """WatchJob with rich's live bar (a terminal only): the last job seen, or an exit code."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    last: imports_pb2.Job | None = None
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
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
    return last


def sync_slot(now_seconds: float, slot_seconds: int) -> int:
    """The number of the `slot_seconds`-long slot, counted from the Unix epoch, that `now_seconds`
    falls in. Raises ValueError unless slot_seconds >= 1."""
    if slot_seconds < 1:
        raise ValueError(f"a slot lasts at least 1 second, not {slot_seconds}")
    return int(now_seconds // slot_seconds)


def sync_all_key(policy: str, slot: int, source: str, connection_id: str) -> str:
    """The idempotency key of one connection's sync-all job in one slot:
    `sync-all.<policy>.<slot>.<source>.<connection_id>`.

    Keys are unique per tenant, so the connection (with its source) must be in the key: without it
    a tenant's second connection would get the first one's job. A connection id may be 128
    characters, which would take the key past the gateway's 128; such an id is replaced by 32 hex
    digits (128 bits) of its SHA-256 after an `@`: `sync-all.<policy>.<slot>.<source>@<digest>`.
    Policies, slots and sources hold no `.` or `@`, so the `@` tells the two forms apart: no
    connection's id, however it is spelled, yields another connection's key."""
    key = f"sync-all.{policy}.{slot}.{source}.{connection_id}"
    if len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        return key
    digest = hashlib.sha256(connection_id.encode()).hexdigest()[:_CONNECTION_DIGEST_HEX_CHARS]
    return f"sync-all.{policy}.{slot}.{source}@{digest}"


class SyncResult(enum.StrEnum):
    """What sync-all did for one connection."""

    STARTED = "started"  # a new job was queued
    ALREADY_RUNNING = "already running"  # this slot's job, or an earlier one still active
    ALREADY_FINISHED = "already finished"  # this slot's job ran already (in any terminal state)
    REFUSED = "refused"  # the key is held by another request's job (ALREADY_EXISTS)
    FAILED = "failed"  # any other error; the message says which


@dataclass(frozen=True)
class SyncOutcome:
    tenant_id: str
    source: str
    connection_id: str
    idempotency_key: str
    result: SyncResult
    job: imports_pb2.Job | None = None
    already_exists: bool = False
    status: str = ""  # the gRPC status name of a refusal or failure
    detail: str = ""
    exit_code: int = EXIT_OK


def sync_outcome(
    connection: imports_pb2.Connection,
    key: str,
    response: imports_pb2.StartImportResponse | None = None,
    error: tuple[grpc.StatusCode, str] | None = None,
) -> SyncOutcome:
    """The outcome of one connection's StartImport: its response, or the (status, details) it failed with."""
    source = _SOURCE_NAMES.get(connection.source, str(connection.source))
    if response is None:
        code, detail = error or (grpc.StatusCode.UNKNOWN, "no response")
        return SyncOutcome(
            tenant_id=connection.tenant_id,
            source=source,
            connection_id=connection.connection_id,
            idempotency_key=key,
            result=SyncResult.REFUSED if code == grpc.StatusCode.ALREADY_EXISTS else SyncResult.FAILED,
            status=code.name,
            detail=detail,
            exit_code=exit_code_for(code),
        )
    if not response.already_exists:
        result = SyncResult.STARTED
    elif response.job.state in _TERMINAL:
        result = SyncResult.ALREADY_FINISHED
    else:
        result = SyncResult.ALREADY_RUNNING
    return SyncOutcome(
        tenant_id=connection.tenant_id,
        source=source,
        connection_id=connection.connection_id,
        idempotency_key=key,
        result=result,
        job=response.job,
        already_exists=response.already_exists,
    )


def sync_outcome_line(outcome: SyncOutcome) -> str:
    """One line of sync-all's report: `<tenant>/<connection>: job <id> <result>` or `... <result> (<status>): <why>`."""
    head = f"{outcome.tenant_id}/{outcome.connection_id}:"
    if outcome.job is None:
        return f"{head} {outcome.result} ({outcome.status}): {outcome.detail}"
    line = f"{head} job {outcome.job.job_id} {outcome.result}"
    if outcome.result == SyncResult.ALREADY_FINISHED:
        line += f" ({imports_pb2.JobState.Name(outcome.job.state).removeprefix('JOB_STATE_')})"
    return line


def sync_summary_line(outcomes: list[SyncOutcome], slot: int, slot_seconds: int, *, listed_all: bool = True) -> str:
    """The last line of sync-all's report: how many connections ended how."""
    counts = ", ".join(f"{sum(o.result == r for o in outcomes)} {r}" for r in SyncResult)
    tail = "" if listed_all else " (listing the connections failed: others were not tried)"
    return f"sync-all slot {slot} ({slot_seconds} s): {len(outcomes)} connections: {counts}{tail}"


def sync_outcome_dict(outcome: SyncOutcome) -> dict[str, object]:
    """sync-all's JSON for one connection (the job, when there is one, as get-job --json prints it)."""
    return {
        "tenant_id": outcome.tenant_id,
        "source": outcome.source,
        "connection_id": outcome.connection_id,
        "idempotency_key": outcome.idempotency_key,
        "result": outcome.result.value,
        "already_exists": outcome.already_exists,
        "job": None if outcome.job is None else message_dict(outcome.job),
        "status": outcome.status,
        "detail": outcome.detail,
    }


def sync_all_exit_code(outcomes: Iterable[SyncOutcome]) -> int:
    """0 when every connection has its job (started, already running or already finished); otherwise
    the highest of the failed connections' codes, so a rejected token (7) outranks a refusal (6),
    other errors (5), unavailability (4) and a connection deleted meanwhile (3)."""
    return max((outcome.exit_code for outcome in outcomes), default=EXIT_OK)


def sync_all(args: argparse.Namespace, *, clock: Callable[[], float] = time.time) -> int:
    """Starts an import for every connection the token may act for: one job per connection per slot.

    The slot is the `--idempotency-window-seconds`-long stretch of time the call falls in. Each
    connection's StartImport carries the key `sync_all_key(policy, slot, source, connection)` and no
    window (the server's default as of when the job is created: the gateway compares requests as
    sent, so a retry later in the slot is the same request). So a second call in the same slot (a
    CronJob fired twice, or retried after a failure) starts nothing and gets each connection's job
    back, whatever its state; a connection whose job of an earlier slot still runs gets that job.

    Prints one line per connection (or, with --json, a list of objects) and a summary; the exit code
    is `sync_all_exit_code`, or the code of a failed ListConnections."""
    try:
        slot = sync_slot(clock(), args.idempotency_window_seconds)
    except ValueError as exc:
        print(f"error: --idempotency-window-seconds: {exc}", file=sys.stderr)
        return EXIT_INVALID
    outcomes: list[SyncOutcome] = []
    listing_code = EXIT_OK
    token = ""
    with _channel(args) as channel:
        stub = imports_pb2_grpc.ImportServiceStub(channel)
        # Bounded by the gateway's paging: each page moves the keyset forward, the last has no token.
        while True:
            try:
                page = stub.ListConnections(
                    imports_pb2.ListConnectionsRequest(tenant_id=args.tenant or "", page_token=token),
                    timeout=args.timeout_seconds,
                    metadata=_metadata(args),
                )
            except grpc.RpcError as exc:
                listing_code = _exit_code(exc)
                break
            for connection in page.connections:
                source = _SOURCE_NAMES.get(connection.source, str(connection.source))
                key = sync_all_key(args.policy, slot, source, connection.connection_id)
                request = imports_pb2.StartImportRequest(
                    tenant_id=connection.tenant_id,
                    source=connection.source,
                    connection_id=connection.connection_id,
                    options=imports_pb2.ImportOptions(stop_policy=_POLICIES[args.policy]),
                    idempotency_key=key,
                )
                try:
                    response = stub.StartImport(request, timeout=args.timeout_seconds, metadata=_metadata(args))
                    outcome = sync_outcome(connection, key, response=response)
                except grpc.RpcError as exc:
                    outcome = sync_outcome(connection, key, error=(exc.code(), exc.details() or ""))
                outcomes.append(outcome)
                if not args.json:
                    print(sync_outcome_line(outcome), flush=True)
            token = page.next_page_token
            if not token:
                break
    if args.json:
        print(json.dumps([sync_outcome_dict(o) for o in outcomes], indent=2, sort_keys=True))
    else:
        listed_all = listing_code == EXIT_OK
        print(sync_summary_line(outcomes, slot, args.idempotency_window_seconds, listed_all=listed_all))
    return max(listing_code, sync_all_exit_code(outcomes))
