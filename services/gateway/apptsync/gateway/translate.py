"""Pure translation between gateway protobuf messages and the shared job/connection records.

Validation lives here too: `new_job_from_request` either returns a complete NewJob (defaults filled
in from settings) or raises RequestInvalid listing every offending field. Why not protovalidate:
the limits depend on deployment settings (longest window, defaults) and on the request time, which
static annotations in the .proto cannot express; the rules are few and unit-tested here.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from apptsync.shared.db.connections import ConnectionRecord
from apptsync.shared.db.jobs import FingerprintValue, JobOptions, JobRecord, NewJob
from apptsync.shared.db.webhooks import Subscription
from apptsync.shared.errors import PermanentError
from apptsync.shared.job_messages import (
    POLICY_FROM_PROTO,
    SOURCE_FROM_PROTO,
    SOURCE_TO_PROTO,
    STATE_TO_PROTO,
    job_to_proto,
)
from apptsync.shared.outbound import OutboundPolicy
from apptsync.shared.provider_access import credential_violations
from apptsync.shared.settings import GatewaySettings
from apptsync.shared.timestamps import from_timestamp, timestamp
from apptsync.v1 import imports_pb2

# Connection ids and idempotency keys are client-chosen names: keep them printable and bounded.
_NAME = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_MAX_PAGE_SIZE = 1000
# What a page token we did not issue (or one altered) is told.
_NOT_ISSUED_HERE = "is not a page token this server issued"
_MAX_IN_FLIGHT_PAGES = 64
_MAX_STOP_AFTER_PAGES = 1000
_MAX_DEADLINE = timedelta(days=1)
_KNOWN_POLICIES = frozenset(imports_pb2.StopPolicy.values())
# Every source takes at most four credential fields; past this many, one violation stands for all
# (one per unknown field would outgrow the status details a gRPC client accepts in its trailers).
_MAX_CREDENTIAL_FIELDS = 16


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class RequestInvalid(PermanentError):
    """The request breaks one or more field rules; nothing was written."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


def parse_uuid(value: str, field: str, violations: list[FieldViolation]) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        violations.append(FieldViolation(field, "must be a UUID"))
        return ""


def parse_ids(**fields: str) -> list[str]:
    """The UUID `fields` (name=value) in canonical form, in order. Raises RequestInvalid naming every
    malformed one."""
    violations: list[FieldViolation] = []
    parsed = [parse_uuid(value, name, violations) for name, value in fields.items()]
    if violations:
        raise RequestInvalid(violations)
    return parsed


def check_name(value: str, field: str, violations: list[FieldViolation]) -> None:
    if not _NAME.match(value):
        violations.append(FieldViolation(field, "must be 1-128 characters of letters, digits or . _ : @ -"))


def _bounded(value: int, default: int, field: str, upper: int, violations: list[FieldViolation]) -> int:
    if value == 0:
        return default
    if not 1 <= value <= upper:
        violations.append(FieldViolation(field, f"must be between 1 and {upper} (0 = default {default})"))
    return value


