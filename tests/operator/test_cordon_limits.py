"""The limits above each check's maxCordoned: a cluster-wide cap across all ThpChecks, and a
health guard that cordons nothing new while too many selected nodes are already down."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.operator.factories import node
from thpcheck.contract import names
from thpcheck.contract.checkspec import Remediation
from thpcheck.contract.views import NodeView, node_view
from thpcheck.controller.settings import SettingsError, from_env
from thpcheck.model.verdict import Verdict
from thpcheck.planning.remediation import (
    CLUSTER_BUDGET_EXHAUSTED,
    CLUSTER_UNHEALTHY,
    ClusterLimits,
    RemediationPlan,
    plan_remediation,
    unhealthy,
)
from thpcheck.planning.states import NodeState
from thpcheck.planning.status import StatusInputs, build_status

CORDON = Remediation(label=False, cordon=True, max_cordoned=1)
LIMITS = ClusterLimits()  # the defaults: one cordon in the cluster, 10% unhealthy


def affected(nodes: list[NodeView]) -> dict[str, NodeState]:
    return {n.name: NodeState(n.name, Verdict.AFFECTED) for n in nodes}


def plan(check: str, selected: list[NodeView], everyone: list[NodeView], *,
         limits: ClusterLimits | None = LIMITS, cordoned: tuple[str, ...] = (),
         remediation: Remediation = CORDON) -> RemediationPlan:
    return plan_remediation(check, remediation, paused=False, selected=selected,
                            all_nodes=everyone, states=affected(selected),
                            cordoned=list(cordoned), limits=limits)


def cordoned_now(p: RemediationPlan) -> list[str]:
    return [c.node for c in p.changes if c.unschedulable is True]


def apply(nodes: list[NodeView], p: RemediationPlan, check: str) -> list[NodeView]:
    """The nodes as they are after ``p``'s cordons."""
    done = set(cordoned_now(p))
    return [node(n.name, unschedulable=True,
                 annotations={names.CORDONED_BY_ANNOTATION: check}) if n.name in done else n
            for n in nodes]


def test_two_checks_with_a_budget_of_one_each_cordon_one_node_in_the_cluster() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    a_nodes, b_nodes = nodes[:2], nodes[2:]
    first = plan("a", a_nodes, nodes)
    assert cordoned_now(first) == ["n0"]
    nodes = apply(nodes, first, "a")
    # b sees a's claim (persisted before the cordon) and a's mark on n0: no room.
    second = plan("b", nodes[2:], nodes, limits=replace(LIMITS, claimed=frozenset({"n0"})))
    assert cordoned_now(second) == []
    assert (second.blocked_cordons, second.blocked_reason) == (2, CLUSTER_BUDGET_EXHAUSTED)
    assert "THPCHECK_CLUSTER_MAX_CORDONED" in second.blocked_message
    # The claim alone (a crash between a's status write and its cordon) counts as well.
    assert cordoned_now(plan("b", b_nodes, [*a_nodes, *b_nodes],
                             limits=replace(LIMITS, claimed=frozenset({"n1"})))) == []
    # Without the cluster limit, each check would take its own one.
    assert cordoned_now(plan("b", nodes[2:], nodes, limits=None)) == ["n2"]
    # a keeps its own cordon within the cap, and does not take another.
    again = plan("a", nodes[:2], nodes, cordoned=("n0",))
    assert cordoned_now(again) == [] and again.cordoned_after == ["n0"]


def test_the_cluster_cap_can_be_a_share_of_all_nodes() -> None:
    nodes = [node(f"n{i}") for i in range(20)]
    limits = ClusterLimits(max_cordoned="10%", claimed=frozenset({"n19"}))
    p = plan("a", nodes[:10], nodes, limits=limits,
             remediation=replace(CORDON, max_cordoned=5))
    assert cordoned_now(p) == ["n0"]  # 10% of 20 is 2, one held by another check
    assert p.blocked_reason == CLUSTER_BUDGET_EXHAUSTED


