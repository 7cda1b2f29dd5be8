"""Fixtures for the operator on the real control plane (tests marked ``cluster``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster
from tests.operator.cluster_kit import (
    Kubelet,
    OperatorProcess,
    checks_cleaned_up,
    install_crds,
    this_machine,
)


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    """The session cluster with the chart's CRDs applied (the single source)."""
    install_crds(cluster)
    return cluster


@pytest.fixture
def test_id() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def operator(crds: Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """A running operator for one test; stopped (and its checks deleted) afterwards."""
    process = OperatorProcess(crds, namespace, tmp_path / "logs").start()
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


@pytest.fixture
def make_nodes(crds: Cluster, test_id: str) -> Iterator[object]:
    """``make_nodes(count, **per_node)`` adds kwok nodes labelled for this test (with this
    machine's kernel and boot ID); they are deleted afterwards."""
    made: list[str] = []

    def make(count: int, labels: dict[str, dict[str, str]] | None = None,
             unschedulable: set[str] | None = None) -> list[str]:
        for index in range(count):
            name = f"t{test_id}-n{index}"
            crds.add_node(name, labels={"thpcheck-test": test_id,
                                        **(labels or {}).get(name, {})},
                          node_info=this_machine(), wait=False)
            made.append(name)
            if name in (unschedulable or set()):
                crds.kubectl("cordon", name)
        crds.wait_nodes_ready(made[-count:], timeout=90)
        return made[-count:]

    yield make
    for name in made:
        crds.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false", check=False)
