"""The khugepaged mitigation (``thpcheck mitigate``): on a fake sysfs tree, and for real on
this machine's ``scan_sleep_millisecs`` (marked ``host``; the knob is restored even when a
test fails)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.require import skip_or_fail
from thpcheck.host.hostroot import HostRoot
from thpcheck.host.mitigation import KNOB, STOPPED, MitigationError, Mitigator

REPO = Path(__file__).resolve().parents[2]
REAL_KNOB = Path(KNOB)
MARKER = 12345  # a value nobody uses, so "restored" cannot be a coincidence


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    knob = tmp_path / "root" / KNOB.lstrip("/")
    knob.parent.mkdir(parents=True)
    knob.write_text("10000\n")
    return tmp_path / "root"


def mitigator(root: Path, state: Path) -> Mitigator:
    return Mitigator(HostRoot(str(root)), str(state))


def knob_of(root: Path) -> int:
    return int((root / KNOB.lstrip("/")).read_text())


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The state file in a directory of its own (the mitigation creates it)."""
    return tmp_path / "state" / "mitigation.state"


def test_apply_records_once_and_restore_puts_back_the_exact_value(fake_root: Path,
                                                                  state: Path) -> None:
    m = mitigator(fake_root, state)
    applied = m.apply()
    assert (applied.original, applied.recorded_now) == (10000, True)
    assert knob_of(fake_root) == STOPPED and m.verify()
    assert json.loads(state.read_text())["original"] == 10000
    again = m.apply()  # a restart: the knob now reads STOPPED, the record must survive
    assert (again.original, again.recorded_now) == (10000, False)
    assert json.loads(state.read_text())["original"] == 10000
    assert m.restore() == 10000
    assert knob_of(fake_root) == 10000 and not m.verify()
    assert not state.exists()
    assert m.restore() is None  # nothing recorded: nothing touched


def test_a_damaged_state_file_is_an_error_not_a_guess(fake_root: Path, state: Path) -> None:
    state.parent.mkdir(mode=0o700)
    state.write_text("{\"original\": \"lots\"}")
    with pytest.raises(MitigationError, match="no valid original"):
        mitigator(fake_root, state).apply()
    state.write_text("{trunc")
    with pytest.raises(MitigationError, match="unreadable"):
        mitigator(fake_root, state).restore()
    assert knob_of(fake_root) == 10000


def test_a_missing_knob_is_reported(tmp_path: Path) -> None:
    with pytest.raises(MitigationError, match="cannot read"):
        mitigator(tmp_path, tmp_path / "s").apply()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "thpcheck", "mitigate", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "operator")}


STARTED: list[subprocess.Popen[str]] = []


def kill_survivors() -> None:
    """SIGKILL every mitigate process a failed test left running (SIGTERM would restore the
    value it recorded, onto this machine's knob for the host tests)."""
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(autouse=True)
def no_survivors() -> Iterator[None]:
    yield
    kill_survivors()


def start(root: Path, state: Path, ready_file: Path | None = None) -> subprocess.Popen[str]:
    """Start ``thpcheck mitigate`` and return once it reports the knob applied (its signal
    handlers are installed by then)."""
    log = state.parent.with_name(f"mitigate-{time.monotonic_ns()}.log")  # not in the state dir
    with log.open("w") as sink:
        process = subprocess.Popen(
            cli("--host-root", str(root), "--state-file", str(state), "--log-format", "json",
                "--log-level", "info", *_ready(ready_file)), env=env(), text=True,
            stdout=sink, stderr=sink)
    STARTED.append(process)
    deadline = time.monotonic() + 20
    while "khugepaged stopped" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"mitigate did not apply: {log.read_text()}")
        time.sleep(0.05)
    return process


def _ready(ready_file: Path | None) -> list[str]:
    return [] if ready_file is None else ["--ready-file", str(ready_file)]


