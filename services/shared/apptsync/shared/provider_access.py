"""How apptsync reaches and authenticates to each provider (pure; no I/O).

One home for what the gateway and the fetcher must agree on: each source's public API, the
credential fields a connection of that source holds (`CREDENTIAL_SCHEMAS`), the check of a credential
map against its schema (`credential_violations`, run by PutConnection before anything is stored), the
`Authorization` header built from it (`auth_headers`, sent by the fetcher's sessions and by the
gateway's verification probe) and the Google calendars a connection reads (`google_calendar_ids`).

The schemas follow the providers' documentation:

- Acuity: HTTP Basic with the numeric `user_id` and the `api_key` (Business Settings > Integrations >
  API), or an OAuth 2 `access_token` sent as a bearer token. One of the two, never both: the fetcher
  would silently prefer the token.
- Calendly: a personal access token or an OAuth `access_token` (bearer). Refreshing an OAuth token
  needs the `refresh_token` and the OAuth client's `client_id` and `client_secret` (Calendly's token
  endpoint authenticates the client), so the three come together or not at all.
- Google Calendar: an OAuth `access_token` (bearer); refreshing it needs the `refresh_token` and the
  OAuth `client_id`, plus the `client_secret` for clients that have one (web and desktop clients do,
  Android and iOS clients do not).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from apptsync.shared.appointments import Source
from apptsync.shared.errors import ProviderAuthError

ACCESS_TOKEN: Final[str] = "access_token"  # noqa: S105 (a field name, not a secret)
REFRESH_TOKEN: Final[str] = "refresh_token"  # noqa: S105 (a field name, not a secret)
CLIENT_ID: Final[str] = "client_id"
CLIENT_SECRET: Final[str] = "client_secret"  # noqa: S105 (a field name, not a secret)
USER_ID: Final[str] = "user_id"
API_KEY: Final[str] = "api_key"

# Where a connection without a base_url goes (the hosts are the outbound policy's PROVIDER_HOSTS).
PUBLIC_API_URLS: Final[Mapping[Source, str]] = MappingProxyType(
    {
        Source.ACUITY: "https://acuityscheduling.com/api/v1",
        Source.CALENDLY: "https://api.calendly.com",
        Source.GOOGLE_CALENDAR: "https://www.googleapis.com/calendar/v3",
    }
)


@dataclass(frozen=True, slots=True)
class CredentialSet:
    """One way to authenticate: the `required` fields, the `optional` ones, and for an optional field
    the fields that must come with it (`companions`)."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    companions: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional


