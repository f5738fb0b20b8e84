"""JSON logs: one object per line with trace and job ids; secrets redacted by value, whatever carries them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from apptsync.shared.telemetry.logs import (
    REDACTED,
    JsonLogFormatter,
    SecretRedactor,
    bound_log_fields,
    configure_logging,
    dsn_secrets,
    keyring_secrets,
    log_event,
)
from apptsync.shared.telemetry.propagation import trace_id_hex

pytestmark = pytest.mark.unit
CANARY = 'canary-Zq7!secret"value'


@pytest.fixture
def redactor() -> SecretRedactor:
    redactor = SecretRedactor()
    redactor.add(CANARY)
    return redactor


@pytest.fixture
def captured(redactor: SecretRedactor) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter(service="apptsync-test", redactor=redactor))
    logger = logging.getLogger("apptsync.test.telemetry")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_secret_is_redacted_wherever_it_appears(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("connecting with %s", CANARY)
    log_event(logger, "page sent", note=f"key={CANARY}", nested={"whatever": [CANARY]})
    try:
        raise RuntimeError(f"provider said {CANARY}")
    except RuntimeError:
        logger.exception("failed")
    text = stream.getvalue()
    assert CANARY not in text
    assert json.dumps(CANARY)[1:-1] not in text  # nor its JSON-escaped form
    assert "canary-Zq7" not in text
    parsed = lines(stream)
    assert parsed[0]["message"] == f"connecting with {REDACTED}"
    assert parsed[1]["note"] == f"key={REDACTED}"
    assert parsed[1]["nested"] == {"whatever": [REDACTED]}
    assert REDACTED in str(parsed[2]["exception"])


def test_short_values_are_not_secrets_and_longer_secrets_win() -> None:
    redactor = SecretRedactor()
    redactor.add("1001", "", None, "abcdef", "abcdefgh")
    assert redactor.redact("user 1001 abcdefgh abcdef") == f"user 1001 {REDACTED} {REDACTED}"


def test_every_line_is_json_with_service_level_logger_and_bound_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    with bound_log_fields(job_id="job-1", tenant_id="tenant-1"):
        log_event(logger, "page sent", page_no=3, records_fetched=50)
        with bound_log_fields(page_no=4):
            logger.warning("slow")
    logger.info("after")
    first, second, third = lines(stream)
    assert first["message"] == "page sent"
    assert (first["service"], first["level"], first["logger"]) == ("apptsync-test", "INFO", "apptsync.test.telemetry")
    assert (first["job_id"], first["tenant_id"], first["page_no"], first["records_fetched"]) == (
        "job-1",
        "tenant-1",
        3,
        50,
    )
    assert (second["job_id"], second["page_no"], second["level"]) == ("job-1", 4, "WARNING")
    assert "job_id" not in third
    assert "trace_id" not in third


def test_a_line_inside_a_span_carries_its_trace_and_span_ids(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("import job"):
        log_event(logger, "job started", message="not the message")
        trace_id = trace_id_hex()
    (line,) = lines(stream)
    assert line["trace_id"] == trace_id
    assert isinstance(line["span_id"], str)
    assert len(line["span_id"]) == 16
    assert line["message"] == "job started"
    assert line["field_message"] == "not the message"  # fields never overwrite the line's own keys


def test_the_database_password_and_keyring_keys_are_secrets() -> None:
    assert dsn_secrets("postgresql://app:s3cr%40t-pass@db:5432/apptsync") == [
        "postgresql://app:s3cr%40t-pass@db:5432/apptsync",
        "s3cr%40t-pass",
        "s3cr@t-pass",
    ]
    assert dsn_secrets("postgresql://app@db/apptsync") == ["postgresql://app@db/apptsync"]
    assert keyring_secrets("k2:QUJD,k1:REVG") == ["k2:QUJD,k1:REVG", "QUJD", "REVG"]


def test_configure_logging_replaces_handlers_with_one_json_handler() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging("warning", service="apptsync-writer", stream=stream)
        configure_logging("info", service="apptsync-writer", stream=stream)
        logging.getLogger("apptsync.writer").info("started")
        logging.getLogger("httpx").info("GET https://example.invalid/")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    (line,) = lines(stream)
    assert (line["service"], line["message"]) == ("apptsync-writer", "started")
