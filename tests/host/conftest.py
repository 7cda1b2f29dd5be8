"""Real filesystems on this machine's kernel: one loop-mounted ext4, btrfs and xfs per session."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.host.loopfs import loop_mount
from tests.support.require import require_loop_devices

FILESYSTEMS = ("ext4", "btrfs", "xfs")


@pytest.fixture(scope="session")
def loopfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """``{"ext4": mountpoint, "btrfs": ..., "xfs": ...}``, unmounted at session end."""
    require_loop_devices()
    workdir = tmp_path_factory.mktemp("loopfs")
    with contextlib.ExitStack() as stack:
        yield {fs: stack.enter_context(loop_mount(workdir, fs)) for fs in FILESYSTEMS}


@pytest.fixture
def scratch_dirs(loopfs: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """A fresh empty directory on each filesystem for one test."""
    dirs = {}
    for fs, mountpoint in loopfs.items():
        path = mountpoint / "scratch"
        path.mkdir()
        dirs[fs] = path
    yield dirs
    for path in dirs.values():
        for leftover in path.iterdir():  # a failing test must not break the next one
            raise AssertionError(f"{path} still holds {leftover.name}")
        path.rmdir()
