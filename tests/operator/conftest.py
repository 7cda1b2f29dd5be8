"""Fixtures for the operator on the real control plane (tests marked ``cluster``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devtools.cluster.harness import Cluster
from devtools.cluster.operator import this_machine
from tests.operator.operator_fixtures import checks, crds, kubelet, operator  # noqa: F401


@pytest.fixture
def test_id() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def make_nodes(crds: Cluster, test_id: str) -> Iterator[object]:  # noqa: F811
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
