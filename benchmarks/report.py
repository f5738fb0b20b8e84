"""`make bench-report`: the README's figures table, rendered from the benchmarks' result files.

    .venv/bin/python benchmarks/report.py [--results bench-results] [--readme README.md] [--check]

Reads every `bench-results/*.json` (written by the benchmarks through `benchmarks/results.py`) and
replaces the text between `<!-- bench:begin -->` and `<!-- bench:end -->` in the README with one
table: which run each figure comes from, the machine (cores, RAM, CPU model) and the PostgreSQL
settings it reported. Only formatting happens here; no figure is computed or edited. `--check` exits
1 when the README differs from what the files render (nothing is written).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN_MARKER = "<!-- bench:begin -->"
END_MARKER = "<!-- bench:end -->"
MiB = 1024 * 1024
GiB = 1024 * MiB


def _count(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else str(value)


def _seconds(value: Any) -> str:
    return f"{value:.3f} s" if value < 1 else f"{value:,.1f} s"


def _milliseconds(value: Any) -> str:
    return f"{value * 1000:,.0f} ms"


def _ratio(value: Any) -> str:
    return f"{value:.2f}x"


def _mebibytes(value: Any) -> str:
    return f"{value / MiB:,.1f} MiB"


def _megabytes(value: Any) -> str:
    return f"{value / 1e6:,.1f} MB"


def _plain(value: Any) -> str:
    return str(value)


@dataclass(frozen=True)
class Figure:
    """One row of the table: a key of a benchmark's figures, its label and how the value is written."""

    key: str
    label: str
    render: Callable[[Any], str] = _count