def new_job_from_request(
    request: imports_pb2.StartImportRequest,
    *,
    settings: GatewaySettings,
    now: datetime,
    trace_id: str = "",
    traceparent: str = "",
) -> NewJob:
    """Validates a StartImport request. Raises RequestInvalid with every violation found."""
    violations: list[FieldViolation] = []
    tenant_id = parse_uuid(request.tenant_id, "tenant_id", violations)
    source = SOURCE_FROM_PROTO.get(request.source)
    if source is None:
        violations.append(FieldViolation("source", "must be one of ACUITY, CALENDLY, GOOGLE_CALENDAR"))
    check_name(request.connection_id, "connection_id", violations)
    if request.idempotency_key:
        check_name(request.idempotency_key, "idempotency_key", violations)

    default_half = timedelta(days=settings.default_window_days) / 2
    start = from_timestamp(request.window.start) if request.window.HasField("start") else now - default_half
    end = from_timestamp(request.window.end) if request.window.HasField("end") else now + default_half
    if end <= start:
        violations.append(FieldViolation("window", "end must be after start"))
    elif end - start > timedelta(days=settings.max_window_days):
        violations.append(FieldViolation("window", f"must not be longer than {settings.max_window_days} days"))

    options = request.options
    page_size = _bounded(options.page_size, settings.default_page_size, "options.page_size", _MAX_PAGE_SIZE, violations)
    max_pages = _bounded(options.max_pages, settings.default_max_pages, "options.max_pages", 10_000_000, violations)
    in_flight = _bounded(
        options.max_in_flight_pages,
        settings.default_max_in_flight_pages,
        "options.max_in_flight_pages",
        _MAX_IN_FLIGHT_PAGES,
        violations,
    )
    stop_after = _bounded(
        options.stop_after_pages,
        settings.default_stop_after_pages,
        "options.stop_after_pages",
        _MAX_STOP_AFTER_PAGES,
        violations,
    )
    if options.stop_policy == imports_pb2.STOP_POLICY_UNSPECIFIED:
        policy = "NO_NEW_RECORDS"
    elif options.stop_policy in POLICY_FROM_PROTO:
        policy = POLICY_FROM_PROTO[options.stop_policy]
    else:
        violations.append(FieldViolation("options.stop_policy", "unknown stop policy"))
        policy = ""
    deadline_seconds = settings.default_deadline_seconds
    if options.HasField("deadline"):
        deadline = options.deadline.ToTimedelta()
        if not timedelta(seconds=1) <= deadline <= _MAX_DEADLINE:
            violations.append(FieldViolation("options.deadline", "must be between 1 second and 1 day"))
        deadline_seconds = deadline.total_seconds()

    if violations:
        raise RequestInvalid(violations)
    assert source is not None  # noqa: S101 -- narrows the type; a missing source is a violation raised above
    return NewJob(
        tenant_id=tenant_id,
        external_source=source.value,
        connection_id=request.connection_id,
        window_start=start,
        window_end=end,
        options=JobOptions(page_size, max_pages, in_flight, policy, stop_after, deadline_seconds),
        idempotency_key=request.idempotency_key or None,
        trace_id=trace_id,
        traceparent=traceparent,
        request_fingerprint=request_fingerprint(request) if request.idempotency_key else None,
    )


def request_fingerprint(request: imports_pb2.StartImportRequest) -> dict[str, FingerprintValue]:
    """What a StartImport asks for beyond tenant, source and connection, keyed by proto field path:
    each window bound it gives (None where it leaves the server to choose) and each option as sent
    (0 / UNSPECIFIED where it leaves the default). Stored with an idempotency key; a later call with
    that key gets the key's job only if this and its source and connection are the same (the tenant
    is the key's scope, so it always is).

    As sent, not as resolved, for two reasons. A request without a window asks for "the default
    window as of when the job is created": its retry minutes later is the same request, although
    the window the server would compute has moved (sync-all sends no window and relies on this).
    And a retry stays the same request when the gateway's defaults change between the two calls.
    The price: a request that spells out a default (page_size 100) differs from one that leaves
    it (0), and is refused under the other's key."""
    window, options = request.window, request.options
    policy = options.stop_policy
    return {
        "window.start": window.start.ToJsonString() if window.HasField("start") else None,
        "window.end": window.end.ToJsonString() if window.HasField("end") else None,
        "options.page_size": options.page_size,
        "options.max_pages": options.max_pages,
        "options.max_in_flight_pages": options.max_in_flight_pages,
        "options.stop_policy": imports_pb2.StopPolicy.Name(policy) if policy in _KNOWN_POLICIES else policy,
        "options.stop_after_pages": options.stop_after_pages,
        "options.deadline": options.deadline.ToJsonString() if options.HasField("deadline") else None,
    }


_WEBHOOK_STATES = {
    "PENDING": imports_pb2.WebhookStatus.PENDING,
    "ACTIVE": imports_pb2.WebhookStatus.ACTIVE,
    "FAILED": imports_pb2.WebhookStatus.FAILED,
}


