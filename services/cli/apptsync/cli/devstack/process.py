"""Supervised child processes: spawn, probe readiness, signal, stop; never outlive the supervisor.

Every child runs in its own process group (so a terminal's Ctrl-C reaches only the supervisor, which
then stops children in order) and, on Linux, with PR_SET_PDEATHSIG, so the kernel kills it when the
supervisor dies, even by SIGKILL. Output (stdout and stderr) is appended to a log file; readiness
errors quote the output of the current run.

Children are spawned with vfork, never fork: the supervisor runs gRPC (clients, and tests run servers
in process), and gRPC's fork handlers restart its poller thread in a forked child, which then aborts
when the child closes inherited descriptors before exec (grpc/grpc#43055; seen here as a child dying
with SIGABRT and "epoll_wait error: Bad file descriptor"). Python only uses vfork without preexec_fn
and without a uid/gid change, so the death signal and the user switch are done by util-linux
`setpriv` between spawn and exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from apptsync.cli.devstack.errors import DevStackError, ProcessExitError, ProcessStartError

LOG_TAIL_LINES: Final[int] = 40


class ReadinessProbe(Protocol):
    """Answers "is the child ready yet?"; `is_ready` returns False (never raises) while it is not."""

    @property
    def description(self) -> str: ...

    async def is_ready(self) -> bool: ...


@dataclass(frozen=True)
class ProcessSpec:
    """What to run. `env` is the child's whole environment; `user` (root only) drops privileges."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    log_path: Path
    cwd: Path | None = None
    user: str | None = None
    death_signal: int = signal.SIGKILL


def tail_lines(text: str, count: int = LOG_TAIL_LINES) -> str:
    """The last `count` lines of `text` (all of it when shorter)."""
    lines = text.splitlines()
    return "\n".join(lines[-count:]) if count > 0 else ""


def guarded_argv(argv: Sequence[str], *, death_signal: int, user: str | None) -> tuple[str, ...]:
    """`argv` wrapped so the child gets `death_signal` when the supervisor dies and, when `user` is
    given, runs as that user with its primary group and supplementary groups (Linux: util-linux
    `setpriv`, which sets the death signal after the credential change that would clear it).

    Elsewhere `argv` is returned as it is (no death signal; `user` is refused). Raises
    ProcessStartError when `setpriv` is missing or `user` is unknown."""
    if sys.platform != "linux":
        if user is not None:
            raise ProcessStartError(f"running a child as user {user!r} is supported on Linux only")
        return tuple(argv)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise ProcessStartError("setpriv (util-linux) is required to supervise children; install util-linux")
    guard = [setpriv, "--pdeathsig", signal.Signals(death_signal).name]
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError as exc:
            raise ProcessStartError(f"unknown user {user!r}") from exc
        guard += ["--reuid", str(entry.pw_uid), "--regid", str(entry.pw_gid), "--init-groups"]
    return (*guard, "--", *argv)


