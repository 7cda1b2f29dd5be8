"""devtools.proc: the one copy of the wait loop and of stopping a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.proc import ServerDied, WaitTimeout, spawn, stop_process, wait_for


def test_wait_for_returns_the_first_truthy_result_and_tolerates_listed_errors() -> None:
    answers = iter([ConnectionError("restarting"), 0, "", {"ready": True}])

    def check() -> object:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_for(check, 10, "ready", interval=0, tolerate=(OSError,)) == {"ready": True}


def test_wait_for_does_not_swallow_other_errors() -> None:
    def check() -> bool:
        raise KeyError("a bug in the check")

    with pytest.raises(KeyError):
        wait_for(check, 10, "ready", interval=0, tolerate=(OSError,))


def test_wait_for_times_out_with_the_last_result_and_the_diagnosis() -> None:
    with pytest.raises(WaitTimeout) as caught:
        wait_for(list, 0.05, "pods gone", interval=0.01, diagnose=lambda: "pod log: oom")
    assert caught.value.last == []
    assert str(caught.value).startswith("pods gone not met within 0s; last result: []")
    assert str(caught.value).endswith("\npod log: oom")


def test_wait_for_fails_at_once_with_the_log_of_a_watched_server_that_died(
        tmp_path: Path) -> None:
    server = spawn("short", ["sh", "-c", "echo bind: address already in use; exit 3"],
                   tmp_path / "short.log", dict(os.environ), tmp_path, detach=False)
    server.wait_gone(10)
    with pytest.raises(ServerDied) as caught:
        wait_for(lambda: False, 3600, "the apiserver", servers=[server])
    assert "short died while waiting for the apiserver (exited with code 3)" in str(caught.value)
    assert "address already in use" in str(caught.value)


def test_stop_process_kills_a_child_that_ignores_the_signal() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    assert stop_process(child, signal.SIGTERM, timeout=0.2) == -signal.SIGKILL
    assert stop_process(child) == -signal.SIGKILL  # already gone: its code, nothing sent
    assert stop_process(None) is None
    child.stdout.close()
