"""How the simulator tells people apart: the identities a contact is matched by (pure).

- email: trimmed and case-folded (`"  Ann@Example.COM "` -> `"ann@example.com"`); empty means none.
- phone: E.164 as the `phonenumbers` library formats it, a number without a country prefix read as
  `DEFAULT_PHONE_REGION` (the simulated accounts are US studios); a text that is no possible number
  (too short, letters) means none. `"(555) 010-2345"`, `"+1 555 010 2345"` and `"555.010.2345"` are
  all `"+15550102345"`.
- name: the first and last name joined by one blank, blanks collapsed, case-folded; empty means none.
"""

from __future__ import annotations

import functools

import phonenumbers

DEFAULT_PHONE_REGION = "US"


def email_identity(email: str) -> str:
    return email.strip().casefold()


@functools.lru_cache(maxsize=65_536)  # the same people's phones come back on every truth request
def phone_identity(phone: str, *, region: str = DEFAULT_PHONE_REGION) -> str:
    """The E.164 form of `phone`, or "" when it is no possible phone number."""
    text = phone.strip()
    if not text:
        return ""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return ""
    if not phonenumbers.is_possible_number(number):
        return ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def name_identity(first_name: str, last_name: str) -> str:
    return " ".join(f"{first_name} {last_name}".split()).casefold()
