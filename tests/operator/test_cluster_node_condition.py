"""The node condition and the taint mode on the real control plane (kwok nodes): the condition
per verdict, kept through status writers that drop it (kwok's own re-initialisation, a writer
replacing the list), gone with the ThpCheck; the taint within the cordon budget, gone with it.
Conditions and taints the operator did not write stay."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.accounts import remove_chart_rbac, service_account_kubeconfig
from devtools.cluster.harness import Cluster
from devtools.cluster.operator import OperatorProcess
from tests.operator.cluster_kit import (
    Kubelet,
    check_events,
    checks_cleaned_up,
    eventually,
    get_check,
    new_check,
    node,
    with_verdict,
)
from thpcheck.contract import names

pytestmark = pytest.mark.cluster
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
FOREIGN = {"type": "KernelDeadlock", "status": "False", "reason": "KernelHasNoDeadlock",
           "message": "node-problem-detector's own", "lastHeartbeatTime": "2026-12-01T00:00:00Z",
           "lastTransitionTime": "2026-12-01T00:00:00Z"}


def conditions(cluster: Cluster, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in node(cluster, name)["status"].get("conditions") or []}


def ours(cluster: Cluster, name: str) -> tuple[str, str] | None:
    found = conditions(cluster, name).get(names.NODE_CONDITION)
    return (found["status"], found["reason"]) if found else None


def test_the_condition_per_verdict_survives_status_rewrites_and_goes_with_the_check(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    hit, fine, maybe = make_nodes(3)
    # A condition someone else owns (node-problem-detector): never touched.
    crds.api("PATCH", f"/api/v1/nodes/{fine}/status",
             {"status": {"conditions": [FOREIGN]}}, content_type=STRATEGIC)
    check = f"cond-{test_id}"
    new_check(crds, checks, check, {"thpcheck-test": test_id}, tmp_path / "scratch",
              {"condition": True})
    pods = kubelet.wait_check_pods(check, [hit, fine, maybe])
    _, document = kubelet.run_agent(pods[hit])
    for name, verdict in ((hit, "affected"), (fine, "not-affected"), (maybe, "susceptible")):
        kubelet.terminate(pods[name], with_verdict(document, verdict))
    want = {hit: ("True", "Affected"), fine: ("False", "NotAffected"),
            maybe: ("Unknown", "Susceptible")}
    eventually(lambda: {n: ours(crds, n) for n in want} == want, timeout=60,
               what="ThpDataLoss True / False / Unknown")
    message = conditions(crds, hit)[names.NODE_CONDITION]["message"]
    assert document["kernel"]["release"] in message
    assert f"ThpNodeResult {names.result_name(check, hit)}" in message
    assert node(crds, hit)["metadata"]["annotations"][names.CONDITION_BY_ANNOTATION] == check
    assert conditions(crds, fine)["KernelDeadlock"]["message"] == FOREIGN["message"]

    # kwok's own status rewrite: once Ready is not True its node-initialize stage writes the
    # whole status from its template again (as a kubelet's status sync writes its own).
    before = conditions(crds, hit)["Ready"]["lastHeartbeatTime"]
    time.sleep(1.1)  # heartbeat times have one-second resolution
    crds.api("PATCH", f"/api/v1/nodes/{hit}/status", {"status": {"conditions": [
        {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
         "message": "the test stopped posting status"}]}}, content_type=STRATEGIC)
    eventually(lambda: conditions(crds, hit)["Ready"]["status"] == "True"
               and conditions(crds, hit)["Ready"]["lastHeartbeatTime"] != before,
               timeout=60, what="kwok re-initialised the node's status")
    eventually(lambda: ours(crds, hit) == ("True", "Affected"), timeout=30,
               what="ThpDataLoss still True after kwok's rewrite")
    # A writer that replaces the whole list (a JSON merge patch of a stale read) drops it: the
    # operator puts it back, and leaves the writer's conditions alone.
    kept = [c for c in node(crds, fine)["status"]["conditions"]
            if c["type"] != names.NODE_CONDITION]
    crds.api("PATCH", f"/api/v1/nodes/{fine}/status", {"status": {"conditions": kept}},
             content_type=MERGE)
    eventually(lambda: ours(crds, fine) == ("False", "NotAffected"), timeout=30,
               what="ThpDataLoss put back after a writer dropped it")
    for _ in range(3):  # it stays, and is not rewritten while unchanged
        version = node(crds, fine)["metadata"]["resourceVersion"]
        time.sleep(1.5)
        assert ours(crds, fine) == ("False", "NotAffected")
    assert node(crds, fine)["metadata"]["resourceVersion"] == version

    crds.kubectl("delete", "thpcheck", check, "--wait=true", "--timeout=60s")
    for name in want:
        assert ours(crds, name) is None, name
        assert names.CONDITION_BY_ANNOTATION not in (
            node(crds, name)["metadata"].get("annotations") or {})
    assert conditions(crds, fine)["KernelDeadlock"]["message"] == FOREIGN["message"]


def test_the_taint_holds_within_the_budget_and_goes_with_the_check(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    nodes = make_nodes(3)
    admin = {"key": "dedicated", "value": "db", "effect": "NoSchedule"}
    for name in nodes:
        crds.api("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": [admin]}},
                 content_type=MERGE)
    check = f"taint-{test_id}"
    new_check(crds, checks, check, {"thpcheck-test": test_id}, tmp_path / "scratch",
              {"taint": "NoSchedule", "maxCordoned": 1})
    pods = kubelet.wait_check_pods(check, nodes)
    _, document = kubelet.run_agent(pods[nodes[0]])
    # The agent reads this machine's khugepaged knob, which another tier may have stopped
    # meanwhile (then it reports mitigated, and a mitigated node is not held).
    document["mitigated"] = False
    for name in nodes:
        kubelet.terminate(pods[name], with_verdict(document, "affected"))

    def ours_tainted() -> list[str]:
        return sorted(n for n in nodes if any(
            t["key"] == names.TAINT_KEY for t in node(crds, n)["spec"].get("taints") or []))

    def diagnose() -> str:
        return (f"status: {(get_check(crds, check) or {}).get('status')}\n"
                f"taints: { {n: node(crds, n)['spec'].get('taints') for n in nodes} }\n"
                + operator.tail())

    eventually(lambda: len(ours_tainted()) == 1, timeout=60, what="one node tainted",
               diagnose=diagnose)
    for _ in range(8):  # the budget holds over several reconciles
        assert len(ours_tainted()) == 1
        time.sleep(0.5)
    [held] = ours_tainted()
    spec = node(crds, held)["spec"]
    assert not spec.get("unschedulable")  # a taint, not a cordon
    assert sorted(spec["taints"], key=lambda t: t["key"]) == [
        admin, {"key": names.TAINT_KEY, "value": names.TAINT_VALUE, "effect": "NoSchedule"}]
    status = eventually(lambda: (get_check(crds, check) or {}).get("status"),
                        what="the check's status")
    eventually(lambda: (get_check(crds, check) or {}).get("status", {}).get(
        "cordonedNodes") == [held], what="the taint counted in cordonedNodes")
    blocked = eventually(lambda: next(
        (c for c in (get_check(crds, check) or {}).get("status", {}).get("conditions") or []
         if c["type"] == "RemediationBlocked" and c["status"] == "True"), None),
        what="RemediationBlocked")
    assert "2 affected nodes wait for a taint" in blocked["message"], (blocked, status)

    crds.kubectl("delete", "thpcheck", check, "--wait=true", "--timeout=60s")
    for name in nodes:
        spec = node(crds, name)["spec"]
        assert spec.get("taints") == [admin], name
        assert names.TAINTED_BY_ANNOTATION not in (
            node(crds, name)["metadata"].get("annotations") or {})


def test_without_nodes_status_a_warning_names_the_fix_and_deletion_is_not_blocked(
        crds: Cluster, namespace: str, kubelet: Kubelet, make_nodes: Callable[..., list[str]],
        test_id: str, tmp_path: Path) -> None:
    """The operator as the chart runs it without remediation.condition (no nodes/status): a
    ThpCheck asking for the condition gets one Warning naming the chart value, and its
    deletion is not blocked by the permission it never had."""
    kubeconfig = service_account_kubeconfig(crds, namespace, tmp_path / "sa.kubeconfig")
    operator = OperatorProcess(crds, namespace, tmp_path / "logs",
                               args=("--kubeconfig", str(kubeconfig))).start()
    created: list[str] = []
    try:
        with checks_cleaned_up(crds, operator, created):
            [hit] = make_nodes(1)
            check = f"noperm-{test_id}"
            new_check(crds, created, check, {"thpcheck-test": test_id}, tmp_path / "scratch",
                      {"condition": True})
            pods = kubelet.wait_check_pods(check, [hit])
            _, document = kubelet.run_agent(pods[hit])
            kubelet.terminate(pods[hit], with_verdict(document, "affected"))
            warning = eventually(lambda: next((e for e in check_events(crds, check)
                                               if e["reason"] == "NodeConditionForbidden"),
                                              None), timeout=60, what="the Warning Event")
            assert "remediation.condition=true" in warning["message"]
            assert ours(crds, hit) is None
            crds.kubectl("delete", "thpcheck", check, "--wait=true", "--timeout=60s")
            assert names.CONDITION_BY_ANNOTATION not in (
                node(crds, hit)["metadata"].get("annotations") or {})
    finally:
        operator.stop()
        remove_chart_rbac(crds, namespace)
