"""Identities in a development cluster: kubeconfigs with a ServiceAccount's bound token, and
the chart's own ServiceAccount and RBAC (``helm template`` of charts/thp-checker), so the
operator tests and benchmarks/operator_scale.py run the operator with exactly the chart's
permissions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from devtools.cluster.harness import REPO_ROOT, Cluster, pinned_k8s_version

CHART = REPO_ROOT / "charts" / "thp-checker"


def documents(text: str) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a rendered manifest."""
    return [d for d in yaml.safe_load_all(text) if d]


def token_kubeconfig(cluster: Cluster, namespace: str, service_account: str, path: Path,
                     seconds: int = 3600) -> Path:
    """A kubeconfig that authenticates as ``service_account`` with a bound token from the
    TokenRequest API: the identity the chart's pod would have."""
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": seconds}}
    token = cluster.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/"
                        f"{service_account}/token", request)["status"]["token"]
    return write_token_kubeconfig(cluster, path, token, service_account)


def write_token_kubeconfig(cluster: Cluster, path: Path, token: str, user: str = "user") -> Path:
    """A kubeconfig for ``cluster`` that authenticates with ``token`` (any string: a bound
    ServiceAccount token, or a bad one)."""
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": cluster.server_url, "certificate-authority": str(cluster.pki.ca_crt)}}],
        "users": [{"name": user, "user": {"token": token}}],
        # No namespace: like the in-cluster client, kopf then posts the Events of
        # cluster-scoped objects into `default`.
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    }
    path.touch(mode=0o600)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


ACCOUNT = "thpcheck-operator"
RBAC_TEMPLATES = ("templates/serviceaccount.yaml", "templates/rbac.yaml")
_PATHS = {  # kind -> collection path ({ns}: the object's namespace)
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}


def rbac_release(namespace: str) -> str:
    """The release name of the chart's RBAC in ``namespace`` (its cluster-scoped names)."""
    return f"thpcheck-{namespace}"


def chart_rbac(cluster: Cluster, namespace: str, *values: str) -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC objects for a release in ``namespace`` (helm
    template; cluster-scoped names carry the namespace, the account is ``ACCOUNT``)."""
    release = rbac_release(namespace)
    shown = [arg for template in RBAC_TEMPLATES for arg in ("--show-only", template)]
    rendered = cluster.helm("template", release, str(CHART), "--namespace", namespace,
                            "--kube-version", pinned_k8s_version(),
                            "--set", f"fullnameOverride={release}",
                            "--set", f"serviceAccount.name={ACCOUNT}", *shown, *values).stdout
    return documents(rendered)


def service_account_kubeconfig(cluster: Cluster, namespace: str, path: Path,
                               *values: str, seconds: int = 3600) -> Path:
    """A kubeconfig with a bound token (valid ``seconds``) of the chart's ServiceAccount in
    ``namespace``, holding the chart's rules (``values``: helm --set arguments) and no
    others; undo with ``remove_chart_rbac``."""
    for item in chart_rbac(cluster, namespace, *values):
        where = item["metadata"].get("namespace", namespace)
        cluster.api("POST", _PATHS[item["kind"]].format(ns=where), item)
    return token_kubeconfig(cluster, namespace, ACCOUNT, path, seconds)


def remove_chart_rbac(cluster: Cluster, namespace: str) -> None:
    """Delete what ``service_account_kubeconfig`` made outside ``namespace`` (the
    ClusterRoles and their bindings, the Events Role in the Events namespace)."""
    selector = f"app.kubernetes.io/instance={rbac_release(namespace)}"
    cluster.kubectl("delete", "clusterroles,clusterrolebindings", "-l", selector,
                    "--ignore-not-found", check=False)
    cluster.kubectl("delete", "roles,rolebindings", "--all-namespaces", "-l", selector,
                    "--ignore-not-found", check=False)
