"""Deletion that never strands a mark: the orphan plan, the backoff without a last attempt,
and the condition naming what blocks the clean-up."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.operator.factories import node
from thpcheck.contract import names
from thpcheck.contract.views import NodeView
from thpcheck.planning.cleanup import CLEANUP_BLOCKED, backoff, blocked_conditions, blocked_message
from thpcheck.planning.remediation import Action, marked_by, plan_orphans

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def marked(name: str, check: str, *, cordon: bool = False, mitigate: bool = False,
           other: str = "") -> NodeView:
    annotations = {names.LABELLED_BY_ANNOTATION: check}
    labels = {names.VERDICT_LABEL: "affected", names.MITIGATED_LABEL: "false"}
    if cordon:
        annotations[names.CORDONED_BY_ANNOTATION] = check
    if mitigate:
        annotations[names.MITIGATE_BY_ANNOTATION] = other or check
        labels[names.MITIGATE_LABEL] = "true"
    return node(name, unschedulable=cordon, labels=labels, annotations=annotations)


def test_orphans_are_the_marks_of_checks_that_are_gone_and_nothing_else() -> None:
    nodes = [marked("a", "gone", cordon=True), marked("b", "live", cordon=True),
             marked("c", "gone", mitigate=True, other="live"), node("d", unschedulable=True)]
    assert marked_by(nodes[2]) == {"gone", "live"}
    changes = {c.node: c for c in plan_orphans(nodes, {"live"})}
    assert sorted(changes) == ["a", "c"]
    assert changes["a"].patch() == {
        "spec": {"unschedulable": None},
        "metadata": {"labels": {names.VERDICT_LABEL: None, names.MITIGATED_LABEL: None},
                     "annotations": {names.LABELLED_BY_ANNOTATION: None,
                                     names.CORDONED_BY_ANNOTATION: None}}}
    # c: only the labels of the gone check; the live check's mitigation label stays.
    assert {a.action for a in changes["c"].actions} == {Action.UNLABEL}
    assert changes["c"].labels == {names.VERDICT_LABEL: None, names.MITIGATED_LABEL: None}
    assert "ThpCheck gone no longer exists" in changes["a"].actions[0].reason
    assert plan_orphans(nodes, {"live", "gone"}) == []


def test_the_backoff_doubles_to_its_cap_and_never_ends() -> None:
    assert [backoff(r, 300) for r in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert backoff(10_000, 300) == 300  # no overflow, no last attempt
    assert backoff(0, 2) == 2


def test_the_condition_names_the_nodes_and_errors_and_keeps_the_others() -> None:
    failures = {f"n{i}": f"PATCH /api/v1/nodes/n{i}: 422: denied by policy" for i in range(7)}
    message = blocked_message(failures)
    assert message.startswith("7 nodes still carry marks of this ThpCheck")
    assert "n0: PATCH /api/v1/nodes/n0: 422: denied by policy" in message
    assert "n4:" in message and "n5:" not in message and message.endswith("(and 2 more)")
    previous = [{"type": "Ready", "status": "True", "reason": "AllNodesChecked",
                 "message": "", "lastTransitionTime": "2026-11-01T00:00:00Z"}]
    conditions = blocked_conditions(previous, failures, NOW, 3)
    assert [c["type"] for c in conditions] == ["Ready", CLEANUP_BLOCKED]
    blocked = conditions[1]
    assert (blocked["status"], blocked["reason"], blocked["observedGeneration"]) == (
        "True", "NodePatchRefused", 3)
    later = blocked_conditions(conditions, {"n1": "gone"}, datetime(2026, 12, 2, tzinfo=UTC), 3)
    assert later[1]["lastTransitionTime"] == blocked["lastTransitionTime"]
