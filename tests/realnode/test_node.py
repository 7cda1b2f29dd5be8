"""The real node itself: kubelet + containerd run pods from the project's image, with the
volume kinds the chart uses, and leave this machine exactly as they found it."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.harness import Cluster
from devtools.cluster.realnode import (
    PAUSE_IMAGE,
    POD_SUBNET,
    HostState,
    RealNode,
    link_names,
    read_tunables,
)
from tests.realnode.conftest import RealNodeKit, real_cluster
from tests.support import wait

pytestmark = pytest.mark.realnode


def eventually(check: Callable[[], Any], timeout: float, what: str,
               node: RealNode | None = None) -> Any:
    """check()'s first truthy result; on timeout fail with the last one and the pod logs."""
    return wait.eventually(check, timeout, interval=0.5, what=what,
                           diagnose=node.all_pod_logs if node else None)


@contextlib.contextmanager
def host_tmpfs(path: Path) -> Iterator[Path]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "thpcheck-test", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    return body


def ready(body: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in body.get("status", {}).get("conditions") or [])


def test_node_runs_pods_and_leaves_no_trace(realnode_kit: RealNodeKit, tmp_path: Path) -> None:
    before = HostState.capture()
    data = tmp_path / "data"
    data.mkdir()
    ns = f"t-{uuid.uuid4().hex[:8]}"
    with real_cluster(realnode_kit, tmp_path) as rc, host_tmpfs(data):
        # Mounted on the host after kubelet started: kubelet (in its own mount namespace)
        # must see it, and create the DirectoryOrCreate hostPath on it, not beneath it.
        (data / "hello").write_text("hello from the host\n")
        cluster, node, image = rc.cluster, rc.node, rc.image.image
        info = node.node()["status"]["nodeInfo"]
        assert info["kubeletVersion"] == cluster.k8s_version
        assert info["containerRuntimeVersion"].startswith("containerd://1.")
        assert {PAUSE_IMAGE, image} <= set(node.images())
        assert node.bridge not in link_names()  # created with the first pod's network
        cluster.api("POST", "/api/v1/namespaces",
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns,
                        "--timeout=60s")
        # A pod-network pod: hostPath, in-memory emptyDir, projected service-account token.
        script = ("cat /host-data/hello; echo ok > /scratch/out && cat /scratch/out; "
                  "echo from-the-pod > /made/file; "
                  "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; "
                  "grep -c . /proc/net/dev")
        cluster.api("POST", f"/api/v1/namespaces/{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "probe", "image": image, "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "securityContext": {"runAsUser": 0},
                    "volumeMounts": [{"name": "data", "mountPath": "/host-data",
                                      "readOnly": True},
                                     {"name": "made", "mountPath": "/made"},
                                     {"name": "scratch", "mountPath": "/scratch"}]}],
                "volumes": [
                    {"name": "data", "hostPath": {"path": str(data), "type": "Directory"}},
                    {"name": "made", "hostPath": {"path": str(data / "made"),
                                                  "type": "DirectoryOrCreate"}},
                    {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
            }})
        # A privileged hostNetwork pod (like the operator and the mitigation pods) that keeps
        # running, so the teardown has to stop a live container.
        cluster.api("POST", f"/api/v1/namespaces/{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
            "spec": {
                "hostNetwork": True, "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "sleeper", "image": image, "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"],
                    "securityContext": {"privileged": True, "runAsUser": 0}}]}})

        done = eventually(lambda: pod(cluster, ns, "probe")["status"].get("phase")
                          in ("Succeeded", "Failed"), 120, "probe pod finished", node)
        assert done
        probe = pod(cluster, ns, "probe")
        log = node.pod_log(ns, "probe", "probe")
        print(f"\nprobe pod: {probe['status']['phase']}, IP {probe['status'].get('podIP')}\n{log}")
        assert probe["status"]["phase"] == "Succeeded", log
        assert "hello from the host" in log and "\nok\n" in log and f"\n{ns}\n" in log
        assert (data / "made" / "file").read_text() == "from-the-pod\n"
        assert ipaddress.ip_address(probe["status"]["podIP"]) in ipaddress.ip_network(
            POD_SUBNET)
        eventually(lambda: ready(pod(cluster, ns, "sleeper")), 120, "sleeper Ready", node)
        sleeper = pod(cluster, ns, "sleeper")
        assert sleeper["status"]["podIP"] == node.node()["status"]["addresses"][0]["address"]
        assert node.bridge in link_names()
        # Every container process lives in the node's cgroup subtree.
        assert len(node.cgroup_pids()) >= 4  # containerd, kubelet, a shim, pause, sleeper
        assert dict(before.tunables) == read_tunables(), "kubelet changed kernel tunables"
        assert before.iptables == HostState.capture().iptables, "iptables rules were added"
        print(json.dumps(realnode_kit.timings))
    assert list(data.iterdir()) == [], "kubelet wrote beneath the host's mount"
    after = HostState.capture()
    print(f"host before: {before.summary()}\nhost after:  {after.summary()}")
    assert before.leaks(after) == {}
    assert len(after.mounts) == len(before.mounts)
    assert after.links == before.links
    assert len(after.iptables) == len(before.iptables)