def webhook_status_to_proto(subscription: Subscription | None) -> imports_pb2.WebhookStatus:
    """A connection's webhook health; POLLING_ONLY without a subscription."""
    if subscription is None:
        return imports_pb2.WebhookStatus(state=imports_pb2.WebhookStatus.POLLING_ONLY)
    status = imports_pb2.WebhookStatus(
        state=_WEBHOOK_STATES[subscription.state],
        last_error=subscription.last_error,
        notifications_accepted=subscription.notifications_accepted,
    )
    if subscription.expires_at is not None:
        status.expires_at.CopyFrom(timestamp(subscription.expires_at))
    if subscription.last_notification_at is not None:
        status.last_notification_at.CopyFrom(timestamp(subscription.last_notification_at))
    return status


def connection_to_proto(record: ConnectionRecord, subscription: Subscription | None = None) -> imports_pb2.Connection:
    return imports_pb2.Connection(
        webhooks=webhook_status_to_proto(subscription),
        tenant_id=record.tenant_id,
        connection_id=record.connection_id,
        source=SOURCE_TO_PROTO[record.external_source],
        base_url=record.base_url,
        settings=record.settings,
        credential_fields=record.credential_fields,
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
    )


@dataclass(frozen=True)
class ConnectionInput:
    tenant_id: str
    connection_id: str
    external_source: str
    base_url: str
    credentials: dict[str, str]
    settings: dict[str, str]
    skip_verification: bool = False


def connection_from_request(
    request: imports_pb2.PutConnectionRequest, *, outbound: OutboundPolicy
) -> ConnectionInput:
    """Validates PutConnection. Raises RequestInvalid.

    `base_url` and the `token_url` setting (empty: the provider's public endpoint) must pass the
    outbound policy for the request's source: a provider host over https, or an origin the deployment
    allows. Otherwise the violation is `base_url` / `settings.token_url` and nothing is stored.

    The credentials must fit the source's schema (apptsync.shared.provider_access): each missing,
    unknown or blank field is one violation `credentials.<name>`. Whether the provider accepts them
    is not decided here (see apptsync.gateway.verify)."""
    violations: list[FieldViolation] = []
    tenant_id = parse_uuid(request.tenant_id, "tenant_id", violations)
    check_name(request.connection_id, "connection_id", violations)
    source = SOURCE_FROM_PROTO.get(request.source)
    if source is None:
        violations.append(FieldViolation("source", "must be one of ACUITY, CALENDLY, GOOGLE_CALENDAR"))
    else:
        # Empty means the provider's public endpoint; so does a blank token_url (the sessions strip it).
        token_url = request.settings.get("token_url", "")
        urls = {"base_url": request.base_url, "settings.token_url": token_url if token_url.strip() else ""}
        for field, url in urls.items():
            reason = outbound.refusal(url, source=source) if url else None
            if reason is not None:
                violations.append(FieldViolation(field, f"not allowed: {reason}"))
    sized = len(request.credentials) <= _MAX_CREDENTIAL_FIELDS
    if not sized:
        violations.append(FieldViolation("credentials", f"at most {_MAX_CREDENTIAL_FIELDS} fields"))
    for name, value in request.credentials.items() if sized else ():
        if not name or len(name) > 64 or len(value) > 8192:
            violations.append(FieldViolation("credentials", "names must be 1-64 and values at most 8192 characters"))
            sized = False
            break
    if source is None:
        if not request.credentials:
            violations.append(FieldViolation("credentials", "must not be empty"))
    elif sized:
        # After the size check: a map of oversized names is one violation, not one per name.
        violations.extend(
            FieldViolation(v.field, v.description) for v in credential_violations(source, request.credentials)
        )
    if violations:
        raise RequestInvalid(violations)
    assert source is not None  # noqa: S101 -- narrows the type; a missing source is a violation raised above
    return ConnectionInput(
        tenant_id=tenant_id,
        connection_id=request.connection_id,
        external_source=source.value,
        base_url=request.base_url,
        credentials=dict(request.credentials),
        settings=dict(request.settings),
        skip_verification=request.skip_verification,
    )


def encode_page_token(keyset: list[str]) -> str:
    """An opaque page token for the keyset of the last item of a page."""
    return base64.urlsafe_b64encode(json.dumps(keyset).encode()).decode()