def test_half_the_selected_nodes_cordoned_by_an_admin_blocks_new_cordons() -> None:
    nodes = [node(f"n{i}", unschedulable=i < 5) for i in range(10)]
    p = plan("a", nodes, nodes)
    assert cordoned_now(p) == [] and p.changes == []
    assert p.blocked_reason == CLUSTER_UNHEALTHY
    assert p.blocked_message.startswith("5 affected nodes wait for a cordon: 5 of 10 selected "
                                        "nodes are NotReady or cordoned by someone else "
                                        "(n0, n1, n2, n3, n4)")


def test_the_guard_counts_not_ready_nodes_but_not_cordons_made_by_thpchecks() -> None:
    def not_ready(name: str) -> NodeView:
        return node_view({"metadata": {"name": name}, "status": {"conditions": [
            {"type": "Ready", "status": "Unknown"}]}})

    ours = {"unschedulable": True, "annotations": {names.CORDONED_BY_ANNOTATION: "other"}}
    nodes = [not_ready("n0"), node("n1", **ours), *[node(f"n{i}") for i in range(2, 10)]]
    assert unhealthy(nodes) == ["n0"]
    assert node("n5").ready and not nodes[0].ready
    limits = ClusterLimits(max_cordoned=5)
    # 1 of 10 down: not more than 10%, so an affected node is cordoned (the NotReady one
    # first: it is affected too, and will come back cordoned).
    assert cordoned_now(plan("a", nodes, nodes, limits=limits)) == ["n0"]
    # 2 of 10 down: more than 10%, nothing new.
    nodes[9] = not_ready("n9")
    p = plan("a", nodes, nodes, limits=limits)
    assert cordoned_now(p) == [] and p.blocked_reason == CLUSTER_UNHEALTHY


def test_the_guard_keeps_existing_cordons_and_releases_the_unwanted() -> None:
    ours = {"unschedulable": True, "annotations": {names.CORDONED_BY_ANNOTATION: "a"}}
    nodes = [node("n0", **ours), node("n1", **ours),
             *[node(f"n{i}", unschedulable=i < 6) for i in range(2, 8)]]
    states = affected(nodes)
    states["n1"] = NodeState("n1", Verdict.NOT_AFFECTED)
    p = plan_remediation("a", replace(CORDON, max_cordoned=3), paused=False, selected=nodes,
                         all_nodes=nodes, states=states, cordoned=["n0", "n1"],
                         limits=ClusterLimits(max_cordoned=5))
    assert [(c.node, c.unschedulable) for c in p.changes] == [("n1", False)]
    assert p.cordoned_after == ["n0"] and p.blocked_reason == CLUSTER_UNHEALTHY


def test_status_names_the_reason_and_what_waits() -> None:
    nodes = [node(f"n{i}", unschedulable=i < 2) for i in range(4)]
    p = plan("a", nodes, nodes)
    status = build_status(StatusInputs(
        generation=1, selected=[n.name for n in nodes], states=affected(nodes),
        now=__import__("datetime").datetime(2026, 1, 1), blocked_cordons=p.blocked_cordons,
        blocked_reason=p.blocked_reason, blocked_message=p.blocked_message))
    blocked = {c["type"]: c for c in status["conditions"]}["RemediationBlocked"]
    assert (blocked["status"], blocked["reason"]) == ("True", CLUSTER_UNHEALTHY)
    assert "2 of 4 selected nodes are NotReady or cordoned by someone else" in blocked["message"]


def test_settings() -> None:
    default = from_env({})
    assert (default.cluster_max_cordoned, default.max_unhealthy) == (1, "10%")
    chosen = from_env({"THPCHECK_CLUSTER_MAX_CORDONED": "3", "THPCHECK_MAX_UNHEALTHY": "25%"})
    assert chosen.limits() == ClusterLimits(3, "25%")
    assert from_env({"THPCHECK_CLUSTER_MAX_CORDONED": "5%"}).cluster_max_cordoned == "5%"
    for bad in ("one", "-1", "1.5"):
        with pytest.raises(SettingsError, match="THPCHECK_MAX_UNHEALTHY"):
            from_env({"THPCHECK_MAX_UNHEALTHY": bad + "%"})
    with pytest.raises(SettingsError, match="THPCHECK_CLUSTER_MAX_CORDONED='x'"):
        from_env({"THPCHECK_CLUSTER_MAX_CORDONED": "x"})
