"""Pytest plugin: a session-wide real control plane for tests marked `cluster`.

Registered from tests/conftest.py (`pytest_plugins = ["tests.cluster.fixtures"]`).

Fixtures:
  k8s_bin_dir   (session)  Path of the built binaries; skips, or fails when
                           THPCHECK_REQUIRE_CLUSTER=1, if they are missing.
  cluster       (session)  a started harness.Cluster with THPCHECK_CLUSTER_NODES (default 3)
                           fake nodes; stopped at session end.
  kubeconfig    (session)  Path of the cluster's admin kubeconfig.
  namespace     (function) a fresh namespace name, deleted after the test.
  make_cluster  (function) factory for extra private clusters: make_cluster(nodes=2) -> Cluster;
                           each is stopped after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from devtools.cluster.harness import (
    BUILD_SCRIPT,
    REPO_ROOT,
    BinariesMissing,
    Cluster,
    default_bin_dir,
    missing_binaries,
)

REQUIRE_ENV = "THPCHECK_REQUIRE_CLUSTER"
NODES_ENV = "THPCHECK_CLUSTER_NODES"


def _how_to_build(reason: str) -> str:
    return (
        f"real-cluster tests need the Kubernetes test binaries: {reason}. Build them with "
        f"`{BUILD_SCRIPT.relative_to(REPO_ROOT)}` (Go >= 1.26 and the Go module proxy; "
        "cached under $THPCHECK_CACHE or ~/.cache/thp-checker; the first build takes about "
        "12 minutes on 2 cores, later runs are no-ops)."
    )


def _unavailable(reason: str) -> NoReturn:
    """Fail loudly in CI (THPCHECK_REQUIRE_CLUSTER=1), otherwise skip with the fix."""
    message = _how_to_build(reason)
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def k8s_bin_dir() -> Path:
    """The bin dir for the current pins, checked to hold every needed binary."""
    try:
        bin_dir = default_bin_dir()
    except BinariesMissing as exc:
        _unavailable(str(exc))
    missing = missing_binaries(bin_dir)
    if missing:
        _unavailable(f"missing in {bin_dir}: {', '.join(missing)}")
    return bin_dir


@pytest.fixture(scope="session")
def cluster(k8s_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One control plane for the whole session; tests isolate themselves by namespace."""
    nodes = int(os.environ.get(NODES_ENV, "3"))
    workdir = tmp_path_factory.mktemp("k8s-cluster")
    with Cluster(workdir, bin_dir=k8s_bin_dir, nodes=nodes) as c:
        yield c


@pytest.fixture(scope="session")
def kubeconfig(cluster: Cluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.api("POST", "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found",
                    check=False)


@pytest.fixture
def make_cluster(k8s_bin_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Cluster]]:
    """Extra clusters for tests that need a pristine or differently sized one."""
    made: list[Cluster] = []

    def make(nodes: int = 3) -> Cluster:
        c = Cluster(tmp_path_factory.mktemp("k8s-extra"), bin_dir=k8s_bin_dir, nodes=nodes)
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.stop()
