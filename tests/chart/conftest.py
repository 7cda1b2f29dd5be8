"""Fixtures for the chart tests: the pinned helm, and a private control plane for the
cluster tests (the chart installs cluster-scoped objects and a ThpCheck over every node, so
it gets its own cluster instead of sharing the session's)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.cluster.harness import Cluster, pinned_k8s_version
from tests.chart.chart_kit import RELEASE, Helm, Release, fast_values


@pytest.fixture(scope="session")
def helm(k8s_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm v3 from the cluster tool cache (devtools/cluster/tools/build.sh)."""
    return Helm(k8s_bin_dir / "helm", tmp_path_factory.mktemp("helm-home"),
                pinned_k8s_version())


@pytest.fixture(scope="session")
def chart_cluster(k8s_bin_dir: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane of its own, with no nodes: each test adds the kwok nodes it needs."""
    with Cluster(tmp_path_factory.mktemp("chart-cluster"), bin_dir=k8s_bin_dir,
                 nodes=0) as cluster:
        yield cluster


@pytest.fixture
def test_id() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def release(chart_cluster: Cluster, helm: Helm, test_id: str,
            tmp_path: Path) -> Iterator[Release]:
    """A namespace for the release; whatever the test leaves installed is removed."""
    namespace = f"thp-{test_id}"
    chart_cluster.api("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace,
                     "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rel = Release(chart_cluster, helm, namespace, fast_values(scratch))
    try:
        yield rel
    finally:
        if rel.installed():
            rel.run("uninstall", RELEASE, "--no-hooks", "--wait", "--timeout", "60s",
                    check=False)
        chart_cluster.kubectl("delete", "namespace", namespace, "--wait=false",
                              "--ignore-not-found", check=False)
