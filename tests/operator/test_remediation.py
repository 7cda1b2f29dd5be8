"""Remediation planning: budgets, ownership of marks, exclusions, dry run and clean-up."""

from __future__ import annotations

import pytest

from tests.operator.factories import node
from thpcheck.contract import names
from thpcheck.contract.checkspec import Remediation
from thpcheck.contract.quantities import budget, concurrency, parse_duration, resolve
from thpcheck.contract.views import NodeView
from thpcheck.model.verdict import Verdict
from thpcheck.planning.remediation import (
    Action,
    RemediationPlan,
    event_reason,
    plan_cleanup,
    plan_remediation,
)
from thpcheck.planning.states import NodeState

CHECK = "weekly"
CORDON = Remediation(label=True, cordon=True, max_cordoned=2)


def fleet(count: int = 10, affected: int = 6, **overrides: dict) -> list[NodeView]:
    return [node(f"n{i}", **overrides.get(f"n{i}", {})) for i in range(count)]


def verdicts(nodes: list[NodeView], affected: int = 6,
             mitigated: frozenset[str] = frozenset()) -> dict[str, NodeState]:
    return {n.name: NodeState(n.name, Verdict.AFFECTED if i < affected else Verdict.NOT_AFFECTED,
                              mitigated=n.name in mitigated)
            for i, n in enumerate(nodes)}


def run(nodes: list[NodeView], remediation: Remediation = CORDON, *, paused: bool = False,
        cordoned: list[str] = (), states: dict[str, NodeState] | None = None,
        selected: list[NodeView] | None = None) -> RemediationPlan:
    return plan_remediation(CHECK, remediation, paused=paused,
                            selected=selected if selected is not None else nodes,
                            all_nodes=nodes, states=states or verdicts(nodes),
                            cordoned=list(cordoned))


def cordons(plan: RemediationPlan) -> list[str]:
    return [c.node for c in plan.changes if c.unschedulable is True]


def test_budget_math() -> None:
    assert budget(2, 10) == 2
    assert budget("25%", 10) == 2  # rounded down: never over the budget
    assert budget("0%", 10) == 0
    assert budget("100%", 3) == 3
    assert concurrency("10%", 3) == 1  # rounded up, at least one node
    assert concurrency("10%", 5000) == 500
    assert resolve("50%", 5, round_up=True) == 3
    with pytest.raises(ValueError, match="percentage"):
        resolve("ten", 5, round_up=False)
    assert parse_duration("1h30m").total_seconds() == 5400
    with pytest.raises(ValueError, match="duration"):
        parse_duration("1 day")


def test_six_affected_with_a_budget_of_two_cordons_exactly_two() -> None:
    nodes = fleet()
    plan = run(nodes)
    assert cordons(plan) == ["n0", "n1"]
    assert plan.cordoned_before == ["n0", "n1"] == plan.cordoned_after
    assert plan.blocked_cordons == 4
    change = next(c for c in plan.changes if c.node == "n0")
    assert change.patch()["spec"] == {"unschedulable": True}
    assert change.patch()["metadata"]["annotations"][names.CORDONED_BY_ANNOTATION] == CHECK
    assert change.patch()["metadata"]["resourceVersion"] == "7"  # never clobber an admin


def test_the_budget_counts_the_persisted_list_not_a_fresh_listing() -> None:
    nodes = fleet()
    # A crash after persisting n4/n5 but before cordoning them: still counted, and retried.
    plan = run(nodes, cordoned=["n4", "n5"])
    assert cordons(plan) == ["n4", "n5"]
    assert plan.cordoned_after == ["n4", "n5"]


def test_nodes_we_cordoned_are_counted_even_if_the_list_lost_them() -> None:
    ours = {names.CORDONED_BY_ANNOTATION: CHECK}
    nodes = fleet(n3={"unschedulable": True, "annotations": ours},
                  n5={"unschedulable": True, "annotations": ours})
    plan = run(nodes)
    assert cordons(plan) == []
    assert plan.cordoned_after == ["n3", "n5"]


def test_an_admin_cordon_is_neither_touched_nor_counted() -> None:
    nodes = fleet(n0={"unschedulable": True})
    plan = run(nodes)
    assert cordons(plan) == ["n1", "n2"]
    assert all(c.node != "n0" or c.unschedulable is None for c in plan.changes)
    cleanup = plan_cleanup(CHECK, nodes)
    assert all(c.unschedulable is None for c in cleanup if c.node == "n0")


def test_excluded_nodes_are_never_touched() -> None:
    excluded = {"labels": {names.EXCLUDE_LABEL: "true"}}
    nodes = fleet(n0=excluded, n1=excluded)
    plan = run(nodes, Remediation(label=True, cordon=True, mitigate=True, max_cordoned=2))
    assert {"n0", "n1"}.isdisjoint(c.node for c in plan.changes)
    assert cordons(plan) == ["n2", "n3"]


def test_marks_made_before_an_exclusion_are_undone() -> None:
    nodes = fleet(n0={"unschedulable": True, "labels": {names.EXCLUDE_LABEL: "true"},
                      "annotations": {names.CORDONED_BY_ANNOTATION: CHECK}})
    plan = run(nodes, cordoned=["n0"])
    n0 = next(c for c in plan.changes if c.node == "n0")
    assert n0.unschedulable is False
    assert "n0" not in plan.cordoned_after


