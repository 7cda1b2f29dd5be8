"""Watches converge after the real kube-apiserver restarts: the operator's view equals the API's
again within two status intervals, objects deleted meanwhile included.

The operator is paused (SIGSTOP) while kube-apiserver is restarted and a node and a result are
deleted. A restarted server still serves a watch from an old resourceVersion out of etcd's
history, until kube-apiserver compacts it (every 5 minutes): the test compacts etcd at once,
as a longer pause would, so the watches can only end with 410 Gone and must list again.
The listing shows nothing of what was deleted meanwhile: the operator's lean watches (nodes,
results: controller/leanwatch.py) replace their set with it, and kopf's (ThpChecks,
DaemonSets) announce what it lacks (controller/kopf_relist.py).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.harness import Cluster, ClusterError
from devtools.cluster.operator import RESULTS_PATH, OperatorProcess, install_crds, this_machine
from tests.operator.cluster_kit import Kubelet, checks_cleaned_up, eventually, results
from tests.operator.test_cluster_operator import create_check, status_of

pytestmark = pytest.mark.cluster

STATUS_INTERVAL = 5.0  # the production default


def test_status_and_results_converge_after_an_apiserver_restart(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    cluster = make_cluster(nodes=0)
    install_crds(cluster)
    namespace = "relist"
    cluster.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": namespace}})
    nodes = [f"r-n{i}" for i in range(3)]
    for name in nodes:
        cluster.add_node(name, labels={"thpcheck-test": "relist"}, node_info=this_machine(),
                         wait=False)
    cluster.wait_nodes_ready(nodes, timeout=90)
    operator = OperatorProcess(cluster, namespace, tmp_path / "logs", extra_env={
        "THPCHECK_STATUS_INTERVAL": str(STATUS_INTERVAL), "THPCHECK_DEBOUNCE": "1"}).start()
    kubelet = Kubelet(cluster, namespace, tmp_path)
    checks: list[str] = []
    n0, n1, n2 = nodes
    with checks_cleaned_up(cluster, operator, checks):
        create_check(cluster, checks, "relist", "relist", tmp_path / "scratch")
        pods = kubelet.wait_check_pods("relist", nodes)
        message, _ = kubelet.run_agent(pods[n0])
        for name in nodes:
            kubelet.terminate(pods[name], message)
        eventually(lambda: status_of(cluster, "relist").get("checked") == 3, 60,
                   what="three nodes checked")
        before = results(cluster, "relist")

        assert operator.process is not None
        pid = operator.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            # Restart first: deletions streamed to a paused process would wait in its socket
            # buffers and arrive on resume; after the restart it has no watch open at all.
            cluster.restart_apiserver()
            cluster.delete_node(n2)
            cluster.api("DELETE", f"{RESULTS_PATH}/{before[n1]['metadata']['name']}")
            cluster.compact_etcd()
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()

        def converged() -> dict[str, Any] | None:
            found = results(cluster, "relist")
            status = status_of(cluster, "relist")
            if set(found) == {n0, n1} and (status.get("nodes"), status.get("checked")) == (2, 2):
                return found
            return None

        # A just restarted server answers 429 while its watch caches fill: not our business.
        found = eventually(converged, 2 * STATUS_INTERVAL,
                           what="results and status equal to the API's again",
                           diagnose=operator.tail, tolerate=(ClusterError,))
        took = time.monotonic() - resumed
        # The deleted result was written again (a new object); n0's was left alone.
        assert found[n1]["metadata"]["uid"] != before[n1]["metadata"]["uid"]
        assert found[n0]["metadata"]["resourceVersion"] == before[n0]["metadata"][
            "resourceVersion"]
        assert re.search(r"watch expired; listing again +kind=results", operator.tail(400))
        print(f"converged {took:.1f} s after the operator resumed")
    operator.stop()
