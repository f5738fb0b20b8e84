"""The shipped sync schedule: the `sync-all` CronJobs of deploy/k8s, read from the manifests so that the
fidelity harness runs exactly what production runs (pure parsing: no YAML library in the dev set, and
the manifests keep `args` as a one-line flow sequence, which is JSON)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "deploy" / "k8s" / "base"
_FULL_POLICY = "never"
_NAME = re.compile(r"^  name:\s*(\S+)\s*$", re.MULTILINE)
_SCHEDULE = re.compile(r"^  schedule:\s*\"?([^\"\n]+?)\"?\s*$", re.MULTILINE)
_ARGS = re.compile(r"^\s+(?:-\s+)?args:\s*(\[.*\])\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class CronSync:
    """One CronJob that runs `apptsync sync-all`: its name, cron schedule and container args."""

    name: str
    schedule: str
    args: tuple[str, ...]

    @property
    def policy(self) -> str:
        """The `--policy` argument ("" when absent)."""
        if "--policy" in self.args and self.args.index("--policy") + 1 < len(self.args):
            return self.args[self.args.index("--policy") + 1]
        return ""

    @property
    def walks_everything(self) -> bool:
        """A full sync: it pages every connection to the end (policy never)."""
        return self.policy == _FULL_POLICY


@dataclass(frozen=True, slots=True)
class SyncSchedule:
    frequent: tuple[CronSync, ...]
    full: tuple[CronSync, ...]


def parse_cron_syncs(text: str) -> list[CronSync]:
    """Every CronJob document of a manifest whose container args start with `sync-all`, in order."""
    found = []
    for document in re.split(r"^---\s*$", text, flags=re.MULTILINE):
        if not re.search(r"^kind:\s*CronJob\s*$", document, re.MULTILINE):
            continue
        name, schedule, args = _NAME.search(document), _SCHEDULE.search(document), _ARGS.search(document)
        if name is None or schedule is None or args is None:
            raise ValueError("a CronJob without metadata.name, spec.schedule or a one-line container args list")
        values = json.loads(args.group(1))
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"CronJob {name.group(1)}: args must be a list of strings")
        if values[:1] == ["sync-all"]:
            found.append(CronSync(name=name.group(1), schedule=schedule.group(1), args=tuple(values)))
    return found


def split_schedule(syncs: list[CronSync]) -> SyncSchedule:
    """Full syncs (policy never) and frequent ones (the rest). Raises ValueError unless there is at
    least one of each."""
    schedule = SyncSchedule(
        frequent=tuple(s for s in syncs if not s.walks_everything), full=tuple(s for s in syncs if s.walks_everything)
    )
    if not schedule.frequent or not schedule.full:
        raise ValueError(f"expected frequent and full sync-all CronJobs, found {[s.name for s in syncs]}")
    return schedule


def shipped_schedule(manifests: Path = MANIFESTS) -> SyncSchedule:
    """The sync-all CronJobs of every manifest under `manifests`. Raises ValueError, OSError."""
    syncs: list[CronSync] = []
    for path in sorted(manifests.glob("*.yaml")):
        syncs += parse_cron_syncs(path.read_text("utf-8"))
    return split_schedule(syncs)
