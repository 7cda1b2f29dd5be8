"""Fixtures every operator test on the real control plane uses (the operator tests and the
preflight tests): the chart's CRDs, a running operator, a kubelet stand-in, and ThpChecks
deleted while the operator still runs. Imported by those directories' conftest files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.cluster.harness import Cluster
from devtools.cluster.operator import OperatorProcess, install_crds
from tests.operator.cluster_kit import Kubelet, checks_cleaned_up


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    """The session cluster with the chart's CRDs applied (the single source)."""
    install_crds(cluster)
    return cluster


@pytest.fixture
def operator(crds: Cluster, namespace: str, tmp_path: Path,
             request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    """A running operator for one test; stopped (and its checks deleted) afterwards. A test
    marked ``operator_env(NAME="value", ...)`` runs it with those variables set."""
    marker = request.node.get_closest_marker("operator_env")
    env = dict(marker.kwargs) if marker else {}
    process = OperatorProcess(crds, namespace, tmp_path / "logs", extra_env=env).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def kubelet(crds: Cluster, namespace: str, tmp_path: Path) -> Kubelet:
    return Kubelet(crds, namespace, tmp_path)


@pytest.fixture
def checks(crds: Cluster, operator: OperatorProcess) -> Iterator[list[str]]:
    """Names of ThpChecks the test creates: deleted while the operator still runs."""
    created: list[str] = []
    with checks_cleaned_up(crds, operator, created):
        yield created