class ChildProcess:
    """One supervised child. Can be started again after it exited (same spec, same log file).

    Guarantees: the child is its own process-group leader; it dies with the supervisor (Linux);
    `stop` returns only once the child is reaped.
    """

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self._process: asyncio.subprocess.Process | None = None
        self._log_offset = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def log_path(self) -> Path:
        return self.spec.log_path

    @property
    def pid(self) -> int | None:
        """The pid of the current (or last) run; None before the first start."""
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """None while running (or never started); negative N means killed by signal N."""
        return None if self._process is None else self._process.returncode

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Spawns the child. Raises ProcessStartError when already running or the spawn fails."""
        if self.running:
            raise ProcessStartError(f"{self.name} is already running (pid {self.pid})")
        argv = guarded_argv(self.spec.argv, death_signal=self.spec.death_signal, user=self.spec.user)
        log = self._open_log_for_append()
        with log:
            self._log_offset = log.tell()
            try:
                # Spawned from the event-loop thread on purpose: PDEATHSIG follows the spawning thread.
                # No preexec_fn and no user= here: either would make Python fork instead of vfork.
                self._process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(self.spec.env),
                    cwd=self.spec.cwd,
                    process_group=0,
                    close_fds=True,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise ProcessStartError(f"cannot start {self.name} ({self.spec.argv[0]}): {exc}") from exc

    def _open_log_for_append(self) -> BinaryIO:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        return open(self.log_path, "ab")

    def output_since_start(self) -> str:
        """Everything the current run wrote to its log so far ('' when there is no log yet)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail_lines(self.output_since_start(), lines)

    async def wait_ready(
        self, probe: ReadinessProbe, *, timeout_seconds: float, poll_interval_seconds: float = 0.05
    ) -> None:
        """Polls `probe` until it says ready.

        Raises ProcessStartError (with the log tail) when the child exits first or `timeout_seconds`
        pass; the child is left running in the timeout case (the caller decides whether to stop it).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while True:
            if self._process is None:
                raise ProcessStartError(f"{self.name} was never started")
            if self._process.returncode is not None:
                raise ProcessStartError(
                    f"{self.name} exited with code {self._process.returncode} before it was ready "
                    f"({probe.description}); log {self.log_path}:\n{self.log_tail()}"
                )
            remaining_seconds = deadline - loop.time()
            if remaining_seconds <= 0:
                raise ProcessStartError(
                    f"{self.name} was not ready within {timeout_seconds:g} s ({probe.description}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(probe.is_ready(), timeout=remaining_seconds):
                    return
            await asyncio.sleep(poll_interval_seconds)

    async def wait(self, timeout_seconds: float | None = None) -> int:
        """Waits for the child to exit; returns its code. Raises TimeoutError after `timeout_seconds`."""
        if self._process is None:
            raise ProcessStartError(f"{self.name} was never started")
        return await asyncio.wait_for(self._process.wait(), timeout=timeout_seconds)

    async def run_to_completion(self, *, timeout_seconds: float) -> None:
        """Starts the child and waits for it to exit 0.

        Raises ProcessExitError (with the log tail) on a non-zero exit, or after killing it when it
        runs longer than `timeout_seconds`.
        """
        await self.start()
        try:
            code = await self.wait(timeout_seconds)
        except TimeoutError:
            await self.stop(timeout_seconds=0)
            raise ProcessExitError(
                f"{self.name} did not finish within {timeout_seconds:g} s; log {self.log_path}:\n{self.log_tail()}"
            ) from None
        if code != 0:
            raise ProcessExitError(f"{self.name} exited with code {code}; log {self.log_path}:\n{self.log_tail()}")

    def send_signal(self, signum: int) -> None:
        """Signals the child itself (not its group); a no-op once it has exited."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signum)

    def _signal_group(self, signum: int) -> None:
        # Only while the leader is unreaped: its pid (= the group id) cannot have been reused then.
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signum)

    def kill(self) -> None:
        """SIGKILLs the child's whole process group (a crash, for fault tests). Does not wait."""
        self._signal_group(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOPs the process group (a hung process, for fault tests)."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONTs the process group."""
        self._signal_group(signal.SIGCONT)

    async def stop(self, timeout_seconds: float = 10.0, *, graceful_signal: int = signal.SIGTERM) -> int | None:
        """Sends `graceful_signal`, waits up to `timeout_seconds`, then SIGKILLs the group.

        Returns the exit code (None when never started). Idempotent; never raises for a child that
        already exited.
        """
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            self.resume()  # a stopped process cannot act on the graceful signal
            self.send_signal(graceful_signal)
            try:
                await asyncio.wait_for(process.wait(), timeout=max(timeout_seconds, 0))
            except TimeoutError:
                self.kill()
                await process.wait()
        return process.returncode


def child_environment(overrides: Mapping[str, str], inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: `inherited` (default: this process's own, as a fork would pass it
    on) with `overrides` on top."""
    base = os.environ if inherited is None else inherited
    return {**base, **overrides}


class ServiceProcess(ChildProcess):
    """A long-running apptsync service (or a stand-in) with its readiness probe.

    `start()` spawns it and waits until the probe says ready (bounded by `ready_timeout_seconds`);
    on failure it stops the child and raises ProcessStartError with the log tail.
    """

    def __init__(
        self, spec: ProcessSpec, readiness: ReadinessProbe | None, *, ready_timeout_seconds: float = 60.0
    ) -> None:
        super().__init__(spec)
        self.readiness = readiness
        self.ready_timeout_seconds = ready_timeout_seconds

    @classmethod
    def apptsync(
        cls,
        name: str,
        *,
        env: Mapping[str, str],
        log_dir: Path,
        readiness: ReadinessProbe | None,
        ready_timeout_seconds: float = 60.0,
        argv: Sequence[str] | None = None,
        python_executable: str = sys.executable,
    ) -> ServiceProcess:
        """Runs `python -m apptsync.cli NAME` (or `argv`, e.g. a stand-in), logging to `log_dir/NAME.log`."""
        command = tuple(argv) if argv is not None else (python_executable, "-m", "apptsync.cli", name)
        spec = ProcessSpec(name=name, argv=command, env=dict(env), log_path=log_dir / f"{name}.log")
        return cls(spec, readiness, ready_timeout_seconds=ready_timeout_seconds)

    async def start(self) -> None:
        await super().start()
        if self.readiness is None:
            return
        try:
            await self.wait_ready(self.readiness, timeout_seconds=self.ready_timeout_seconds)
        except BaseException:
            await self.stop(timeout_seconds=5.0)
            raise


async def wait_for_first_exit(processes: Sequence[ChildProcess]) -> ChildProcess:
    """Waits until one of the (running) `processes` exits; returns it.

    Raises DevStackError when given none (it would wait forever).
    """
    if not processes:
        raise DevStackError("no process to wait for")
    waits = {asyncio.ensure_future(process.wait()): process for process in processes}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    return waits[next(iter(done))]
