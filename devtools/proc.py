"""Processes of the development tools: start, identify, wait for and stop them.

The one copy of the helpers that the cluster harness, the operator process of the tests and
benchmarks, the real node and the tests' polling share: `die_with_parent` (no leaked child when
the caller is killed), `stop_process` (TERM, then KILL), `tail` (a log's last lines for error
messages), `wait_for` (poll until a check holds, failing early when a watched server dies) and
`Server`/`spawn`/`stop_all` for long-running servers.

Each cluster server runs in its own session (setsid), so it has its own process group that can be
signalled as a whole, and so a detached cluster (`scripts/cluster up`) survives the shell that
started it. A process is identified by (pid, start time) so a later `down` from a fresh shell
never signals an unrelated process that happens to reuse the pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


class WaitError(RuntimeError):
    """A wait ended without its condition: it timed out, or a watched server died."""


class WaitTimeout(WaitError):
    """The condition did not hold in time; ``last`` is the check's last (falsy) result."""

    def __init__(self, message: str, last: Any = None) -> None:
        super().__init__(message)
        self.last = last


class ServerDied(WaitError):
    """A watched server exited while waiting; the message ends with its log's tail."""


def die_with_parent() -> None:
    """In the child (``preexec_fn``): get SIGKILL when the parent dies, so a killed pytest or
    benchmark leaks no servers or operators."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def proc_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; it only waits for its parent to reap it
        return None
    return int(fields[19])


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def stop_process(process: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
                 timeout: float = 30.0) -> int | None:
    """Send ``sig`` to a child, wait up to ``timeout`` s, then SIGKILL it; its exit code (None
    when there was no process)."""
    if process is None or process.poll() is not None:
        return process.returncode if process else None
    process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


def wait_for(check: Callable[[], Any], timeout: float, what: str = "condition", *,
             interval: float = 0.25, tolerate: tuple[type[Exception], ...] = (),
             servers: Sequence[Server] = (), diagnose: Callable[[], str] | None = None) -> Any:
    """Return ``check()``'s first truthy result, polling every ``interval`` s.

    Exceptions of the ``tolerate`` types (a server restarting) count as a falsy result. Raises
    ServerDied (with its log) as soon as one of ``servers`` is gone, and WaitTimeout after
    ``timeout`` s with the last result and, if given, what ``diagnose()`` says (pod logs)."""
    deadline = time.monotonic() + timeout
    result: Any = None
    while True:
        for server in servers:
            if not server.alive():
                raise ServerDied(server.describe_failure(f"died while waiting for {what}"))
        try:
            result = check()
        except tolerate as exc:
            result = f"error: {exc}"
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    extra = f"\n{diagnose()}" if diagnose else ""
    raise WaitTimeout(f"{what} not met within {timeout:.0f}s; last result: {result!r}{extra}",
                      result)


@dataclass
class Server:
    """One running server: its name, argv, log, and how to find it again."""

    name: str
    argv: list[str]
    log: Path
    pid: int
    start_time: int | None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        """True while this very process (not a pid reuse) exists and is not a zombie."""
        if self.popen is not None:
            return self.popen.poll() is None
        return self.start_time is not None and proc_start_time(self.pid) == self.start_time

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def describe_failure(self, what: str) -> str:
        """An error message with the tail of this server's log."""
        code = self.exit_code()
        status = f"exited with code {code}" if code is not None else (
            "running" if self.alive() else "not running")
        return f"{self.name} {what} ({status}); last lines of {self.log}:\n{tail(self.log)}"

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the server's whole process group, if it is still this process."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def wait_gone(self, timeout: float) -> bool:
        """Wait until the process has exited (reaping it if it is our child)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None:
                try:
                    self.popen.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not self.alive():
                return True
            time.sleep(0.1)
        return not self.alive()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL after `grace` seconds; wait for exit."""
        self.signal_group(signal.SIGTERM)
        if not self.wait_gone(grace):
            self.signal_group(signal.SIGKILL)
            self.wait_gone(10.0)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=1)

    def to_state(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_time": self.start_time,
                "log": str(self.log), "argv": self.argv}

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Server:
        return cls(name=str(data["name"]), argv=[str(a) for a in data["argv"]],
                   log=Path(data["log"]), pid=int(data["pid"]),
                   start_time=None if data["start_time"] is None else int(data["start_time"]))


def spawn(name: str, argv: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path,
          *, detach: bool) -> Server:
    """Start one server in a new session with its output in `log`.

    Detached servers outlive the caller (for `scripts/cluster up`); attached ones are killed
    by the kernel if the caller dies.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=dict(env), cwd=cwd, start_new_session=True,
            preexec_fn=None if detach else die_with_parent,
        )
    return Server(name=name, argv=list(argv), log=log, pid=popen.pid,
                  start_time=proc_start_time(popen.pid), popen=popen)


def stop_all(servers: Sequence[Server], grace: float = 10.0) -> None:
    """Stop servers in reverse start order (kwok and controllers before the apiserver, etcd
    last), so nothing logs storms of connection errors while going down."""
    for server in reversed(servers):
        server.stop(grace)