def verify(root: Path, state: Path, ready_file: Path | None = None) -> bool:
    probe = subprocess.run(cli("--verify", "--host-root", str(root), "--state-file", str(state),
                               *_ready(ready_file)),
                           env=env(), capture_output=True, text=True, check=False)
    return probe.returncode == 0


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    process.send_signal(sig)
    try:
        return process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()


def scenario(root: Path, state: Path, read: Callable[[], int]) -> None:
    """Apply, kill -9, restart (the record survives), SIGTERM: the exact value returns."""
    original = read()
    first = start(root, state)
    assert read() == STOPPED
    assert verify(root, state)
    recorded = state.read_text()
    assert json.loads(recorded)["original"] == original
    first.kill()  # kill -9: nothing can be restored
    first.wait(timeout=20)
    assert read() == STOPPED and state.read_text() == recorded
    second = start(root, state)
    assert state.read_text() == recorded  # the second start did not record STOPPED
    assert stop(second) == 0
    assert read() == original
    assert not state.exists()
    assert not verify(root, state)


def restore(root: Path, state: Path) -> int:
    """``thpcheck mitigate --restore`` (the restore DaemonSet's container): its exit code."""
    return subprocess.run(cli("--restore", "--host-root", str(root), "--state-file", str(state)),
                          env=env(), capture_output=True, text=True, check=False).returncode


def two_writers(root: Path, state: Path, read: Callable[[], int]) -> None:
    """An old and a new mitigation pod overlapping (a rolling update with surge): stopping
    the old one leaves khugepaged stopped; stopping the last one restores the exact value."""
    original = read()
    first = start(root, state)
    recorded = state.read_text()
    second = start(root, state)
    assert state.read_text() == recorded and json.loads(recorded)["original"] == original
    assert stop(first) == 0
    assert read() == STOPPED and state.read_text() == recorded
    assert restore(root, state) == 75  # a mitigation holds the node: the restorer waits
    assert read() == STOPPED and state.exists()
    assert stop(second) == 0
    assert read() == original and not state.exists()


def test_the_cli_on_a_fake_tree(fake_root: Path, state: Path) -> None:
    scenario(fake_root, state, lambda: knob_of(fake_root))


def test_two_writers_never_lose_the_original(fake_root: Path, state: Path) -> None:
    two_writers(fake_root, state, lambda: knob_of(fake_root))


def test_a_new_pod_is_ready_only_once_its_own_process_holds(fake_root: Path, state: Path,
                                                            tmp_path: Path) -> None:
    """A rolling update: the old pod keeps khugepaged stopped, so the value alone cannot tell
    whether the new pod's process holds the node yet. Its probe also needs the pod's own
    readiness file, written once the process holds and removed when it stops (else the
    DaemonSet controller may stop the old pod first, and the old pod, the last holder,
    restores)."""
    old = start(fake_root, state, tmp_path / "old-ready")
    new_ready = tmp_path / "new-ready"
    assert knob_of(fake_root) == STOPPED and verify(fake_root, state)  # the value is in effect
    assert not verify(fake_root, state, new_ready)  # ... but the new pod's process holds nothing
    new = start(fake_root, state, new_ready)
    assert verify(fake_root, state, new_ready)
    assert new_ready.read_text().strip() == str(new.pid)
    assert stop(new) == 0
    assert not new_ready.exists() and not verify(fake_root, state, new_ready)
    assert knob_of(fake_root) == STOPPED  # the old pod still holds
    assert stop(old) == 0
    assert knob_of(fake_root) == 10000 and not (tmp_path / "old-ready").exists()


def test_after_a_kill_the_restorer_puts_the_value_back(fake_root: Path, state: Path) -> None:
    first = start(fake_root, state)
    assert restore(fake_root, state) == 75 and knob_of(fake_root) == STOPPED
    first.kill()  # SIGKILL: no chance to restore, the record stays
    first.wait(timeout=20)
    assert knob_of(fake_root) == STOPPED and state.exists()
    assert restore(fake_root, state) == 0  # no holder left: the restorer restores
    assert knob_of(fake_root) == 10000 and not state.exists()
    assert restore(fake_root, state) == 0  # nothing recorded: nothing to do