def decode_page_token(token: str, field: str, size: int) -> list[str] | None:
    """The keyset in `token` (None for an empty token). Raises RequestInvalid for a forged one."""
    if not token:
        return None
    try:
        keyset = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error) as exc:
        raise RequestInvalid([FieldViolation(field, _NOT_ISSUED_HERE)]) from exc
    if not isinstance(keyset, list) or len(keyset) != size or not all(isinstance(v, str) for v in keyset):
        raise RequestInvalid([FieldViolation(field, _NOT_ISSUED_HERE)])
    return keyset


def page_size(value: int, field: str, *, default: int = 50, upper: int = 500) -> int:
    """The requested page size (0 = default). Raises RequestInvalid when out of range."""
    violations: list[FieldViolation] = []
    size = _bounded(value, default, field, upper, violations)
    if violations:
        raise RequestInvalid(violations)
    return size


STATE_FROM_PROTO = {v: k for k, v in STATE_TO_PROTO.items()}


@dataclass(frozen=True, slots=True)
class JobsQuery:
    """A validated ListJobs page request: job states (empty: all), page length, and the keyset
    (created_at, job_id) of the previous page's last job (None: the first page)."""

    states: list[str]
    limit: int
    after: tuple[datetime, str] | None


def jobs_query(request: imports_pb2.ListJobsRequest) -> JobsQuery:
    """The query of a ListJobs request (its tenant is parsed and authorized by the caller). Raises
    RequestInvalid for unknown states, an out-of-range page size or a forged page token."""
    unknown = [s for s in request.states if s not in STATE_FROM_PROTO]
    if unknown:
        raise RequestInvalid([FieldViolation("states", f"unknown job states {unknown}")])
    limit = page_size(request.page_size, "page_size")
    keyset = decode_page_token(request.page_token, "page_token", 2)
    after = None
    if keyset is not None:
        try:
            after = (datetime.fromisoformat(keyset[0]), parse_ids(page_token=keyset[1])[0])
        except ValueError as exc:
            raise RequestInvalid([FieldViolation("page_token", _NOT_ISSUED_HERE)]) from exc
    return JobsQuery(states=[STATE_FROM_PROTO[s] for s in request.states], limit=limit, after=after)


def jobs_page(jobs: Sequence[JobRecord], limit: int) -> imports_pb2.ListJobsResponse:
    """The response for up to `limit` of `jobs` (fetched as limit + 1: one more means a next page,
    whose token is the keyset of this page's last job)."""
    response = imports_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs[:limit]])
    if len(jobs) > limit:
        last = jobs[limit - 1]
        response.next_page_token = encode_page_token([last.created_at.isoformat(), last.job_id])
    return response


@dataclass(frozen=True, slots=True)
class ConnectionsQuery:
    """A validated ListConnections page request: page length and the keyset (tenant_id,
    connection_id) of the previous page's last connection (None: the first page)."""

    limit: int
    after: tuple[str, str] | None


def connections_query(request: imports_pb2.ListConnectionsRequest) -> ConnectionsQuery:
    """The page of a ListConnections request (its tenants are decided by the caller, who knows the
    principal). Raises RequestInvalid for an out-of-range page size or a forged page token."""
    limit = page_size(request.page_size, "page_size")
    keyset = decode_page_token(request.page_token, "page_token", 2)
    after = None if keyset is None else (parse_ids(page_token=keyset[0])[0], keyset[1])
    return ConnectionsQuery(limit=limit, after=after)


def connections_page(
    records: Sequence[ConnectionRecord], subscriptions: Sequence[Subscription | None], limit: int
) -> imports_pb2.ListConnectionsResponse:
    """The response for up to `limit` of `records` (fetched as limit + 1, as `jobs_page`), each with
    its webhook subscription (`subscriptions[i]` belongs to `records[i]`; None: none)."""
    response = imports_pb2.ListConnectionsResponse(
        connections=[connection_to_proto(r, s) for r, s in zip(records[:limit], subscriptions, strict=False)]
    )
    if len(records) > limit:
        last = records[limit - 1]
        response.next_page_token = encode_page_token([last.tenant_id, last.connection_id])
    return response
