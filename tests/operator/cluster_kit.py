"""Test kit for the operator on the real control plane: the operator as a real process, the
kubelet's part (running the real agent and writing its termination message), polling.

kwok runs no containers: its pod-ready stage marks every pod Running and the check init
container terminated with exit 0 but no message. The test then does what a kubelet would do
once the agent exited: it writes the agent's compact result into
``status.initContainerStatuses[check].state.terminated.message`` through the pod's status
subresource. kwok leaves Running pods alone, so the message stays.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import Cluster, free_ports
from tests.support.wait import eventually
from thpcheck.model.report import compact
from thpcheck.specs import names

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "charts" / "thp-checker" / "crds"
AGENT_IMAGE = "thp-checker:test"
RESULTS_PATH = f"/apis/{names.GROUP}/{names.VERSION}/{names.RESULT_PLURAL}"
CHECKS_PATH = f"/apis/{names.GROUP}/{names.VERSION}/{names.CHECK_PLURAL}"


def this_machine() -> dict[str, str]:
    """nodeInfo of this machine, so the real agent's results are not stale on a kwok node."""
    return {"kernelVersion": os.uname().release,
            "bootID": Path("/proc/sys/kernel/random/boot_id").read_text().strip()}


def install_crds(cluster: Cluster, directory: Path = CRD_DIR) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory))
    for name in names.CRD_NAMES:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: no leaked operators


@dataclass
class OperatorProcess:
    """``python -m thpcheck operator`` against the test cluster, as a child process."""

    cluster: Cluster
    namespace: str
    log_dir: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    args: Sequence[str] = ()  # extra command-line arguments, e.g. ("--kubeconfig", FILE)
    unset_env: Sequence[str] = ()  # variables removed from the environment, e.g. KUBECONFIG
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.metrics_port, self.health_port = free_ports(2)

    @property
    def log(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def env(self) -> dict[str, str]:
        env = self._env()
        for name in self.unset_env:
            env.pop(name, None)
        return env

    def _env(self) -> dict[str, str]:
        return {**self.cluster.env(), "PYTHONPATH": str(REPO / "operator"),
                "THPCHECK_NAMESPACE": self.namespace, "THPCHECK_AGENT_IMAGE": AGENT_IMAGE,
                "THPCHECK_METRICS_PORT": str(self.metrics_port),
                "THPCHECK_HEALTH_PORT": str(self.health_port),
                "THPCHECK_STATUS_INTERVAL": "1", "THPCHECK_DEBOUNCE": "0.2",
                # kwok's empty exit-0 message must not turn into an error before we inject.
                "THPCHECK_EMPTY_RESULT_GRACE": "3600",
                **self.extra_env}

    def launch(self) -> subprocess.Popen[bytes]:
        """Start without waiting (for start-up failures)."""
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "thpcheck", "operator", "--log-format", "json",
                 *self.args],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                preexec_fn=_die_with_parent)
        return self.process

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        process = self.launch()

        def healthy() -> bool:
            if process.poll() is not None:
                pytest.fail(f"operator exited {process.returncode}:\n{self.tail()}")
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
                return bool(reply.status == 200)
            return False

        eventually(healthy, timeout, what="operator liveness endpoint")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(10)

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        self.stop(signal.SIGKILL)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as response:
            return str(response.read().decode())

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


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


def with_verdict(document: Mapping[str, Any], verdict: str) -> str:
    """The compact result of a real agent document with every verdict set to ``verdict``."""
    changed = json.loads(json.dumps(document))
    changed["verdict"] = verdict
    for path in changed["paths"]:
        path["verdict"] = verdict
        if verdict == "affected":
            path["repro"].update(outcome="reproduced", iteration=0, bad_bytes=16384)
            path["reason"] = "reproduced: 16384 appended bytes lost at iteration 0"
    return compact(changed)


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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(get_check(cluster, n) for n in created):
            time.sleep(0.5)
        for name in created:  # last resort, so one failure does not poison the session
            if get_check(cluster, name):
                cluster.kubectl("patch", "thpcheck", name, "--type=merge", "-p",
                                '{"metadata":{"finalizers":[]}}', check=False)
