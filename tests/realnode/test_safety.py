"""The agent on a busy real node: what the kubelet mounts for a symlinked or missing path, and
a node without room. The chart installed with Helm, the operator in a pod, a real kubelet,
containerd and kube-scheduler.

- A ThpCheck path that is a symlink to another directory: the kubelet and containerd follow
  it and mount the target, so the agent sees a plain directory; it compares that mount with
  the host's mountinfo and reports an ``error`` naming the target, which stays byte-identical.
- A path missing on the node: never created (hostPath type ``Directory``); the kubelet's
  FailedMount Event becomes the node's ``error`` result.
- A node filled by a priority-0 pod: the agent pod (the chart's class, ``preemptionPolicy:
  Never``) stays Pending, the user pod keeps running, and the ThpCheck shows it unschedulable.
  Then a pod of ``system-node-critical`` (the agent's old class) with the agent's request
  preempts that workload: the scenario does detect preemption.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.cluster.harness import Cluster, ClusterError
from tests.realnode.conftest import RealCluster
from tests.realnode.test_e2e import (
    CHART,
    CHECKS,
    NAMESPACE,
    RELEASE,
    VALUES,
    eventually,
    kubectl_get,
    loop_btrfs,
)
from thpcheck.contract import names

pytestmark = pytest.mark.realnode


def snapshot(directory: Path) -> list[tuple[str, str]]:
    """Every entry below ``directory`` with its content's digest: byte-identical or not."""
    out = []
    for path in sorted(directory.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out.append((str(path.relative_to(directory)), digest))
    return out


@pytest.fixture
def volume(realnode: RealCluster, tmp_path: Path) -> Iterator[Path]:
    """A loop-mounted btrfs on this machine (the node's host)."""
    with loop_btrfs(tmp_path) as mountpoint:
        yield mountpoint


def helm_install(rc: RealCluster, tmp_path: Path, **values: Any) -> None:
    cluster = rc.cluster
    api = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
           {"name": "KUBERNETES_SERVICE_PORT", "value": str(cluster.ports["apiserver"])}]
    generated = tmp_path / "values-generated.yaml"
    generated.write_text(yaml.safe_dump({
        "image": {"tag": rc.image.version},
        "operator": {"extraEnv": api},
        "cleanup": {"extraEnv": api},
        "agent": {"mitigationStateDir": str(rc.node.workdir / "mitigation-state"), **values},
    }))
    cluster.helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
                 "-f", str(VALUES), "-f", str(generated), "--wait", "--timeout", "5m",
                 timeout=400)


def create_check(cluster: Cluster, name: str, paths: list[str]) -> None:
    cluster.api("POST", CHECKS, {
        "apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.CHECK_KIND,
        "metadata": {"name": name},
        "spec": {"paths": paths, "maxConcurrent": 1, "remediation": {"label": False}},
    })


def node_result(cluster: Cluster, check: str, node: str) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = cluster.api(
            "GET", f"/apis/{names.GROUP}/{names.VERSION}/{names.RESULT_PLURAL}/"
            f"{names.result_name(check, node)}")
    except ClusterError as exc:
        if "HTTP 404" in str(exc):
            return None
        raise
    return body


