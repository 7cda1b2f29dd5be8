"""Nodes whose kubelet the test plays in full, for what kwok cannot show: a pod that stays
unavailable.

kwok marks every pod Ready the moment it is bound, so a DaemonSet's rolling update never
waits on a kwok node, and a check container that crash-loops, or a node that goes NotReady,
could never hold a slot there. These nodes carry no kwok annotation, so kwok leaves them and
their pods alone; a background thread does what their kubelet would:

- renews each node's Lease in ``kube-node-lease`` (the node controller's heartbeat), until the
  test takes the node down (``not_ready``: the kubelet reports Ready=False and stops);
- starts every pod bound to the nodes: an agent pod on the *check* template begins its ``check``
  init container (phase Pending, Initialized False, not Ready: unavailable, as on a real node
  until the agent exits); a mitigation pod runs but is not Ready until ``make_ready`` (its
  readiness probe has not verified the knob yet); any other pod runs and is Ready;
- confirms the deletion of pods being deleted (the kubelet's last word), unless the node is
  down.

The test then writes the states a kubelet writes (``finish``, ``crash_loop``, ``waiting``,
``oom_killed``, ``make_ready``), through each pod's status subresource.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from devtools.cluster.harness import Cluster, ClusterError, node_manifest
from tests.support.wait import eventually
from thpcheck.contract import names

LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
MERGE = "application/merge-patch+json"
LEASE_SECONDS = 40


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(ready: bool, initialized: bool, at: str) -> list[dict[str, Any]]:
    def cond(type_: str, ok: bool, reason: str = "") -> dict[str, Any]:
        entry = {"type": type_, "status": "True" if ok else "False", "lastTransitionTime": at}
        if not ok and reason:
            entry["reason"] = reason
        return entry

    return [cond("PodScheduled", True),
            cond("Initialized", initialized, "ContainersNotInitialized"),
            cond("ContainersReady", ready, "ContainersNotReady"),
            cond("Ready", ready, "ContainersNotReady")]


def _container(spec: Mapping[str, Any], state: Mapping[str, Any], *, ready: bool = False,
               restarts: int = 0, last: Mapping[str, Any] | None = None) -> dict[str, Any]:
    entry = {"name": spec["name"], "image": spec.get("image", ""), "imageID": "",
             "ready": ready, "restartCount": restarts, "state": dict(state)}
    if last:
        entry["lastState"] = {"terminated": dict(last)}
    return entry


def is_check_pod(pod: Mapping[str, Any]) -> bool:
    return (pod["metadata"].get("labels") or {}).get(names.TEMPLATE_LABEL) == "check"


def is_mitigation_pod(pod: Mapping[str, Any]) -> bool:
    return (pod["metadata"].get("labels") or {}).get(names.POD_ROLE_LABEL) == names.MITIGATION_ROLE


@dataclass
class ManualNodes:
    """Nodes (and their pods) whose kubelet this test plays; see the module docstring."""

    cluster: Cluster
    prefix: str
    labels: Mapping[str, str] = field(default_factory=dict)
    node_info: Mapping[str, str] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    down: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="manual-kubelet")
        self._addresses = itertools.count(2)

    # -- nodes ---------------------------------------------------------------------------

    def add(self, count: int) -> list[str]:
        made = []
        for index in range(count):
            name = f"{self.prefix}-m{index}"
            manifest = node_manifest(name, kubelet_port=self.cluster.ports["kwok"],
                                     kubelet_version=self.cluster.k8s_version,
                                     labels=self.labels, node_info=self.node_info)
            manifest["metadata"]["annotations"].pop("kwok.x-k8s.io/node")  # not kwok's
            stamp = now()
            manifest["status"]["conditions"] = [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "kubelet is posting ready status", "lastHeartbeatTime": stamp,
                 "lastTransitionTime": stamp}]
            self.cluster.api("POST", "/api/v1/nodes", manifest)
            self.cluster.api("POST", LEASES, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                         "renewTime": self._micro()}})
            made.append(name)
        with self._lock:
            self.nodes.extend(made)
        if not self._thread.is_alive():
            self._thread.start()
        return made

    def not_ready(self, node: str) -> None:
        """The kubelet reports NotReady (its runtime is down) and stops posting."""
        with self._lock:
            self.down.add(node)
        stamp = now()
        self.cluster.api("PATCH", f"/api/v1/nodes/{node}/status", {"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "KubeletNotReady",
             "message": "container runtime is down", "lastHeartbeatTime": stamp,
             "lastTransitionTime": stamp}]}}, content_type="application/strategic-merge-patch+json")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for name in self.nodes:
            with contextlib.suppress(ClusterError):
                self.cluster.api("DELETE", f"/api/v1/nodes/{name}")
            with contextlib.suppress(ClusterError):
                self.cluster.api("DELETE", f"{LEASES}/{name}")

    # -- the kubelet's loop ------------------------------------------------------------------

    @staticmethod
    def _micro() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _run(self) -> None:
        renewed = 0.0
        while not self._stop.wait(0.3):
            with self._lock:
                nodes, down = list(self.nodes), set(self.down)
            try:
                if time.monotonic() - renewed > 5:
                    for name in nodes:
                        if name not in down:
                            self.cluster.api("PATCH", f"{LEASES}/{name}",
                                             {"spec": {"renewTime": self._micro()}},
                                             content_type=MERGE)
                    renewed = time.monotonic()
                for name in nodes:
                    if name not in down:
                        for pod in self.pods_on(name):
                            self._tend(pod)
            except (ClusterError, OSError) as exc:  # the API server may be restarting
                self.errors.append(str(exc))

    def pods_on(self, node: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.cluster.api(
            "GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node}")["items"]
        return items

    def _tend(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        if meta.get("deletionTimestamp"):
            with contextlib.suppress(ClusterError):
                self.cluster.api("DELETE", path, {"gracePeriodSeconds": 0})
            return
        if (pod.get("status") or {}).get("podIP"):
            return  # started already: from now on only the test changes it
        spec, stamp = pod["spec"], now()
        number = next(self._addresses)
        common = {"hostIP": "127.0.0.1", "podIP": f"10.250.{number // 250}.{number % 250 + 1}",
                  "startTime": stamp}
        if is_check_pod(pod):
            (check,) = spec["initContainers"]
            status = {**common, "phase": "Pending",
                      "conditions": _conditions(False, False, stamp),
                      "initContainerStatuses": [_container(check, {"running": {
                          "startedAt": stamp}})],
                      "containerStatuses": [_container(c, {"waiting": {
                          "reason": "PodInitializing"}}) for c in spec["containers"]]}
        else:
            ready = not is_mitigation_pod(pod)
            status = {**common, "phase": "Running",
                      "conditions": _conditions(ready, True, stamp),
                      "containerStatuses": [_container(c, {"running": {"startedAt": stamp}},
                                                       ready=ready)
                                            for c in spec["containers"]]}
        self.cluster.api("PATCH", f"{path}/status", {"status": status}, content_type=MERGE)

    # -- what the test makes the kubelet write -------------------------------------------

    def _write(self, pod: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        self.cluster.api("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/"
                         f"{meta['name']}/status", {"status": dict(status)}, content_type=MERGE)

    def _check_spec(self, pod: Mapping[str, Any]) -> Mapping[str, Any]:
        (check,) = pod["spec"]["initContainers"]
        return check  # type: ignore[no-any-return]

    def finish(self, pod: Mapping[str, Any], message: str, exit_code: int = 0) -> None:
        """The agent exited: its result is the termination message; the pod becomes Ready."""
        stamp = now()
        started = pod["status"]["initContainerStatuses"][0]["state"].get(
            "running", {}).get("startedAt", stamp)
        self._write(pod, {
            "phase": "Running", "conditions": _conditions(True, True, stamp),
            "initContainerStatuses": [_container(self._check_spec(pod), {"terminated": {
                "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                "message": message, "startedAt": started, "finishedAt": stamp}})],
            "containerStatuses": [_container(c, {"running": {"startedAt": stamp}}, ready=True)
                                  for c in pod["spec"]["containers"]]})

    def crash_loop(self, pod: Mapping[str, Any], *, exit_code: int = 1, reason: str = "Error",
                   log_tail: str = "Traceback (most recent call last): ...") -> None:
        """The check container failed and the kubelet backs off before restarting it."""
        self._write(pod, {"initContainerStatuses": [_container(
            self._check_spec(pod),
            {"waiting": {"reason": "CrashLoopBackOff",
                         "message": "back-off 10s restarting failed container=check"}},
            restarts=2, last={"exitCode": exit_code, "reason": reason, "message": log_tail,
                              "startedAt": now(), "finishedAt": now()})]})

    def oom_killed(self, pod: Mapping[str, Any]) -> None:
        self.crash_loop(pod, exit_code=137, reason="OOMKilled", log_tail="")

    def waiting(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        """The check container cannot be started (image, config, runtime)."""
        self._write(pod, {"initContainerStatuses": [_container(
            self._check_spec(pod), {"waiting": {"reason": reason, "message": message}})]})

    def make_ready(self, pod: Mapping[str, Any]) -> None:
        """A running pod's readiness probe passes."""
        stamp = now()
        self._write(pod, {"phase": "Running", "conditions": _conditions(True, True, stamp),
                          "containerStatuses": [
                              _container(c, {"running": {"startedAt": stamp}}, ready=True)
                              for c in pod["spec"]["containers"]]})

    # -- finding pods ------------------------------------------------------------------------

    def running_check_pods(self) -> dict[str, dict[str, Any]]:
        """Per node, the check pod whose check container is running (started, not ended)."""
        found = {}
        for name in list(self.nodes):
            for pod in self.pods_on(name):
                statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
                if (is_check_pod(pod) and not pod["metadata"].get("deletionTimestamp")
                        and statuses and "running" in statuses[0]["state"]):
                    found[name] = pod
        return found

    def mitigation_pod(self, node: str) -> dict[str, Any] | None:
        for pod in self.pods_on(node):
            if is_mitigation_pod(pod) and (pod.get("status") or {}).get("podIP") \
                    and not pod["metadata"].get("deletionTimestamp"):
                return pod
        return None

    def next_check_pod(self, done: Sequence[str], timeout: float = 60.0) -> dict[str, Any]:
        """A running check pod on a node not in ``done`` (the rollout's next one)."""
        def found() -> dict[str, Any] | None:
            pods = {n: p for n, p in self.running_check_pods().items() if n not in done}
            return next(iter(pods.values()), None)

        pod: dict[str, Any] = eventually(found, timeout, what=f"a check pod beyond {list(done)}")
        return pod


@contextlib.contextmanager
def manual_nodes(cluster: Cluster, prefix: str, labels: Mapping[str, str],
                 node_info: Mapping[str, str]) -> Iterator[ManualNodes]:
    kit = ManualNodes(cluster, prefix, labels, node_info)
    try:
        yield kit
    finally:
        kit.close()
