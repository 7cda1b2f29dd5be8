"""Stopping the agent mid-run leaves nothing behind.

This kernel refuses file collapse, so a run would end in milliseconds. strace's syscall
injection makes every madvise succeed after a delay, so the real agent runs its iterations
(writing the 64 MiB base file and appending) long enough to be stopped mid-run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.host.agent import REPO, listing
from tests.support.require import skip_or_fail

pytestmark = pytest.mark.host


def _interruptible() -> None:
    """SIGINT as at a terminal. A command a non-interactive shell starts in the background
    inherits SIGINT ignored (POSIX), and Python then installs no KeyboardInterrupt handler:
    the agent would rightly run on, and the SIGINT case would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _slow_agent(path: Path) -> tuple[subprocess.Popen[str], int]:
    """Start ``thpcheck repro`` under strace; returns (strace process, agent pid)."""
    if shutil.which("strace") is None:
        skip_or_fail("host", "strace is not installed (apt-get install strace)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    tracer = subprocess.Popen(
        ["strace", "-qq", "-f", "-o", "/dev/null", "-e", "trace=madvise",
         "-e", "inject=madvise:retval=0:delay_enter=100000",
         sys.executable, "-m", "thpcheck", "repro", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=_interruptible)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = subprocess.run(["pgrep", "-P", str(tracer.pid)], capture_output=True,
                                  text=True).stdout.split()
        data = list(path.glob("thpcheck-scratch.*/data"))
        if children and data and data[0].stat().st_size > 64 * 1024 * 1024:
            return tracer, int(children[0])  # mid-run: base written, iterations appending
        time.sleep(0.05)
    tracer.kill()
    pytest.fail("the agent never reached its iterations under strace")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_mid_run_removes_everything(scratch_dirs: dict[str, Path], sig: signal.Signals,
                                         code: int) -> None:
    path = scratch_dirs["ext4"]
    before = listing(path)
    tracer, agent = _slow_agent(path)
    os.kill(agent, sig)
    _, stderr = tracer.communicate(timeout=60)
    assert tracer.returncode == code, stderr
    assert "scratch files removed" in stderr
    assert listing(path) == before


def test_kill_9_is_cleaned_by_the_next_run(scratch_dirs: dict[str, Path]) -> None:
    path = scratch_dirs["btrfs"]
    tracer, agent = _slow_agent(path)
    os.kill(agent, signal.SIGKILL)
    tracer.communicate(timeout=60)
    assert list(path.glob("thpcheck-scratch.*/data")), "kill -9 leaves the scratch dir"
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    rerun = subprocess.run([sys.executable, "-m", "thpcheck", "repro", str(path),
                            "--log-level", "warning"], capture_output=True, text=True, env=env,
                           check=False)
    assert rerun.returncode == 3
    assert "removed scratch dirs left by killed runs" in rerun.stderr
    assert listing(path) == []
