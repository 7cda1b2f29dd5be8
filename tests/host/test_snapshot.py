"""A saved copy of this machine's host root gives the verdicts the live run gives.

The snapshot is laid out as a support bundle lays it out (``proc/``, ``sys/kernel/mm/
transparent_hugepage/``, ``boot/``, ``lib/modules/*/config``, ``etc/os-release``, PID 1's
mountinfo), copied from ``/`` while the loop-mounted ext4, btrfs and xfs are mounted. The
scratch paths are not in the copy: the snapshot run must classify them from the saved
mountinfo alone, and say that it did. A live host root that only looks like the host (its
``proc`` is procfs, but the scratch path is not mounted under it) keeps today's cross-check.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.host.agent import check_json, listing, thpcheck

pytestmark = pytest.mark.host

RELEASE = os.uname().release
THP = Path("/sys/kernel/mm/transparent_hugepage")
SAVED = ("proc/version", "proc/cmdline", "proc/config.gz", "proc/meminfo", "proc/vmstat",
         "proc/1/mountinfo", "proc/sys/kernel/osrelease", "proc/sys/kernel/hostname",
         "proc/sys/kernel/arch", "proc/sys/kernel/random/boot_id",
         *(f"proc/sys/vm/{name}" for name in ("dirty_expire_centisecs",
                                              "dirty_writeback_centisecs", "dirty_ratio",
                                              "dirty_background_ratio")),
         f"boot/config-{RELEASE}", f"lib/modules/{RELEASE}/config", "etc/os-release",
         *(str(p.relative_to("/")) for p in sorted(THP.rglob("*")) if p.is_file()))


def save_snapshot(dest: Path) -> Path:
    """Copy this host's files into ``dest`` the way a support bundle keeps them (by content:
    procfs and sysfs files report size 0)."""
    for rel in SAVED:
        try:
            data = Path("/", rel).read_bytes()
        except OSError:
            continue  # not every host has /boot/config-R or every knob
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    return dest


def _per_path(document: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(p["path"], p["fstype"], p["mount_point"], p["verdict"], p["rule"], p["reason"])
            for p in document["paths"]]


def _knobs(document: dict[str, Any]) -> dict[str, Any]:
    """The THP settings, without khugepaged's counters (they move between two reads)."""
    khugepaged = {k: v for k, v in document["thp"]["khugepaged"].items()
                  if k not in ("full_scans", "pages_collapsed")}
    return {**document["thp"], "khugepaged": khugepaged}


@pytest.fixture
def snapshot(tmp_path: Path, loopfs: dict[str, Path]) -> Path:
    return save_snapshot(tmp_path / "bundle")


def test_the_snapshot_gives_the_live_verdicts(scratch_dirs: dict[str, Path],
                                              snapshot: Path) -> None:
    paths = [str(scratch_dirs[fs]) for fs in ("ext4", "btrfs", "xfs")]
    assert not any((snapshot / p.lstrip("/")).exists() for p in paths)  # not in the copy
    live_code, live = check_json("--no-repro", *paths)
    saved_code, saved = check_json("--host-root", str(snapshot), "--no-repro", *paths)
    assert (live["snapshot"], saved["snapshot"]) == (False, True)
    assert [p[1] for p in _per_path(live)] == ["ext4", "btrfs", "xfs"]
    assert _per_path(saved) == _per_path(live)
    assert saved_code == live_code
    for key in ("release", "version", "read_only_thp_for_fs", "config_source", "boot_id"):
        assert saved["kernel"][key] == live["kernel"][key], key
    assert saved["node_prediction"] == live["node_prediction"]
    assert _knobs(saved) == _knobs(live) and saved["os"] == live["os"]
    table = thpcheck("check", "--host-root", str(snapshot), "--no-repro", *paths).stdout
    assert "snapshot: read from saved files; filesystem types come from the saved mountinfo" \
        in table


def test_facts_reads_a_snapshot(scratch_dirs: dict[str, Path], snapshot: Path) -> None:
    result = thpcheck("facts", "--host-root", str(snapshot), str(scratch_dirs["xfs"]))
    assert result.returncode == 0, result.stderr
    live = thpcheck("facts", str(scratch_dirs["xfs"]))
    saved, here = json.loads(result.stdout), json.loads(live.stdout)
    assert saved["snapshot"] is True and here["snapshot"] is False
    assert _per_path(saved) == _per_path(here)
    assert saved["paths"][0]["fstype"] == "xfs"


def test_no_reproducer_on_a_snapshot(scratch_dirs: dict[str, Path], snapshot: Path) -> None:
    before = listing(scratch_dirs["btrfs"])
    result = thpcheck("check", "--host-root", str(snapshot), str(scratch_dirs["btrfs"]))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"thpcheck check: --host-root {snapshot} is a saved snapshot, not a live host (its "
        "proc/ is not procfs): the reproducer cannot run there; add --no-repro to predict from "
        "the saved files")
    assert listing(scratch_dirs["btrfs"]) == before


@contextlib.contextmanager
def _live_root(root: Path) -> Iterator[Path]:
    """A host root whose proc is the real procfs (as a pod's /host/proc is)."""
    (root / "proc").mkdir(parents=True)
    subprocess.run(["mount", "--bind", "/proc", str(root / "proc")], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root / "proc")], check=False)


def test_a_live_root_keeps_the_statfs_cross_check(scratch_dirs: dict[str, Path],
                                                  tmp_path: Path) -> None:
    """Same saved-less layout, but procfs mounted: the path under the root is a plain
    directory, not the host's btrfs, and that stays an error (a missing hostPath mount)."""
    host_path = str(scratch_dirs["btrfs"])
    here = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert here != "btrfs", "the temp dir must not be on btrfs itself for this test"
    with _live_root(tmp_path / "root") as root:
        (root / host_path.lstrip("/")).mkdir(parents=True)
        try:
            code, report = check_json("--host-root", str(root), "--no-repro", host_path)
        finally:
            shutil.rmtree(root / host_path.lstrip("/").split("/")[0])
    assert code == 3 and report["snapshot"] is False
    (path,) = report["paths"]
    assert path["verdict"] == "error"
    assert "but the host mountinfo puts" in path["reason"] and "on btrfs" in path["reason"]
