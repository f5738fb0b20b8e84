"""PutConnection through the real gateway and simulator: credentials outside the source's schema are
INVALID_ARGUMENT with a field violation each, credentials the provider refuses are FAILED_PRECONDITION
with its answer, good ones are stored, and skip_verification stores without asking the provider. A
refused call stores nothing."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from apptsync.v1 import imports_pb2
from tests.e2e.system import TENANT_ID, RunningSystem, count_job_and_connection_rows

pytestmark = pytest.mark.e2e
WRONG_KEY = "wrong-acuity-key-5c1d"


def acuity(system: RunningSystem, connection_id: str, credentials: dict[str, str], *, skip: bool = False
           ) -> imports_pb2.PutConnectionRequest:  # fmt: skip
    return imports_pb2.PutConnectionRequest(
        tenant_id=TENANT_ID,
        connection_id=connection_id,
        source=imports_pb2.SOURCE_ACUITY,
        base_url=f"{system.services.addresses.simulator_url}/acuity/api/v1",
        credentials=credentials,
        skip_verification=skip,
    )


async def refused(system: RunningSystem, request: imports_pb2.PutConnectionRequest) -> grpc.aio.AioRpcError:
    before = await count_job_and_connection_rows(system.database_url)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await system.stub.PutConnection(request, metadata=system.metadata, timeout=10)
    assert await count_job_and_connection_rows(system.database_url) == before, "a refused PutConnection stored rows"
    return caught.value


async def test_put_connection_checks_the_schema_and_asks_the_provider(running_system: RunningSystem) -> None:
    system = running_system

    junk = await refused(system, acuity(system, "junk", {"username": "owner", "password": "pw", "user_id": "1001"}))
    assert junk.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(junk)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert {v.field for v in bad_request.field_violations} == {
        "credentials.username",
        "credentials.password",
        "credentials.api_key",
    }

    wrong = await refused(system, acuity(system, "wrong", {"user_id": "1001", "api_key": WRONG_KEY}))
    assert wrong.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert wrong.details() == "credentials refused: acuity answered GET /me with 401: unauthorized: Unauthorized"
    assert WRONG_KEY not in (wrong.details() or "")

    good = await system.stub.PutConnection(
        acuity(system, "good", {"user_id": "1001", "api_key": "demo-acuity-key"}), metadata=system.metadata, timeout=10
    )
    assert good.connection_id == "good"
    assert sorted(good.credential_fields) == ["api_key", "user_id"]

    # Opted out, the provider is not asked: the wrong key is stored (and would fail the first import).
    unverified = await system.stub.PutConnection(
        acuity(system, "unverified", {"user_id": "1001", "api_key": WRONG_KEY}, skip=True),
        metadata=system.metadata,
        timeout=10,
    )
    assert unverified.connection_id == "unverified"
    listed = await system.stub.ListConnections(
        imports_pb2.ListConnectionsRequest(tenant_id=TENANT_ID), metadata=system.metadata, timeout=10
    )
    assert sorted(c.connection_id for c in listed.connections) == ["good", "unverified"]

    # The schema applies whether or not the provider is asked.
    skipped_junk = await refused(system, acuity(system, "junk", {"password": "pw"}, skip=True))
    assert skipped_junk.code() == grpc.StatusCode.INVALID_ARGUMENT
