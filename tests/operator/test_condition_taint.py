"""The node condition and the taint mode (issue 20): planned from the effective verdict, owned
through annotations, within the cordon budgets, undone like every other mark."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.operator.factories import node
from thpcheck.contract import names
from thpcheck.contract.checkspec import Remediation, parse_spec
from thpcheck.contract.proof import Proof
from thpcheck.contract.views import NodeView, node_view
from thpcheck.model.verdict import Verdict
from thpcheck.planning.remediation import (
    Action,
    RemediationPlan,
    plan_cleanup,
    plan_orphans,
    plan_remediation,
)
from thpcheck.planning.states import NodeState

CHECK = "weekly"
NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
CONDITION = Remediation(label=True, condition=True)
TAINT = Remediation(label=False, taint="NoSchedule", max_cordoned=1)


def run(nodes: list[NodeView], states: dict[str, NodeState],
        remediation: Remediation = CONDITION, cordoned: list[str] | None = None,
        dry_run: bool = False) -> RemediationPlan:
    return plan_remediation(CHECK, remediation, paused=dry_run, selected=nodes,
                            all_nodes=nodes, states=states, cordoned=cordoned or [], now=NOW)


def with_condition(name: str, status: str, reason: str, message: str = "",
                   **annotations: str) -> NodeView:
    return node_view({
        "metadata": {"name": name, "resourceVersion": "7", "annotations": annotations},
        "status": {"nodeInfo": {"kernelVersion": "6.12.90"}, "conditions": [
            {"type": "Ready", "status": "True"},
            {"type": names.NODE_CONDITION, "status": status, "reason": reason,
             "message": message, "lastTransitionTime": "2026-12-01T00:00:00Z"}]}})


def change_of(plan: RemediationPlan, name: str):  # type: ignore[no-untyped-def]
    return next(c for c in plan.changes if c.node == name)


def test_spec_parses_condition_and_taint() -> None:
    remedy = parse_spec({"remediation": {"condition": True, "taint": "PreferNoSchedule"}})
    assert remedy.remediation.condition is True
    assert remedy.remediation.taint == "PreferNoSchedule"
    assert parse_spec({}).remediation.condition is False
    assert parse_spec({}).remediation.taint == ""


def test_condition_status_follows_the_effective_verdict() -> None:
    proof = Proof("2026-12-01T00:00:00Z", "6.12.90", "boot-1")
    nodes = [node(f"n{i}") for i in range(5)]
    states = {
        "n0": NodeState("n0", Verdict.AFFECTED, proof=proof, filesystems=("ext4", "xfs")),
        "n1": NodeState("n1", Verdict.NOT_AFFECTED),
        "n2": NodeState("n2", Verdict.SUSCEPTIBLE),
        "n3": NodeState("n3", Verdict.ERROR),
        "n4": NodeState("n4", None),  # not checked yet: no opinion, nothing written
    }
    plan = run(nodes, states)
    got = {c.node: c.condition for c in plan.changes if c.condition}
    assert {n: (c["status"], c["reason"]) for n, c in got.items()} == {
        "n0": ("True", "Affected"), "n1": ("False", "NotAffected"),
        "n2": ("Unknown", "Susceptible"), "n3": ("Unknown", "CheckFailed")}
    message = got["n0"]["message"]
    assert "6.12.90" in message and "ext4, xfs" in message
    assert f"ThpNodeResult {names.result_name(CHECK, 'n0')}" in message
    assert got["n0"]["lastTransitionTime"] == "2026-12-04T10:00:00Z"
    n0 = change_of(plan, "n0")
    # condition-by is written with the Node patch, before the status patch sets the condition.
    assert n0.patch()["metadata"]["annotations"][names.CONDITION_BY_ANNOTATION] == CHECK
    assert not n0.condition_first
    assert n0.status_patch() == {"status": {"conditions": [n0.condition]}}
    assert Action.SET_CONDITION in {a.action for a in n0.actions}


def test_a_proof_keeps_the_condition_true_through_an_error_rerun() -> None:
    proof = Proof("2026-12-01T00:00:00Z", "6.12.90", "boot-1")
    # plan_results gives the proof's verdict while it stands, the latest run beside it.
    state = NodeState("n0", Verdict.AFFECTED, latest=Verdict.ERROR, proof=proof)
    ours = with_condition("n0", "True", "Affected", **{names.CONDITION_BY_ANNOTATION: CHECK})
    plan = run([ours], {"n0": state})
    assert all(c.condition is None or c.condition["status"] == "True" for c in plan.changes)
    assert not any(c.remove_condition for c in plan.changes)


def test_an_unchanged_condition_is_not_written_and_a_lost_one_is_put_back() -> None:
    state = {"n0": NodeState("n0", Verdict.NOT_AFFECTED)}
    first = run([node("n0")], state)
    written = change_of(first, "n0").condition
    assert written is not None
    same = with_condition("n0", "False", "NotAffected", written["message"],
                          **{names.CONDITION_BY_ANNOTATION: CHECK})
    assert all(c.condition is None for c in run([same], state).changes)
    # A status writer dropped it (kwok rewrites every condition): set again, annotation kept.
    lost = node("n0", annotations={names.CONDITION_BY_ANNOTATION: CHECK})
    again = change_of(run([lost], state), "n0")
    assert again.condition is not None and again.condition["status"] == "False"
    assert names.CONDITION_BY_ANNOTATION not in again.annotations
    # A transition keeps no old lastTransitionTime; an unchanged status keeps it.
    flipped = change_of(run([same], {"n0": NodeState("n0", Verdict.AFFECTED)}), "n0")
    assert flipped.condition is not None
    assert flipped.condition["lastTransitionTime"] == "2026-12-04T10:00:00Z"
    reworded = with_condition("n0", "False", "NotAffected", "old words",
                              **{names.CONDITION_BY_ANNOTATION: CHECK})
    kept = change_of(run([reworded], state), "n0").condition
    assert kept is not None and kept["lastTransitionTime"] == "2026-12-01T00:00:00Z"


def test_a_condition_we_did_not_write_is_never_touched() -> None:
    foreign = with_condition("n0", "True", "SomeoneElse")
    other = with_condition("n1", "True", "Affected", **{names.CONDITION_BY_ANNOTATION: "other"})
    states = {n: NodeState(n, Verdict.NOT_AFFECTED) for n in ("n0", "n1")}
    plan = run([foreign, other], states)
    assert not [c for c in plan.changes if c.condition or c.remove_condition]
    assert not plan_cleanup(CHECK, [foreign, other]) or all(
        not c.remove_condition for c in plan_cleanup(CHECK, [foreign, other]))


def test_the_condition_goes_when_turned_off_excluded_deleted_or_orphaned() -> None:
    ours = with_condition("n0", "True", "Affected", **{names.CONDITION_BY_ANNOTATION: CHECK})
    state = {"n0": NodeState("n0", Verdict.AFFECTED)}
    for plan in (run([ours], state, Remediation(label=True)),
                 plan_remediation(CHECK, CONDITION, paused=False, selected=[],
                                  all_nodes=[ours], states=state, cordoned=[], now=NOW)):
        change = change_of(plan, "n0")
        assert change.remove_condition and change.condition_first
        assert change.annotations[names.CONDITION_BY_ANNOTATION] is None
        assert change.status_patch() == {"status": {"conditions": [
            {"type": names.NODE_CONDITION, "$patch": "delete"}]}}
    for changes in (plan_cleanup(CHECK, [ours]), plan_orphans([ours], checks=["another"])):
        assert [c.remove_condition for c in changes] == [True]
        assert Action.REMOVE_CONDITION in {a.action for a in changes[0].actions}


def test_dry_run_plans_the_condition_but_changes_nothing() -> None:
    plan = run([node("n0")], {"n0": NodeState("n0", Verdict.AFFECTED)}, dry_run=True)
    assert plan.changes == []
    assert [a.action for a in plan.planned if a.node == "n0"].count(Action.SET_CONDITION) == 1


# -- the taint ---------------------------------------------------------------------------


def affected(*names_: str) -> dict[str, NodeState]:
    return {n: NodeState(n, Verdict.AFFECTED) for n in names_}


def test_taints_within_the_cordon_budget_and_keeps_other_taints() -> None:
    admin = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    nodes = [node("n0", taints=[admin]), node("n1")]
    plan = run(nodes, affected("n0", "n1"), TAINT)
    assert plan.blocked_cordons == 1 and plan.cordoned_before == ["n0"]
    assert "wait for a taint" in plan.blocked_message
    n0 = change_of(plan, "n0")
    spec = n0.patch()["spec"]
    assert "unschedulable" not in spec  # taint mode alone does not cordon
    assert spec["taints"] == [admin, {"key": names.TAINT_KEY, "value": names.TAINT_VALUE,
                                      "effect": "NoSchedule"}]
    meta = n0.patch()["metadata"]
    assert meta["resourceVersion"] == "7"  # the list is replaced whole: only if unchanged
    assert meta["annotations"][names.TAINTED_BY_ANNOTATION] == CHECK


def test_cordon_and_taint_together_count_one_node_once() -> None:
    both = Remediation(cordon=True, taint="PreferNoSchedule", max_cordoned=1)
    plan = run([node("n0"), node("n1")], affected("n0", "n1"), both)
    n0 = change_of(plan, "n0").patch()
    assert n0["spec"]["unschedulable"] is True and len(n0["spec"]["taints"]) == 1
    assert plan.cordoned_after == ["n0"] and plan.blocked_cordons == 1


def tainted(name: str, effect: str = "NoSchedule", by: str = CHECK, **kw: object) -> NodeView:
    return node(name, annotations={names.TAINTED_BY_ANNOTATION: by},
                taints=[{"key": names.TAINT_KEY, "value": names.TAINT_VALUE, "effect": effect},
                        {"key": "x", "value": "", "effect": "NoExecute",
                         "timeAdded": "2026-12-01T00:00:00Z"}], **kw)  # type: ignore[arg-type]


def test_the_taint_stays_on_a_proven_node_and_changes_with_the_spec() -> None:
    proof = Proof("2026-12-01T00:00:00Z", "6.12.90", "boot-1")
    state = {"n0": NodeState("n0", Verdict.AFFECTED, latest=Verdict.ERROR, proof=proof)}
    assert run([tainted("n0")], state, TAINT, cordoned=["n0"]).changes == []
    softer = run([tainted("n0")], state, Remediation(taint="PreferNoSchedule"), ["n0"])
    assert change_of(softer, "n0").patch()["spec"]["taints"][-1]["effect"] == "PreferNoSchedule"


def test_the_taint_is_lifted_on_the_same_rules_as_the_cordon() -> None:
    cases = {
        "not affected any more": (TAINT, {"n0": NodeState("n0", Verdict.NOT_AFFECTED)}),
        "mitigated": (TAINT, {"n0": NodeState("n0", Verdict.AFFECTED, mitigated=True)}),
        "taint off": (Remediation(), affected("n0")),
    }
    for why, (remedy, states) in cases.items():
        plan = run([tainted("n0")], states, remedy, ["n0"])
        change = change_of(plan, "n0")
        assert change.patch()["spec"]["taints"] == [
            {"key": "x", "effect": "NoExecute", "timeAdded": "2026-12-01T00:00:00Z"}], why
        assert change.annotations[names.TAINTED_BY_ANNOTATION] is None, why
        assert plan.cordoned_after == [], why
    for changes in (plan_cleanup(CHECK, [tainted("n0")]),
                    plan_orphans([tainted("n0")], checks=[])):
        assert [t["key"] for t in changes[0].patch()["spec"]["taints"]] == ["x"]


def test_a_taint_of_another_check_is_not_ours_and_counts_in_the_cluster_budget() -> None:
    from thpcheck.planning.remediation import ClusterLimits

    other = tainted("n0", by="other")
    plan = plan_remediation(CHECK, TAINT, paused=False, selected=[other, node("n1")],
                            all_nodes=[other, node("n1")], states=affected("n0", "n1"),
                            cordoned=[], limits=ClusterLimits(max_cordoned=1), now=NOW)
    assert all(c.taints is None and c.unschedulable is None for c in plan.changes)
    assert plan.cordoned_after == [] and plan.blocked_cordons == 1
    assert plan_cleanup(CHECK, [other]) == []


def test_an_annotation_without_its_condition_goes_without_a_status_patch() -> None:
    """nodes/status refused (no chart value) leaves condition-by alone on the node: undoing
    it must not need nodes/status, or a missing permission would block the clean-up."""
    marked = node("n0", annotations={names.CONDITION_BY_ANNOTATION: CHECK})
    for changes in (plan_cleanup(CHECK, [marked]), plan_orphans([marked], checks=[])):
        [change] = changes
        assert change.annotations == {names.CONDITION_BY_ANNOTATION: None}
        assert not change.remove_condition and change.status_patch() is None