# The figures the README shows, per benchmark (file name without .json), in order. A key a result
# file does not carry is left out (e.g. the large job of `make bench` when it was skipped).
FIGURES: Mapping[str, tuple[str, Sequence[Figure]]] = {
    "e2e": (
        "`make bench`",
        (
            Figure("appointments", "Acuity appointments imported end to end"),
            Figure("e2e_appointments_per_second", "end to end, appointments/s"),
            Figure("e2e_vs_copy_floor_ratio", "end to end vs same-run COPY floor", _ratio),
            Figure("e2e_vs_legacy_ratio", "end to end vs legacy algorithm", _ratio),
            Figure("cpu_microseconds_per_appointment", "CPU-us per appointment, all processes"),
            Figure("copy_floor_rows_per_second", "COPY floor, rows/s"),
            Figure("resync_p50_seconds", "early-stop re-sync p50", _milliseconds),
            Figure("resync_p95_seconds", "early-stop re-sync p95", _milliseconds),
            Figure("main_peak_rss_bytes", "largest peak RSS of gateway/fetcher/writer", _mebibytes),
            Figure("large_appointments", "large job, appointments"),
            Figure("large_appointments_per_second", "large job, appointments/s"),
            Figure("large_peak_rss_bytes", "large job, largest peak RSS", _mebibytes),
        ),
    ),
    "writer": (
        "`make bench-writer`",
        (
            Figure("rows", "rows per scenario"),
            Figure("first_load_rows_per_second", "first load, rows/s"),
            Figure("identical_rerun_rows_per_second", "identical re-run, rows/s"),
            Figure("changed_10pct_rows_per_second", "10% changed, rows/s"),
            Figure("copy_floor_rows_per_second", "COPY floor, rows/s"),
            Figure("legacy_rows_per_second", "legacy algorithm, rows/s"),
            Figure("first_load_vs_copy_floor_ratio", "first load vs COPY floor", _ratio),
            Figure("first_load_vs_legacy_ratio", "first load vs legacy", _ratio),
            Figure("first_load_page_p50_seconds", "first load, page p50", _milliseconds),
            Figure("first_load_page_p99_seconds", "first load, page p99", _milliseconds),
            Figure("first_load_wal_bytes", "first load, WAL", _megabytes),
            Figure("identical_rerun_wal_bytes", "identical re-run, WAL", _megabytes),
            Figure("identical_rerun_heap_tuples_written", "identical re-run, appointment tuples written"),
        ),
    ),
    "resync": (
        "`make bench-resync`",
        (
            Figure("initial_import_records", "tenant size, appointments"),
            Figure("resync_p50_seconds", "early-stop re-sync p50", _milliseconds),
            Figure("resync_p95_seconds", "early-stop re-sync p95", _milliseconds),
        ),
    ),
    "peers": (
        "`make bench-peers`",
        (
            Figure("rounds", "interleaved rounds"),
            Figure("records_per_account", "records per simulated account"),
            Figure("calendly_first_load_speedup_vs_dlt", "Calendly first load, dlt wall / apptsync wall", _ratio),
            Figure("calendly_full_rerun_speedup_vs_dlt", "Calendly unchanged full re-run, dlt / apptsync", _ratio),
            Figure("calendly_changed_rerun_speedup_vs_dlt", "Calendly re-run after 5% changes, dlt / apptsync", _ratio),
            Figure("acuity_first_load_speedup_vs_dlt", "Acuity first load, dlt wall / apptsync wall", _ratio),
            Figure("acuity_full_rerun_speedup_vs_dlt", "Acuity unchanged full re-run, dlt / apptsync", _ratio),
            Figure("acuity_changed_rerun_speedup_vs_dlt", "Acuity re-run after 5% changes, dlt / apptsync", _ratio),
            Figure("calendly_first_load_cpu_ratio_vs_dlt", "Calendly first load, dlt CPU / apptsync CPU", _ratio),
            Figure("acuity_first_load_cpu_ratio_vs_dlt", "Acuity first load, dlt CPU / apptsync CPU", _ratio),
        ),
    ),
    "fleet": (
        "`make bench-fleet`",
        (
            Figure("tenants", "tenants in one sync-all round"),
            Figure("appointments", "appointments over all tenants"),
            Figure("fetcher_max_concurrent_jobs", "fetcher's working job slots (jobs doing work)"),
            Figure(
                "fetcher_max_open_jobs",
                "fetcher's open jobs (working or waiting for a rate window)",
                lambda value: "no lending (a waiting job keeps its slot)" if value is None else f"{value:,}",
            ),
            Figure("jobs", "jobs the round started"),
            Figure("jobs_succeeded", "jobs SUCCEEDED within the round's time bound"),
            Figure("round_seconds", "round time (to the last job's end, or the bound)", _seconds),
            Figure("tenant_done_p50_seconds", "tenant time-to-done p50", _seconds),
            Figure("tenant_done_p95_seconds", "tenant time-to-done p95", _seconds),
            Figure("jobs_per_second", "jobs/s", lambda value: f"{value:.2f}"),
            Figure("provider_requests", "provider requests"),
            *(
                Figure(
                    f"{prefix}{provider}_requests_per_1000_appointments",
                    f"{label}: {provider.capitalize()} requests per 1,000 appointments",
                    _plain,
                )
                for prefix, label in (
                    ("", "first load"),
                    ("full_", "unchanged full sync"),
                    ("frequent_", "frequent sync"),
                )
                for provider in ("acuity", "calendly", "google")
            ),
            Figure("full_round_seconds", "unchanged full sync round", _seconds),
            Figure("frequent_round_seconds", "frequent sync round", _seconds),
            Figure("frequent_tenant_done_p95_seconds", "frequent sync, tenant time-to-done p95", _seconds),
            Figure("peak_rss_bytes", "largest peak RSS of a service", _mebibytes),
            Figure("cpu_utilisation", "CPU utilisation of the machine (all processes)", _plain),
            Figure("provider_floor_share", "share of the round the provider limits need", _plain),
            Figure("bottleneck", "bottleneck", _plain),
        ),
    ),
}
ORDER = tuple(FIGURES)


