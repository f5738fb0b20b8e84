"""How large the bounded fault and kill tests run.

`make test` (and CI) runs each at the size that keeps the whole suite well inside its time budget;
`make test-long` (`pytest --long`) runs the same tests at their full size: more seeds, longer walks.
Both sizes assert the same things; only the number of rounds or records changes.
"""

from __future__ import annotations

_full_size = False


def run_full_size(enabled: bool) -> None:
    """Set once by tests/conftest.py from the `--long` option, before any test runs."""
    global _full_size
    _full_size = enabled


def scaled(*, ci: int, long: int) -> int:
    """`long` under `--long`, else `ci`."""
    return long if _full_size else ci
