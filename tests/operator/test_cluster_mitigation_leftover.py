"""The shared mitigation DaemonSet never outlives its reason to exist.

An admin's `thpcheck.io/mitigate=true` label keeps it after the last ThpCheck is deleted (the
operator never undoes what it did not make); once that label goes, the operator deletes the
DaemonSet even though no ThpCheck is left to reconcile it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.cluster.harness import Cluster
from devtools.cluster.operator import CHECKS_PATH, OperatorProcess
from tests.operator.cluster_kit import eventually
from thpcheck.contract import names

pytestmark = pytest.mark.cluster


def _mitigation_daemonset(cluster: Cluster, namespace: str) -> bool:
    found = cluster.kubectl("get", "daemonset", names.MITIGATION_DAEMONSET, "-n", namespace,
                            "--ignore-not-found", "-o", "name").stdout.strip()
    return bool(found)


def test_admin_label_keeps_it_then_its_removal_deletes_it(
        crds: Cluster, operator: OperatorProcess, make_nodes: Callable[..., list[str]],
        test_id: str, tmp_path: Path) -> None:
    (node,) = make_nodes(1)
    name = f"leftover-{test_id}"
    crds.api("POST", CHECKS_PATH, {
        "apiVersion": names.API_VERSION, "kind": names.CHECK_KIND, "metadata": {"name": name},
        "spec": {"nodeSelector": {"thpcheck-test": test_id}, "paths": [str(tmp_path)],
                 "remediation": {"mitigate": True}}})
    eventually(lambda: _mitigation_daemonset(crds, operator.namespace),
               what="the mitigation DaemonSet of a mitigating check")
    crds.kubectl("label", "node", node, f"{names.MITIGATE_LABEL}=true")  # the admin's own

    crds.kubectl("delete", "thpcheck", name, "--wait=true", "--timeout=90s")
    labels = crds.api("GET", f"/api/v1/nodes/{node}")["metadata"]["labels"]
    assert labels.get(names.MITIGATE_LABEL) == "true"  # not ours: left alone
    assert _mitigation_daemonset(crds, operator.namespace)  # still needed by that label

    crds.kubectl("label", "node", node, f"{names.MITIGATE_LABEL}-")
    eventually(lambda: not _mitigation_daemonset(crds, operator.namespace), timeout=60,
               what="the mitigation DaemonSet deleted with no ThpCheck left")
