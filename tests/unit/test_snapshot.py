"""``check``/``facts`` on a saved copy of a host (a support bundle): the snapshot mode.

A host root whose ``proc`` is not procfs is a snapshot (every fixture tree here is one): the
scratch paths are not on this machine, so each path's filesystem comes from the saved
mountinfo alone, nothing may be run, and the report says so. The live side (a root whose
``proc`` is procfs keeps the statfs cross-check) is proven on real mounts in
``tests/host/test_snapshot.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.hosttree import HostTree
from thpcheck.host.check import CheckOptions, check
from thpcheck.host.facts import is_snapshot
from thpcheck.host.hostroot import HostRoot
from thpcheck.host.scratch import BadInput
from thpcheck.model.report import SNAPSHOT_LINE, render_table, to_document

MOUNTS = [("/", "ext4", "rw"), ("/var/lib/thpcheck", "xfs", "rw"), ("/srv", "btrfs", "rw")]


def _tree(tmp_path: Path, **kw: object) -> str:
    return str(HostTree(mounts=MOUNTS, **kw).write(tmp_path / "bundle"))  # type: ignore[arg-type]


def test_a_tree_of_saved_files_is_a_snapshot_and_the_live_root_is_not(tmp_path: Path) -> None:
    assert is_snapshot(HostRoot(_tree(tmp_path)))
    assert not is_snapshot(HostRoot("/"))


def test_paths_absent_here_are_classified_from_the_saved_mountinfo(tmp_path: Path) -> None:
    root = _tree(tmp_path, release="6.12.95")  # 6.12.95 with the option on: ext4/btrfs at risk
    report = check(CheckOptions(paths=["/var/lib/thpcheck", "/srv/data/x", "/"], host_root=root,
                                run_repro=False))
    assert report.facts.snapshot
    got = [(p.path, p.facts.fstype if p.facts else None, p.verdict.verdict.value,
            p.verdict.rule) for p in report.paths]
    assert got == [("/var/lib/thpcheck", "xfs", "not-affected", "G6"),
                   ("/srv/data/x", "btrfs", "susceptible", "G12"),
                   ("/", "ext4", "susceptible", "G10")]
    assert not (Path(root) / "var/lib/thpcheck").exists()  # nothing was created either
    document = to_document(report)
    assert document["snapshot"] is True
    assert [p["mount_point"] for p in document["paths"]] == ["/var/lib/thpcheck", "/srv", "/"]
    assert SNAPSHOT_LINE in render_table(report).splitlines()


def test_the_reproducer_is_refused_on_a_snapshot(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with pytest.raises(BadInput, match=r"is a saved snapshot, not a live host .*add --no-repro"):
        check(CheckOptions(paths=["/var/lib/thpcheck"], host_root=root))


def test_a_snapshot_without_mountinfo_says_what_to_save(tmp_path: Path) -> None:
    root = Path(_tree(tmp_path))
    (root / "proc/1/mountinfo").unlink()
    (path,) = check(CheckOptions(paths=["/srv"], host_root=str(root), run_repro=False)).paths
    assert path.verdict.verdict.value == "error"
    assert path.verdict.reason == ("the snapshot has no mountinfo entry for /srv: save the "
                                   "host's /proc/1/mountinfo with it")


def test_the_distro_table_uses_the_snapshot_architecture(tmp_path: Path) -> None:
    """Tumbleweed sets the option on x86_64 and not on aarch64: a bundle from an arm64 node
    must not be judged by the architecture of the machine reading it."""
    tumbleweed = 'ID=opensuse-tumbleweed\nPRETTY_NAME="openSUSE Tumbleweed"\n'
    arm = check(CheckOptions(paths=["/srv"], host_root=_tree(
        tmp_path / "arm", config=None, release="6.18.7-1-default", os_release=tumbleweed,
        arch="aarch64"), run_repro=False))
    assert (arm.config.read_only_thp, arm.config.source) == (False, "distro:tumbleweed-aarch64")
    assert arm.paths[0].verdict.rule == "G1"
    x86 = check(CheckOptions(paths=["/srv"], host_root=_tree(
        tmp_path / "x86", config=None, release="6.18.7-1-default", os_release=tumbleweed,
        arch="x86_64"), run_repro=False))
    assert (x86.config.read_only_thp, x86.config.source) == (True, "distro:tumbleweed")
