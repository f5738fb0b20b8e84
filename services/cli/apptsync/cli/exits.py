"""The exit codes of every `apptsync` command, and which gRPC status ends a client command with which.

Scripts and CronJobs branch on these, so a code never changes meaning; new situations get new codes.
"""

from __future__ import annotations

import grpc

EXIT_OK = 0
# Only a job's own outcome (or the demo's checks): never a crash or a caller's mistake.
EXIT_JOB_FAILED = 1
EXIT_INVALID = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_OTHER = 5
# The idempotency key is held by a job another request started (ALREADY_EXISTS): nothing was started.
EXIT_REFUSED = 6
EXIT_AUTH = 7

# (code, meaning) in order: the epilog of `apptsync --help` and the README's table say the same.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_JOB_FAILED, "the job ended FAILED or CANCELED (start-import --wait, watch-job), or the demo's checks failed"),
    (
        EXIT_INVALID,
        "invalid arguments or settings (a malformed date, a missing or partial file setting, a request "
        "the gateway rejects as INVALID_ARGUMENT)",
    ),
    (EXIT_NOT_FOUND, "not found (job, connection)"),
    (
        EXIT_UNAVAILABLE,
        "unavailable: the gateway cannot be reached (also a refused TLS handshake) or timed out, or put-connection "
        "could not reach the provider to verify the credentials; retry later",
    ),
    (EXIT_OTHER, "other errors"),
    (EXIT_REFUSED, "refused: the idempotency key is held by a job another request started"),
    (
        EXIT_AUTH,
        "authentication or permission: the token is missing or unknown (UNAUTHENTICATED), or may not act "
        "for the tenant (PERMISSION_DENIED)",
    ),
)

_EXIT_FOR_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INVALID,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_REFUSED,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
}


def exit_code_for(code: grpc.StatusCode) -> int:
    """The exit code of a client command that failed with this gRPC status (EXIT_OTHER when unlisted)."""
    return _EXIT_FOR_STATUS.get(code, EXIT_OTHER)


def exit_code_table() -> str:
    """The codes as text lines `  N  meaning`, for --help."""
    return "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES)
