"""A job's failure never stops the fetcher, and is logged with its traceback; cancellation and the
interpreter's own exits are not swallowed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from apptsync.fetcher import service

pytestmark = pytest.mark.unit


class FakeJob:
    job_id = "job-1"


def failing_with(exc: BaseException) -> Any:
    async def run_job(_job: object, _ctx: object) -> None:
        raise exc

    return run_job


async def test_a_failing_job_is_logged_with_its_traceback_and_the_process_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service, "run_job", failing_with(ValueError("provider said no")))

    with caplog.at_level(logging.ERROR, logger="apptsync.fetcher"):
        await service._guarded(cast(Any, FakeJob()), cast(Any, None))

    [record] = caplog.records
    assert "job job-1 interrupted" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(3)])
async def test_cancellation_and_interpreter_exits_pass_through(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    monkeypatch.setattr(service, "run_job", failing_with(exc))

    with pytest.raises(type(exc)):
        await service._guarded(cast(Any, FakeJob()), cast(Any, None))
