"""Test kit for the operator on the real control plane (the operator process itself is
`devtools.cluster.operator`): the kubelet's part (running the real agent and writing its
termination message), polling.

kwok runs no containers: its pod-ready stage marks every pod Running and the check init
container terminated with exit 0 but no message. The test then does what a kubelet would do
once the agent exited: it writes the agent's compact result into
``status.initContainerStatuses[check].state.terminated.message`` through the pod's status
subresource. kwok leaves Running pods alone, so the message stays.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devtools.cluster.harness import Cluster
from devtools.cluster.operator import (
    CHECKS_PATH,
    REPO,
    RESULTS_PATH,
    OperatorProcess,
    with_verdict,
)
from devtools.proc import WaitTimeout, wait_for
from tests.support.wait import eventually
from thpcheck.contract import names


@dataclass
class Kubelet:
    """Plays the kubelet's part for agent pods on kwok nodes."""

    cluster: Cluster
    namespace: str
    workdir: Path

    def pods(self, check: str) -> list[dict[str, Any]]:
        selector = f"{names.CHECK_LABEL}={names.label_value(check)}"
        items: list[dict[str, Any]] = self.cluster.api(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods?labelSelector={selector}")["items"]
        return items

    def check_pod(self, check: str, node: str) -> dict[str, Any] | None:
        """The node's running pod on the check template that kwok has started."""
        for pod in self.pods(check):
            meta, status = pod["metadata"], pod.get("status", {})
            if (pod["spec"].get("nodeName") == node and not meta.get("deletionTimestamp")
                    and meta["labels"].get(names.TEMPLATE_LABEL) == "check"
                    and status.get("phase") == "Running"
                    and status.get("initContainerStatuses")):
                return pod
        return None

    def wait_check_pods(self, check: str, nodes: Sequence[str],
                        timeout: float = 90.0) -> dict[str, dict[str, Any]]:
        def ready() -> dict[str, dict[str, Any]] | None:
            found = {n: self.check_pod(check, n) for n in nodes}
            return found if all(found.values()) else None  # type: ignore[return-value]

        pods: dict[str, dict[str, Any]] = eventually(ready, timeout,
                                                     what=f"check pods on {list(nodes)}")
        return pods

    def run_agent(self, pod: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run the pod's own agent command line on this machine; return the compact
        result it wrote and the full JSON document it printed."""
        (container,) = pod["spec"]["initContainers"]
        command = list(container["command"])
        assert command[:2] == ["thpcheck", "check"], command
        result_file = self.workdir / f"result-{pod['metadata']['uid']}"
        command[command.index("--result-file") + 1] = str(result_file)
        command[command.index("--host-root") + 1] = "/"
        argv = [sys.executable, "-m", "thpcheck", *command[1:]]
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                                   env={**os.environ, "PYTHONPATH": str(REPO / "operator")},
                                   check=False)
        assert completed.returncode == 0, completed.stderr
        return result_file.read_text(), json.loads(completed.stdout)

    def terminate(self, pod: Mapping[str, Any], message: str, exit_code: int = 0) -> None:
        """Write the check container's terminated state, as the kubelet does on exit."""
        statuses = [dict(s) for s in pod["status"]["initContainerStatuses"]]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for entry in statuses:
            if entry["name"] == "check":
                terminated = dict(entry["state"].get("terminated") or {})
                terminated.update(exitCode=exit_code, message=message, finishedAt=now,
                                  reason="Completed" if exit_code == 0 else "Error")
                terminated.setdefault("startedAt", now)
                entry["state"] = {"terminated": terminated}
        meta = pod["metadata"]
        self.cluster.api("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/"
                         f"{meta['name']}/status", {"status": {"initContainerStatuses": statuses}},
                         content_type="application/merge-patch+json")


def new_check(cluster: Cluster, checks: list[str], name: str, selector: Mapping[str, str],
              scratch: Path, remediation: Mapping[str, Any]) -> None:
    """A fast ThpCheck (one small reproducer iteration, every node at once) on the selected
    nodes, recorded in ``checks`` so it is deleted while the operator still runs."""
    checks.append(name)
    scratch.mkdir(parents=True, exist_ok=True)
    cluster.api("POST", CHECKS_PATH, {
        "apiVersion": names.API_VERSION, "kind": names.CHECK_KIND, "metadata": {"name": name},
        "spec": {"nodeSelector": dict(selector), "paths": [str(scratch)],
                 "maxConcurrent": "100%",
                 "reproducer": {"iterations": 1, "baseSizeBytes": 2 << 20},
                 "remediation": dict(remediation)}})


def all_affected(kubelet: Kubelet, check: str, nodes: Sequence[str]) -> dict[str, Any]:
    """Run the real agent once (on the first node's pod), report ``affected`` on every node;
    returns the agent's document."""
    pods = kubelet.wait_check_pods(check, nodes)
    _, document = kubelet.run_agent(pods[nodes[0]])
    for n in nodes:
        kubelet.terminate(pods[n], with_verdict(document, "affected"))
    return document


def check_events(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    """The Events about a ThpCheck (kopf posts them in the default namespace)."""
    items: list[dict[str, Any]] = cluster.api(
        "GET", "/api/v1/namespaces/default/events?fieldSelector="
        f"involvedObject.kind={names.CHECK_KIND},involvedObject.name={name}")["items"]
    return items


def results(cluster: Cluster, check: str) -> dict[str, dict[str, Any]]:
    """The check's ThpNodeResults by node."""
    selector = f"{names.CHECK_LABEL}={names.label_value(check)}"
    items = cluster.api("GET", f"{RESULTS_PATH}?labelSelector={selector}")["items"]
    return {r["status"]["node"]: r for r in items}


def get_check(cluster: Cluster, name: str) -> dict[str, Any] | None:
    with contextlib.suppress(Exception):
        check: dict[str, Any] = cluster.api("GET", f"{CHECKS_PATH}/{name}")
        return check
    return None


def node(cluster: Cluster, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.api("GET", f"/api/v1/nodes/{name}")
    return found


DISAGREEMENT = "PredictionDisagreement"


def change_events(cluster: Cluster, name: str) -> list[str]:
    """Reasons of the node's Events about changes (without the Warnings saying that an agent
    result contradicts the preflight prediction, as the tests' injected results often do)."""
    return [e["reason"] for e in node_events(cluster, name) if e["reason"] != DISAGREEMENT]


def node_events(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.api(
        "GET", "/api/v1/events?fieldSelector=involvedObject.kind=Node,"
        f"involvedObject.name={name}")["items"]
    return [e for e in items if e.get("source", {}).get("component") == names.MANAGER
            or e.get("reportingComponent") == names.MANAGER]


@contextlib.contextmanager
def checks_cleaned_up(cluster: Cluster, operator: OperatorProcess,
                      created: list[str]) -> Iterator[None]:
    """Delete the test's ThpChecks while the operator still runs (it owns the finalizer)."""
    try:
        yield
    finally:
        for name in created:
            cluster.kubectl("delete", "thpcheck", name, "--ignore-not-found", "--wait=false",
                            check=False)
        if operator.process is None:
            operator.start()
        with contextlib.suppress(WaitTimeout):
            wait_for(lambda: not any(get_check(cluster, n) for n in created), 60,
                     "the test's ThpChecks gone", interval=0.5)
        for name in created:  # last resort, so one failure does not poison the session
            if get_check(cluster, name):
                cluster.kubectl("patch", "thpcheck", name, "--type=merge", "-p",
                                '{"metadata":{"finalizers":[]}}', check=False)
