"""The operator runs with exactly the RBAC rules documented for the chart, and no more.

The rules below are the ones docs/operator-design.md lists; the operator runs as a
ServiceAccount bound to them (its token given with ``--kubeconfig`` only: no KUBECONFIG, an
empty HOME), through a check with labels, cordons, mitigation and deletion, and its log must
show no Forbidden answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import Cluster
from tests.operator.cluster_kit import (
    CHECKS_PATH,
    Kubelet,
    OperatorProcess,
    checks_cleaned_up,
    eventually,
    get_check,
    node,
    results,
    with_verdict,
)
from thpcheck.specs import names

pytestmark = pytest.mark.cluster

CLUSTER_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["thpcheck.io"], "resources": ["thpchecks"],
     "verbs": ["list", "watch", "patch"]},
    {"apiGroups": ["thpcheck.io"], "resources": ["thpchecks/status"], "verbs": ["patch"]},
    {"apiGroups": ["thpcheck.io"], "resources": ["thpnoderesults"],
     "verbs": ["list", "watch", "create", "patch", "delete", "deletecollection"]},
    # patch only with remediation (labels, cordons, mitigation labels); list/watch always.
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch", "patch"]},
    # Events on cluster-scoped objects (Nodes, ThpChecks) go to the "default" namespace.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "resourceNames": list(names.CRD_NAMES), "verbs": ["get"]},
]
NAMESPACE_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["daemonsets"],
     "verbs": ["list", "watch", "create", "patch", "delete"]},
]


def service_account_kubeconfig(cluster: Cluster, namespace: str, path: Path) -> Path:
    """A kubeconfig with a bound token of a fresh ServiceAccount holding only the rules."""
    account = "thpcheck-operator"
    cluster.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}})
    role_name = f"thpcheck-operator-{namespace}"
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    cluster.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                {"metadata": {"name": role_name}, "rules": CLUSTER_RULES})
    cluster.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                {"metadata": {"name": role_name}, "subjects": subject,
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": role_name}})
    cluster.api("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
                {"metadata": {"name": "thpcheck-operator"}, "rules": NAMESPACE_RULES})
    cluster.api("POST",
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
                {"metadata": {"name": "thpcheck-operator"}, "subjects": subject,
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": "thpcheck-operator"}})
    token = cluster.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/"
                        "token", {"apiVersion": "authentication.k8s.io/v1",
                                  "kind": "TokenRequest",
                                  "spec": {"expirationSeconds": 3600}})["status"]["token"]
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server_url,
                                               "certificate-authority": str(cluster.pki.ca_crt)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}]}))
    return path


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
        for rbac in ("clusterroles", "clusterrolebindings"):
            crds.kubectl("delete", rbac, f"thpcheck-operator-{namespace}", "--ignore-not-found",
                         check=False)
    assert "Forbidden" not in log and "forbidden" not in log, log[-3000:]
