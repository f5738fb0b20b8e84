"""Stale `postmaster.pid` handling: a PostgreSQL killed hard leaves its lock file behind.

PostgreSQL itself ignores a lock file whose pid is dead, but refuses to start when that pid was reused
by any other process (common after a reboot or in containers). We remove the file when its pid is not
a running postgres; a live postgres on the data directory is an error (two servers must never share
one data directory).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path

from apptsync.cli.devstack.errors import DataDirectoryInUseError

POSTMASTER_PID_FILE = "postmaster.pid"


class PostmasterState(Enum):
    ABSENT = "absent"  # no lock file: a clean start
    STALE = "stale"  # lock file of a server that is gone: safe to remove
    LIVE = "live"  # a postgres with that pid is running


def parse_postmaster_pid(text: str) -> int | None:
    """The pid on the first line of a postmaster.pid, or None when it is unreadable or not positive."""
    first_line = text.split("\n", 1)[0].strip()
    try:
        pid = int(first_line)
    except ValueError:
        return None
    return pid if pid > 0 else None


def classify_postmaster(pid_file_text: str | None, process_name: Callable[[int], str | None]) -> PostmasterState:
    """Pure decision: ABSENT without a file, LIVE when `process_name(pid)` is "postgres", else STALE.

    `process_name(pid)` returns the running process's short name, or None when no such process exists.
    """
    if pid_file_text is None:
        return PostmasterState.ABSENT
    pid = parse_postmaster_pid(pid_file_text)
    if pid is None:
        return PostmasterState.STALE
    name = process_name(pid)
    return PostmasterState.LIVE if name == "postgres" else PostmasterState.STALE


def linux_process_name(pid: int) -> str | None:
    """The `comm` of process `pid` from /proc, or None when it does not exist."""
    try:
        return Path(f"/proc/{pid}/comm").read_text("utf-8", errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def clear_stale_postmaster_pid(data_dir: Path, process_name: Callable[[int], str | None] = linux_process_name) -> bool:
    """Removes `data_dir/postmaster.pid` when stale; returns whether it removed one.

    Raises DataDirectoryInUseError when the file names a running postgres.
    """
    pid_file = data_dir / POSTMASTER_PID_FILE
    try:
        text: str | None = pid_file.read_text("utf-8", errors="replace")
    except FileNotFoundError:
        text = None
    state = classify_postmaster(text, process_name)
    if state is PostmasterState.LIVE:
        pid = parse_postmaster_pid(text or "")
        raise DataDirectoryInUseError(
            f"PostgreSQL (pid {pid}) is already running on {data_dir}; stop it (or the other `apptsync dev up`) first"
        )
    if state is PostmasterState.STALE:
        pid_file.unlink(missing_ok=True)
        return True
    return False
