"""The uninstall clean-up's decisions (``thpcheck.planning.uninstall``), from plain node, DaemonSet
and pod bodies: what is left, when the restore DaemonSet is deleted, the exit and the words.
The same steps against a real API server, as the hook's ServiceAccount:
tests/chart/test_chart_cluster.py::test_uninstall_leaves_nothing_behind."""

from __future__ import annotations

from typing import Any

from thpcheck.contract import names
from thpcheck.contract.views import daemonset_view, mitigation_pod_view, node_view
from thpcheck.planning.uninstall import (
    Leftovers,
    Observed,
    Verdict,
    checks_left,
    leftovers,
    listed,
    verdict,
)

NS = "thp-checker"


def node(name: str, labels: dict[str, str] | None = None,
         annotations: dict[str, str] | None = None) -> Any:
    return node_view({"metadata": {"name": name,
                                   "labels": {"kubernetes.io/os": "linux", **(labels or {})},
                                   "annotations": annotations or {}}})


def restore(desired: int, ready: int, updated: int | None = None, generation: int = 1,
            observed: int = 1) -> Any:
    return daemonset_view({
        "metadata": {"name": names.RESTORE_DAEMONSET, "generation": generation},
        "status": {"observedGeneration": observed, "desiredNumberScheduled": desired,
                   "numberReady": ready,
                   "updatedNumberScheduled": desired if updated is None else updated}})


def pod(node_name: str, ready: bool) -> Any:
    return mitigation_pod_view({
        "metadata": {"name": f"restore-{node_name}"}, "spec": {"nodeName": node_name},
        "status": {"conditions": [{"type": "Ready", "status": str(ready)}]}})


def test_clean_nodes_and_no_restore_daemonset_pass() -> None:
    found = leftovers(Observed([node("a"), node("b")], NS))
    assert found == Leftovers(confirmed="no mitigation record left to confirm")
    assert verdict(found, 240, timed_out=False) == Verdict(
        0, "no mitigation record left to confirm")


def test_a_confirmed_restore_is_deleted_and_passes() -> None:
    found = leftovers(Observed([node("a"), node("b")], NS, restore=restore(2, 2),
                               restore_pods=[pod("a", True), pod("b", True)]))
    assert found.delete_restore and not found.problems
    assert verdict(found, 240, timed_out=False) == Verdict(
        0, "khugepaged restore confirmed on all 2 nodes not labelled for mitigation: no "
        "mitigation record left")


def test_a_node_labelled_by_hand_fails_at_once_naming_it() -> None:
    by_hand = node("b", {names.MITIGATE_LABEL: "true"})
    ours = node("c", {names.MITIGATE_LABEL: "true"}, {names.MITIGATE_BY_ANNOTATION: "x"})
    found = leftovers(Observed([node("a"), by_hand, ours], NS))
    assert found.by_hand == ("b",)
    decided = verdict(found, 240, timed_out=False)
    assert decided.exit == 1 and decided.error
    assert decided.message.startswith("nodes labelled thpcheck.io/mitigate=true by hand: b. ")
    assert "kubectl label node NAME thpcheck.io/mitigate-" in decided.message


def test_marks_of_a_check_wait_then_fail_naming_nodes_and_checks() -> None:
    marked = node("a", annotations={names.LABELLED_BY_ANNOTATION: "ghost",
                                    names.CORDONED_BY_ANNOTATION: "other"})
    found = leftovers(Observed([marked, node("b")], NS))
    assert found.problems == ("nodes still carrying marks of a ThpCheck: a (ghost, other)",)
    assert not found.delete_restore
    assert verdict(found, 240, timed_out=False) == Verdict(None)  # look again
    decided = verdict(found, 20, timed_out=True)
    assert decided == Verdict(1, "after 20s: nodes still carrying marks of a ThpCheck: a "
                              "(ghost, other). See docs/helm.md, 'Uninstall'.", True)


def test_the_mitigation_daemonset_blocks_and_keeps_the_restore() -> None:
    found = leftovers(Observed([node("a")], NS, mitigation=True, restore=restore(1, 1)))
    assert found.problems == (f"DaemonSet {NS}/thpcheck-mitigation still present (the operator "
                              "deletes it once no node is labelled)",)
    assert found.confirmed and not found.delete_restore  # confirmed, but not deleted yet
    assert verdict(found, 240, timed_out=False).exit is None


def test_an_unconfirmed_restore_names_the_nodes_without_a_ready_pod() -> None:
    nodes = [node("a"), node("b"), node("dead"), node("win", {"kubernetes.io/os": "windows"}),
             node("m", {names.MITIGATE_LABEL: "true"}, {names.MITIGATE_BY_ANNOTATION: "c"})]
    found = leftovers(Observed(nodes, NS, restore=restore(3, 2),
                               restore_pods=[pod("a", True), pod("b", False)]))
    marks, problem = found.problems  # m's mitigate-by is a mark of ThpCheck c
    assert marks == "nodes still carrying marks of a ThpCheck: m (c)"
    assert problem == (
        "khugepaged restore not confirmed (no Ready restore pod: a mitigation record may be "
        "left) on 2 nodes: b, dead (DaemonSet thpcheck-mitigation-restore: 2 of 3 pods Ready, "
        "3 current, for 3 nodes)")
    assert not found.confirmed and not found.delete_restore


def test_a_restore_daemonset_behind_its_template_is_not_confirmed() -> None:
    stale = restore(1, 1, generation=2, observed=1)
    found = leftovers(Observed([node("a")], NS, restore=stale, restore_pods=[pod("a", True)]))
    assert found.problems and "on 0 nodes: none" in found.problems[0]
    assert leftovers(Observed([node("a")], NS, restore=restore(1, 1, updated=0))).problems


def test_without_a_namespace_only_the_nodes_are_looked_at() -> None:
    found = leftovers(Observed([node("a")]))
    assert found == Leftovers()
    assert verdict(found, 5, timed_out=False) == Verdict(None)


def test_long_lists_name_ten_and_count_the_rest() -> None:
    assert listed([f"n{i:02}" for i in range(13)]) == (
        "n00, n01, n02, n03, n04, n05, n06, n07, n08, n09 and 3 more")
    assert listed([]) == ""
    assert checks_left(240, ["a", "b"]).startswith(
        "ThpChecks still present after 240s: a, b. The operator removes them")
