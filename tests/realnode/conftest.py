"""Fixtures of the real-node tier (tests marked ``realnode``): a control plane from the cluster
harness plus one real kubelet + containerd node (devtools/cluster/realnode.py).

Opt-in: the tier runs when ``THPCHECK_REALNODE=1`` or ``THPCHECK_REQUIRE_REALNODE=1``; with
the latter a missing prerequisite fails instead of skipping. It builds what it needs: kubelet
(``build.sh --with-node``, cached), the project image and its oci-archive (devtools/images/build.py,
cached) and the pause image (from devtools/cluster/pause.c, every session; well under a second).

Fixtures:
  realnode_kit  (session)  binaries, image archive, pause archive; skips or fails here.
  realnode      (function) a started `RealCluster` (cluster without fake nodes + the real
                           node), torn down afterwards; the teardown fails the test when the
                           machine differs from before (mounts, links, iptables, cgroups,
                           paths outside the work dir, kernel tunables, daemons).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools.cluster.harness import (
    CORE_BINARIES,
    NODE_BINARIES,
    BinariesMissing,
    Cluster,
    build_binaries,
    missing_binaries,
)
from devtools.cluster.realnode import (
    HostState,
    RealNode,
    build_pause_archive,
    missing_prerequisites,
)
from devtools.images import build
from tests.support.require import required, skip_or_fail

TIER = "realnode"
ENABLE_ENV = "THPCHECK_REALNODE"
HOW_TO_ENABLE = (f"the real-node tier is opt-in: set {ENABLE_ENV}=1 (or "
                 "THPCHECK_REQUIRE_REALNODE=1 to fail on missing prerequisites); it needs root, "
                 "containerd, runc, containernetworking-plugins, gcc, podman and debootstrap, and "
                 "builds kubelet once (devtools/cluster/tools/build.sh --with-node)")
# Short: the node's unix sockets live under it (see realnode.MAX_WORKDIR).
SHORT_TMP_ENV = "THPCHECK_REALNODE_TMP"


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV) == "1" or required(TIER)


@dataclass
class RealNodeKit:
    """What every real node of the session needs, built (or found cached) once."""

    bin_dir: Path
    image: build.Built
    image_archive: Path
    pause_archive: Path
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class RealCluster:
    cluster: Cluster
    node: RealNode
    image: build.Built


@pytest.fixture(scope="session")
def realnode_kit(tmp_path_factory: pytest.TempPathFactory) -> RealNodeKit:
    if not enabled():
        pytest.skip(HOW_TO_ENABLE)
    problems = missing_prerequisites()
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found (apt-get install podman buildah debootstrap)")
    if problems:
        skip_or_fail(TIER, "; ".join(problems))
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        bin_dir = build_binaries(with_node=True)
    except BinariesMissing as exc:
        skip_or_fail(TIER, str(exc))
        raise  # unreachable: skip_or_fail raises
    missing = missing_binaries(bin_dir, (*CORE_BINARIES, *NODE_BINARIES))
    if missing:
        skip_or_fail(TIER, f"missing in {bin_dir}: {', '.join(missing)}")
    timings["k8s_binaries_s"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    try:
        image = build.build()
        archive = build.export_archive(image)
    except build.BuildError as exc:
        pytest.fail(f"image build failed: {exc}", pytrace=False)
    timings["image_s"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    pause = build_pause_archive(tmp_path_factory.mktemp("pause"))
    timings["pause_s"] = round(time.monotonic() - started, 1)
    print(f"\nrealnode kit: {bin_dir}, {image.tags[1]} ({archive}), timings {timings}")
    return RealNodeKit(bin_dir=bin_dir, image=image, image_archive=archive,
                       pause_archive=pause, timings=timings)


@contextlib.contextmanager
def real_cluster(kit: RealNodeKit, tmp_path: Path, *,
                 name: str = "realnode") -> Iterator[RealCluster]:
    """A control plane (no fake nodes) and one real node, both stopped on exit; the node's
    logs are copied to ``tmp_path/node-logs`` and its short work dir removed."""
    short = Path(tempfile.mkdtemp(prefix="thpck-rn-", dir=os.environ.get(SHORT_TMP_ENV, "/tmp")))
    cluster = Cluster(tmp_path / "cluster", bin_dir=kit.bin_dir, nodes=0)
    node = RealNode(cluster, short / "node", pause_archive=kit.pause_archive,
                    image_archives=[kit.image_archive], name=name)
    try:
        started = time.monotonic()
        cluster.start()
        kit.timings["cluster_start_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        node.start()
        kit.timings["node_start_s"] = round(time.monotonic() - started, 1)
        kit.timings.update(node.timings)
        yield RealCluster(cluster, node, kit.image)
    finally:
        try:
            started = time.monotonic()
            node.stop()
            kit.timings["node_stop_s"] = round(time.monotonic() - started, 1)
        finally:
            cluster.stop()
            with contextlib.suppress(OSError):
                shutil.copytree(node.logs_dir, tmp_path / "node-logs", dirs_exist_ok=True)
                shutil.copytree(node.pod_logs_dir, tmp_path / "node-logs" / "pods",
                                dirs_exist_ok=True, symlinks=True)
            shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def realnode(realnode_kit: RealNodeKit, tmp_path: Path) -> Iterator[RealCluster]:
    before = HostState.capture()
    with real_cluster(realnode_kit, tmp_path) as rc:
        yield rc
    after = HostState.capture()
    print(f"\nhost before: {before.summary()}\nhost after:  {after.summary()}")
    leaks = before.leaks(after)
    if leaks:
        pytest.fail(f"the real node left traces on the machine: {leaks}", pytrace=False)
