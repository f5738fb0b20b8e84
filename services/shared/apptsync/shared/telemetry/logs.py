"""Structured JSON logs: one object per line on stderr, with trace and job ids, secrets redacted by value.

Every line carries `time`, `level`, `logger`, `service`, `message` and, when a span is current,
`trace_id`/`span_id` (so a log line leads to its trace). Fields bound with `bound_log_fields(...)`
(e.g. the job id while a job runs) and fields given to `log_event(...)` are added as keys.

Redaction is by value, not by key: every registered secret (connection credentials, the database
password, keyring keys, tokens) is replaced by `[REDACTED]` wherever it appears in the finished
line, whatever key, message or traceback carried it, also in its JSON-escaped form.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

from apptsync.shared.telemetry.propagation import span_id_hex, trace_id_hex

REDACTED = "[REDACTED]"
# Values shorter than this are not redacted: a 4-digit Acuity user id is an identifier, not a
# secret, and replacing every "1001" would garble counts and offsets in every line.
MIN_SECRET_CHARS = 6
# Third-party loggers that are chatty at INFO (httpx logs every request).
QUIET_LOGGERS = ("httpx", "httpcore")

_bound_fields: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "apptsync_log_fields", default=MappingProxyType({})
)
_RESERVED = {"time", "level", "logger", "service", "message", "trace_id", "span_id", "exception"}


class SecretRedactor:
    """A thread-safe set of secret values and the function that removes them from text."""

    def __init__(self, min_chars: int = MIN_SECRET_CHARS) -> None:
        self._min_chars = min_chars
        self._needles: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, *values: str | None) -> None:
        """Registers secrets (and their JSON-escaped forms); empty and too-short values are ignored."""
        fresh: set[str] = set()
        for value in values:
            if value is None or len(value.strip()) < self._min_chars:
                continue
            fresh.add(value)
            fresh.add(json.dumps(value)[1:-1])  # how the value looks inside a JSON string
            fresh.add(json.dumps(value, ensure_ascii=False)[1:-1])
        with self._lock:
            # Longest first: a secret containing another secret is replaced whole.
            self._needles = tuple(sorted(set(self._needles) | fresh, key=len, reverse=True))

    @property
    def has_secrets(self) -> bool:
        return bool(self._needles)

    def redact(self, text: str) -> str:
        """`text` with every occurrence of every registered secret replaced by REDACTED."""
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, REDACTED)
        return text


SECRETS = SecretRedactor()


def register_secrets(*values: str | None) -> None:
    """Registers secrets with the process's redactor (see SecretRedactor.add)."""
    SECRETS.add(*values)


def dsn_secrets(dsn: str) -> list[str]:
    """The password of a PostgreSQL DSN (`scheme://user:password@host/db`) and the DSN itself."""
    secrets = [dsn]
    try:
        password = urlsplit(dsn).password
    except ValueError:
        return secrets
    if password:
        secrets += [password, unquote(password)]
    return secrets


def keyring_secrets(keyring_text: str) -> list[str]:
    """The key material of a keyring text `id:base64key,id2:base64key2` (and the whole text)."""
    keys = [item.partition(":")[2].strip() for item in keyring_text.split(",")]
    return [keyring_text, *filter(None, keys)]


@contextmanager
def bound_log_fields(**fields: object) -> Iterator[None]:
    """Adds `fields` to every log line emitted in this context (this task and tasks it creates)."""
    token = _bound_fields.set({**_bound_fields.get(), **fields})
    try:
        yield
    finally:
        _bound_fields.reset(token)


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: object) -> None:
    """Logs one structured event: `message` is the event name, `fields` become top-level keys."""
    logger.log(level, event, extra={"apptsync_fields": fields})


class JsonLogFormatter(logging.Formatter):
    """Formats a record as one JSON object (see the module docstring), redacted by `redactor`."""

    def __init__(self, *, service: str, redactor: SecretRedactor = SECRETS) -> None:
        super().__init__()
        self._service = service
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": self._service,
            "message": record.getMessage(),
        }
        trace_id = trace_id_hex()
        if trace_id:
            line["trace_id"] = trace_id
            line["span_id"] = span_id_hex()
        fields = {**_bound_fields.get(), **getattr(record, "apptsync_fields", {})}
        for key, value in fields.items():
            line[key if key not in _RESERVED else f"field_{key}"] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return self._redactor.redact(json.dumps(line, default=str))


def configure_logging(
    level: str, *, service: str, stream: TextIO | None = None, redactor: SecretRedactor = SECRETS
) -> None:
    """Routes every logger to one JSON handler on `stream` (default stderr) at `level`.

    Replaces handlers configured before (idempotent); quietens QUIET_LOGGERS to WARNING."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter(service=service, redactor=redactor))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
