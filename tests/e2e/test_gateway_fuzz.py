"""Property-based fuzzing of every gateway RPC against the real gateway process (hypothesis).

Whatever the request, the answer is success, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED or
ALREADY_EXISTS (an idempotency key reused with another request), never INTERNAL or UNKNOWN, and a
rejected call writes nothing (job and connection rows are counted around every rejected call).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apptsync.v1 import imports_pb2, imports_pb2_grpc
from tests.e2e.system import OTHER_TENANT_ID, TENANT_ID, RunningSystem, count_job_and_connection_rows

pytestmark = pytest.mark.e2e
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
}

ids = st.one_of(st.just(TENANT_ID), st.just(OTHER_TENANT_ID), st.uuids().map(str), st.text(max_size=40))
names = st.one_of(st.just("acuity"), st.text(max_size=140), st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True))
seconds = st.integers(min_value=-62_135_596_800, max_value=253_402_300_799)
timestamps = st.builds(lambda s: {"seconds": s}, seconds)
windows = st.fixed_dictionaries({}, optional={"start": timestamps, "end": timestamps})
options = st.fixed_dictionaries(
    {},
    optional={
        "page_size": st.integers(-(2**31), 2**31 - 1),
        "max_pages": st.integers(-(2**31), 2**31 - 1),
        "max_in_flight_pages": st.integers(-(2**31), 2**31 - 1),
        "stop_policy": st.integers(0, 5),
        "stop_after_pages": st.integers(-(2**31), 2**31 - 1),
        "deadline": st.builds(lambda s: {"seconds": s}, st.integers(-(10**9), 10**9)),
    },
)
sources = st.integers(0, 5)
text_maps = st.dictionaries(st.text(max_size=70), st.text(max_size=100), max_size=4)


def rpc_calls() -> st.SearchStrategy[tuple[str, Message]]:
    """(method name, request) pairs covering every RPC of the ImportService."""
    return st.one_of(
        st.builds(
            lambda t, s, c, w, o, k: (
                "StartImport",
                imports_pb2.StartImportRequest(
                    tenant_id=t, source=s, connection_id=c, window=w, options=o, idempotency_key=k
                ),
            ),
            ids,
            sources,
            names,
            windows,
            options,
            st.one_of(st.just(""), names),
        ),
        st.builds(lambda t, j: ("GetJob", imports_pb2.GetJobRequest(tenant_id=t, job_id=j)), ids, ids),
        st.builds(lambda t, j: ("WatchJob", imports_pb2.WatchJobRequest(tenant_id=t, job_id=j)), ids, ids),
        st.builds(lambda t, j: ("CancelJob", imports_pb2.CancelJobRequest(tenant_id=t, job_id=j)), ids, ids),
        st.builds(
            lambda t, states, size, token: (
                "ListJobs",
                imports_pb2.ListJobsRequest(tenant_id=t, states=states, page_size=size, page_token=token),
            ),
            ids,
            st.lists(st.integers(0, 7), max_size=3),
            st.integers(-5, 1000),
            st.text(max_size=30),
        ),
        st.builds(
            lambda t, c, s, u, creds, sett: (
                "PutConnection",
                imports_pb2.PutConnectionRequest(
                    tenant_id=t, connection_id=c, source=s, base_url=u, credentials=creds, settings=sett
                ),
            ),
            ids,
            names,
            sources,
            st.one_of(st.just(""), st.just("http://127.0.0.1:9/x"), st.text(max_size=30)),
            text_maps,
            text_maps,
        ),
        st.builds(
            lambda t, c: ("GetConnection", imports_pb2.GetConnectionRequest(tenant_id=t, connection_id=c)), ids, names
        ),
        st.builds(
            lambda t, size, token: (
                "ListConnections",
                imports_pb2.ListConnectionsRequest(tenant_id=t, page_size=size, page_token=token),
            ),
            st.one_of(st.just(""), ids),
            st.integers(-5, 1000),
            st.text(max_size=30),
        ),
        st.builds(
            lambda t, c: ("DeleteConnection", imports_pb2.DeleteConnectionRequest(tenant_id=t, connection_id=c)),
            ids,
            names,
        ),
    )


def count_rows(database_url: str) -> tuple[int, int]:
    return asyncio.run(count_job_and_connection_rows(database_url))


def call(
    stub: imports_pb2_grpc.ImportServiceStub, method: str, request: Message, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    rpc: Callable[..., Any] = getattr(stub, method)
    try:
        if method == "WatchJob":
            for _ in rpc(request, metadata=metadata, timeout=10):
                break
        else:
            rpc(request, metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def test_every_rpc_answers_a_known_status_and_rejected_calls_write_nothing(running_system: RunningSystem) -> None:
    system = running_system
    with grpc.insecure_channel(system.services.addresses.gateway_address) as channel:
        stub = imports_pb2_grpc.ImportServiceStub(channel)

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(rpc_calls())
        def check(method_and_request: tuple[str, Message]) -> None:
            method, request = method_and_request
            before = count_rows(system.database_url)
            code = call(stub, method, request, system.metadata)
            assert code in ALLOWED, f"{method} answered {code.name} for {request}"
            if code != grpc.StatusCode.OK:
                assert count_rows(system.database_url) == before, f"rejected {method} wrote rows"

        check()
        watch = call(
            stub,
            "WatchJob",
            imports_pb2.WatchJobRequest(tenant_id=TENANT_ID, job_id=str(uuid.uuid4())),
            system.metadata,
        )
        assert watch == grpc.StatusCode.NOT_FOUND
