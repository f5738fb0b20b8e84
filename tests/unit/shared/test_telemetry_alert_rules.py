"""The operators' alert rules refer only to metrics apptsync exports, and every alert's runbook link
lands on a section of deploy/RUNBOOK.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from apptsync.shared.telemetry.metrics import Metrics

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]
RULES = sorted((ROOT / "deploy" / "alerts").glob("*.yaml"))
RUNBOOK = ROOT / "deploy" / "RUNBOOK.md"


def exported_series_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":  # the family name drops `_total`; series without labels yet have no sample
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
    return names


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def test_there_are_rules_for_failures_lag_rate_limits_and_dead_letters() -> None:
    assert RULES
    text = "\n".join(path.read_text() for path in RULES)
    for metric in (
        "apptsync_jobs_finished_total",
        "apptsync_writer_consumer_lag_messages",
        'apptsync_provider_requests_total{status_code="429"}',
        "apptsync_writer_dead_letters_total",
    ):
        assert metric in text


def test_rules_only_use_exported_metrics() -> None:
    exported = exported_series_names()
    for path in RULES:
        used = set(re.findall(r"\bapptsync_[a-z_]+", path.read_text()))
        assert used
        assert used <= exported, f"{path.name} uses unknown metrics {sorted(used - exported)}"


def test_every_runbook_link_lands_on_a_runbook_section() -> None:
    anchors = {github_anchor(line[3:].strip()) for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    for path in RULES:
        text = path.read_text()
        alerts = re.findall(r"^\s*- alert: (\S+)", text, flags=re.MULTILINE)
        links = re.findall(r'runbook_url: "deploy/RUNBOOK\.md#([a-z0-9-]+)"', text)
        assert len(links) == len(alerts), f"{path.name}: every alert needs a runbook_url"
        assert set(links) <= anchors, f"{path.name}: no runbook section for {sorted(set(links) - anchors)}"