def machine_text(machine: Mapping[str, Any]) -> str:
    """'2 cores, 23.5 GiB RAM, Intel(R) Xeon(R) Processor (x86_64, Linux 6.18), Python 3.11.7'."""
    return (
        f"{machine.get('cores', '?')} cores, {machine.get('memory_bytes', 0) / GiB:.1f} GiB RAM, "
        f"{machine.get('cpu_model', '?')} ({machine.get('architecture', '?')}, {machine.get('kernel', '?')}), "
        f"Python {machine.get('python', '?')}"
    )


def postgres_text(figures: Mapping[str, Any]) -> str:
    """The PostgreSQL settings a run reported (`postgres_*` figures), or that it used none."""
    settings = [f"{key.removeprefix('postgres_')}={value}" for key, value in sorted(figures.items())
                if key.startswith("postgres_") and not isinstance(value, int | float)]  # fmt: skip
    return ", ".join(settings) if settings else "-"


def kind_of(benchmark: str) -> tuple[str, str]:
    """(the FIGURES key, the run's variant): `fleet-100` is a `fleet` run named `100`."""
    kind, _, variant = benchmark.partition("-")
    return (benchmark, "") if benchmark in FIGURES else (kind, variant)


def run_name(benchmark: str) -> str:
    kind, variant = kind_of(benchmark)
    return FIGURES[kind][0] + (f" ({variant})" if variant else "")


def render_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The generated block (without the markers): the runs, their machines and PostgreSQL settings,
    then one table of the chosen figures. Results of unknown benchmarks are ignored; a result named
    `KIND-VARIANT` (e.g. `fleet-100`, written with `--result-name`) is shown as a KIND run."""
    known = sorted(
        (r for r in results if kind_of(str(r.get("benchmark", "")))[0] in FIGURES),
        key=lambda r: (ORDER.index(kind_of(r["benchmark"])[0]), kind_of(r["benchmark"])[1]),
    )
    lines = ["Generated by `make bench-report` from `bench-results/*.json`; edit the benchmarks, not this table.", ""]
    machines = {machine_text(r.get("machine", {})) for r in known}
    if len(machines) == 1:
        lines += [f"Machine: {machines.pop()}.", ""]
    lines += ["| run | recorded (UTC) | command | PostgreSQL |" + (" machine |" if machines else ""),
              "|---|---|---|---|" + ("---|" if machines else "")]  # fmt: skip
    for result in known:
        name = run_name(result["benchmark"])
        row = (f"| {name} | {result.get('recorded_at', '?').replace('T', ' ').removesuffix('Z')} | "
               f"`{result.get('command', '?')}` | {postgres_text(result.get('figures', {}))} |")  # fmt: skip
        lines.append(row + (f" {machine_text(result.get('machine', {}))} |" if machines else ""))
    lines += ["", "| run | figure | value |", "|---|---|---|"]
    for result in known:
        name, figures = run_name(result["benchmark"]), FIGURES[kind_of(result["benchmark"])[0]][1]
        values = result.get("figures", {})
        lines += [f"| {name} | {f.label} | {f.render(values[f.key])} |" for f in figures if f.key in values]
    return "\n".join(lines)


def replace_between_markers(text: str, block: str) -> str:
    """`text` with everything between the markers replaced by `block`. Raises ValueError when the
    markers are missing, repeated or out of order (nothing would be replaced safely)."""
    if text.count(BEGIN_MARKER) != 1 or text.count(END_MARKER) != 1:
        raise ValueError(f"the README must hold {BEGIN_MARKER} and {END_MARKER} once each")
    head, rest = text.split(BEGIN_MARKER)
    if END_MARKER not in rest:
        raise ValueError(f"{END_MARKER} comes before {BEGIN_MARKER}")
    _, tail = rest.split(END_MARKER)
    return f"{head}{BEGIN_MARKER}\n{block}\n{END_MARKER}{tail}"


def read_results(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("bench-results"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is not what the files render")
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    rendered = replace_between_markers(current, render_table(read_results(args.results)))
    if args.check:
        return 0 if rendered == current else 1
    args.readme.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
