"""Fixtures for the preflight tests on the real control plane: the corpus fleet (one per
session, shared by the CLI and the operator tests) and a running operator."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from devtools.cluster.harness import Cluster, wait_until
from tests.operator.operator_fixtures import checks, crds, kubelet, operator  # noqa: F401
from tests.preflight.fleet import Fleet, make_fleet


@pytest.fixture(scope="session")
def fleet(cluster: Cluster) -> Iterator[Fleet]:
    with make_fleet(cluster) as made:
        yield made


@pytest.fixture
def make_node(crds: Cluster) -> Iterator[Callable[..., str]]:  # noqa: F811
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
