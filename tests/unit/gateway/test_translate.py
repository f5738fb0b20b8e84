"""StartImport validation and Job translation."""

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from apptsync.gateway.translate import RequestInvalid, connection_from_request, new_job_from_request
from apptsync.shared.settings import GatewaySettings
from apptsync.v1 import imports_pb2

pytestmark = pytest.mark.unit
NOW = datetime(2026, 6, 1, tzinfo=UTC)
TENANT = "7d3c9a64-5f43-4c1c-9a53-0f5b2c1e8e10"


def ts(moment: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def request(**overrides: object) -> imports_pb2.StartImportRequest:
    fields: dict[str, object] = {"tenant_id": TENANT, "source": imports_pb2.SOURCE_ACUITY, "connection_id": "main"}
    fields.update(overrides)
    return imports_pb2.StartImportRequest(**fields)  # type: ignore[arg-type]


def violations(req: imports_pb2.StartImportRequest) -> set[str]:
    with pytest.raises(RequestInvalid) as caught:
        new_job_from_request(req, settings=GatewaySettings(), now=NOW)
    return {v.field for v in caught.value.violations}


def test_defaults_are_filled_in() -> None:
    job = new_job_from_request(request(), settings=GatewaySettings(), now=NOW)
    assert job.options.stop_policy == "NO_NEW_RECORDS"
    assert job.options.page_size == 100
    assert job.window_start < NOW < job.window_end
    assert job.idempotency_key is None


def test_every_bad_field_is_reported_at_once() -> None:
    bad = request(tenant_id="nope", source=imports_pb2.SOURCE_UNSPECIFIED, connection_id="",
                  options=imports_pb2.ImportOptions(page_size=5000, max_in_flight_pages=-1))
    assert violations(bad) == {"tenant_id", "source", "connection_id", "options.page_size",
                               "options.max_in_flight_pages"}


def test_inverted_and_oversized_windows_are_rejected() -> None:
    inverted = imports_pb2.TimeWindow(start=ts(NOW), end=ts(NOW - timedelta(days=1)))
    assert violations(request(window=inverted)) == {"window"}
    huge = imports_pb2.TimeWindow(start=ts(NOW), end=ts(NOW + timedelta(days=5000)))
    assert violations(request(window=huge)) == {"window"}


def test_unknown_stop_policy_is_rejected() -> None:
    assert violations(request(options=imports_pb2.ImportOptions(stop_policy=99))) == {"options.stop_policy"}  # type: ignore[arg-type]


def test_put_connection_requires_credentials_and_a_valid_url() -> None:
    bad = imports_pb2.PutConnectionRequest(tenant_id=TENANT, connection_id="main",
                                           source=imports_pb2.SOURCE_ACUITY, base_url="ftp://x")
    with pytest.raises(RequestInvalid) as caught:
        connection_from_request(bad)
    assert {v.field for v in caught.value.violations} == {"base_url", "credentials"}