@dataclass(frozen=True, slots=True)
class CredentialSchema:
    """A source's credential sets: a connection uses exactly one of them."""

    source: Source
    sets: tuple[CredentialSet, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field name the source knows, in the order of the sets."""
        return tuple(dict.fromkeys(name for s in self.sets for name in s.fields))


_REFRESH_WITH_CLIENT = MappingProxyType(
    {
        REFRESH_TOKEN: (CLIENT_ID, CLIENT_SECRET),
        CLIENT_ID: (REFRESH_TOKEN, CLIENT_SECRET),
        CLIENT_SECRET: (REFRESH_TOKEN, CLIENT_ID),
    }
)
_REFRESH_WITH_CLIENT_ID = MappingProxyType(
    {REFRESH_TOKEN: (CLIENT_ID,), CLIENT_ID: (REFRESH_TOKEN,), CLIENT_SECRET: (REFRESH_TOKEN, CLIENT_ID)}
)
_OPTIONAL_REFRESH = (REFRESH_TOKEN, CLIENT_ID, CLIENT_SECRET)

CREDENTIAL_SCHEMAS: Final[Mapping[Source, CredentialSchema]] = MappingProxyType(
    {
        Source.ACUITY: CredentialSchema(
            Source.ACUITY,
            (CredentialSet("basic", (USER_ID, API_KEY)), CredentialSet("oauth", (ACCESS_TOKEN,))),
        ),
        Source.CALENDLY: CredentialSchema(
            Source.CALENDLY,
            (CredentialSet("token", (ACCESS_TOKEN,), _OPTIONAL_REFRESH, _REFRESH_WITH_CLIENT),),
        ),
        Source.GOOGLE_CALENDAR: CredentialSchema(
            Source.GOOGLE_CALENDAR,
            (CredentialSet("oauth", (ACCESS_TOKEN,), _OPTIONAL_REFRESH, _REFRESH_WITH_CLIENT_ID),),
        ),
    }
)


@dataclass(frozen=True, slots=True)
class CredentialViolation:
    """`field` is `credentials.<name>`; `description` never repeats a credential's value."""

    field: str
    description: str


def _alternatives(schema: CredentialSchema) -> str:
    return " or ".join("{" + ", ".join(s.required) + "}" for s in schema.sets)


def _chosen_set(schema: CredentialSchema, given: set[str]) -> tuple[CredentialSet, list[CredentialSet]]:
    """The set the caller uses (the first one any given field belongs to, else the first set) and
    the other sets it also gave fields of."""
    touched = [s for s in schema.sets if given & set(s.fields)]
    if not touched:
        return schema.sets[0], []
    return touched[0], touched[1:]


def credential_violations(source: Source, credentials: Mapping[str, str]) -> list[CredentialViolation]:
    """Every way `credentials` breaks `source`'s schema, one violation per field: an unknown field, a
    known one whose value is blank, a field of a second credential set (Acuity's Basic and OAuth
    together), a required field that is missing, an optional one without its companions. Empty when
    the credentials are complete; the values themselves are never judged (the provider does that)."""
    schema = CREDENTIAL_SCHEMAS[source]
    known = set(schema.fields)
    violations: list[CredentialViolation] = []
    for name in sorted(set(credentials) - known):
        violations.append(
            CredentialViolation(
                f"credentials.{name}",
                f"unknown field for {source.value} (it takes {', '.join(schema.fields)})",
            )
        )
    given = {name for name, value in credentials.items() if name in known and value.strip()}
    for name in sorted(set(credentials) & known - given):
        violations.append(CredentialViolation(f"credentials.{name}", "must not be blank"))
    chosen, others = _chosen_set(schema, given)
    for other in others:
        for name in sorted(given & set(other.fields) - set(chosen.fields)):
            violations.append(
                CredentialViolation(
                    f"credentials.{name}",
                    f"give either {_alternatives(schema)} for {source.value}, not both",
                )
            )
    blank = set(credentials) & known - given
    for name in chosen.required:
        if name not in given and name not in blank:
            also = f" (or {_alternatives(schema)})" if len(schema.sets) > 1 else ""
            violations.append(CredentialViolation(f"credentials.{name}", f"required for {source.value}{also}"))
    for name in chosen.optional:
        if name not in given:
            continue
        for companion in chosen.companions.get(name, ()):
            if companion not in given and companion not in blank and companion not in chosen.required:
                violations.append(
                    CredentialViolation(f"credentials.{companion}", f"required with {name} for {source.value}")
                )
    # A companion missing for several given fields is one violation (one per field, as promised).
    return list({v.field: v for v in violations}.values())


def auth_headers(source: Source, credentials: Mapping[str, str]) -> dict[str, str]:
    """The `Authorization` header of `credentials`: Acuity's bearer `access_token` or Basic
    `user_id:api_key`; Calendly's and Google's bearer `access_token`.

    Raises ProviderAuthError ("reauthorization required ...") when the connection has none (a
    connection stored before the schema was enforced); the message never contains a credential."""
    token = credentials.get(ACCESS_TOKEN, "").strip()
    if token:
        return {"Authorization": f"Bearer {token}"}
    if source is Source.ACUITY:
        user_id, api_key = credentials.get(USER_ID, "").strip(), credentials.get(API_KEY, "").strip()
        if user_id and api_key:
            basic = base64.b64encode(f"{user_id}:{api_key}".encode()).decode("ascii")
            return {"Authorization": f"Basic {basic}"}
        raise ProviderAuthError(
            "reauthorization required: the acuity connection has no user_id/api_key or access_token"
        )
    raise ProviderAuthError(f"reauthorization required: the {source.value} connection has no access_token")


def google_calendar_ids(settings: Mapping[str, str] | None) -> list[str]:
    """Connection setting `calendar_ids` (comma-separated, duplicates dropped); `primary` when absent."""
    text = (settings or {}).get("calendar_ids", "")
    ids = [part.strip() for part in text.split(",") if part.strip()]
    return list(dict.fromkeys(ids)) or ["primary"]


def credential_summary(source: Source) -> str:
    """The fields of `source` in one line, for help texts: `{user_id, api_key} or {access_token}`,
    optional fields after a `+`."""
    sets = []
    for credential_set in CREDENTIAL_SCHEMAS[source].sets:
        text = "{" + ", ".join(credential_set.required) + "}"
        if credential_set.optional:
            text += " + optionally {" + ", ".join(credential_set.optional) + "}"
        sets.append(text)
    return " or ".join(sets)
