"""StartImport validation and Job translation."""

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from apptsync.gateway.translate import (
    RequestInvalid,
    connection_from_request,
    new_job_from_request,
    request_fingerprint,
)
from apptsync.shared.db.jobs import asked_request, request_differences
from apptsync.shared.outbound import OutboundPolicy
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


SIMULATOR = "http://127.0.0.1:8710"
GOOD_CREDENTIALS: dict[int, dict[str, str]] = {
    imports_pb2.SOURCE_ACUITY: {"user_id": "1001", "api_key": "k"},
    imports_pb2.SOURCE_CALENDLY: {"access_token": "t"},
    imports_pb2.SOURCE_GOOGLE_CALENDAR: {"access_token": "t", "refresh_token": "r", "client_id": "c"},
}
WITH_SIMULATOR = OutboundPolicy.allowing(SIMULATOR)


def put(
    source: int = imports_pb2.SOURCE_ACUITY, base_url: str = "", **settings: str
) -> imports_pb2.PutConnectionRequest:
    return imports_pb2.PutConnectionRequest(tenant_id=TENANT, connection_id="main", source=source,  # type: ignore[arg-type]
                                            base_url=base_url, credentials=GOOD_CREDENTIALS[source],
                                            settings=settings)


def connection_violations(req: imports_pb2.PutConnectionRequest, outbound: OutboundPolicy) -> dict[str, str]:
    with pytest.raises(RequestInvalid) as caught:
        connection_from_request(req, outbound=outbound)
    return {v.field: v.description for v in caught.value.violations}


def test_put_connection_requires_credentials_and_a_valid_url() -> None:
    bad = imports_pb2.PutConnectionRequest(tenant_id=TENANT, connection_id="main",
                                           source=imports_pb2.SOURCE_ACUITY, base_url="ftp://x")
    with pytest.raises(RequestInvalid) as caught:
        connection_from_request(bad, outbound=OutboundPolicy())
    assert {v.field for v in caught.value.violations} == {"base_url", "credentials.user_id", "credentials.api_key"}


@pytest.mark.parametrize("hostile", [
    "http://169.254.169.254/latest/meta-data/",
    "https://169.254.169.254",
    "http://127.0.0.1:5432",
    "http://localhost:9092",
    "http://[::1]/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "https://api.calendly.com@evil.example/",
    "https://api.calendly.com.evil.example/",
    "https://acuityscheduling.com:8443/api/v1",
    "http://127.0.0.1:8711",  # the simulator's host, another port: another origin
])
def test_put_connection_refuses_a_base_url_the_outbound_policy_does_not_allow(hostile: str) -> None:
    found = connection_violations(put(base_url=hostile), WITH_SIMULATOR)
    assert list(found) == ["base_url"]
    assert found["base_url"].startswith("not allowed: ")
    assert "evil.example/" not in found["base_url"] and "passwd" not in found["base_url"]


def test_put_connection_refuses_a_hostile_token_url_setting() -> None:
    found = connection_violations(
        put(imports_pb2.SOURCE_GOOGLE_CALENDAR, token_url="http://169.254.169.254/computeMetadata/v1/"), WITH_SIMULATOR
    )
    assert list(found) == ["settings.token_url"]
    # A provider host of another source is not one of this source's.
    found = connection_violations(put(imports_pb2.SOURCE_CALENDLY, token_url="https://oauth2.googleapis.com/token"),
                                  OutboundPolicy())
    assert list(found) == ["settings.token_url"]


def test_put_connection_accepts_provider_hosts_the_default_and_the_deployments_simulator() -> None:
    accepted = [
        (put(), OutboundPolicy()),
        (put(base_url="https://acuityscheduling.com/api/v1"), OutboundPolicy()),
        (put(imports_pb2.SOURCE_CALENDLY, base_url="https://api.calendly.com",
             token_url="https://auth.calendly.com/oauth/token"), OutboundPolicy()),
        (put(imports_pb2.SOURCE_GOOGLE_CALENDAR, base_url="https://www.googleapis.com/calendar/v3",
             token_url="https://oauth2.googleapis.com/token"), OutboundPolicy()),
        (put(imports_pb2.SOURCE_GOOGLE_CALENDAR, token_url="  "), OutboundPolicy()),
        (put(base_url=f"{SIMULATOR}/acuity/api/v1"), WITH_SIMULATOR),
        (put(imports_pb2.SOURCE_GOOGLE_CALENDAR, base_url=f"{SIMULATOR}/google/calendar/v3",
             token_url=f"{SIMULATOR}/google/oauth2/token"), WITH_SIMULATOR),
    ]
    for request_, outbound in accepted:
        assert connection_from_request(request_, outbound=outbound).base_url == request_.base_url
    # The same simulator URL without the deployment's allowance: refused.
    assert list(connection_violations(put(base_url=f"{SIMULATOR}/acuity/api/v1"), OutboundPolicy())) == ["base_url"]


