"""Losing the operator loses nothing: the chart's operator with leader election, killed with
SIGKILL mid-run (results half written, one node cordoned, a mitigation applying).

With two replicas the standby takes over; with one (the default) a restarted replica does,
once the dead one's Lease expires. Either way within 30 s, with no result duplicated or lost,
no cordon doubled (the maxCordoned budget of 1 holds at every moment), exactly one Event per
change, and no call the chart's RBAC refuses. The replicas run as the chart's ServiceAccount
with the Deployment's environment (tests/chart/chart_kit.py); the nodes are played by the test
in full (tests/operator/manual_kubelet.py), so that a mitigation pod can stay unready.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.cluster.accounts import token_kubeconfig
from devtools.cluster.harness import Cluster, free_ports
from devtools.cluster.operator import this_machine
from tests.chart.chart_kit import OPERATOR_SA, ChartOperator, Release, checks_deleted_at_exit
from tests.operator.cluster_kit import (
    Kubelet,
    change_events,
    eventually,
    node,
    results,
    with_verdict,
)
from tests.operator.manual_kubelet import ManualNodes, manual_nodes
from thpcheck.contract import names

pytestmark = pytest.mark.cluster

CHECK = "default"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{{}}/leases/{OPERATOR_SA}"


class CordonWatch:
    """Samples which of the nodes are cordoned, to prove the budget held at every moment."""

    def __init__(self, cluster: Cluster, nodes: list[str]) -> None:
        self.cluster, self.nodes = cluster, nodes
        self.most = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            listed = self.cluster.api("GET", "/api/v1/nodes")["items"]
            cordoned = [n for n in listed if n["metadata"]["name"] in self.nodes
                        and n["spec"].get("unschedulable")]
            self.most = max(self.most, len(cordoned))


def leader(replicas: list[ChartOperator]) -> ChartOperator | None:
    leading = [r for r in replicas if r.process is not None
               and "thpcheck_leader 1.0" in r.metrics()]
    return leading[0] if len(leading) == 1 else None


def marks(cluster: Cluster, name: str) -> tuple[bool, str | None, str | None]:
    meta = node(cluster, name)
    return (bool(meta["spec"].get("unschedulable")),
            (meta["metadata"].get("annotations") or {}).get(names.CORDONED_BY_ANNOTATION),
            (meta["metadata"].get("labels") or {}).get(names.MITIGATE_LABEL))


@pytest.fixture
def kit(chart_cluster: Cluster, test_id: str) -> Iterator[ManualNodes]:
    with manual_nodes(chart_cluster, f"f{test_id}", {"thpcheck-test": test_id},
                      this_machine()) as made:
        yield made


@pytest.mark.parametrize("replicas", [2, 1], ids=["standby-takes-over", "restart"])
def test_losing_the_active_operator_loses_nothing(chart_cluster: Cluster, release: Release,
                                                  kit: ManualNodes, test_id: str,
                                                  tmp_path: Path, replicas: int) -> None:
    cluster = chart_cluster
    m0, m1, m2, m3 = nodes = kit.add(4)
    release.values += [
        "--set", f"operator.replicas={replicas}",
        "--set-json", f"defaultCheck.nodeSelector={json.dumps({'thpcheck-test': test_id})}",
        "--set", "defaultCheck.remediation.cordon=true",
        "--set", "defaultCheck.remediation.mitigate=true",
        "--set", "defaultCheck.remediation.maxCordoned=1"]
    release.install()
    deployment = release.deployment()
    token = token_kubeconfig(cluster, release.namespace, OPERATOR_SA, tmp_path / "sa.kubeconfig")
    started: list[ChartOperator] = []

    def replica(index: int, ports: tuple[int, int] | None = None) -> ChartOperator:
        op = ChartOperator(deployment, token, tmp_path / "logs" / f"op-{len(started)}.log")
        if index:
            metrics, health = ports or free_ports(2)
            op.env.update(THPCHECK_METRICS_PORT=str(metrics), THPCHECK_HEALTH_PORT=str(health))
        started.append(op.start())
        return op

    live = [replica(i) for i in range(replicas)]
    active = eventually(lambda: leader(live), 30, what="one leader")
    standbys = [op for op in live if op is not active]
    watch = CordonWatch(cluster, nodes)
    kubelet = Kubelet(cluster, release.namespace, tmp_path)
    with checks_deleted_at_exit(cluster, active):
        pods = eventually(lambda: len(p := kit.running_check_pods()) == 4 and p, 60,
                          what="four check pods")
        message, document = kubelet.run_agent(pods[m0])
        assert document["verdict"] != "affected"
        kit.finish(pods[m0], with_verdict(document, "affected"))
        kit.finish(pods[m1], message)

        # Mid-run: half the results, m0 cordoned and its mitigation pod not yet Ready.
        eventually(lambda: set(results(cluster, CHECK)) == {m0, m1}, 30, what="two results")
        eventually(lambda: marks(cluster, m0) == (True, CHECK, "true"), 30,
                   what=f"{m0} cordoned and labelled for mitigation")
        applying = eventually(lambda: kit.mitigation_pod(m0), 30, what="a mitigation pod")
        # m1's first verdict here is clean: routine, no Event (planning.checkplan.routine)
        eventually(lambda: change_events(cluster, m0) == ["Cordoned"], 30,
                   what="the first Event")
        before = results(cluster, CHECK)
        for op in standbys:
            assert "thpcheck_api_writes_total{" not in op.metrics(), "a standby wrote"
        # Every replica is ready: the leader has indexed the cluster, a standby waits behind
        # it (a rolling update of the Deployment needs both).
        for op in live:
            url = f"http://127.0.0.1:{op.env['THPCHECK_HEALTH_PORT']}/readyz"
            with urllib.request.urlopen(url, timeout=5) as reply:
                assert reply.status == 200

        # kill -9 the leader, and let the other two runs finish while nobody leads.
        assert active.process is not None
        ports = (int(active.env["THPCHECK_METRICS_PORT"]), int(active.env["THPCHECK_HEALTH_PORT"]))
        active.process.kill()
        active.process.wait(10)
        killed_at = time.monotonic()
        active.process = None
        kit.finish(pods[m2], with_verdict(document, "affected"))
        kit.finish(pods[m3], message)
        if replicas == 1:  # the Deployment restarts the only replica
            standbys = [replica(0, ports)]
        successor = eventually(lambda: leader(standbys), 40, what="a new leader")
        took_over = time.monotonic() - killed_at
        assert took_over < 30, f"took over after {took_over:.1f} s"
        holder = cluster.api("GET", LEASE.format(release.namespace))["spec"]["holderIdentity"]
        assert holder and holder in successor.tail(400)

        # The new leader finishes the run: m2 waits for the budget while m0 is cordoned.
        eventually(lambda: set(results(cluster, CHECK)) == set(nodes), 30, what="four results")
        done_at = time.monotonic() - killed_at
        eventually(lambda: marks(cluster, m2) == (False, None, "true")
                   and "MitigationRequested" in change_events(cluster, m2), 30,
                   what=f"{m2} labelled for mitigation, not cordoned (budget)")
        kit.make_ready(applying)  # m0's mitigation is verified: uncordon, then cordon m2
        eventually(lambda: marks(cluster, m0)[0] is False and marks(cluster, m2)[0] is True,
                   30, what=f"{m0} uncordoned, {m2} cordoned")
        kit.make_ready(eventually(lambda: kit.mitigation_pod(m2), 30, what="m2's pod"))
        status = eventually(lambda: (s := (cluster.api(
            "GET", f"/apis/{names.API_VERSION}/thpchecks/{CHECK}").get("status") or {}))
            .get("mitigated") == 2 and s.get("cordoned") == 0 and s, 30,
            what="both mitigated, none cordoned")
        assert (status["checked"], status["affected"], status["phase"]) == (4, 2, "Completed")

        # Nothing lost or duplicated; nothing done twice.
        watch.stop.set()
        every = cluster.api("GET", f"/apis/{names.API_VERSION}/thpnoderesults?labelSelector="
                            f"{names.CHECK_LABEL}={CHECK}")["items"]
        assert sorted(r["status"]["node"] for r in every) == sorted(nodes)
        after = results(cluster, CHECK)
        for n in (m0, m1):  # written before the kill, never rewritten (m0 only patched)
            assert after[n]["metadata"]["uid"] == before[n]["metadata"]["uid"]
            assert after[n]["metadata"]["annotations"][names.CONTENT_HASH_ANNOTATION] == \
                before[n]["metadata"]["annotations"][names.CONTENT_HASH_ANNOTATION]
        assert watch.most == 1, f"{watch.most} nodes cordoned at once (maxCordoned 1)"
        clean = [] if document["verdict"] == "not-affected" else ["VerdictChanged"]
        expected = {m0: ["Cordoned", "Uncordoned"], m1: clean,
                    m2: ["Cordoned", "MitigationRequested", "Uncordoned"], m3: clean}
        for n, reasons in expected.items():
            found = collections.Counter(change_events(cluster, n))
            assert sorted(found.elements()) == reasons, (n, found)
        for op in started:
            assert op.forbidden() == [], op.forbidden()
        print(f"{replicas} replicas: new leader {took_over:.1f} s after the kill, every "
              f"result {done_at:.1f} s after it")
    for op in started:
        op.stop()
