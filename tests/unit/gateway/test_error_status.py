"""Which gRPC status each error of the tree ends a call with: both kinds of bad input are
INVALID_ARGUMENT with a field violation; a statement PostgreSQL refuses is INTERNAL without its text."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from apptsync.gateway.auth import PermissionDeniedError, UnauthenticatedError
from apptsync.gateway.server import _abort_for
from apptsync.gateway.translate import FieldViolation, RequestInvalid
from apptsync.shared.errors import (
    InvalidArgumentError,
    NotFoundError,
    StorageRefusedError,
    StorageUnavailableError,
)

pytestmark = pytest.mark.unit


class Aborted(Exception):
    pass


class FakeContext:
    """Records how the call was ended; aborting raises, as grpc's does."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.violations: list[tuple[str, str]] = []

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted

    async def abort_with_status(self, status: Any) -> None:
        self.code, self.details = status.code, status.details
        for key, value in status.trailing_metadata:
            if key == "grpc-status-details-bin":
                rich = status_pb2.Status.FromString(value)
                bad_request = error_details_pb2.BadRequest()
                rich.details[0].Unpack(bad_request)
                self.violations = [(v.field, v.description) for v in bad_request.field_violations]
        raise Aborted


async def ended_with(exc: Exception) -> FakeContext:
    context = FakeContext()
    with pytest.raises(Aborted):
        await _abort_for(cast(Any, context), exc)
    return context


async def test_both_kinds_of_bad_input_are_invalid_argument_with_a_field_violation() -> None:
    from_request = await ended_with(RequestInvalid([FieldViolation("tenant_id", "is not a UUID")]))
    from_below = await ended_with(InvalidArgumentError("base_url", "must be https"))

    assert from_request.code == from_below.code == grpc.StatusCode.INVALID_ARGUMENT
    assert from_request.violations == [("tenant_id", "is not a UUID")]
    assert from_below.violations == [("base_url", "must be https")]


async def test_a_statement_postgresql_refuses_is_internal_and_its_text_stays_in_the_log() -> None:
    context = await ended_with(StorageRefusedError('UndefinedTableError: relation "import_jobs" does not exist'))

    assert context.code == grpc.StatusCode.INTERNAL
    assert "import_jobs" not in context.details


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (UnauthenticatedError("unknown token"), grpc.StatusCode.UNAUTHENTICATED),
        (PermissionDeniedError("may not act for tenant"), grpc.StatusCode.PERMISSION_DENIED),
        (NotFoundError("job"), grpc.StatusCode.NOT_FOUND),
        (StorageUnavailableError("connection lost"), grpc.StatusCode.UNAVAILABLE),
        (ConnectionResetError("reset"), grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_each_error_has_its_status(exc: Exception, code: grpc.StatusCode) -> None:
    assert (await ended_with(exc)).code == code
