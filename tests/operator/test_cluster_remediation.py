"""Remediation on the real control plane: 10 kwok nodes, 6 affected, a cordon budget of 2,
an admin's cordon, an excluded node, dry run, mitigation, and a clean deletion."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.harness import Cluster
from devtools.cluster.operator import CHECKS_PATH, OperatorProcess
from tests.operator.cluster_kit import (
    Kubelet,
    change_events,
    eventually,
    get_check,
    node,
    node_events,
    results,
    with_verdict,
)
from thpcheck.contract import names

pytestmark = pytest.mark.cluster

OUR_LABELS = (names.VERDICT_LABEL, names.MITIGATED_LABEL, names.MITIGATE_LABEL)
OUR_ANNOTATIONS = (names.CORDONED_BY_ANNOTATION, names.LABELLED_BY_ANNOTATION,
                   names.MITIGATE_BY_ANNOTATION)


def marks(cluster: Cluster, name: str) -> dict[str, Any]:
    """What the operator may have changed on a node."""
    meta = node(cluster, name)
    labels = meta["metadata"].get("labels") or {}
    annotations = meta["metadata"].get("annotations") or {}
    return {"unschedulable": bool(meta["spec"].get("unschedulable")),
            **{k: labels[k] for k in OUR_LABELS if k in labels},
            **{k: annotations[k] for k in OUR_ANNOTATIONS if k in annotations}}


def status_of(cluster: Cluster, name: str) -> dict[str, Any]:
    status: dict[str, Any] = (get_check(cluster, name) or {}).get("status") or {}
    return status


def patch_remediation(cluster: Cluster, name: str, **fields: Any) -> None:
    cluster.api("PATCH", f"{CHECKS_PATH}/{name}", {"spec": {"remediation": fields}},
                content_type="application/merge-patch+json")


# Two cordons at once: above the cluster-wide default of 1 (tested on its own in
# test_cluster_budgets.py), and an admin's cordon of 1 in 10 nodes is within the 10% guard.
@pytest.mark.operator_env(THPCHECK_CLUSTER_MAX_CORDONED="2")
def test_remediation_end_to_end(crds: Cluster, operator: OperatorProcess, kubelet: Kubelet,
                                checks: list[str], make_nodes: Callable[..., list[str]],
                                test_id: str, tmp_path: Path) -> None:
    nodes = [f"t{test_id}-n{i}" for i in range(10)]
    admin, excluded, *others = nodes
    make_nodes(10, labels={excluded: {names.EXCLUDE_LABEL: "true"}}, unschedulable={admin})
    affected = set(nodes[:6])  # the admin-cordoned and the excluded node among them
    before = {n: marks(crds, n) for n in nodes}

    name = f"remedy-{test_id}"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    checks.append(name)
    crds.api("POST", CHECKS_PATH, {
        "apiVersion": names.API_VERSION, "kind": names.CHECK_KIND, "metadata": {"name": name},
        "spec": {"nodeSelector": {"thpcheck-test": test_id}, "paths": [str(scratch)],
                 "maxConcurrent": "50%",
                 "reproducer": {"iterations": 1, "baseSizeBytes": 2 << 20},
                 "remediation": {"cordon": True, "maxCordoned": 2, "dryRun": True}}})

    # The kubelet's part: real agent runs on the 4 unaffected nodes, affected results on 6.
    pods = kubelet.wait_check_pods(name, nodes)
    document: dict[str, Any] = {}
    for n in nodes[6:]:
        message, document = kubelet.run_agent(pods[n])
        assert document["verdict"] != "affected"
        kubelet.terminate(pods[n], message)
    for n in nodes[:6]:
        kubelet.terminate(pods[n], with_verdict(document, "affected"))

    # 1. Dry run: nothing changes, the plan is listed, Would* events say so.
    def planned() -> dict[str, Any] | None:
        # A plan without a Cordon was seen once on a loaded machine (the health guard plans
        # none while a kwok node misses its heartbeat, a likely cause): wait for the full plan.
        status = status_of(crds, name)
        actions = status.get("plannedActions") or []
        return (status if status.get("checked") == 10
                and any(a["action"] == "Cordon" for a in actions) else None)

    status = eventually(planned, what="a dry-run plan")
    plan = {(a["node"], a["action"]) for a in status["plannedActions"]}
    cordons = sorted(n for n, action in plan if action == "Cordon")
    assert cordons == sorted(affected - {admin, excluded})[:2]
    assert {n for n, action in plan if action == "Label"} == set(nodes) - {excluded}
    assert not any(n == excluded for n, _ in plan)
    assert status["affected"] == 6 and status["cordoned"] == 0
    blocked = {c["type"]: c for c in status["conditions"]}["RemediationBlocked"]
    assert (blocked["status"], blocked["reason"]) == ("True", "DryRun")
    assert {n: marks(crds, n) for n in nodes} == before
    eventually(lambda: "WouldCordon" in [e["reason"] for e in node_events(crds, cordons[0])],
               what="a WouldCordon event")
    # A first, clean verdict is routine (no Event of its own); the label it would get is news.
    first = [] if document["verdict"] == "not-affected" else ["VerdictChanged"]
    assert sorted(change_events(crds, others[-1])) == [*first, "WouldLabel"]

    # 2. For real: exactly two cordons, never more; the admin's node and the excluded one alone.
    patch_remediation(crds, name, dryRun=False)

    def cordoned_by_us() -> list[str]:
        mine = [n for n in nodes if marks(crds, n).get(names.CORDONED_BY_ANNOTATION) == name]
        assert len(mine) <= 2, mine
        return mine

    eventually(lambda: len(cordoned_by_us()) == 2, what="two cordons")
    for _ in range(8):  # the budget holds over several reconciles
        assert sorted(cordoned_by_us()) == cordons
        eventually(lambda: True, timeout=0.5)
    for n in cordons:
        assert marks(crds, n)["unschedulable"] is True
        assert "Cordoned" in [e["reason"] for e in node_events(crds, n)]
    status = eventually(lambda: (s := status_of(crds, name)).get("cordoned") == 2 and s,
                        what="cordons in status")
    assert status["cordonedNodes"] == cordons
    blocked = {c["type"]: c for c in status["conditions"]}["RemediationBlocked"]
    assert (blocked["status"], blocked["reason"]) == ("True", "BudgetExhausted")
    assert marks(crds, admin) == {**before[admin], names.VERDICT_LABEL: "affected",
                                  names.MITIGATED_LABEL: "false",
                                  names.LABELLED_BY_ANNOTATION: name}
    assert marks(crds, excluded) == before[excluded]
    # Checked and reported (an Event is not a change to the node), never acted on.
    assert change_events(crds, excluded) == ["VerdictChanged"]
    for n in others[4:]:
        assert marks(crds, n)[names.VERDICT_LABEL] == document["verdict"]

    # 3. Mitigation: affected nodes are labelled for the mitigation DaemonSet, its pods land
    # there, their readiness marks the nodes mitigated, and the cordons are lifted.
    patch_remediation(crds, name, mitigate=True)
    to_mitigate = affected - {excluded}

    def mitigation_pods() -> set[str]:
        pods = crds.api("GET", f"/api/v1/namespaces/{operator.namespace}/pods?labelSelector="
                        f"{names.POD_ROLE_LABEL}={names.MITIGATION_ROLE}")["items"]
        return {p["spec"].get("nodeName") for p in pods
                if p.get("status", {}).get("phase") == "Running"}

    eventually(lambda: mitigation_pods() == to_mitigate, what="mitigation pods on the affected")
    for n in to_mitigate:
        assert marks(crds, n)[names.MITIGATE_LABEL] == "true"
    eventually(lambda: all(r["status"]["mitigated"] for n, r in results(crds, name).items()
                           if n in to_mitigate), what="results mitigated")
    # The counts are progress: a status write may show the lifted cordons a status interval
    # before the last node's mitigation (the results above say it is done).
    status = eventually(lambda: ((s := status_of(crds, name)).get("cordoned") == 0
                                 and s.get("mitigated") == 5 and s),
                        what="cordons lifted once mitigated, and every mitigation counted")
    assert status["affected"] == 6
    for n in cordons:
        assert marks(crds, n)["unschedulable"] is False
        assert names.CORDONED_BY_ANNOTATION not in marks(crds, n)
    assert marks(crds, cordons[0])[names.MITIGATED_LABEL] == "true"
    assert marks(crds, excluded) == before[excluded]

    # 4. Deleting the ThpCheck removes every label, annotation and cordon it made.
    crds.kubectl("delete", "thpcheck", name, "--wait=true", "--timeout=90s")
    assert {n: marks(crds, n) for n in nodes} == before
    assert marks(crds, admin)["unschedulable"] is True  # the admin's cordon stays
    eventually(lambda: not crds.kubectl("get", "daemonsets", "-n", operator.namespace,
                                        "-o", "name").stdout.strip(),
               what="agent and mitigation DaemonSets gone", diagnose=lambda: crds.kubectl(
                   "get", "daemonsets,pods,nodes", "-n", operator.namespace, "-o",
                   "wide").stdout + operator.tail())
    eventually(lambda: not mitigation_pods(), what="mitigation pods gone")
