"""The fetcher's hot path (JSON decode, raw payload text, money, duration, page building) is only
faster than the plain stdlib code it replaced: same values, same errors, same content hashes.

The pinned hashes and page digest were computed with the code before the fast paths existed; a
change of either means every stored row would look changed on the next sync (docs/design.md invariant 4)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apptsync.fetcher.providers import JobWindow, JsonValue
from apptsync.fetcher.providers._json_fields import canonical_json, loads_json
from apptsync.fetcher.providers._money import money_from_amount
from apptsync.fetcher.providers.acuity import AcuityRequest, acuity_page, acuity_start
from apptsync.shared.appointments import Money
from apptsync.shared.messages.appointment_pages import build_page

pytestmark = pytest.mark.unit

BODY = r"""[{"id": 1001000042,
    "firstName": "Zoë",
    "lastName": "O'Neil",
    "phone": "+1 555 123 4567",
    "email": "  Client42.1001@Example.COM ",
    "datetime": "2022-06-28T14:00:00+0800",
    "price": "89.99",
    "priceSold": "89.99",
    "amountPaid": "0.00",
    "type": "Massage 45\u2032",
    "appointmentTypeID": 205,
    "classID": null,
    "addonIDs": [],
    "category": "Wellness",
    "duration": "45",
    "calendar": "李医生 (Dr. Li)",
    "calendarID": 103,
    "certificate": null,
    "confirmationPage": "https://app.acuityscheduling.com/schedule.php?owner=1001&action=appt&id%5B%5D=3bab66ea",
    "location": "",
    "notes": "Parking at the back \ud83d\ude97",
    "timezone": "Asia/Kathmandu",
    "calendarTimezone": "Asia/Shanghai",
    "canceled": true,
    "noShow": true,
    "labels": [{"id": 3,
    "name": "VIP",
    "color": "red"}],
    "formsText": "Name: ...\n"},
  {"id": 7,
    "datetime": "2022-06-25T09:30:00-0330",
    "duration": 30,
    "price": 12.5,
    "amountPaid": "12.505",
    "weight": 1e16,
    "tiny": 1e-7,
    "big": 123456789012345678901234567890,
    "canceled": false},
  {"id": 8,
    "datetime": "2022-06-19T09:30:00+0000"},
  {"id": 9,
    "datetime": "2022-05-25T09:30:00+0000"},
  {"id": "",
    "datetime": "2022-06-25T09:30:00+0000"}]""".encode()
WINDOW = JobWindow(datetime(2022, 6, 1, tzinfo=UTC), datetime(2022, 7, 1, tzinfo=UTC))
REQUEST = AcuityRequest(min_date=date(2022, 6, 20), max_date=date(2022, 6, 30), max_records=1000)
OBSERVED_AT = datetime(2022, 7, 1, 12, tzinfo=UTC)
PINNED_HASHES = {
    "1001000042": "3f6e5a44f49872202909071aae408c74e9a50671ba30a839155c3b199d50325e",
    "7": "4750791aaff74d1c0808a36d5dbcfa5843d51f6c6331081884c0e1bbc2c0e790",
}
PINNED_PAGE_SHA256 = "e55cb04b59f3daf25a7a12bf021ef45bf45820730b1a1d96f91213b537972159"


@pytest.mark.parametrize("with_starts", [True, False])
def test_content_hashes_and_page_bytes_are_pinned(with_starts: bool) -> None:
    records = loads_json(BODY)
    assert isinstance(records, list)
    starts = [acuity_start(record) for record in records] if with_starts else None
    page = acuity_page(records, request=REQUEST, window=WINDOW, observed_at=OBSERVED_AT, currency="USD", starts=starts)
    assert {a.external_id: a.content_hash.hex() for a in page.appointments} == PINNED_HASHES
    assert (page.skipped_out_of_window, page.skipped_invalid) == (2, 1)
    message = build_page(
        job_id="job-1",
        tenant_id="tenant-a",
        external_source="acuity",
        connection_id="conn-1",
        page_no=3,
        fetched_at=OBSERVED_AT,
        records_fetched=page.records_fetched,
        appointments=page.appointments,
        skipped_out_of_window=page.skipped_out_of_window,
        skipped_invalid=page.skipped_invalid,
    )
    assert hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest() == PINNED_PAGE_SHA256


def _stdlib_text(value: JsonValue) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _outcome(call: object) -> tuple[str, object]:
    try:
        value = call()  # type: ignore[operator]
    except (ValueError, TypeError, RecursionError, UnicodeError) as exc:
        return ("raises", type(exc))
    return ("returns", repr(value))


EDGE_BODIES = [
    b"[12345678901234567890, -9223372036854775809, 18446744073709551615, -0, -0.0]",
    b"[1e400, NaN, -Infinity]",
    b'"\\ud800 lone surrogate"',
    b"\xef\xbb\xbf[1]",
    '["utf-16"]'.encode("utf-16"),
    b'"\xff not utf-8"',
    b'{"a": 1, "b": 2, "a": 3}',
    b"[" * 3000 + b"]" * 3000,
    b"[1,]",
    b"",
    b'{"phone": "+1 5551234567890123456789", "x": 0.1}',
]


@pytest.mark.parametrize("body", EDGE_BODIES)
def test_loads_json_is_json_loads(body: bytes) -> None:
    assert _outcome(lambda: loads_json(body)) == _outcome(lambda: json.loads(body))


EDGE_VALUES: list[JsonValue] = [
    {"b": 1e16, "a": 1e-7, "c": 0.1, "d": float("nan")},
    {"big": 2**64, "small": -(2**63) - 1, "edge": 2**64 - 1},
    {"s": "\ud800"},
    {"\u00e9": '\x00\x1f\x7f\u2028 "quoted" back\\slash \U0001f697', "A": [], "a": {}},
    {"nested": [[[[1.5]]]]},
    [[{"z": 1, "a": [None, True, False]}]],
    "text",
    3,
]


@pytest.mark.parametrize("value", EDGE_VALUES)
def test_canonical_json_is_the_stdlib_text(value: JsonValue) -> None:
    assert _outcome(lambda: canonical_json(value)) == _outcome(lambda: _stdlib_text(value))


def test_canonical_json_of_deep_nesting_is_the_stdlib_outcome() -> None:
    deep: JsonValue = []
    for _ in range(600):
        deep = [deep]
    assert _outcome(lambda: canonical_json(deep)) == _outcome(lambda: _stdlib_text(deep))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_canonical_json_matches_the_stdlib_on_any_json(value: JsonValue) -> None:
    assert _outcome(lambda: canonical_json(value)) == _outcome(lambda: _stdlib_text(value))


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_loads_json_matches_the_stdlib_on_any_json_text(value: JsonValue) -> None:
    body = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert _outcome(lambda: loads_json(body)) == _outcome(lambda: json.loads(body))


def _decimal_money(value: JsonValue, currency: str) -> Money | None:
    """money_from_amount as it was: Decimal arithmetic for every amount."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        amount = Decimal(value.strip())
        if not amount.is_finite():
            return None
        scale = Decimal(10) ** {"JPY": 0, "KWD": 3}.get(currency, 2)
        minor = int((amount * scale).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    except (InvalidOperation, ArithmeticError, ValueError):
        return None
    return None if abs(minor) >= 2**63 else Money(amount_minor=minor, currency=currency)


_AMOUNTS: list[JsonValue] = [
    "45.00", " 0.00 ", "-0.00", "75.", ".5", "1e3", "12.345", "12.344999", "1_000.00", "-5", "+5", "abc", "",
    "NaN", "inf", "\u0663.00", "9" * 20, "9" * 15 + ".99", "0.005", "0.015", "-0.005", 45, 45.0, 45.5, 1e16,
    True, None, "1" * 40,
]  # fmt: skip


@pytest.mark.parametrize("currency", ["USD", "JPY", "KWD"])
def test_money_fast_path_and_cache_give_the_decimal_result(currency: str) -> None:
    for _ in range(2):  # the second round is served from the cache
        for amount in _AMOUNTS:
            assert money_from_amount(amount, currency) == _decimal_money(amount, currency), amount


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"\A\s?-?[0-9]{0,17}(\.[0-9]{0,5})?\s?\Z", fullmatch=True), st.sampled_from(["USD", "JPY", "KWD"]))
def test_money_of_any_plain_amount_is_the_decimal_result(text: str, currency: str) -> None:
    assert money_from_amount(text, currency) == _decimal_money(text, currency)
