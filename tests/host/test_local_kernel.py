"""``thpcheck check`` and ``repro`` on this machine's own kernel, on real ext4/btrfs/xfs.

This machine kind's kernel is built without CONFIG_READ_ONLY_THP_FOR_FS, so the answer must
be not-affected by rule G1 with the reproducer's collapse refused at step 2; the kernel
matrix (tests/vm) proves the affected side on kernels built with the option.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.host.agent import check_json, listing, thpcheck

pytestmark = pytest.mark.host


def _host_has_ro_thp() -> bool | None:
    try:
        config = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        return None
    return "CONFIG_READ_ONLY_THP_FOR_FS=y" in config.splitlines()


@pytest.fixture(autouse=True)
def _config_off() -> None:
    state = _host_has_ro_thp()
    if state is not False:
        pytest.skip(f"this test is about a kernel without READ_ONLY_THP_FOR_FS; here: {state}")


@pytest.mark.parametrize("fs", ["ext4", "btrfs", "xfs"])
def test_check_says_not_affected_by_config(scratch_dirs: dict[str, Path], fs: str) -> None:
    before = listing(scratch_dirs[fs])
    code, report = check_json(str(scratch_dirs[fs]))
    assert code == 0
    assert report["verdict"] == "not-affected"
    assert report["kernel"]["read_only_thp_for_fs"] is False
    assert report["kernel"]["config_source"] == "proc/config.gz"
    (path,) = report["paths"]
    assert path["fstype"] == fs
    assert (path["verdict"], path["rule"]) == ("not-affected", "G1")
    assert "CONFIG_READ_ONLY_THP_FOR_FS is not set" in path["reason"]
    assert path["repro"]["outcome"] == "collapse_unsupported"
    assert path["repro"]["step"] == 2 and path["repro"]["errno"] == "EINVAL"
    assert path["repro"]["madv_collapse_known"] is True
    assert listing(scratch_dirs[fs]) == before


@pytest.mark.parametrize("fs", ["ext4", "btrfs", "xfs"])
def test_repro_reports_collapse_unsupported(scratch_dirs: dict[str, Path], fs: str) -> None:
    result = thpcheck("repro", str(scratch_dirs[fs]))
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == [
        f"path={scratch_dirs[fs]} base_size=67108864 append_size=16384 iters=200",
        "COLLAPSE_UNSUPPORTED errno=EINVAL step=2",
    ]
    assert listing(scratch_dirs[fs]) == []


def test_one_check_over_three_filesystems(scratch_dirs: dict[str, Path]) -> None:
    code, report = check_json(*(str(scratch_dirs[fs]) for fs in ("ext4", "btrfs", "xfs")))
    assert code == 0
    assert [p["fstype"] for p in report["paths"]] == ["ext4", "btrfs", "xfs"]
    assert {p["verdict"] for p in report["paths"]} == {"not-affected"}


def test_no_repro_writes_nothing(scratch_dirs: dict[str, Path]) -> None:
    code, report = check_json("--no-repro", str(scratch_dirs["btrfs"]))
    assert code == 0
    assert report["paths"][0]["repro"]["outcome"] == "skipped"
    assert report["paths"][0]["rule"] == "G1"


def test_discover_tests_every_local_filesystem_and_cleans_up(loopfs: dict[str, Path]) -> None:
    code, report = check_json("--discover")
    assert code == 0
    by_path = {p["path"]: p for p in report["paths"]}
    for fs, mountpoint in loopfs.items():
        entry = by_path[f"{mountpoint}/.thpcheck"]
        assert (entry["fstype"], entry["verdict"]) == (fs, "not-affected")
        assert entry["repro"]["outcome"] == "collapse_unsupported"
        assert not (mountpoint / ".thpcheck").exists()
