"""Fixtures for the preflight tests on the real control plane: the corpus fleet (one per
session, shared by the CLI and the operator tests) and a running operator."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, wait_until
from tests.operator.cluster_kit import (
    Kubelet,
    OperatorProcess,
    checks_cleaned_up,
    install_crds,
)
from tests.preflight.fleet import Fleet, make_fleet


@pytest.fixture(scope="session")
def fleet(cluster: Cluster) -> Iterator[Fleet]:
    with make_fleet(cluster) as made:
        yield made


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    install_crds(cluster)
    return cluster


@pytest.fixture
def operator(crds: Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """A running operator for one test, stopped afterwards."""
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
def make_node(crds: Cluster) -> Iterator[Callable[..., str]]:
    """``make_node(nodeInfo, **labels)``: a kwok node with these nodeInfo values, deleted (and
    waited for) afterwards, so other tests listing every node never see it half gone."""
    made: list[str] = []

    def make(info: dict[str, str], labels: dict[str, str]) -> str:
        name = f"pm-{uuid.uuid4().hex[:8]}"
        crds.add_node(name, labels=labels, node_info=info, wait=True)
        made.append(name)
        return name

    yield make
    for name in made:
        crds.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false", check=False)
    wait_until(lambda: not any(n["metadata"]["name"] in made
                               for n in crds.api("GET", "/api/v1/nodes")["items"]),
               60, "the test nodes to go away", crds.servers)