def differences(first: imports_pb2.StartImportRequest, later: imports_pb2.StartImportRequest) -> list[str]:
    """What the gateway decides when `later` reuses the key `first` took: the same request (no
    differences) gets the same job; any difference is refused."""
    held = new_job_from_request(first, settings=GatewaySettings(), now=NOW)
    asked = new_job_from_request(later, settings=GatewaySettings(), now=NOW + timedelta(minutes=4))
    return request_differences(asked_request(held), asked_request(asked))


def test_a_request_without_a_key_records_no_fingerprint() -> None:
    assert new_job_from_request(request(), settings=GatewaySettings(), now=NOW).request_fingerprint is None
    keyed = new_job_from_request(request(idempotency_key="k"), settings=GatewaySettings(), now=NOW)
    assert keyed.request_fingerprint == request_fingerprint(request(idempotency_key="k"))


def test_the_fingerprint_is_the_request_as_sent() -> None:
    window = imports_pb2.TimeWindow(start=ts(NOW))
    options = imports_pb2.ImportOptions(
        page_size=50, stop_policy=imports_pb2.STOP_POLICY_NEVER, deadline=Duration(seconds=90)
    )
    assert request_fingerprint(request(window=window, options=options)) == {
        "window.start": "2026-06-01T00:00:00Z",
        "window.end": None,
        "options.page_size": 50,
        "options.max_pages": 0,
        "options.max_in_flight_pages": 0,
        "options.stop_policy": "STOP_POLICY_NEVER",
        "options.stop_after_pages": 0,
        "options.deadline": "90s",
    }


def test_a_retry_without_a_window_is_the_same_request_although_the_default_window_moved() -> None:
    first = request(idempotency_key="sync-all.never.1.acuity.main")
    held = new_job_from_request(first, settings=GatewaySettings(), now=NOW)
    retry = new_job_from_request(first, settings=GatewaySettings(), now=NOW + timedelta(minutes=4))
    assert retry.window_start != held.window_start
    assert differences(first, first) == []


def test_a_key_reused_for_another_connection_source_window_or_option_is_another_request() -> None:
    first = request(idempotency_key="k")
    assert differences(first, request(idempotency_key="k", connection_id="second")) == ["connection_id"]
    assert differences(first, request(idempotency_key="k", source=imports_pb2.SOURCE_CALENDLY)) == ["source"]
    window = imports_pb2.TimeWindow(start=ts(NOW - timedelta(days=1)), end=ts(NOW + timedelta(days=1)))
    assert differences(first, request(idempotency_key="k", window=window)) == ["window.end", "window.start"]
    policy = imports_pb2.ImportOptions(stop_policy=imports_pb2.STOP_POLICY_NEVER)
    assert differences(first, request(idempotency_key="k", options=policy)) == ["options.stop_policy"]


def test_an_explicit_window_must_match_to_the_nanosecond() -> None:
    window = imports_pb2.TimeWindow(start=ts(NOW), end=ts(NOW + timedelta(days=1)))
    later = imports_pb2.TimeWindow()
    later.CopyFrom(window)
    later.end.nanos = 1
    assert differences(request(idempotency_key="k", window=window), request(idempotency_key="k", window=window)) == []
    assert differences(request(idempotency_key="k", window=window), request(idempotency_key="k", window=later)) == [
        "window.end"
    ]


def test_spelling_out_a_default_is_a_different_request() -> None:
    explicit = request(idempotency_key="k", options=imports_pb2.ImportOptions(page_size=100))
    assert differences(request(idempotency_key="k"), explicit) == ["options.page_size"]


def test_put_connection_refuses_credentials_outside_the_sources_schema() -> None:
    legacy = put()
    legacy.credentials.clear()
    legacy.credentials.update({"username": "owner", "password": "pw"})
    found = connection_violations(legacy, OutboundPolicy())
    assert set(found) == {"credentials.username", "credentials.password", "credentials.user_id", "credentials.api_key"}
    mixed = put(imports_pb2.SOURCE_CALENDLY)
    mixed.credentials["refresh_token"] = "r"
    assert set(connection_violations(mixed, OutboundPolicy())) == {"credentials.client_id", "credentials.client_secret"}


def test_put_connection_answers_one_violation_for_a_map_of_thousands_of_fields() -> None:
    junk = put()
    junk.credentials.update({f"field{n}": "x" for n in range(5000)})
    assert connection_violations(junk, OutboundPolicy()) == {"credentials": "at most 16 fields"}


def test_put_connection_without_a_source_asks_only_for_credentials() -> None:
    bare = imports_pb2.PutConnectionRequest(tenant_id=TENANT, connection_id="main")
    assert set(connection_violations(bare, OutboundPolicy())) == {"source", "credentials"}


def test_put_connection_carries_the_verification_opt_out() -> None:
    assert connection_from_request(put(), outbound=OutboundPolicy()).skip_verification is False
    opted_out = put()
    opted_out.skip_verification = True
    assert connection_from_request(opted_out, outbound=OutboundPolicy()).skip_verification is True
