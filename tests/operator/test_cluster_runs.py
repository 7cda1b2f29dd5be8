"""Every run ends, on the real control plane: check containers that crash-loop, are OOM-killed,
cannot start or hang, and nodes that go NotReady, each become an error result (or a reported
blocked node) and free their rollout slot; a DaemonSet the API server refuses degrades the
check with the API's message.

The crash and NotReady tests use nodes whose kubelet the test plays in full
(tests/operator/manual_kubelet.py): on kwok nodes every pod is Ready at once, so a rolling
update never waits there and a stuck pod could not be shown holding a slot.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.harness import Cluster
from devtools.cluster.operator import CHECKS_PATH, OperatorProcess, this_machine
from tests.operator.cluster_kit import Kubelet, eventually, results
from tests.operator.manual_kubelet import ManualNodes, manual_nodes
from tests.operator.test_cluster_operator import create_check, status_of

pytestmark = pytest.mark.cluster


@pytest.fixture
def kit(crds: Cluster, test_id: str) -> Iterator[ManualNodes]:
    with manual_nodes(crds, f"t{test_id}", {"thpcheck-test": test_id}, this_machine()) as made:
        yield made


def conditions(cluster: Cluster, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status_of(cluster, name).get("conditions") or []}


def error_result(cluster: Cluster, check: str, node: str, reason: str,
                 timeout: float) -> tuple[dict[str, Any], float]:
    """The node's error result naming ``reason``, and how long it took to appear."""
    started = time.monotonic()

    def found() -> dict[str, Any] | None:
        result = results(cluster, check).get(node)
        if result and result["status"]["verdict"] == "error" \
                and result["status"]["message"].startswith(reason):
            return result
        return None

    result: dict[str, Any] = eventually(found, timeout, what=f"{node}: an error result {reason}")
    return result, time.monotonic() - started


def runs_metric(operator: OperatorProcess, check: str) -> dict[str, float]:
    found = {}
    for line in operator.metrics().splitlines():
        match = re.match(r'thpcheck_runs_total\{check="([^"]+)",outcome="(\w+)"\} (\S+)', line)
        if match and match[1] == check:
            found[match[2]] = float(match[3])
    return found


def test_every_run_ends_and_frees_its_slot(crds: Cluster, operator: OperatorProcess,
                                           kubelet: Kubelet, kit: ManualNodes,
                                           checks: list[str], test_id: str,
                                           tmp_path: Path) -> None:
    nodes = kit.add(7)
    name = f"ends-{test_id}"
    create_check(crds, checks, name, test_id, tmp_path / "scratch", maxConcurrent=1,
                 runDeadline="30s")

    def waiting(reason: str, text: str) -> Callable[[dict[str, Any]], None]:
        return lambda pod: kit.waiting(pod, reason, text)

    # One node after another (maxConcurrent 1): each run ends its own way.
    endings: list[tuple[str, Callable[[dict[str, Any]], None] | None, float]] = [
        ("CrashLoopBackOff", kit.crash_loop, 20),
        ("OOMKilled", kit.oom_killed, 20),
        ("ImagePullBackOff", waiting("ImagePullBackOff",
                                     'Back-off pulling image "thp-checker:test"'), 20),
        ("CreateContainerConfigError", waiting("CreateContainerConfigError",
                                               'secret "agent-config" not found'), 20),
        ("CreateContainerError", waiting("CreateContainerError",
                                         "context deadline exceeded"), 20),
        ("DeadlineExceeded", None, 60),  # the agent hangs: nothing is written
    ]
    done: list[str] = []
    took: dict[str, float] = {}
    for reason, act, timeout in endings:
        pod = kit.next_check_pod(done)
        node = pod["spec"]["nodeName"]
        unfinished = set(kit.running_check_pods()) - set(done)
        assert unfinished == {node}, f"more than maxConcurrent runs at once: {unfinished}"
        if act is not None:
            act(pod)
        result, took[reason] = error_result(crds, name, node, reason, timeout)
        assert result["status"]["pod"]["uid"] == pod["metadata"]["uid"]
        done.append(node)

    # The last node's run completes: its slot was not taken by the six that failed.
    pod = kit.next_check_pod(done)
    last = pod["spec"]["nodeName"]
    message, document = kubelet.run_agent(pod)
    kit.finish(pod, message)
    eventually(lambda: (results(crds, name).get(last) or {}).get("status", {}).get("verdict")
               == document["verdict"], what="the last node's own result")
    assert set(done) | {last} == set(nodes)

    status = eventually(lambda: (s := status_of(crds, name)).get("checked") == 7 and s,
                        what="every node accounted for")
    degraded = conditions(crds, name)["Degraded"]
    assert (status["phase"], status["errors"], degraded["reason"]) == (
        "Degraded", 6, "RunsFailed")
    assert "6 runs ended without a result: " in degraded["message"]
    assert degraded["message"].count(" (") >= 5 and "and 1 more" in degraded["message"]
    reasons = dict(zip(done, (reason for reason, _, _ in endings), strict=True))
    named = [n for n in done if f"{n} ({reasons[n]})" in degraded["message"]]
    assert sorted(named) == sorted(done)[:5]
    assert runs_metric(operator, name) == {"completed": 1.0, "crashed": 5.0, "timed_out": 1.0}
    print({reason: round(seconds, 1) for reason, seconds in took.items()})


