"""The fleet benchmark's pure parts: the tenants' provider mix and sizes, and how a round's figures
and its bottleneck are derived from what was measured."""

from __future__ import annotations

import pytest

from apptsync.v1 import imports_pb2
from benchmarks.bench_fleet import Round, Tenant, account_sizes, round_figures

pytestmark = pytest.mark.unit


def test_tenants_take_the_providers_in_turn_with_seeded_sizes_inside_the_bounds() -> None:
    plan = account_sizes(300, 50, 2000, seed=11)

    assert [provider for provider, _ in plan[:4]] == ["acuity", "calendly", "google", "acuity"]
    assert all(50 <= size <= 2000 for _, size in plan)
    assert plan == account_sizes(300, 50, 2000, seed=11)
    assert len({size for _, size in plan}) > 100  # spread, not one size


def measured(seconds: float, *, acuity_requests: int, calendly_requests: int, cpu_seconds: float) -> Round:
    return Round(
        name="first", seconds=seconds, done_seconds=[seconds / 2, seconds], states={"SUCCEEDED": 2}, inserted=3000,
        requests={"acuity": acuity_requests, "calendly": calendly_requests, "google": 0},
        busiest_calendly_user_requests=0, rate_limited={"acuity": 0, "calendly": 0, "google": 0},
        peak_rss_bytes={"gateway": 1, "fetcher": 3, "writer": 2}, cpu_seconds={"fetcher": cpu_seconds},
        problems=[],
    )  # fmt: skip


TENANTS = [
    Tenant("a", "acuity", 1000, imports_pb2.PutConnectionRequest()),
    Tenant("c", "calendly", 2000, imports_pb2.PutConnectionRequest()),
]


def test_a_round_the_acuity_budget_paces_is_provider_bound() -> None:
    # 1,000 Acuity requests need 110 s at 10 per 1.1 s: all of a 120 s round; the CPU was a tenth busy.
    figures = round_figures(measured(120.0, acuity_requests=1000, calendly_requests=100, cpu_seconds=24.0),
                            TENANTS, cores=2)  # fmt: skip

    assert figures["provider_floor_seconds"] == 110.0
    assert figures["cpu_utilisation"] == 0.1
    assert figures["bottleneck"] == "provider"
    assert figures["acuity_requests_per_1000_appointments"] == 1000.0
    assert figures["calendly_requests_per_1000_appointments"] == 50.0
    assert figures["jobs_per_second"] == round(2 / 120.0, 3)
    assert figures["peak_rss_bytes"] == 3


def test_a_round_with_busy_cores_and_few_paced_requests_is_cpu_bound() -> None:
    # 100 Acuity requests need 11 s of a 100 s round; 180 CPU seconds over 2 cores is 90% busy.
    # The one Calendly user's 400 requests fit in its first minute's window: no wait.
    figures = round_figures(measured(100.0, acuity_requests=100, calendly_requests=400, cpu_seconds=180.0),
                            TENANTS, cores=2)  # fmt: skip

    assert figures["provider_floor_seconds"] == 11.0
    assert figures["bottleneck"] == "cpu"


def test_calendly_requests_beyond_a_users_window_count_whole_minutes() -> None:
    figures = round_figures(measured(200.0, acuity_requests=0, calendly_requests=1200, cpu_seconds=10.0),
                            TENANTS, cores=2)  # fmt: skip

    assert figures["provider_floor_seconds"] == 120.0  # 1,200 requests: three windows, two waited for


def test_the_largest_calendly_account_bounds_the_calendly_floor() -> None:
    tenants = [*TENANTS, Tenant("small", "calendly", 500, imports_pb2.PutConnectionRequest())]
    # 1,500 requests over 2,500 invitees: the 2,000-invitee account made ~1,200 of them (three windows).
    figures = round_figures(measured(200.0, acuity_requests=0, calendly_requests=1500, cpu_seconds=10.0),
                            tenants, cores=2)  # fmt: skip

    assert figures["largest_calendly_user_requests"] == 1200
    assert figures["provider_floor_seconds"] == 120.0
