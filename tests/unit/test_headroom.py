"""Disk headroom: the decision (pure) and the reservation registry (real flocks in a temp
dir standing in for the host's /run/thpcheck)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from thpcheck.host.hostroot import HostRoot
from thpcheck.host.space import REGISTRY_DIR, Registry
from thpcheck.model.headroom import FsRole, FsSpace, Headroom, decide, fs_role
from thpcheck.model.mounts import parse_mountinfo

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_RUN = 64 * MiB + 200 * 16 * 1024 + 16 * MiB  # required_bytes of a default run


def test_a_filesystem_filled_to_88_percent_refuses_a_default_run() -> None:
    space = FsSpace(capacity=10 * GiB, available=int(10 * GiB * 0.12))
    decision = decide(space, DEFAULT_RUN, 0, FsRole.OTHER, Headroom())
    assert not decision.ok
    assert decision.keep == int(10 * GiB * 0.15) and decision.threshold_percent == 15
    assert "1.2 GiB available of 10.0 GiB" in decision.detail
    assert "needs 83.1 MiB and must leave 1.5 GiB" in decision.detail
    assert "nodefs.available eviction threshold 10% + margin 5%" in decision.detail


def test_imagefs_keeps_more_and_the_floor_protects_small_filesystems() -> None:
    half = FsSpace(capacity=10 * GiB, available=int(10 * GiB * 0.19))
    assert decide(half, DEFAULT_RUN, 0, FsRole.NODEFS, Headroom()).ok
    imagefs = decide(half, DEFAULT_RUN, 0, FsRole.IMAGEFS, Headroom())
    assert not imagefs.ok and imagefs.threshold_percent == 20
    assert "imagefs.available eviction threshold 15%" in imagefs.detail
    small = FsSpace(capacity=512 * MiB, available=300 * MiB)
    refused = decide(small, DEFAULT_RUN, 0, FsRole.OTHER, Headroom())
    assert not refused.ok and refused.keep == 256 * MiB
    assert decide(small, DEFAULT_RUN, 0, FsRole.OTHER, Headroom(min_free_bytes=64 * MiB)).ok


def test_reservations_of_other_runs_count_and_inodes_are_checked() -> None:
    space = FsSpace(capacity=4 * GiB, available=1 * GiB)
    assert decide(space, DEFAULT_RUN, 0, FsRole.OTHER, Headroom()).ok
    crowded = decide(space, DEFAULT_RUN, 500 * MiB, FsRole.OTHER, Headroom())
    assert not crowded.ok and "500.0 MiB reserved by other running checks" in crowded.detail
    no_inodes = FsSpace(capacity=4 * GiB, available=2 * GiB, files=1000, files_available=50)
    inodes = decide(no_inodes, DEFAULT_RUN, 0, FsRole.OTHER, Headroom())
    assert not inodes.ok and "free inodes: 50 of 1000" in inodes.detail


def test_fs_role_follows_the_kubelet_and_runtime_directories() -> None:
    mounts = parse_mountinfo(
        "22 1 259:1 / / rw - ext4 /dev/a rw\n"
        "23 22 259:2 / /var/lib/containerd rw - xfs /dev/b rw\n"
        "24 22 259:3 / /data rw - xfs /dev/c rw\n")
    present = {"kubelet_dirs": ("/var/lib/kubelet",), "image_dirs": ("/var/lib/containerd",)}
    assert fs_role("/var/lib/thpcheck", mounts, **present) is FsRole.NODEFS
    assert fs_role("/var/lib/containerd/x", mounts, **present) is FsRole.IMAGEFS
    assert fs_role("/data/x", mounts, **present) is FsRole.OTHER
    # Which runtime is installed unknown (a pod sees only its mounts): every candidate
    # counts, and /var/lib/docker would be on the root filesystem: the strict side.
    assert fs_role("/var/lib/thpcheck", mounts) is FsRole.IMAGEFS
    assert fs_role("/data/x", mounts) is FsRole.OTHER


@pytest.fixture
def registry_root(tmp_path: Path) -> HostRoot:
    return HostRoot(str(tmp_path))


def test_two_claims_on_one_filesystem_cannot_both_pass(registry_root: HostRoot) -> None:
    space = FsSpace(capacity=2 * GiB, available=700 * MiB)  # room for one run, not two
    with Registry(registry_root) as first, Registry(registry_root) as second:
        ok, held = first.claim("259:1", space, 200 * MiB, FsRole.OTHER, Headroom())
        assert ok.ok and held is not None
        refused, none = second.claim("259:1", space, 200 * MiB, FsRole.OTHER, Headroom())
        assert not refused.ok and none is None and refused.reserved == 200 * MiB
        other_fs, other = second.claim("259:9", space, 200 * MiB, FsRole.OTHER, Headroom())
        assert other_fs.ok and other is not None
        held.release()
        again, later = second.claim("259:1", space, 200 * MiB, FsRole.OTHER, Headroom())
        assert again.ok and later is not None
        later.release()
        other.release()
    assert os.listdir(registry_root.path(REGISTRY_DIR)) == ["reservations.lock"]


def test_a_dead_runs_reservation_is_removed(registry_root: HostRoot) -> None:
    space = FsSpace(capacity=2 * GiB, available=700 * MiB)
    code = ("import sys; from thpcheck.host.hostroot import HostRoot;"
            "from thpcheck.host.space import Registry;"
            "from thpcheck.model.headroom import FsRole, FsSpace, Headroom;"
            f"r = Registry(HostRoot({str(registry_root.root)!r})).__enter__();"
            f"d, h = r.claim('259:1', FsSpace({space.capacity}, {space.available}), "
            f"{200 * MiB}, FsRole.OTHER, Headroom()); assert d.ok;"
            "import os; os._exit(0)")  # exits holding it: as a kill -9 would
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    left = [n for n in os.listdir(registry_root.path(REGISTRY_DIR)) if n.startswith("dev-")]
    assert len(left) == 1
    with Registry(registry_root) as registry:
        decision, held = registry.claim("259:1", space, 200 * MiB, FsRole.OTHER, Headroom())
        assert decision.ok and decision.reserved == 0 and held is not None
        held.release()
    assert os.listdir(registry_root.path(REGISTRY_DIR)) == ["reservations.lock"]