def test_symlinked_and_missing_paths_are_errors_and_nothing_is_written(
        realnode: RealCluster, volume: Path, tmp_path: Path) -> None:
    cluster, node = realnode.cluster, realnode.node
    target = volume / "target"
    (target / "keep").mkdir(parents=True)
    (target / "keep" / "data").write_bytes(os.urandom(4096))
    (target / "note").write_text("the administrator's files\n")
    link = volume / "scratch-link"
    link.symlink_to(target)
    missing = volume / f"missing-{uuid.uuid4().hex[:8]}"
    before = snapshot(target)

    def diagnose() -> str:
        return (kubectl_get(cluster, "pods,daemonsets", "-n", NAMESPACE)
                + kubectl_get(cluster, "thpchecks,thpnoderesults") + node.all_pod_logs())

    helm_install(realnode, tmp_path)
    create_check(cluster, "symlinked", [str(link)])
    create_check(cluster, "missing", [str(missing)])

    found = eventually(lambda: (r := node_result(cluster, "symlinked", node.name))
                       and r.get("status", {}).get("verdict") and r, 300,
                       "the symlinked check's result", diagnose)
    status = found["status"]
    assert status["verdict"] == "error", status
    (path,) = status["paths"]
    assert path["path"] == str(link) and path["verdict"] == "error"
    assert f"resolves to {target} on the host" in path["reason"], path["reason"]
    symlinked = path["reason"]
    assert snapshot(target) == before
    assert link.is_symlink() and os.readlink(link) == str(target)

    found = eventually(lambda: (r := node_result(cluster, "missing", node.name))
                       and r.get("status", {}).get("verdict") and r, 300,
                       "the missing path's result", diagnose)
    status = found["status"]
    assert status["verdict"] == "error", status
    assert (f"FailedMount: the kubelet cannot mount {missing}: does not exist on this node"
            in status["message"]), status["message"]
    assert not os.path.lexists(missing), "the kubelet created the missing path"
    print("\n$ kubectl get thpnoderesults\n" + kubectl_get(cluster, "thpnoderesults"))
    print(json.dumps({"symlinked": symlinked, "missing": status["message"]}, indent=1))

    for name in ("symlinked", "missing"):
        cluster.api("DELETE", f"{CHECKS}/{name}")
    eventually(lambda: not cluster.api("GET", CHECKS)["items"], 120, "checks deleted", diagnose)
    eventually(lambda: not all_agent_pods(cluster), 120, "agent pods gone", diagnose)
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m",
                 timeout=400)
    assert snapshot(target) == before and not os.path.lexists(missing)


# -- a node without room ---------------------------------------------------------------------


def _millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def cpu_requested(cluster: Cluster, node: str) -> int:
    """Millicores the scheduler counts as requested on ``node`` (running and pending-bound
    pods; an init container's request counts when larger than the containers' sum)."""
    pods = cluster.api("GET", f"/api/v1/pods?fieldSelector=spec.nodeName={node}")["items"]
    total = 0
    for pod in pods:
        if pod["status"].get("phase") in ("Succeeded", "Failed"):
            continue

        def cpu(containers: list[dict[str, Any]]) -> list[int]:
            return [_millicores(c.get("resources", {}).get("requests", {}).get("cpu", "0"))
                    for c in containers]

        total += max(sum(cpu(pod["spec"]["containers"])),
                     *cpu(pod["spec"].get("initContainers") or []), 0)
    return total


def all_agent_pods(cluster: Cluster) -> list[dict[str, Any]]:
    selector = f"{names.POD_ROLE_LABEL}%3D{names.AGENT_ROLE}"
    items: list[dict[str, Any]] = cluster.api(
        "GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}")["items"]
    return items


def agent_pods(cluster: Cluster, check: str) -> list[dict[str, Any]]:
    selector = f"{names.CHECK_LABEL}%3D{names.label_value(check)}"
    items: list[dict[str, Any]] = cluster.api(
        "GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}")["items"]
    return items


