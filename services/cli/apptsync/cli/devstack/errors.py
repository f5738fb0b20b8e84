"""Errors of the embedded dev stack, in apptsync's one error tree.

Starting a local stack either works or needs a human (a port taken, a binary missing, a service that
crashes on start), so every error here is permanent: retrying the same start would fail the same way.
"""

from __future__ import annotations

from apptsync.shared.errors import PermanentError


class DevStackError(PermanentError):
    """Base of every dev-stack failure; the message says what to look at (usually a log tail)."""


class ProcessStartError(DevStackError):
    """A child process could not be spawned, exited before it was ready, or missed its readiness deadline."""


class ProcessExitError(DevStackError):
    """A run-to-completion child (e.g. `migrate`) exited non-zero; the message carries its log tail."""


class DataDirectoryInUseError(DevStackError):
    """A live PostgreSQL already serves the data directory (its postmaster.pid names a running postgres)."""