def test_the_state_directory_is_the_mitigations_own(fake_root: Path, tmp_path: Path) -> None:
    # A symbolic link as the directory, or as the state file: never followed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "linked").symlink_to(elsewhere)
    with pytest.raises(MitigationError, match="is a symbolic link"):
        mitigator(fake_root, tmp_path / "linked" / "mitigation.state").apply()
    assert knob_of(fake_root) == 10000 and list(elsewhere.iterdir()) == []
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    (own / "mitigation.state").symlink_to(victim)
    with pytest.raises(MitigationError, match="cannot be opened"):
        mitigator(fake_root, own / "mitigation.state").apply()
    assert victim.read_text() == "precious\n" and knob_of(fake_root) == 10000
    # A temporary file name planted as a link is removed, not written through.
    (own / "mitigation.state").unlink()
    (own / f"mitigation.state.tmp.{os.getpid()}").symlink_to(victim)
    assert mitigator(fake_root, own / "mitigation.state").apply().original == 10000
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in own.iterdir()) == ["holders.lock", "mitigation.state",
                                                     "mutex.lock"]
    # Anything else in it (an agent's scratch files): the mitigation refuses the directory.
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "thpcheck-scratch-1").mkdir()
    with pytest.raises(MitigationError, match="only the mitigation writes"):
        mitigator(fake_root, shared / "mitigation.state").apply()
    # Writable by others it is made private; owned by someone else, refused.
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    mitigator(fake_root, loose / "mitigation.state").apply()
    assert loose.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 65534, 65534)
        with pytest.raises(MitigationError, match="belongs to uid 65534"):
            mitigator(fake_root, foreign / "mitigation.state").apply()


def test_found_stopped_without_a_record_restores_the_kernel_default(fake_root: Path,
                                                                     state: Path) -> None:
    knob = fake_root / KNOB.lstrip("/")
    knob.write_text(f"{STOPPED}\n")  # stopped by a mitigation of an older version
    m = mitigator(fake_root, state)
    applied = m.apply()
    assert (applied.original, applied.assumed) == (10000, True)
    knob.write_text("10000\n")  # that older pod restored behind our back
    assert m.enforce() == 10000 and knob_of(fake_root) == STOPPED
    assert m.enforce() is None
    assert m.step_down().value == "restored" and knob_of(fake_root) == 10000


# -- this machine's sysfs --------------------------------------------------------------------


@pytest.fixture
def real_knob() -> Iterator[int]:
    """The real knob set to MARKER for the test; the value found is put back afterwards."""
    if os.geteuid() != 0:
        skip_or_fail("host", "writing sysfs needs root")
    if not REAL_KNOB.exists():
        skip_or_fail("host", f"{REAL_KNOB} does not exist (no THP on this kernel)")
    found = REAL_KNOB.read_text().strip()
    try:
        REAL_KNOB.write_text(f"{MARKER}\n")
        yield MARKER
    finally:
        kill_survivors()  # before putting the value back: none may write it afterwards
        REAL_KNOB.write_text(found + "\n")
        assert REAL_KNOB.read_text().strip() == found


def read_real() -> int:
    return int(REAL_KNOB.read_text())


@pytest.mark.host
def test_apply_read_back_and_restore_on_this_machine(real_knob: int, state: Path) -> None:
    m = mitigator(Path("/"), state)
    assert m.apply().original == real_knob
    assert read_real() == STOPPED and m.verify()
    assert m.restore() == real_knob
    assert read_real() == real_knob


@pytest.mark.host
def test_kill_and_restart_on_this_machine(real_knob: int, state: Path) -> None:
    scenario(Path("/"), state, read_real)
    assert read_real() == real_knob


@pytest.mark.host
def test_two_writers_on_this_machine(real_knob: int, state: Path) -> None:
    two_writers(Path("/"), state, read_real)
    assert read_real() == real_knob
