"""The outbound policy: which URLs a connection may make the fetcher call (pure; no I/O, no DNS).

A connection's `base_url` and its `token_url` setting are chosen by a tenant. Unchecked, a tenant could
point them at the cloud metadata service (169.254.169.254), at the cluster's own ports or at loopback,
and the fetcher would send the connection's credentials there and report the answer back in the job's
error text (request forgery on the server's side). So a URL is allowed only when

- it is `https`, on the default port (443), to one of the documented API hosts of the connection's
  source (`PROVIDER_HOSTS`, compared exactly: no subdomains, no look-alikes), or
- its origin (scheme, host, port) is one the *deployment* allows (`APPTSYNC_OUTBOUND_ALLOWED_ORIGINS`,
  e.g. `http://127.0.0.1:8710` for the provider simulator of a dev stack or a test system). Never per
  tenant: a tenant cannot widen the policy through anything it sends.

and in either case it carries no userinfo (`user:password@`), is printable ASCII without spaces or
backslashes (no parser of ours and of httpx may disagree on its host) and has a host.

Both ends apply it: the gateway refuses such a URL in PutConnection (nothing is stored) and the
fetcher's HTTP seam (`ProviderHttp`) refuses to send a request to one (a connection stored before the
policy existed, or a redirect target: the seam follows no redirects).

DNS: host names are compared, not resolved. A name that resolves to a private, loopback or link-local
address can therefore only be reached if it is one of the providers' own hosts (whose DNS we trust as
we trust their TLS certificates) or an origin the deployment allowed on purpose; a tenant cannot bring
its own name that rebinds to an internal address.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final
from urllib.parse import SplitResult, urlsplit

from apptsync.shared.appointments import Source
from apptsync.shared.errors import InvalidArgumentError, OutboundRefusedError
from apptsync.shared.settings import OutboundSettings

ALLOWED_ORIGINS_SETTING: Final[str] = "APPTSYNC_OUTBOUND_ALLOWED_ORIGINS"

# The hosts each provider documents for the calls the fetcher makes (API and OAuth token endpoint):
# Acuity `https://acuityscheduling.com/api/v1`; Calendly `https://api.calendly.com` and
# `https://auth.calendly.com/oauth/token`; Google `https://www.googleapis.com/calendar/v3` and
# `https://oauth2.googleapis.com/token`.
PROVIDER_HOSTS: Final[Mapping[Source, frozenset[str]]] = MappingProxyType(
    {
        Source.ACUITY: frozenset({"acuityscheduling.com"}),
        Source.CALENDLY: frozenset({"api.calendly.com", "auth.calendly.com"}),
        Source.GOOGLE_CALENDAR: frozenset({"www.googleapis.com", "oauth2.googleapis.com"}),
    }
)
_DEFAULT_PORTS: Final[Mapping[str, int]] = MappingProxyType({"https": 443, "http": 80})
# Printable ASCII without space and backslash: what is left has one reading for every URL parser.
UNAMBIGUOUS_URL_CHARACTER = r"[!-\[\]-~]"
_URL_CHARACTERS = re.compile(rf"^{UNAMBIGUOUS_URL_CHARACTER}+$")
# A host name in lower case (urlsplit lowers it): letters, digits, dots and hyphens only; no
# percent-encoding, no trailing dot (`api.calendly.com.` is not `api.calendly.com` to a comparison).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_IPV6_LITERAL = re.compile(r"^[0-9a-f:.]+$")


@dataclass(frozen=True, slots=True, order=True)
class Origin:
    """Scheme, host (lower case; an IPv6 literal without brackets) and port (the default one filled in)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


class _Malformed(ValueError):
    """A URL the policy cannot read unambiguously; the message is the refusal's reason."""


def _split(url: str) -> tuple[SplitResult, Origin]:
    """The URL's parts and origin. Raises _Malformed (reason without userinfo, path or query)."""
    if not _URL_CHARACTERS.match(url):
        raise _Malformed("the URL must be printable ASCII without spaces or backslashes")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _Malformed(f"scheme {scheme or '(none)'!r} is not allowed (https only)")
    if "@" in parts.netloc:
        raise _Malformed("a URL with userinfo (user:password@) is not allowed")
    host = parts.hostname or ""
    bracketed = parts.netloc.startswith("[")
    if not host or not (_IPV6_LITERAL.match(host) if bracketed else _HOST_NAME.match(host)):
        raise _Malformed("the URL has no valid host")
    try:
        port = parts.port
    except ValueError as exc:
        raise _Malformed("the URL has an invalid port") from exc
    return parts, Origin(scheme, host, _DEFAULT_PORTS[scheme] if port is None else port)


def parse_allowed_origins(text: str) -> frozenset[Origin]:
    """The origins of a comma-separated list such as `http://127.0.0.1:8710,http://127.0.0.1:8711`
    (blank items are skipped; an empty text allows none).

    Raises InvalidArgumentError (naming the setting) for an item that is not a bare origin: a path
    other than `/`, a query, a fragment or userinfo is refused rather than silently dropped."""
    origins = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            parts, origin = _split(item)
        except _Malformed as exc:
            raise InvalidArgumentError(ALLOWED_ORIGINS_SETTING, f"{item!r}: {exc}") from exc
        if parts.path not in ("", "/") or parts.query or parts.fragment or item.endswith(("?", "#")):
            raise InvalidArgumentError(
                ALLOWED_ORIGINS_SETTING, f"{item!r} is not an origin (scheme://host:port, nothing after it)"
            )
        origins.add(origin)
    return frozenset(origins)


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """The policy with the deployment's allowed origins (none by default: provider hosts only)."""

    allowed_origins: frozenset[Origin] = field(default_factory=frozenset)

    @classmethod
    def from_settings(cls, settings: OutboundSettings) -> OutboundPolicy:
        """The deployment's policy. Raises InvalidArgumentError for a malformed allowed origin."""
        return cls(parse_allowed_origins(settings.allowed_origins))

    @classmethod
    def allowing(cls, origins: Iterable[str] | str) -> OutboundPolicy:
        """A policy that also allows `origins` (one comma-separated text, or several). Raises
        InvalidArgumentError like parse_allowed_origins."""
        text = origins if isinstance(origins, str) else ",".join(origins)
        return cls(parse_allowed_origins(text))

    def refusal(self, url: str, *, source: Source) -> str | None:
        """None when a connection of `source` may call `url`; else why not. The reason names the
        scheme, host and port at most: never the userinfo, path or query, which may hold secrets."""
        try:
            _parts, origin = _split(url)
        except _Malformed as exc:
            return str(exc)
        if origin in self.allowed_origins:
            return None
        if origin.host not in PROVIDER_HOSTS[source]:
            hosts = ", ".join(sorted(PROVIDER_HOSTS[source]))
            return f"host {origin.host!r} is not an API host of {source.value} ({hosts})"
        if origin.scheme != "https":
            return f"{origin.host} must be called over https"
        if origin.port != _DEFAULT_PORTS["https"]:
            return f"{origin.host} must be called on the default https port, not {origin.port}"
        return None

    def check(self, url: str, *, source: Source) -> Origin:
        """The origin of `url` when allowed. Raises OutboundRefusedError otherwise."""
        reason = self.refusal(url, source=source)
        if reason is not None:
            raise OutboundRefusedError(reason)
        return _split(url)[1]
