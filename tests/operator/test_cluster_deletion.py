"""Deleting a ThpCheck never strands a mark, on the real control plane.

1. A ValidatingAdmissionPolicy refuses the operator's clean-up patches: the ThpCheck stays
   (its finalizer) well past the window after which the operator used to give up, with the
   CleanupBlocked condition and a Warning Event naming the nodes and the API error; once the
   policy goes, both nodes are uncordoned and the ThpCheck is gone.
2. The finalizer removed by hand while the operator is stopped: once it starts, the orphan
   sweep undoes the marks within one resync.
"""

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
    node_events,
)
from thpcheck.contract import names

pytestmark = pytest.mark.cluster

MARKS = (names.CORDONED_BY_ANNOTATION, names.LABELLED_BY_ANNOTATION)
# The operator of before gave up after THPCHECK_HANDLER_RETRIES attempts 5 s apart (then kopf
# dropped the finalizer); with 3 that is about 15 s, and the test waits three times that.
OLD_WINDOW = 15.0
POLICY = "thpcheck-test-deny-uncordon"


def cordon_both(cluster: Cluster, kubelet: Kubelet, checks: list[str], name: str,
                nodes: list[str], test_id: str, scratch: Path) -> None:
    """A ThpCheck that labels and cordons both (affected) nodes."""
    new_check(cluster, checks, name, {"thpcheck-test": test_id}, scratch,
              {"cordon": True, "maxCordoned": 2})
    all_affected(kubelet, name, nodes)
    cordoned = {"unschedulable": True, **dict.fromkeys(MARKS, name)}
    eventually(lambda: all(marks(cluster, n) == cordoned for n in nodes), timeout=60,
               what="both nodes cordoned")


def marks(cluster: Cluster, name: str) -> dict[str, Any]:
    body = node(cluster, name)
    annotations = body["metadata"].get("annotations") or {}
    return {"unschedulable": bool(body["spec"].get("unschedulable")),
            **{m: annotations[m] for m in MARKS if m in annotations}}


def deny_uncordon(cluster: Cluster, test_id: str) -> None:
    """Refuse every update of this test's nodes that removes thpcheck.io/cordoned-by."""
    key = names.CORDONED_BY_ANNOTATION
    cluster.api("POST", "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies", {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{
                     "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                     "resources": ["nodes"]}]},
                 "validations": [{
                     "expression": (
                         f"!(has(oldObject.metadata.annotations) && '{key}' in "
                         f"oldObject.metadata.annotations) || (has(object.metadata.annotations)"
                         f" && '{key}' in object.metadata.annotations)"),
                     "message": "the test's policy forbids removing thpcheck.io/cordoned-by"}]}})
    cluster.api(
        "POST", "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings", {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": POLICY},
            "spec": {"policyName": POLICY, "validationActions": ["Deny"],
                     "matchResources": {"objectSelector": {
                         "matchLabels": {"thpcheck-test": test_id}}}}})


def lift_policy(cluster: Cluster) -> None:
    for kind in ("validatingadmissionpolicybindings", "validatingadmissionpolicies"):
        cluster.kubectl("delete", f"{kind}.admissionregistration.k8s.io", POLICY,
                        "--ignore-not-found")


@pytest.mark.operator_env(THPCHECK_CLUSTER_MAX_CORDONED="2", THPCHECK_CLEANUP_BACKOFF_MAX="2",
                          THPCHECK_HANDLER_RETRIES="3")
def test_a_refused_clean_up_holds_the_finalizer_until_the_nodes_are_clean(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    nodes = make_nodes(2)
    name = f"refused-{test_id}"
    cordon_both(crds, kubelet, checks, name, nodes, test_id, tmp_path / "scratch")
    deny_uncordon(crds, test_id)
    try:
        # The policy is in force once it refuses the test's own attempt (a server-side dry
        # run: admission runs, nothing changes).
        def refused() -> bool:
            attempt = crds.kubectl("annotate", "--dry-run=server", "node", nodes[0],
                                   f"{names.CORDONED_BY_ANNOTATION}-", check=False)
            return "forbids removing" in attempt.stderr
        eventually(refused, timeout=30, what="the policy in force")

        crds.kubectl("delete", "thpcheck", name, "--wait=false")
        time.sleep(3 * OLD_WINDOW)
        check = get_check(crds, name)
        assert check is not None, "the ThpCheck went with marks still on its nodes"
        assert names.FINALIZER in check["metadata"]["finalizers"]
        conditions = {c["type"]: c for c in check["status"]["conditions"]}
        blocked = conditions["CleanupBlocked"]
        assert (blocked["status"], blocked["reason"]) == ("True", "NodePatchRefused")
        for n in nodes:
            assert n in blocked["message"]
            assert marks(crds, n)["unschedulable"] is True
        assert "forbids removing thpcheck.io/cordoned-by" in blocked["message"]
        warnings = [e for e in check_events(crds, name) if e["reason"] == "CleanupBlocked"]
        assert warnings and warnings[0]["type"] == "Warning"
        assert (warnings[0].get("count") or 1) >= 1
    finally:
        lift_policy(crds)

    eventually(lambda: get_check(crds, name) is None, timeout=60, what="the ThpCheck gone")
    assert {n: marks(crds, n) for n in nodes} == {n: {"unschedulable": False} for n in nodes}


def test_marks_whose_check_is_gone_are_swept_when_the_operator_starts(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    nodes = make_nodes(1)
    name = f"orphan-{test_id}"
    cordon_both(crds, kubelet, checks, name, nodes, test_id, tmp_path / "scratch")
    labels = node(crds, nodes[0])["metadata"]["labels"]
    assert labels[names.VERDICT_LABEL] == "affected"

    operator.stop()
    crds.kubectl("delete", "thpcheck", name, "--wait=false")
    crds.kubectl("patch", "thpcheck", name, "--type=merge", "-p",
                 '{"metadata":{"finalizers":[]}}')
    eventually(lambda: get_check(crds, name) is None, timeout=30, what="the ThpCheck gone")
    assert marks(crds, nodes[0])["unschedulable"] is True  # nobody undid anything yet

    operator.start()
    eventually(lambda: marks(crds, nodes[0]) == {"unschedulable": False}, timeout=15,
               what="the orphaned marks undone within a resync")
    labels = node(crds, nodes[0])["metadata"]["labels"]
    assert names.VERDICT_LABEL not in labels and names.MITIGATED_LABEL not in labels
    eventually(lambda: any(e["reason"] == "Uncordoned" and "no longer exists" in e["message"]
                           for e in node_events(crds, nodes[0])), timeout=30,
               what="an Event saying so")
