"""How the harness and fixture behave when things are missing or broken.

The missing-binaries cases need no cluster binaries; the failing-start case needs etcd.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.cluster.harness import REPO_ROOT, BinariesMissing, Cluster, ClusterError

TARGET = "tests/cluster/test_control_plane.py::test_kubectl_reports_pinned_server_version"


def _nested_pytest(tmp_path: Path, require: bool) -> subprocess.CompletedProcess[str]:
    # The nested run is one test, not the suite: drop every tier requirement and the guard.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("THPCHECK_REQUIRE_") and k != "THPCHECK_TIER_GUARD"}
    env["THPCHECK_K8S_BIN"] = str(tmp_path / "no-such-bin")
    if require:
        env["THPCHECK_REQUIRE_CLUSTER"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", TARGET, "-rs", "-p", "no:cacheprovider",
         f"--basetemp={tmp_path / 'nested'}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_missing_binaries_skip_with_build_hint(tmp_path: Path) -> None:
    result = _nested_pytest(tmp_path, require=False)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "devtools/cluster/tools/build.sh" in result.stdout


def test_missing_binaries_fail_when_cluster_required(tmp_path: Path) -> None:
    result = _nested_pytest(tmp_path, require=True)
    assert result.returncode == 1, result.stdout
    assert "THPCHECK_REQUIRE_CLUSTER=1 but real-cluster tests need" in result.stdout
    assert "kube-apiserver" in result.stdout


def test_start_refuses_incomplete_bin_dir(tmp_path: Path) -> None:
    with pytest.raises(BinariesMissing, match="kube-apiserver"):
        Cluster(tmp_path / "c", bin_dir=tmp_path).start()


@pytest.mark.cluster
def test_failing_server_start_raises_with_its_log_and_cleans_up(k8s_bin_dir: Path,
                                                                tmp_path: Path) -> None:
    """A broken kube-apiserver: the error names it and shows its log; etcd is stopped."""
    bins = tmp_path / "bin"
    bins.mkdir()
    for item in k8s_bin_dir.iterdir():
        (bins / item.name).symlink_to(item)
    (tmp_path / "share").symlink_to(k8s_bin_dir.parent / "share")
    (bins / "kube-apiserver").unlink()
    fake = bins / "kube-apiserver"
    fake.write_text("#!/bin/sh\necho 'boom: cannot serve' >&2\nexit 3\n")
    fake.chmod(0o755)

    cluster = Cluster(tmp_path / "c", bin_dir=bins, nodes=1, timeout=30)
    with pytest.raises(ClusterError) as err:
        cluster.start()
    message = str(err.value)
    assert "kube-apiserver" in message
    assert "exited with code 3" in message
    assert "boom: cannot serve" in message
    assert cluster.servers == []
    assert _processes_mentioning(str(tmp_path / "c")) == []


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose argv contains `text` (e.g. a work dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in argv:
            found.append(f"{proc.name}: {argv[:120]}")
    return found


def test_extra_args_are_appended_per_server(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Opt-in flags go after the harness's own (so they win), only to the named server; opt-in
    environment variables go to the named server only."""
    import devtools.cluster.harness as harness

    spawned: dict[str, list[str]] = {}
    environments: dict[str, dict[str, str]] = {}

    def fake_spawn(name: str, argv: list[str], log: Path, env: dict[str, str], *_: object,
                   **__: object) -> object:
        spawned[name] = argv
        environments[name] = env
        return object()

    monkeypatch.setattr(harness, "spawn", fake_spawn)
    cluster = Cluster(tmp_path / "c", bin_dir=tmp_path, extra_args={
        "kube-controller-manager": ["--kube-api-qps=500", "--kube-api-burst=1000"]},
        extra_env={"kube-scheduler": {"GOMEMLIMIT": "1GiB"}})
    cluster._spawn("kube-controller-manager", ["--v=1"])
    cluster._spawn("kube-scheduler", ["--v=1"])
    assert spawned["kube-controller-manager"][1:] == [
        "--v=1", "--kube-api-qps=500", "--kube-api-burst=1000"]
    assert spawned["kube-scheduler"][1:] == ["--v=1"]
    assert environments["kube-scheduler"]["GOMEMLIMIT"] == "1GiB"
    assert environments["kube-scheduler"]["HOME"] == str(tmp_path.resolve() / "c" / "home")
    assert "GOMEMLIMIT" not in environments["kube-controller-manager"]
    with pytest.raises(ClusterError, match="extra_args for unknown servers"):
        Cluster(tmp_path / "d", bin_dir=tmp_path, extra_args={"kubelet": ["--v=2"]})
    with pytest.raises(ClusterError, match="extra_env for unknown servers"):
        Cluster(tmp_path / "e", bin_dir=tmp_path, extra_env={"kubelet": {"A": "b"}})
