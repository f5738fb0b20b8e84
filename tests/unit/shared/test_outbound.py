"""The outbound policy: provider hosts over https, origins the deployment allows, nothing else."""

from __future__ import annotations

import pytest

from apptsync.shared.appointments import Source
from apptsync.shared.errors import InvalidArgumentError, OutboundRefusedError
from apptsync.shared.outbound import (
    ALLOWED_ORIGINS_SETTING,
    PROVIDER_HOSTS,
    Origin,
    OutboundPolicy,
    parse_allowed_origins,
)
from apptsync.shared.settings import OutboundSettings

pytestmark = pytest.mark.unit

SIMULATOR = "http://127.0.0.1:8710"
PROVIDERS_ONLY = OutboundPolicy()
WITH_SIMULATOR = OutboundPolicy.allowing(SIMULATOR)

# (hostile URL, words its refusal must contain). Each is refused for every source, with or without
# the simulator allowed: none of them is the simulator's origin.
HOSTILE = [
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "169.254.169.254"),
    ("https://169.254.169.254", "169.254.169.254"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal"),
    ("http://127.0.0.1:5432", "127.0.0.1"),
    ("http://localhost:9092", "localhost"),
    ("http://[::1]/", "'::1'"),
    ("https://[::ffff:169.254.169.254]/", "::ffff:169.254.169.254"),
    ("http://10.0.0.7:8081/", "10.0.0.7"),
    ("http://apptsync-gateway:50051/", "apptsync-gateway"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme 'gopher'"),
    ("ftp://acuityscheduling.com/", "scheme 'ftp'"),
    ("//acuityscheduling.com/api/v1", "scheme '(none)'"),
    ("acuityscheduling.com/api/v1", "scheme '(none)'"),
    ("https://api.calendly.com@evil.example/", "userinfo"),
    ("https://user:pw@api.calendly.com/", "userinfo"),
    ("https://api.calendly.com.evil.example/", "api.calendly.com.evil.example"),
    ("https://evil.example/api.calendly.com", "evil.example"),
    ("https://xapi.calendly.com/", "xapi.calendly.com"),
    ("https://calendly.com/", "'calendly.com'"),
    ("https://api.calendly.com./", "no valid host"),
    ("https://api.calendly.com\\@evil.example/", "printable ASCII"),
    ("https://api.calendly.com /x", "printable ASCII"),
    ("https://api.calendly.com\t.evil.example/", "printable ASCII"),
    ("https://api.calendly.com%2eevil.example/", "no valid host"),
    ("https://api.calendly.com:99999/", "invalid port"),
    ("https://", "no valid host"),
    ("", "printable ASCII"),
]


@pytest.mark.parametrize(("url", "why"), HOSTILE)
@pytest.mark.parametrize("source", list(Source))
@pytest.mark.parametrize("policy", [PROVIDERS_ONLY, WITH_SIMULATOR], ids=["providers-only", "with-simulator"])
def test_every_hostile_class_is_refused(url: str, why: str, source: Source, policy: OutboundPolicy) -> None:
    reason = policy.refusal(url, source=source)
    assert reason is not None
    assert why in reason
    with pytest.raises(OutboundRefusedError) as refused:
        policy.check(url, source=source)
    assert str(refused.value) == f"outbound request refused: {reason}"
    assert refused.value.retriable is False


def test_a_refusal_never_repeats_userinfo_path_or_query() -> None:
    for url in (
        "https://admin:hunter2@api.calendly.com/scheduled_events?token=abc",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/role?token=abc",
    ):
        reason = PROVIDERS_ONLY.refusal(url, source=Source.CALENDLY)
        assert reason is not None
        for secret in ("hunter2", "admin", "security-credentials", "token=abc"):
            assert secret not in reason


@pytest.mark.parametrize(
    ("source", "url"),
    [
        (Source.ACUITY, "https://acuityscheduling.com/api/v1/appointments"),
        (Source.ACUITY, "https://ACUITYSCHEDULING.COM:443/api/v1"),
        (Source.CALENDLY, "https://api.calendly.com/scheduled_events?count=100"),
        (Source.CALENDLY, "https://auth.calendly.com/oauth/token"),
        (Source.GOOGLE_CALENDAR, "https://www.googleapis.com/calendar/v3/calendars/primary/events"),
        (Source.GOOGLE_CALENDAR, "https://oauth2.googleapis.com/token"),
    ],
)
def test_the_documented_provider_hosts_are_allowed_over_https_on_the_default_port(source: Source, url: str) -> None:
    assert PROVIDERS_ONLY.refusal(url, source=source) is None
    assert PROVIDERS_ONLY.check(url, source=source).port == 443


def test_a_provider_host_is_refused_over_http_on_another_port_and_for_another_source() -> None:
    assert "https" in (PROVIDERS_ONLY.refusal("http://api.calendly.com/", source=Source.CALENDLY) or "")
    assert "8443" in (PROVIDERS_ONLY.refusal("https://api.calendly.com:8443/", source=Source.CALENDLY) or "")
    assert "not an API host of acuity" in (
        PROVIDERS_ONLY.refusal("https://api.calendly.com/", source=Source.ACUITY) or ""
    )
    for source, hosts in PROVIDER_HOSTS.items():
        for other, other_hosts in PROVIDER_HOSTS.items():
            for host in other_hosts - hosts:
                assert PROVIDERS_ONLY.refusal(f"https://{host}/", source=source) is not None, (source, other)


def test_the_deployments_origin_is_allowed_exactly_and_for_every_source() -> None:
    for source in Source:
        assert WITH_SIMULATOR.refusal(f"{SIMULATOR}/acuity/api/v1", source=source) is None
        assert PROVIDERS_ONLY.refusal(f"{SIMULATOR}/acuity/api/v1", source=source) is not None
        for near_miss in ("http://127.0.0.1:8711/", "https://127.0.0.1:8710/", "http://localhost:8710/",
                          "http://127.0.0.2:8710/", "http://127.0.0.1/"):
            assert WITH_SIMULATOR.refusal(near_miss, source=source) is not None, near_miss


def test_allowed_origins_are_parsed_with_default_ports_and_blank_items_skipped() -> None:
    assert parse_allowed_origins("") == frozenset()
    assert parse_allowed_origins(" http://127.0.0.1:8710 , ,HTTPS://Sim.Local/,http://[::1]:9") == {
        Origin("http", "127.0.0.1", 8710),
        Origin("https", "sim.local", 443),
        Origin("http", "::1", 9),
    }
    assert str(Origin("http", "::1", 9)) == "http://[::1]:9"
    assert OutboundPolicy.allowing(["http://127.0.0.1:80"]).refusal("http://127.0.0.1/x", source=Source.ACUITY) is None


@pytest.mark.parametrize(
    "bad",
    [
        "http://127.0.0.1:8710/acuity",
        "http://127.0.0.1:8710?x=1",
        "http://127.0.0.1:8710#f",
        "http://127.0.0.1:8710?",
        "http://user@127.0.0.1:8710",
        "127.0.0.1:8710",
        "file:///tmp",
        "http://127.0.0.1:notaport",
    ],
)
def test_an_allowed_origin_that_is_not_a_bare_origin_fails_the_setting(bad: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_allowed_origins(f"http://127.0.0.1:1,{bad}")
    assert caught.value.field == ALLOWED_ORIGINS_SETTING


def test_the_policy_comes_from_the_deployment_setting_only() -> None:
    assert OutboundPolicy.from_settings(OutboundSettings.from_environment({})) == PROVIDERS_ONLY
    environ = {ALLOWED_ORIGINS_SETTING: SIMULATOR}
    assert OutboundPolicy.from_settings(OutboundSettings.from_environment(environ)) == WITH_SIMULATOR
