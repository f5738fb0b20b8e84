"""The README figures table is pure formatting of the benchmarks' result files: these pin what it
shows (the run, machine, PostgreSQL settings, chosen figures) and how it replaces the marked block."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from benchmarks.report import BEGIN_MARKER, END_MARKER, render_table, replace_between_markers
from benchmarks.results import result_document

pytestmark = pytest.mark.unit

MACHINE = {"cores": 2, "memory_bytes": 24 * 1024**3, "cpu_model": "Intel(R) Xeon(R) Processor",
           "architecture": "x86_64", "kernel": "Linux 6.18", "python": "3.11.7"}  # fmt: skip


def e2e_result(**figures: object) -> dict[str, object]:
    base = {"postgres_fsync": "on", "postgres_synchronous_commit": "on", "postgres_full_page_writes": "on",
            "appointments": 100_000, "e2e_appointments_per_second": 9919.4, "e2e_vs_copy_floor_ratio": 0.1712,
            "cpu_microseconds_per_appointment": 136.2, "resync_p50_seconds": 0.104}  # fmt: skip
    return result_document("e2e", base | figures, recorded_at=datetime(2026, 12, 7, 3, 0, tzinfo=UTC),
                           machine=MACHINE, command="benchmarks/bench_e2e.py --appointments 100000")  # fmt: skip


def test_the_table_names_the_machine_the_postgres_settings_and_the_figures_of_each_run() -> None:
    block = render_table([e2e_result()])

    assert "Machine: 2 cores, 24.0 GiB RAM, Intel(R) Xeon(R) Processor (x86_64, Linux 6.18), Python 3.11.7." in block
    assert ("| `make bench` | 2026-12-07 03:00:00 | `benchmarks/bench_e2e.py --appointments 100000` | "
            "fsync=on, full_page_writes=on, synchronous_commit=on |") in block  # fmt: skip
    assert "| `make bench` | end to end, appointments/s | 9,919 |" in block
    assert "| `make bench` | end to end vs same-run COPY floor | 0.17x |" in block
    assert "| `make bench` | CPU-us per appointment, all processes | 136 |" in block
    assert "| `make bench` | early-stop re-sync p50 | 104 ms |" in block


def test_figures_a_run_did_not_measure_are_left_out_and_unknown_benchmarks_ignored() -> None:
    unknown = {"benchmark": "someone-elses", "figures": {"x": 1}, "machine": MACHINE}
    block = render_table([unknown, e2e_result()])

    assert "large job" not in block
    assert "someone-elses" not in block


def test_runs_on_different_machines_name_each_machine_in_its_row() -> None:
    other = result_document("writer", {"first_load_rows_per_second": 13891.0},
                            recorded_at=datetime(2026, 12, 7, tzinfo=UTC), machine=MACHINE | {"cores": 8},
                            command="benchmarks/bench_writer.py")  # fmt: skip
    block = render_table([other, e2e_result()])

    assert "Machine:" not in block
    assert block.index("`make bench` |") < block.index("`make bench-writer` |")  # README order, not file order
    assert "| 8 cores, 24.0 GiB RAM" in block
    assert "| `make bench-writer` | first load, rows/s | 13,891 |" in block


def test_a_named_variant_is_shown_as_a_run_of_its_benchmark() -> None:
    growth = result_document("fleet-100", {"tenants": 100, "round_seconds": 412.5, "bottleneck": "provider"},
                             recorded_at=datetime(2026, 12, 7, tzinfo=UTC), machine=MACHINE,
                             command="benchmarks/bench_fleet.py --tenants 100")  # fmt: skip
    block = render_table([growth])

    assert "| `make bench-fleet` (100) | tenants in one sync-all round | 100 |" in block
    assert "| `make bench-fleet` (100) | round time (to the last job's end, or the bound) | 412.5 s |" in block
    assert "| `make bench-fleet` (100) | bottleneck | provider |" in block


def test_only_the_marked_block_is_replaced() -> None:
    readme = f"# Title\n\nbefore\n{BEGIN_MARKER}\nold table\n{END_MARKER}\nafter\n"

    assert replace_between_markers(readme, "new") == f"# Title\n\nbefore\n{BEGIN_MARKER}\nnew\n{END_MARKER}\nafter\n"


@pytest.mark.parametrize(
    "readme",
    [
        "no markers",
        f"{BEGIN_MARKER} only",
        f"{END_MARKER}\n{BEGIN_MARKER}",
        f"{BEGIN_MARKER}{BEGIN_MARKER}{END_MARKER}",
    ],
)
def test_missing_repeated_or_reversed_markers_are_refused(readme: str) -> None:
    with pytest.raises(ValueError, match="bench"):
        replace_between_markers(readme, "new")
