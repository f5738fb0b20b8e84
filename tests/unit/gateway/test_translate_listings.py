"""ListJobs / ListConnections requests parsed in translate.py: states, page size and page tokens."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from apptsync.gateway.translate import (
    ConnectionsQuery,
    RequestInvalid,
    connections_query,
    encode_page_token,
    jobs_query,
    parse_ids,
)
from apptsync.v1 import imports_pb2

pytestmark = pytest.mark.unit

TENANT = "3f2a9c1e-6b7d-4e8f-9a0b-1c2d3e4f5a6b"
JOB = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
CREATED = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
NOT_ISSUED_HERE = "is not a page token this server issued"


def violations(error: RequestInvalid) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in error.violations]


def test_a_first_page_of_jobs_in_some_states() -> None:
    request = imports_pb2.ListJobsRequest(
        tenant_id=TENANT, states=[imports_pb2.JOB_STATE_RUNNING, imports_pb2.JOB_STATE_FAILED], page_size=20
    )

    query = jobs_query(request)

    assert (query.states, query.limit, query.after) == (["RUNNING", "FAILED"], 20, None)


def test_the_next_page_of_jobs_starts_after_the_keyset_of_its_token() -> None:
    token = encode_page_token([CREATED.isoformat(), JOB.upper()])

    query = jobs_query(imports_pb2.ListJobsRequest(tenant_id=TENANT, page_token=token))

    assert (query.states, query.limit, query.after) == ([], 50, (CREATED, JOB))


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({"states": [99]}, ("states", "unknown job states [99]")),
        ({"page_size": 501}, ("page_size", "must be between 1 and 500 (0 = default 50)")),
        ({"page_token": "not base64 json"}, ("page_token", NOT_ISSUED_HERE)),
        ({"page_token": encode_page_token(["yesterday", JOB])}, ("page_token", NOT_ISSUED_HERE)),
        ({"page_token": encode_page_token([CREATED.isoformat(), "job-1"])}, ("page_token", "must be a UUID")),
    ],
)
def test_a_bad_jobs_request_names_its_field(request_fields: dict[str, object], expected: tuple[str, str]) -> None:
    with pytest.raises(RequestInvalid) as raised:
        jobs_query(imports_pb2.ListJobsRequest(tenant_id=TENANT, **request_fields))  # type: ignore[arg-type]

    assert violations(raised.value) == [expected]


def test_connections_pages_follow_their_token_and_refuse_a_forged_one() -> None:
    first = connections_query(imports_pb2.ListConnectionsRequest(page_size=2))
    token = encode_page_token([TENANT, "acuity-main"])
    following = connections_query(imports_pb2.ListConnectionsRequest(page_token=token))

    assert first == ConnectionsQuery(limit=2, after=None)
    assert following == ConnectionsQuery(limit=50, after=(TENANT, "acuity-main"))
    with pytest.raises(RequestInvalid):
        connections_query(imports_pb2.ListConnectionsRequest(page_token=encode_page_token([TENANT])))


def test_parse_ids_names_every_malformed_id() -> None:
    assert parse_ids(tenant_id=TENANT.upper(), job_id=JOB) == [TENANT, JOB]
    with pytest.raises(RequestInvalid) as raised:
        parse_ids(tenant_id="tenant", job_id="job")

    assert violations(raised.value) == [("tenant_id", "must be a UUID"), ("job_id", "must be a UUID")]