def test_a_full_node_keeps_its_workload_and_shows_the_agent_unschedulable(
        realnode: RealCluster, volume: Path, tmp_path: Path) -> None:
    cluster, node = realnode.cluster, realnode.node
    scratch = volume / "scratch"
    scratch.mkdir()

    def diagnose() -> str:
        return (kubectl_get(cluster, "pods", "-A") + kubectl_get(cluster, "thpchecks")
                + kubectl_get(cluster, "events", "-A") + node.all_pod_logs())

    helm_install(realnode, tmp_path)
    classes = cluster.api("GET", "/apis/scheduling.k8s.io/v1/priorityclasses?labelSelector="
                          "app.kubernetes.io%2Fcomponent%3Dagent")["items"]
    (ours,) = classes
    assert ours["preemptionPolicy"] == "Never" and ours["value"] == 0

    # A user's pod (no priority class: priority 0) takes all the CPU the node has left but
    # 50m: less than the agent's 100m.
    allocatable = _millicores(node.node()["status"]["allocatable"]["cpu"])
    spare = allocatable - cpu_requested(cluster, node.name)
    cluster.api("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "user"}})
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", "user",
                    "--timeout=60s")
    cluster.api("POST", "/api/v1/namespaces/user/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "workload"},
        "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
            "name": "workload", "image": realnode.image.image, "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"],
            "resources": {"requests": {"cpu": f"{spare - 50}m", "memory": "16Mi"}}}]}})
    workload = eventually(lambda: (p := cluster.api("GET", "/api/v1/namespaces/user/pods/"
                                                    "workload"))["status"].get("phase")
                          == "Running" and p, 120, "the workload Running", diagnose)
    uid = workload["metadata"]["uid"]
    assert workload["spec"].get("priority", 0) == 0

    create_check(cluster, "full-node", [str(scratch)])
    pending = eventually(lambda: next((p for p in agent_pods(cluster, "full-node") if any(
        c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason")
        == "Unschedulable" for c in p["status"].get("conditions") or [])), None), 120,
        "the agent pod Unschedulable", diagnose)
    assert pending["spec"]["priorityClassName"] == ours["metadata"]["name"]
    assert pending["spec"]["preemptionPolicy"] == "Never"
    status = eventually(lambda: (c := cluster.api("GET", f"{CHECKS}/full-node")).get(
        "status", {}).get("unschedulable") == 1 and c["status"], 120,
        "status.unschedulable 1", diagnose)
    assert status["phase"] == "Degraded"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "NodesBlocked"  # blocked, not failed: before the deadline
    assert f"{node.name} (Unschedulable)" in degraded["message"], degraded["message"]
    print("\n$ kubectl get thpchecks -o wide\n" + kubectl_get(cluster, "thpchecks"))
    # Some scheduling rounds later the workload is still the same running pod.
    eventually(lambda: len(cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/events"
                                       "?fieldSelector=reason%3DFailedScheduling")["items"])
               >= 1, 60, "a FailedScheduling event", diagnose)
    still = cluster.api("GET", "/api/v1/namespaces/user/pods/workload")
    assert still["metadata"]["uid"] == uid and not still["metadata"].get("deletionTimestamp")
    assert still["status"]["phase"] == "Running"
    assert node_result(cluster, "full-node", node.name) is None  # nothing checked

    # The contrast: a pod of the agent's old class (system-node-critical, what main gave the
    # agent) with the agent's request takes the node from the workload at once.
    cluster.api("POST", "/api/v1/namespaces/user/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "critical"},
        "spec": {"priorityClassName": "system-node-critical",
                 "nodeSelector": {"kubernetes.io/hostname": node.name},
                 "terminationGracePeriodSeconds": 5, "containers": [{
                     "name": "critical", "image": realnode.image.image,
                     "imagePullPolicy": "Never",
                     "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"],
                     "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}}}]}})

    def preempted() -> bool:
        body = cluster.api("GET", "/api/v1/namespaces/user/pods?fieldSelector="
                           "metadata.name%3Dworkload")["items"]
        return not body or bool(body[0]["metadata"].get("deletionTimestamp"))

    eventually(preempted, 180, "the workload preempted by a system-node-critical pod",
               diagnose)
    cluster.api("DELETE", "/api/v1/namespaces/user/pods/critical")
    cluster.api("DELETE", f"{CHECKS}/full-node")
    eventually(lambda: not cluster.api("GET", CHECKS)["items"], 120, "check deleted", diagnose)
    eventually(lambda: not all_agent_pods(cluster), 120, "agent pods gone", diagnose)
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m",
                 timeout=400)
