"""The operator runs with exactly the chart's RBAC, and no more.

The ServiceAccount, ClusterRoles, Roles and bindings are the chart's own (``helm template``
of charts/thp-checker, default values: remediation on, no node condition), so this test, the
other tests that run the operator as a ServiceAccount and benchmarks/operator_scale.py cannot
hold a permission the chart lacks or lack one it has. The operator runs as that account (its
token given with ``--kubeconfig`` only: no KUBECONFIG, an empty HOME), through a check with
labels, cordons, mitigation and deletion, and its log must show no Forbidden answer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.cluster.accounts import chart_rbac, remove_chart_rbac, service_account_kubeconfig
from devtools.cluster.harness import Cluster
from devtools.cluster.operator import CHECKS_PATH, OperatorProcess
from tests.chart.chart_kit import can_i
from tests.operator.cluster_kit import (
    Kubelet,
    checks_cleaned_up,
    eventually,
    get_check,
    node,
    results,
    with_verdict,
)
from thpcheck.contract import names

pytestmark = pytest.mark.cluster

def test_the_account_holds_every_rule_of_the_chart(crds: Cluster, namespace: str,
                                                   tmp_path: Path) -> None:
    """Asked of the API server (SelfSubjectAccessReview), not read from the objects: every
    verb on every resource of the chart's Roles and ClusterRoles is allowed to the account
    the operator tests and the scale benchmark run as, where the chart grants it."""
    kubeconfig = service_account_kubeconfig(crds, namespace, tmp_path / "sa.kubeconfig")
    denied = []
    try:
        for item in chart_rbac(crds, namespace):
            if item["kind"] not in ("Role", "ClusterRole"):
                continue
            where = item["metadata"].get("namespace")
            for rule in item["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        base, _, sub = resource.partition("/")
                        target = f"{base}.{group}" if group else base
                        for verb in rule["verbs"]:
                            for name in rule.get("resourceNames") or [None]:
                                if not can_i(crds, kubeconfig, verb, target, where, name=name,
                                             subresource=sub or None):
                                    denied.append(f"{verb} {resource} {name or ''} in "
                                                  f"{where or 'the cluster'}")
    finally:
        remove_chart_rbac(crds, namespace)
    assert not denied, denied


def test_the_documented_rbac_is_enough(crds: Cluster, namespace: str, kubelet: Kubelet,
                                       make_nodes: Callable[..., list[str]], test_id: str,
                                       tmp_path: Path) -> None:
    kubeconfig = service_account_kubeconfig(crds, namespace, tmp_path / "sa.kubeconfig")
    # As a user runs it locally: the flag alone, no KUBECONFIG, a HOME with no ~/.kube.
    home = tmp_path / "home"
    home.mkdir()
    operator = OperatorProcess(crds, namespace, tmp_path / "logs",
                               args=("--kubeconfig", str(kubeconfig)),
                               extra_env={"HOME": str(home)}, unset_env=("KUBECONFIG",)).start()
    created: list[str] = []
    try:
        with checks_cleaned_up(crds, operator, created):
            n0, n1 = make_nodes(2)
            name = f"rbac-{test_id}"
            scratch = tmp_path / "scratch"
            scratch.mkdir()
            created.append(name)
            crds.api("POST", CHECKS_PATH, {
                "apiVersion": names.API_VERSION, "kind": names.CHECK_KIND,
                "metadata": {"name": name},
                "spec": {"nodeSelector": {"thpcheck-test": test_id}, "paths": [str(scratch)],
                         "reproducer": {"iterations": 1, "baseSizeBytes": 2 << 20},
                         "remediation": {"cordon": True, "mitigate": True}}})
            pods = kubelet.wait_check_pods(name, [n0, n1])
            message, document = kubelet.run_agent(pods[n0])
            kubelet.terminate(pods[n0], message)
            kubelet.terminate(pods[n1], with_verdict(document, "affected"))
            eventually(lambda: len(results(crds, name)) == 2, what="two results")
            eventually(lambda: node(crds, n1)["metadata"]["labels"].get(names.MITIGATE_LABEL)
                       == "true", what="the mitigation label")
            eventually(lambda: (get_check(crds, name) or {}).get("status", {}).get(
                "mitigated") == 1, what="mitigation verified")
            crds.kubectl("delete", "thpcheck", name, "--wait=true", "--timeout=60s")
            assert names.VERDICT_LABEL not in node(crds, n1)["metadata"]["labels"]
    finally:
        operator.stop()
        log = operator.log.read_text(errors="replace")
        remove_chart_rbac(crds, namespace)
    assert "Forbidden" not in log and "forbidden" not in log, log[-3000:]
