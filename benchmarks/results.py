"""Benchmark result files: each benchmark writes its figures to `bench-results/NAME.json`, and
`benchmarks/report.py` renders the README's figures table from those files (one source for both).

A result file is one JSON object:

    {"benchmark": "e2e", "recorded_at": "2026-12-07T03:00:00Z", "command": "...",
     "machine": {"cores": 2, "memory_bytes": ..., "cpu_model": "...", ...},
     "figures": {...the benchmark's last JSON line...}}

The figures are the benchmark's own JSON line unchanged; the PostgreSQL settings a benchmark ran with
are among them as `postgres_*` keys (as the server reported them with SHOW).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIRECTORY = Path("bench-results")


def machine_description() -> dict[str, Any]:
    """Cores this process may use, total RAM, CPU model, kernel and Python: the machine a figure is from."""
    cpu_model = platform.processor() or platform.machine()
    memory_bytes = 0
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            cpu_model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu_model
            )
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            memory_bytes = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        pass  # not Linux: the model from platform, memory unknown (0)
    return {
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": memory_bytes,
        "cpu_model": cpu_model,
        "architecture": platform.machine(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def result_document(benchmark: str, figures: dict[str, Any], *, recorded_at: datetime,
                    machine: dict[str, Any], command: str) -> dict[str, Any]:  # fmt: skip
    """The result file's content (pure: the clock and the machine are arguments)."""
    return {
        "benchmark": benchmark,
        "recorded_at": recorded_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "machine": machine,
        "figures": figures,
    }


def write_result(benchmark: str, figures: dict[str, Any], directory: Path = RESULTS_DIRECTORY) -> Path:
    """Write `directory/BENCHMARK.json` (replacing the previous run's) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{benchmark}.json"
    document = result_document(
        benchmark, figures, recorded_at=datetime.now(UTC), machine=machine_description(),
        command=" ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    )  # fmt: skip
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return path