def test_mitigated_or_recovered_nodes_are_uncordoned() -> None:
    ours = {"unschedulable": True, "annotations": {names.CORDONED_BY_ANNOTATION: CHECK}}
    nodes = fleet(n0=ours, n1=ours)
    states = verdicts(nodes, mitigated=frozenset({"n0"}))
    states["n1"] = NodeState("n1", Verdict.NOT_AFFECTED)
    plan = run(nodes, states=states, cordoned=["n0", "n1"])
    released = {c.node: c for c in plan.changes if c.unschedulable is False}
    assert set(released) == {"n0", "n1"}
    assert released["n0"].actions[-1].reason == "mitigated"
    assert released["n0"].patch()["spec"] == {"unschedulable": None}
    assert cordons(plan) == ["n2", "n3"]  # the freed budget goes to the next ones
    assert plan.cordoned_before == ["n0", "n1", "n2", "n3"]  # persisted before acting
    assert plan.cordoned_after == ["n2", "n3"]


def test_labels_follow_the_verdict_and_respect_other_checks() -> None:
    nodes = fleet(3, n2={"labels": {names.VERDICT_LABEL: "affected"},
                         "annotations": {names.LABELLED_BY_ANNOTATION: "other"}})
    plan = run(nodes, Remediation(), states=verdicts(nodes, affected=1))
    labels = {c.node: c.labels for c in plan.changes}
    assert labels["n0"] == {names.VERDICT_LABEL: "affected", names.MITIGATED_LABEL: "false"}
    assert labels["n1"] == {names.VERDICT_LABEL: "not-affected", names.MITIGATED_LABEL: "false"}
    assert "n2" not in labels
    labelled = [node(n.name, labels=labels.get(n.name, {}),
                     annotations={names.LABELLED_BY_ANNOTATION: CHECK}) for n in nodes[:2]]
    assert run(labelled, Remediation(), states=verdicts(labelled, affected=1)).changes == []


def test_mitigation_labels_affected_nodes_only() -> None:
    nodes = fleet(4)
    plan = run(nodes, Remediation(label=False, mitigate=True), states=verdicts(nodes, 2))
    assert {c.node for c in plan.changes} == {"n0", "n1"}
    n0 = plan.changes[0]
    assert n0.labels == {names.MITIGATE_LABEL: "true"}
    assert n0.annotations == {names.MITIGATE_BY_ANNOTATION: CHECK}
    assert event_reason(n0.actions, applied=True) == "MitigationRequested"


def test_dry_run_changes_nothing_and_lists_the_plan() -> None:
    nodes = fleet()
    plan = run(nodes, Remediation(label=True, cordon=True, mitigate=True, dry_run=True,
                                  max_cordoned=2))
    assert plan.changes == []
    assert plan.cordoned_before == plan.cordoned_after == []
    kinds = {(a.node, a.action) for a in plan.planned}
    assert ("n0", Action.CORDON) in kinds and ("n2", Action.CORDON) not in kinds
    assert ("n5", Action.MITIGATE) in kinds and ("n6", Action.MITIGATE) not in kinds
    assert ("n9", Action.LABEL) in kinds
    cordon_actions = [a for a in plan.planned if a.action is Action.CORDON]
    assert event_reason(cordon_actions, applied=False) == "WouldCordon"


def test_paused_takes_no_new_action_and_keeps_state() -> None:
    ours = {"unschedulable": True, "annotations": {names.CORDONED_BY_ANNOTATION: CHECK}}
    nodes = fleet(n9=ours)  # n9 is not affected: would be uncordoned, but paused keeps it
    plan = run(nodes, paused=True, cordoned=["n9"])
    assert plan.changes == [] and plan.cordoned_after == ["n9"]


def test_unselected_nodes_lose_our_marks() -> None:
    ours = {"unschedulable": True, "labels": {names.VERDICT_LABEL: "affected"},
            "annotations": {names.CORDONED_BY_ANNOTATION: CHECK,
                            names.LABELLED_BY_ANNOTATION: CHECK}}
    nodes = fleet(3, n0=ours)
    plan = run(nodes, selected=nodes[1:], cordoned=["n0"])
    n0 = next(c for c in plan.changes if c.node == "n0")
    assert n0.unschedulable is False and n0.labels[names.VERDICT_LABEL] is None


def test_cleanup_undoes_exactly_our_marks() -> None:
    nodes = [
        node("ours", unschedulable=True,
             labels={names.VERDICT_LABEL: "affected", names.MITIGATED_LABEL: "false",
                     names.MITIGATE_LABEL: "true"},
             annotations={names.CORDONED_BY_ANNOTATION: CHECK,
                          names.LABELLED_BY_ANNOTATION: CHECK,
                          names.MITIGATE_BY_ANNOTATION: CHECK}),
        node("theirs", unschedulable=True, labels={names.VERDICT_LABEL: "affected"},
             annotations={names.CORDONED_BY_ANNOTATION: "other",
                          names.LABELLED_BY_ANNOTATION: "other"}),
        node("admin", unschedulable=True),
    ]
    (change,) = plan_cleanup(CHECK, nodes)
    assert change.node == "ours"
    assert change.patch() == {
        "spec": {"unschedulable": None},
        "metadata": {
            "labels": {names.VERDICT_LABEL: None, names.MITIGATED_LABEL: None,
                       names.MITIGATE_LABEL: None},
            "annotations": {names.LABELLED_BY_ANNOTATION: None,
                            names.MITIGATE_BY_ANNOTATION: None,
                            names.CORDONED_BY_ANNOTATION: None}}}
    assert event_reason(change.actions, applied=True) == "Uncordoned"