def test_a_node_going_notready_mid_run_does_not_stall_the_rollout(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, kit: ManualNodes,
        checks: list[str], test_id: str, tmp_path: Path) -> None:
    kit.add(4)
    name = f"notready-{test_id}"
    create_check(crds, checks, name, test_id, tmp_path / "scratch", maxConcurrent=1,
                 runDeadline="90s")
    first = kit.next_check_pod([])
    lost = first["spec"]["nodeName"]
    kit.not_ready(lost)
    lost_at = time.monotonic()

    done = [lost]
    message = ""
    for _ in range(3):
        pod = kit.next_check_pod(done)
        if not message:
            message, _ = kubelet.run_agent(pod)
        kit.finish(pod, message)
        done.append(pod["spec"]["nodeName"])
    eventually(lambda: len(results(crds, name)) == 3, what="three results")

    found = eventually(lambda: (c := conditions(crds, name)).get("Progressing", {}).get(
        "reason") == "RunStalled" and c, 30, what="the run reported stalled")
    assert found["Progressing"]["status"] == "False"
    assert f"{lost} (NodeNotReady)" in found["Progressing"]["message"]
    assert found["Degraded"]["reason"] == "NodesBlocked"
    assert f"{lost} (NodeNotReady)" in found["Degraded"]["message"]
    assert status_of(crds, name)["phase"] == "Degraded"
    stalled_after = time.monotonic() - lost_at

    # Its run ends too, at the deadline, as an error result saying why.
    result, _ = error_result(crds, name, lost, "DeadlineExceeded", 120)
    assert "NotReady" in result["status"]["message"]
    eventually(lambda: status_of(crds, name).get("checked") == 4, what="all four accounted for")
    print(f"stalled status {stalled_after:.1f} s after the node went NotReady")


def test_a_daemonset_the_api_server_rejects_degrades_the_check_with_its_message(
        crds: Cluster, operator: OperatorProcess, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    make_nodes(1)
    name = f"rejected-{test_id}"
    # The CRD accepts any toleration key; a Pod spec wants a label name (422 from the API).
    create_check(crds, checks, name, test_id, tmp_path / "scratch",
                 tolerations=[{"key": "bad key!", "operator": "Exists"}])
    created = time.monotonic()
    found = eventually(lambda: (c := conditions(crds, name)).get("Degraded", {}).get(
        "reason") == "DaemonSetRejected" and c, 30, what="Degraded: DaemonSetRejected")
    print(f"Degraded (DaemonSetRejected) {time.monotonic() - created:.1f} s after the check")
    assert found["Degraded"]["status"] == "True"
    assert "spec.template.spec.tolerations[0].key" in found["Degraded"]["message"]
    assert 'Invalid value: "bad key!"' in found["Degraded"]["message"]
    assert (found["Progressing"]["status"], found["Progressing"]["reason"]) == (
        "False", "DaemonSetRejected")
    assert status_of(crds, name)["phase"] == "Degraded"
    assert operator.tail().count("agent daemonset rejected") == 1  # not retried in a loop

    # Fixed spec: the DaemonSet is created and the condition clears.
    crds.api("PATCH", f"{CHECKS_PATH}/{name}", {"spec": {"tolerations": [
        {"operator": "Exists"}]}}, content_type="application/merge-patch+json")
    eventually(lambda: conditions(crds, name)["Degraded"]["reason"] != "DaemonSetRejected",
               30, what="the rejection cleared")
    crds.api("GET", f"/apis/apps/v1/namespaces/{operator.namespace}/daemonsets/"
             f"thpcheck-{name}")
