"""Scratch-directory safety on a real filesystem (a temp dir): no root needed."""

from __future__ import annotations

import os
import re
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
        ("/", "is the root directory /, where the agent never writes"),
        ("//.", "is the root directory /"),
        ("/proc/self", "is under a host system directory"),
        ("/./sys/kernel/", "is under a host system directory"),
        ("/dev/shm", "is under a host system directory"),
        ("/etc", "is under a host system directory"),
        ("/var//lib/kubelet/pods", "is under the kubelet's or a container runtime's state"),
        ("/var/snap/microk8s/common", "is under the kubelet's or a container runtime's state"),
        ("/proc/..", "contains '..' segments"),
    ],
)
def test_refused_paths(path: str, message: str) -> None:
    with pytest.raises(BadInput, match=re.escape(message)):
        validate(ROOT, path)


def test_missing_file_and_symlink(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    with pytest.raises(BadInput, match="does not exist; create the directory first"):
        validate(ROOT, str(tmp_path / "missing"))
    with pytest.raises(BadInput, match="is not a directory"):
        validate(ROOT, str(tmp_path / "file"))
    with pytest.raises(BadInput, match=r"is a symlink; pass the directory it points to"):
        validate(ROOT, str(tmp_path / "link"))
    assert validate(ROOT, str(tmp_path / "dir")) == str(tmp_path / "dir")


def test_symlinked_parent_into_proc_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p").symlink_to("/proc")
    with pytest.raises(BadInput, match=f"goes through the symlink {tmp_path}/p and resolves "
                       "to /proc/sys"):
        validate(ROOT, str(tmp_path / "p" / "sys"))


def test_symlinks_resolve_inside_the_host_root(tmp_path: Path) -> None:
    """In a pod with the host's / at /host, an absolute link target is a host path."""
    host = tmp_path / "host"
    (host / "data" / "real").mkdir(parents=True)
    (host / "var" / "lib").mkdir(parents=True)
    (host / "var" / "lib" / "thpcheck").symlink_to("/data/real")
    (host / "srv").symlink_to("data")
    root = HostRoot(str(host))
    with pytest.raises(BadInput, match="is a symlink; pass the directory it points to "
                       r"\(/data/real\)"):
        validate(root, "/var/lib/thpcheck")
    with pytest.raises(BadInput, match="goes through the symlink /srv and resolves to "
                       "/data/real"):
        validate(root, "/srv/real")
    assert validate(root, "/data/real") == str(host / "data" / "real")


def test_required_bytes_has_a_margin() -> None:
    assert required_bytes(64 << 20, 16 << 10, 200) > (64 << 20) + 200 * (16 << 10)


def test_headroom_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    """Through ``prepare_paths``, as ``check`` and ``repro`` do; the registry lives in the
    temp host root's /run/thpcheck, not this machine's."""
    from contextlib import ExitStack

    from thpcheck.host.check import CheckOptions, prepare_paths
    from thpcheck.host.repro import ReproConfig

    (tmp_path / "scratch").mkdir()
    options = CheckOptions(paths=["/scratch"], host_root=str(tmp_path),
                           repro=ReproConfig(base_size=1 << 50))
    with ExitStack() as stack, pytest.raises(BadInput, match=(
            r"/scratch: refusing to write: not enough headroom: .* available of .*; the run "
            r"needs .* and must leave .*free space there, lower --base-size")):
        prepare_paths(HostRoot(str(tmp_path)), options, [], stack)
    assert os.listdir(tmp_path / "scratch") == []


def test_host_root_prefix(tmp_path: Path) -> None:
    (tmp_path / "var" / "lib" / "thpcheck").mkdir(parents=True)
    root = HostRoot(str(tmp_path))
    assert validate(root, "/var/lib/thpcheck") == str(tmp_path / "var/lib/thpcheck")


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
