"""Scratch-directory safety on a real filesystem (a temp dir): no root needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from thpcheck.host.hostroot import HostRoot
from thpcheck.host.scratch import PREFIX, BadInput, Scratch, required_bytes, validate

ROOT = HostRoot("/")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("relative/dir", "not an absolute host path"),
        ("/", "refusing to write under /, /proc, /sys or /dev"),
        ("/proc/self", "refusing to write under"),
        ("/sys/kernel", "refusing to write under"),
        ("/dev/shm", "refusing to write under"),
    ],
)
def test_refused_paths(path: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        validate(ROOT, path, 0)


def test_missing_file_and_symlink(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    with pytest.raises(BadInput, match="does not exist; create the directory first"):
        validate(ROOT, str(tmp_path / "missing"), 0)
    with pytest.raises(BadInput, match="is not a directory"):
        validate(ROOT, str(tmp_path / "file"), 0)
    with pytest.raises(BadInput, match=r"is a symlink; pass the directory it points to"):
        validate(ROOT, str(tmp_path / "link"), 0)
    assert validate(ROOT, str(tmp_path / "dir"), 0) == str(tmp_path / "dir")


def test_symlinked_parent_into_proc_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p").symlink_to("/proc")
    with pytest.raises(BadInput, match="resolves to /proc/sys"):
        validate(ROOT, str(tmp_path / "p" / "sys"), 0)


def test_free_space_is_checked_first(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"free but the check needs .* lower --base-size"):
        validate(ROOT, str(tmp_path), 1 << 60)
    assert list(tmp_path.iterdir()) == []


def test_required_bytes_has_a_margin() -> None:
    assert required_bytes(64 << 20, 16 << 10, 200) > (64 << 20) + 200 * (16 << 10)


def test_host_root_prefix(tmp_path: Path) -> None:
    (tmp_path / "var" / "lib" / "thpcheck").mkdir(parents=True)
    root = HostRoot(str(tmp_path))
    assert validate(root, "/var/lib/thpcheck", 0) == str(tmp_path / "var/lib/thpcheck")


def test_scratch_removes_everything_even_on_error(tmp_path: Path) -> None:
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(RuntimeError), Scratch(str(tmp_path)) as scratch:
        fd = scratch.create("data")
        os.write(fd, b"x" * 4096)
        os.close(fd)
        assert os.path.isdir(scratch.path)
        raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == before


def test_scratch_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    with Scratch(str(tmp_path)) as scratch:
        os.symlink(victim, os.path.join(scratch.path, "data"))
        with pytest.raises(FileExistsError):
            scratch.create("data")
        with pytest.raises(PermissionError):
            scratch.open("data", os.O_WRONLY)  # never created by this run
    assert victim.read_text() == "keep me"
    # the planted link is not ours: the directory is left for a human, not force-removed
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(PREFIX)]
    assert len(leftovers) == 1


OWNER = textwrap.dedent(
    """
    import os, sys, time
    from thpcheck.host.scratch import Scratch
    with Scratch(sys.argv[1]) as scratch:
        fd = scratch.create("data"); os.write(fd, b"y" * 8192); os.close(fd)
        print(scratch.name, flush=True)
        time.sleep(60)
    """
)


def _start_owner(parent: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(parent)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_sigkilled_run_is_reaped_by_the_next_one(tmp_path: Path) -> None:
    proc, name = _start_owner(tmp_path)
    live_proc, live_name = _start_owner(tmp_path)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert (tmp_path / name / "data").exists()  # kill -9 cannot clean up...
        with Scratch(str(tmp_path)) as scratch:
            assert scratch.reaped == [name]  # ...so the next run does
        assert not (tmp_path / name).exists()
        assert (tmp_path / live_name / "data").exists()  # a live run is never touched
    finally:
        live_proc.kill()
        live_proc.wait()
    with Scratch(str(tmp_path)):
        pass
    assert os.listdir(tmp_path) == []
