"""Provider amounts (decimal strings or JSON numbers in major units) -> integer minor units."""

from __future__ import annotations

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


def is_currency_code(text: str) -> bool:
    return len(text) == 3 and text.isascii() and text.isalpha() and text.isupper()


def money_from_amount(value: JsonValue, currency: str) -> Money | None:
    """`"45.00"` (or 45.0) -> Money(4500, currency), by decimal arithmetic (half-even past the minor unit).
    None for absent, empty, non-numeric, non-finite or out-of-range amounts."""
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
        scale = Decimal(10) ** _MINOR_UNIT_DIGITS.get(currency, 2)
        minor = int((amount * scale).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    except (InvalidOperation, ArithmeticError, ValueError):
        return None
    if abs(minor) >= _INT64_LIMIT:
        return None
    return Money(amount_minor=minor, currency=currency)
