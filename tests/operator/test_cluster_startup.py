"""Start-up failures a user meets on a real cluster, for ``operator`` and ``preflight``:
each is one line naming the problem and the fix, with its own exit code, and no traceback.

Credentials are given as a user gives them locally: ``--kubeconfig FILE`` alone, with no
KUBECONFIG in the environment and a HOME holding no ~/.kube.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools.cluster.accounts import write_token_kubeconfig
from devtools.cluster.harness import Cluster, free_ports
from devtools.cluster.operator import REPO
from tests.support.wait import eventually
from thpcheck.contract import names
from thpcheck.controller.credentials import StartupExit

pytestmark = pytest.mark.cluster

# What the operator may do in this test: read its CRDs and list ThpChecks and results, but
# not nodes (so the third start-up probe is the one refused).
NO_NODES_RULES = [
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "resourceNames": list(names.CRD_NAMES), "verbs": ["get"]},
    {"apiGroups": ["thpcheck.io"], "resources": ["thpchecks", "thpnoderesults"],
     "verbs": ["list"]},
]


def thpcheck(command: str, kubeconfig: Path, home: Path, namespace: str = "default",
             *args: str) -> subprocess.CompletedProcess[str]:
    """``thpcheck <command> --kubeconfig FILE`` with KUBECONFIG unset and an empty HOME."""
    home.mkdir(exist_ok=True)
    metrics, health = free_ports(2)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(REPO / "operator"),
           "THPCHECK_NAMESPACE": namespace, "THPCHECK_METRICS_PORT": str(metrics),
           "THPCHECK_HEALTH_PORT": str(health)}
    return subprocess.run([sys.executable, "-m", "thpcheck", command, "--kubeconfig",
                           str(kubeconfig), *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO, check=False)


def one_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"thpcheck {command}: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["operator", "preflight"])
def test_rejected_credentials_exit_6(crds: Cluster, tmp_path: Path, command: str) -> None:
    kubeconfig = write_token_kubeconfig(crds, tmp_path / "bad-token", "not-a-real-token")
    result = thpcheck(command, kubeconfig, tmp_path / "home")
    assert result.returncode == StartupExit.UNAUTHORIZED, result.stderr
    line = one_line(result, command)
    assert f"the API server at {crds.server_url} rejected the credentials (HTTP 401)" in line
    assert "renew the token" in line


@pytest.mark.parametrize("command", ["operator", "preflight"])
def test_rbac_denial_exits_7_and_names_the_request(crds: Cluster, namespace: str,
                                                   tmp_path: Path, command: str) -> None:
    account = f"no-nodes-{command}"
    role = f"thpcheck-startup-{namespace}-{command}"
    crds.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
             {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}})
    crds.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": role}, "rules": NO_NODES_RULES})
    try:
        crds.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]})
        token = crds.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/"
                         "token", {"apiVersion": "authentication.k8s.io/v1",
                                   "kind": "TokenRequest", "spec": {"expirationSeconds": 600}}
                         )["status"]["token"]
        kubeconfig = write_token_kubeconfig(crds, tmp_path / "sa", token)

        def refused_at_nodes() -> subprocess.CompletedProcess[str] | None:
            # The authorizer caches: wait until the binding counts (then nodes are refused).
            result = thpcheck(command, kubeconfig, tmp_path / "home", namespace)
            return result if "list nodes" in result.stderr else None

        result = eventually(refused_at_nodes, 30, what="the RBAC binding to take effect")
        assert result.returncode == StartupExit.FORBIDDEN, result.stderr
        line = one_line(result, command)
        assert f"the API server at {crds.server_url} refused to list nodes (HTTP 403)" in line
        assert 'cannot list resource \\"nodes\\"' in line or 'cannot list resource "nodes"' \
            in line
        assert "grant it with RBAC" in line
    finally:
        for kind in ("clusterrolebindings", "clusterroles"):
            crds.kubectl("delete", kind, role, "--ignore-not-found", check=False)
