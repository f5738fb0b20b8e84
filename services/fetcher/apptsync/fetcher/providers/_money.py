"""Provider amounts (decimal strings or JSON numbers in major units) -> integer minor units."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from apptsync.fetcher.providers._model import JsonValue
from apptsync.shared.appointments import Money

# ISO 4217 currencies whose minor unit is not 1/100 (the rest, USD, EUR, ..., use 2 digits).
_MINOR_UNIT_DIGITS = {
    **dict.fromkeys(
        (
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}
_INT64_LIMIT = 2**63
# An amount that needs no Decimal: sign, at most 15 whole digits, a fraction (ASCII digits only).
_PLAIN_AMOUNT = re.compile(r"(-?)([0-9]{1,15})(?:\.([0-9]*))?")
# Results of money_from_amount for text amounts, by (text, currency): a provider's prices repeat
# page after page (Money is immutable, so one instance serves every record). Bounded: cleared when full.
_CACHE_LIMIT = 4096
_CACHED_TEXT_LIMIT = 32
_cache: dict[tuple[str, str], Money | None] = {}


def is_currency_code(text: str) -> bool:
    return len(text) == 3 and text.isascii() and text.isalpha() and text.isupper()


def money_from_amount(value: JsonValue, currency: str) -> Money | None:
    """`"45.00"` (or 45.0) -> Money(4500, currency), by decimal arithmetic (half-even past the minor unit).
    None for absent, empty, non-numeric, non-finite or out-of-range amounts."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    if len(value) > _CACHED_TEXT_LIMIT:
        return _money_from_text(value, currency)
    key = (value, currency)
    try:
        return _cache[key]
    except KeyError:
        pass
    money = _money_from_text(value, currency)
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    _cache[key] = money
    return money


def _money_from_text(value: str, currency: str) -> Money | None:
    if not value.strip():
        return None
    digits = _MINOR_UNIT_DIGITS.get(currency, 2)
    plain = _PLAIN_AMOUNT.fullmatch(value.strip())
    if plain is not None and len(plain[3] or "") <= digits:
        # Fast path, the same result as below: no rounding needed and far inside int64.
        sign, whole, fraction = plain[1], plain[2], plain[3] or ""
        minor = int(whole) * 10**digits + int(fraction.ljust(digits, "0") or "0")
        return Money(amount_minor=-minor if sign else minor, currency=currency)
    try:
        amount = Decimal(value.strip())
        if not amount.is_finite():
            return None
        scale = Decimal(10) ** digits
        minor = int((amount * scale).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    except (InvalidOperation, ArithmeticError, ValueError):
        return None
    if abs(minor) >= _INT64_LIMIT:
        return None
    return Money(amount_minor=minor, currency=currency)
