"""Shared pytest fixtures.

Container fixtures start a container only when a test asks for one, so unit tests
never need Docker. The engine and images are prepared by ``make test`` (that is,
``tests/containers/engine.sh`` and ``tests/containers/images.sh``); a missing engine
or image is an error, never a skip.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest

# Make `tests.containers` importable however pytest was launched (pytest, python -m pytest, IDEs).
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from tests.containers.fixtures import (  # noqa: E402
    BROKER_IMAGE,
    POSTGRES_IMAGE,
    BrokerContainer,
    PostgresServerContainer,
    require_engine,
    sweep_leftover_containers,
)
from tests.scale import run_full_size  # noqa: E402

_engine_checked: set[str] = set()
_swept = False
_startup_report: list[str] = []
_db_counter = itertools.count(1)


def _prepare_engine(image: str) -> None:
    """Once per session and image: check engine + image, and sweep containers of dead sessions."""
    global _swept
    if image in _engine_checked:
        return
    require_engine(image)
    if not _swept:
        removed = sweep_leftover_containers()
        _swept = True
        if removed:
            _startup_report.append(f"swept {len(removed)} leftover container(s): {', '.join(removed)}")
    _engine_checked.add(image)


def _start_postgres() -> PostgresServerContainer:
    _prepare_engine(POSTGRES_IMAGE)
    server = PostgresServerContainer().start()
    _startup_report.append(
        f"postgres {server.image} on :{server.port} ready in {server.startup_seconds:.2f}s"
    )
    return server


def _start_broker() -> BrokerContainer:
    _prepare_engine(BROKER_IMAGE)
    server = BrokerContainer().start()
    _startup_report.append(f"broker {server.image} on :{server.port} ready in {server.startup_seconds:.2f}s")
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServerContainer]:
    """One PostgreSQL server for the session. Tests that stop or pause it must restore it
    (or use ``postgres_server_factory`` for a private one)."""
    server = _start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerContainer]:
    """One Kafka-compatible broker (Tansu, in memory) for the session; use unique topic names."""
    server = _start_broker()
    try:
        yield server
    finally:
        server.stop()


def _db_name(request: pytest.FixtureRequest) -> str:
    slug = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower()).strip("_")
    return f"t{next(_db_counter):04d}_{slug}"[:63].rstrip("_")


@pytest.fixture
def database_url(postgres_server: PostgresServerContainer, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh, empty database on the session's server (dropped after the test
    unless APPTSYNC_TEST_KEEP_DATABASES=1)."""
    postgres_server.ensure_running()
    name = _db_name(request)
    dsn = postgres_server.create_database(name)
    yield dsn
    if os.environ.get("APPTSYNC_TEST_KEEP_DATABASES") != "1":
        with suppress(Exception):
            postgres_server.ensure_running()
            postgres_server.drop_database(name)


@pytest.fixture
def service_database_url(database_url: str, postgres_server: PostgresServerContainer) -> str:
    """DSN of the same database as ``database_url`` for the services' login role: a member of
    apptsync_service that owns no table, so row-level security applies. ``database_url`` (the
    owner, a superuser) runs the migrations and checks the truth."""
    return postgres_server.service_dsn(database_url.rsplit("/", 1)[1])


@pytest.fixture
def postgres_server_factory() -> Iterator[Callable[[], PostgresServerContainer]]:
    """Start private PostgreSQL servers (removed after the test): for fault tests."""
    with ExitStack() as stack:

        def make() -> PostgresServerContainer:
            server = _start_postgres()
            stack.callback(server.stop)
            return server

        yield make


@pytest.fixture
def broker_factory() -> Iterator[Callable[[], BrokerContainer]]:
    """Start private brokers (removed after the test): for fault tests (restart loses topics)."""
    with ExitStack() as stack:

        def make() -> BrokerContainer:
            server = _start_broker()
            stack.callback(server.stop)
            return server

        yield make


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the bounded fault and kill tests at their full size (tests/scale.py; `make test-long`)",
    )


def pytest_configure(config: pytest.Config) -> None:
    run_full_size(bool(config.getoption("--long")))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _startup_report:
        terminalreporter.write_sep("-", "test containers")
        for line in _startup_report:
            terminalreporter.write_line(line)
