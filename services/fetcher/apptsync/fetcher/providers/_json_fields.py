"""Reading fields of provider JSON without ever raising (shared by the normalizers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson

from apptsync.fetcher.providers._model import JsonValue

# Every digit maps to "0": a run of _LONG_DIGITS zeros in the translated body is a run of that many
# digits in the original (see loads_json).
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0000000000")
# orjson reads integers outside [-2**63, 2**64) as floats (json keeps them exact); every integer of
# fewer digits is inside that range.
_LONG_DIGITS = b"0" * 19


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


def loads_json(body: bytes) -> JsonValue:
    """`json.loads(body)`, exactly (same value, same exceptions: JSONDecodeError, UnicodeDecodeError,
    RecursionError), at a fraction of the CPU.

    orjson reads what it accepts into the same values as json (floats correctly rounded, duplicate
    keys last-wins in first position), except integers beyond 64 bits, which it turns into floats:
    a body with a run of 19 or more digits anywhere (strings included) is read by json. Whatever
    orjson refuses (NaN/Infinity literals, lone surrogate escapes, a BOM, UTF-16/32, deep nesting,
    malformed JSON) is read by json too, which accepts it or raises as it always did."""
    if _LONG_DIGITS not in body.translate(_DIGITS_TO_ZERO):
        try:
            value: JsonValue = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            return value
    parsed: JsonValue = json.loads(body)
    return parsed


def _holds_float(value: dict[str, JsonValue] | list[JsonValue]) -> bool:
    """Whether a float occurs anywhere in `value` (a JSON object or array)."""
    items = value.values() if type(value) is dict else value
    kinds = set(map(type, items))  # in C: most objects hold no nested object or array at all
    if float in kinds:
        return True
    if dict in kinds or list in kinds:
        for item in items:
            if (type(item) is dict or type(item) is list) and item and _holds_float(item):
                return True
    return False


def canonical_json(value: JsonValue) -> str:
    """The provider payload as stored (sorted keys, no blanks, unicode kept): the text of
    `json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)`. Raises ValueError,
    TypeError or RecursionError for what JSON cannot represent.

    orjson writes the same text for JSON without floats (same escapes, keys sorted by code point);
    it formats floats differently (`1e16` for `1e+16`, `null` for NaN) and refuses integers beyond
    64 bits, lone surrogates and deep nesting: those payloads go through json, as before."""
    if isinstance(value, dict | list) and not _holds_float(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits, a surrogate, depth
            pass
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
