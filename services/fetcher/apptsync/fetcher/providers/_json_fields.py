"""Reading fields of provider JSON without ever raising (shared by the normalizers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from apptsync.fetcher.providers._model import JsonValue


def text_field(record: JsonValue, key: str) -> str:
    """`record[key]` stripped when it is a string, else ""."""
    value = record.get(key) if isinstance(record, dict) else None
    return value.strip() if isinstance(value, str) else ""


def object_field(record: JsonValue, key: str) -> dict[str, JsonValue]:
    """`record[key]` when it is a JSON object, else {}."""
    value = record.get(key) if isinstance(record, dict) else None
    return value if isinstance(value, dict) else {}


def list_field(record: JsonValue, key: str) -> list[JsonValue]:
    value = record.get(key) if isinstance(record, dict) else None
    return value if isinstance(value, list) else []


def parse_instant(value: JsonValue) -> datetime | None:
    """An RFC 3339 timestamp with an offset or `Z` (e.g. `2024-06-15T14:00:00.000000Z`) as an aware
    datetime; None if absent, unreadable, without an offset or not representable in UTC."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
        moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return moment if moment.tzinfo is not None and moment.utcoffset() is not None else None


def last_path_segment(uri: str) -> str:
    """`https://api.calendly.com/scheduled_events/ABC` -> `ABC` ("" for an empty URI)."""
    return uri.rstrip("/").rpartition("/")[2]


def canonical_json(value: JsonValue) -> str:
    """The provider payload as stored (sorted keys, no blanks, unicode kept). Raises ValueError,
    TypeError or RecursionError for what JSON cannot represent."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
