"""Each source's credential schema, the Authorization header built from it and the calendars a Google
connection reads (apptsync.shared.provider_access)."""

from __future__ import annotations

import base64

import pytest

from apptsync.shared.appointments import Source
from apptsync.shared.errors import ProviderAuthError
from apptsync.shared.provider_access import (
    CREDENTIAL_SCHEMAS,
    auth_headers,
    credential_violations,
    google_calendar_ids,
)

pytestmark = pytest.mark.unit

REFRESH = {"refresh_token": "r", "client_id": "c", "client_secret": "s"}
CLIENT_ID = "credentials.client_id"
CLIENT_SECRET = "credentials.client_secret"


def fields(source: Source, credentials: dict[str, str]) -> dict[str, str]:
    found = credential_violations(source, credentials)
    by_field = {v.field: v.description for v in found}
    assert len(by_field) == len(found), f"one violation per field: {found}"
    return by_field


@pytest.mark.parametrize(
    ("source", "credentials"),
    [
        (Source.ACUITY, {"user_id": "1001", "api_key": "k"}),
        (Source.ACUITY, {"access_token": "t"}),
        (Source.CALENDLY, {"access_token": "pat"}),
        (Source.CALENDLY, {"access_token": "t", **REFRESH}),
        (Source.GOOGLE_CALENDAR, {"access_token": "t"}),
        (Source.GOOGLE_CALENDAR, {"access_token": "t", **REFRESH}),
        (Source.GOOGLE_CALENDAR, {"access_token": "t", "refresh_token": "r", "client_id": "c"}),
    ],
)
def test_every_documented_credential_set_is_accepted(source: Source, credentials: dict[str, str]) -> None:
    assert credential_violations(source, credentials) == []
    assert auth_headers(source, credentials)["Authorization"]


def test_the_legacy_username_and_password_of_acuity_are_refused_field_by_field() -> None:
    found = fields(Source.ACUITY, {"username": "owner", "password": "secret-pw"})
    assert set(found) == {"credentials.username", "credentials.password", "credentials.user_id", "credentials.api_key"}
    assert found["credentials.username"].startswith("unknown field for acuity (it takes user_id, api_key, access_token")
    assert "{user_id, api_key} or {access_token}" in found["credentials.api_key"]
    assert not any("secret-pw" in d for d in found.values())


def test_thousands_of_unknown_fields_are_one_violation_each_and_name_the_missing_token() -> None:
    junk = {f"field{n}": "x" for n in range(5000)}
    found = fields(Source.CALENDLY, junk)
    assert len(found) == 5001
    assert found["credentials.access_token"] == "required for calendly"


@pytest.mark.parametrize(
    ("source", "credentials", "expected"),
    [
        (Source.ACUITY, {"user_id": "1001"}, {"credentials.api_key"}),
        (Source.ACUITY, {"api_key": "k"}, {"credentials.user_id"}),
        (Source.ACUITY, {}, {"credentials.user_id", "credentials.api_key"}),
        (Source.CALENDLY, {}, {"credentials.access_token"}),
        (Source.CALENDLY, {"refresh_token": "r", "client_id": "c", "client_secret": "s"}, {"credentials.access_token"}),
        (Source.CALENDLY, {"access_token": "t", "refresh_token": "r"}, {"credentials.client_id", CLIENT_SECRET}),
        (Source.CALENDLY, {"access_token": "t", "client_id": "c"}, {"credentials.refresh_token", CLIENT_SECRET}),
        (Source.GOOGLE_CALENDAR, {"access_token": "t", "refresh_token": "r"}, {"credentials.client_id"}),
        (Source.GOOGLE_CALENDAR, {"access_token": "t", "client_secret": "s"}, {"credentials.refresh_token", CLIENT_ID}),
        (Source.GOOGLE_CALENDAR, {"refresh_token": "r", "client_id": "c"}, {"credentials.access_token"}),
    ],
)  # fmt: skip
def test_missing_fields_and_missing_companions(source: Source, credentials: dict[str, str], expected: set[str]) -> None:
    assert set(fields(source, credentials)) == expected


def test_a_refresh_token_without_its_client_says_what_it_needs() -> None:
    found = fields(Source.CALENDLY, {"access_token": "t", "refresh_token": "r"})
    assert found["credentials.client_id"] == "required with refresh_token for calendly"


def test_acuitys_basic_and_oauth_credentials_are_not_given_together() -> None:
    found = fields(Source.ACUITY, {"user_id": "1001", "api_key": "k", "access_token": "t"})
    both = "give either {user_id, api_key} or {access_token} for acuity, not both"
    assert found == {"credentials.access_token": both}


def test_a_blank_value_is_not_a_credential() -> None:
    found = fields(Source.ACUITY, {"user_id": "1001", "api_key": "  "})
    assert found == {"credentials.api_key": "must not be blank"}
    assert fields(Source.GOOGLE_CALENDAR, {"access_token": ""}) == {"credentials.access_token": "must not be blank"}


def test_fields_of_another_source_are_unknown() -> None:
    assert set(fields(Source.GOOGLE_CALENDAR, {"access_token": "t", "api_key": "k"})) == {"credentials.api_key"}
    assert set(fields(Source.CALENDLY, {"access_token": "t", "user_id": "1"})) == {"credentials.user_id"}


def test_every_source_has_a_schema() -> None:
    assert set(CREDENTIAL_SCHEMAS) == set(Source)
    assert CREDENTIAL_SCHEMAS[Source.ACUITY].fields == ("user_id", "api_key", "access_token")


def test_acuity_headers_are_basic_or_bearer() -> None:
    basic = auth_headers(Source.ACUITY, {"user_id": " 1001 ", "api_key": "k"})["Authorization"]
    assert basic == "Basic " + base64.b64encode(b"1001:k").decode()
    assert auth_headers(Source.ACUITY, {"access_token": "t"}) == {"Authorization": "Bearer t"}
    assert auth_headers(Source.CALENDLY, {"access_token": " t "}) == {"Authorization": "Bearer t"}


@pytest.mark.parametrize("source", list(Source))
def test_no_usable_credential_is_reauthorization_required_without_the_values(source: Source) -> None:
    with pytest.raises(ProviderAuthError, match="reauthorization required") as caught:
        auth_headers(source, {"user_id": "secret-user", "password": "secret-pw"})
    assert "secret" not in str(caught.value)


def test_google_calendar_ids_default_to_primary_and_drop_duplicates() -> None:
    assert google_calendar_ids(None) == ["primary"]
    assert google_calendar_ids({"calendar_ids": " , "}) == ["primary"]
    assert google_calendar_ids({"calendar_ids": "a@x, b@x ,a@x"}) == ["a@x", "b@x"]
