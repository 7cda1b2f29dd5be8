"""The cluster-wide cordon budget and the health guard on the real control plane: two checks
with maxCordoned 1 over four affected nodes cordon one node in all; with half the selected
nodes cordoned by an admin, nothing new is cordoned."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.harness import Cluster
from devtools.cluster.operator import OperatorProcess
from tests.operator.cluster_kit import (
    Kubelet,
    all_affected,
    check_events,
    eventually,
    get_check,
    new_check,
    node,
)
from thpcheck.contract import names

pytestmark = pytest.mark.cluster


def cordoned_by_checks(cluster: Cluster, nodes: list[str]) -> list[str]:
    return sorted(n for n in nodes if (node(cluster, n)["metadata"].get("annotations") or {})
                  .get(names.CORDONED_BY_ANNOTATION))


def blocked(cluster: Cluster, check: str) -> dict[str, Any]:
    status = (get_check(cluster, check) or {}).get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    found: dict[str, Any] = conditions.get("RemediationBlocked") or {}
    return found


def test_two_checks_never_cordon_more_than_the_cluster_budget(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    nodes = make_nodes(4, labels={f"t{test_id}-n{i}": {"group": "ab"[i // 2]}
                                  for i in range(4)})
    first, second = f"budget-a-{test_id}", f"budget-b-{test_id}"
    cordon = {"cordon": True, "maxCordoned": 1}
    new_check(crds, checks, first, {"thpcheck-test": test_id, "group": "a"}, tmp_path / "s",
              cordon)
    new_check(crds, checks, second, {"thpcheck-test": test_id, "group": "b"}, tmp_path / "s",
              cordon)
    all_affected(kubelet, first, nodes[:2])
    all_affected(kubelet, second, nodes[2:])

    eventually(lambda: len(cordoned_by_checks(crds, nodes)) == 1, timeout=60,
               what="one cordon")
    for _ in range(10):  # the cap holds over many reconciles of both checks
        assert len(cordoned_by_checks(crds, nodes)) == 1
        assert sum(1 for n in nodes if node(crds, n)["spec"].get("unschedulable")) == 1
        time.sleep(0.5)
    reasons = eventually(lambda: sorted(
        r for c in (first, second) if (r := blocked(crds, c).get("reason"))
        in ("BudgetExhausted", "ClusterBudgetExhausted")) or None, what="blocked conditions")
    assert "ClusterBudgetExhausted" in reasons


@pytest.mark.operator_env(THPCHECK_CLUSTER_MAX_CORDONED="10")
def test_half_the_nodes_cordoned_by_an_admin_blocks_new_cordons(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    admin = {f"t{test_id}-n0", f"t{test_id}-n1"}
    nodes = make_nodes(4, unschedulable=admin)
    name = f"guard-{test_id}"
    new_check(crds, checks, name, {"thpcheck-test": test_id}, tmp_path / "s",
              {"cordon": True, "maxCordoned": 1})
    all_affected(kubelet, name, nodes)

    condition = eventually(lambda: (c := blocked(crds, name)).get("reason")
                           == "ClusterUnhealthy" and c, timeout=60, what="ClusterUnhealthy")
    assert "2 of 4 selected nodes are NotReady or cordoned by someone else" in \
        condition["message"]
    for _ in range(6):
        assert cordoned_by_checks(crds, nodes) == []
        time.sleep(0.5)
    eventually(lambda: "ClusterUnhealthy" in [e["reason"] for e in check_events(crds, name)],
               what="a ClusterUnhealthy Event", timeout=30)

    # The admin uncordons both: one cordon follows (maxCordoned 1).
    for n in sorted(admin):
        crds.kubectl("uncordon", n)
    eventually(lambda: len(cordoned_by_checks(crds, nodes)) == 1, timeout=60,
               what="a cordon once the nodes are healthy")
