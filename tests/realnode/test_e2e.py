"""End to end on a real node: the chart installed with Helm, the operator running in-cluster as
a pod, a real kubelet running the agent's init container from the project's image against a
loop-mounted btrfs on this machine, and the mitigation pod really stopping khugepaged.

The verdict must equal a local ``thpcheck check`` of the same path (this machine's kernel has
no CONFIG_READ_ONLY_THP_FOR_FS: not-affected by G1, reproducer collapse_unsupported).

Mitigation on a not-affected node: the operator labels only *affected* nodes for mitigation,
and on a real node the agent's result cannot be faked the way tests/operator does it (writing
the termination message through the pod's status subresource): the kubelet owns pod status
and writes its own back. So the test labels the node ``thpcheck.io/mitigate=true`` itself, as
an admin would to mitigate by hand; the mitigation DaemonSet exists because the ThpCheck has
``remediation.mitigate: true``. Removing the label must restore the knob exactly, and the
ThpCheck's deletion must remove the DaemonSet, results and labels.

The ThpCheck also sets the node condition (the chart grants nodes/status with
``remediation.condition``): ThpDataLoss False on this not-affected node, kept by the kubelet's
next status sync (not rewritten by the operator), gone with the ThpCheck.

The khugepaged knob is restored in ``finally`` whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.cluster.harness import REPO_ROOT, Cluster, ClusterError, free_ports
from devtools.cluster.realnode import THP_KNOB, cri_log_text
from devtools.cluster.realnode import thp_knob as knob
from devtools.host.loopfs import MKFS, loop_mount
from tests.host.agent import check_json, listing
from tests.realnode.conftest import RealCluster
from tests.support import wait
from tests.support.require import skip_or_fail
from thpcheck.contract import names

pytestmark = pytest.mark.realnode

CHART = REPO_ROOT / "charts" / "thp-checker"
VALUES = Path(__file__).with_name("values.yaml")
STOPPED = "4294967295"
KERNEL_DEFAULT = "10000"  # khugepaged's default; what this machine has
RELEASE = "thp"
NAMESPACE = "thp-checker"
CHECK = "realnode"
FSTYPE = "btrfs"
CHECKS = f"/apis/{names.GROUP}/{names.VERSION}/{names.CHECK_PLURAL}"
RESULTS = f"/apis/{names.GROUP}/{names.VERSION}/{names.RESULT_PLURAL}"


def eventually(check: Callable[[], Any], timeout: float, what: str,
               diagnose: Callable[[], str] = lambda: "") -> Any:
    """check()'s first truthy result; API errors while servers restart count as not yet."""
    return wait.eventually(check, timeout, interval=1.0, what=what, diagnose=diagnose,
                           tolerate=(ClusterError,))


@contextmanager
def knob_restored(original: str, state_file: Path) -> Iterator[None]:
    """Put the khugepaged knob back to ``original`` on the way out, whatever happened; fail
    (unless already failing) when it had to."""
    failing = False
    try:
        yield
    except BaseException:
        failing = True
        raise
    finally:
        value = knob()
        if value != original:
            THP_KNOB.write_text(original + "\n")
        state_file.unlink(missing_ok=True)
        if value != original and not failing:
            pytest.fail(f"{THP_KNOB} was {value} after the test; restored {original}",
                        pytrace=False)


def kubectl_get(cluster: Cluster, *what: str) -> str:
    return cluster.kubectl("get", *what, "-o", "wide").stdout


def pods(cluster: Cluster, role: str) -> list[dict[str, Any]]:
    selector = f"{names.POD_ROLE_LABEL}%3D{role}"
    items: list[dict[str, Any]] = cluster.api(
        "GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}")["items"]
    return items


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions") or [])


def result(cluster: Cluster, node: str) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = cluster.api("GET", f"{RESULTS}/{names.result_name(CHECK, node)}")
    except ClusterError as exc:
        if "HTTP 404" in str(exc):
            return None
        raise
    return body


def condition(body: dict[str, Any], kind: str = names.NODE_CONDITION) -> dict[str, Any] | None:
    """The node's condition of that type (ours by default)."""
    return next((c for c in body.get("status", {}).get("conditions") or []
                 if c["type"] == kind), None)


def mitigation_processes(state_file: str, *, restore: bool = False) -> list[int]:
    """Host pids of ``thpcheck mitigate`` holding the mitigation (not probes, not restores),
    or with ``restore`` the restore pod's shell (its script names the state file)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if restore:
            if words[:2] == ["/bin/sh", "-c"] and len(words) > 2 and (
                    "--restore --log-format json --log-level info" in words[2]
                    and state_file in words[2]):
                found.append(int(entry.name))
        elif ("mitigate" in words and state_file in words
                and not {"--verify", "--restore"} & set(words)):
            found.append(int(entry.name))
    return found


def privileges(pid: int) -> dict[str, str]:
    """What the kernel says a process may do: its capability sets, no_new_privs, seccomp
    mode, and whether its root filesystem is mounted read-only."""
    status = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    found = {key: status[key].strip() for key in
             ("Uid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            found["root"] = fields[5].split(",")[0]  # the last mount on / wins
    return found


UNPRIVILEGED = {"Uid": "0\t0\t0\t0", "CapInh": "0000000000000000", "CapPrm": "0000000000000000",
                "CapEff": "0000000000000000", "CapBnd": "0000000000000000",
                "CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2", "root": "ro"}


def assert_unprivileged(pids: list[int], what: str) -> None:
    """Each process runs as root with no capability at all, no_new_privs, a seccomp filter
    and a read-only root filesystem (as the kernel reports it, not as the spec asks)."""
    assert pids, f"no {what} process found"
    for pid in pids:
        assert privileges(pid) == UNPRIVILEGED, (what, pid, privileges(pid))


def assert_ready_only_after_indexing(rc: RealCluster, pod: dict[str, Any], port: int) -> None:
    """The kubelet probed /readyz: the pod turned Ready no earlier than the second in which
    the operator logged that kopf's start-up indexing was done."""
    (container,) = pod["spec"]["containers"]
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/readyz", "health"), probe
    name = pod["metadata"]["name"]
    current = rc.cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
    (condition,) = [c for c in current["status"]["conditions"] if c["type"] == "Ready"]
    assert condition["status"] == "True", condition
    became_ready = datetime.fromisoformat(condition["lastTransitionTime"])
    with rc.node.open_pod_log(NAMESPACE, name, "operator") as log:
        lines = [line for line in log if "start-up indexing done: ready" in line]
    assert len(lines) == 1, lines
    logged = datetime.fromisoformat(lines[0].split(" ", 1)[0]).replace(microsecond=0)
    assert became_ready >= logged, (condition, lines[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
        assert json.loads(reply.read())["indexed"]["nodes"] == 1
    print(f"\noperator: indexing done (logged) at {logged}, Ready at {became_ready}")


def daemonsets(cluster: Cluster) -> list[str]:
    return sorted(d["metadata"]["name"] for d in cluster.api(
        "GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets")["items"])


@contextmanager
def loop_btrfs(tmp_path: Path) -> Iterator[Path]:
    """A loop-mounted btrfs on this machine (the node's host), unmounted afterwards."""
    if not os.path.exists("/dev/loop-control"):
        skip_or_fail("realnode", "this machine has no loop devices (/dev/loop-control)")
    for tool in ("losetup", MKFS[FSTYPE][0]):
        if shutil.which(tool) is None:
            skip_or_fail("realnode", f"{tool} is not installed (apt-get install btrfs-progs)")
    with loop_mount(tmp_path / "fs", FSTYPE) as mountpoint:
        yield mountpoint


@pytest.fixture
def scratch(realnode: RealCluster, tmp_path: Path) -> Iterator[Path]:
    """A directory on a loop-mounted btrfs, checked empty (the agent cleans up) and removed."""
    with loop_btrfs(tmp_path) as mountpoint:
        path = mountpoint / f"scratch-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        yield path
        leftovers = listing(path)
        assert leftovers == [], f"the agent left files behind: {leftovers}"


def test_chart_on_real_node(realnode: RealCluster, scratch: Path, tmp_path: Path) -> None:
    node = realnode.node
    original = knob()
    assert original == KERNEL_DEFAULT, (
        f"{THP_KNOB} is {original}, not khugepaged's default {KERNEL_DEFAULT}: something left "
        "it changed; restore it before running this test")
    state_dir = node.workdir / "mitigation-state"
    with knob_restored(original, state_dir / "mitigation.state"):
        run_end_to_end(realnode, scratch, state_dir, tmp_path)
    assert knob() == KERNEL_DEFAULT


def run_end_to_end(rc: RealCluster, scratch: Path, state_dir: Path, tmp_path: Path) -> None:
    cluster, node, image = rc.cluster, rc.node, rc.image
    timings: dict[str, float] = {}
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        timings[name] = round(time.monotonic() - mark, 1)
        mark = time.monotonic()

    def diagnose() -> str:
        return (kubectl_get(cluster, "pods,daemonsets", "-n", NAMESPACE)
                + kubectl_get(cluster, "thpchecks,thpnoderesults")
                + node.all_pod_logs())

    # 1. helm install: the operator as a pod on the real node, reaching the API on loopback.
    api = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
           {"name": "KUBERNETES_SERVICE_PORT", "value": str(cluster.ports["apiserver"])}]
    generated = tmp_path / "values-generated.yaml"
    # A health port (a free one: the operator shares the host's network here), so the kubelet
    # probes /readyz and `helm install --wait` waits for it.
    (health_port,) = free_ports(1)
    generated.write_text(yaml.safe_dump({
        "image": {"tag": image.version},
        "operator": {"extraEnv": api, "healthPort": health_port},
        "cleanup": {"extraEnv": api},
        "agent": {"mitigationStateDir": str(state_dir)},
        "remediation": {"condition": True},  # nodes/status patch, for the node condition
    }))
    cluster.helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
                 "-f", str(VALUES), "-f", str(generated), "--wait", "--timeout", "5m",
                 timeout=400)
    operator_pods = cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
    (operator_pod,) = [p for p in operator_pods if p["spec"].get("hostNetwork")]
    assert operator_pod["spec"]["nodeName"] == node.name
    assert operator_pod["spec"]["containers"][0]["image"] == image.image
    lap("helm_install_s")
    assert_ready_only_after_indexing(rc, operator_pod, health_port)

    # 2. A ThpCheck on the loop-mounted btrfs: the agent's init container runs for real.
    cluster.api("POST", CHECKS, {
        "apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.CHECK_KIND,
        "metadata": {"name": CHECK},
        "spec": {"paths": [str(scratch)], "maxConcurrent": 1,
                 "remediation": {"label": True, "mitigate": False, "condition": True}},
    })
    found = eventually(lambda: (r := result(cluster, node.name)) and r.get("status", {}).get(
        "verdict") and r, 300, "the ThpNodeResult", diagnose)
    lap("first_result_s")
    status = found["status"]
    agent = [p for p in pods(cluster, names.AGENT_ROLE)
             if p["metadata"]["uid"] == status["pod"]["uid"]]
    assert agent, f"the result names pod {status['pod']}, not a current agent pod"
    (init,) = agent[0]["status"]["initContainerStatuses"]
    terminated = init["state"]["terminated"]
    assert init["name"] == "check" and terminated["exitCode"] == 0, init
    assert json.loads(terminated["message"])["verdict"] == status["verdict"]

    # The same check, run here: the pod's verdict must agree.
    code, local = check_json(str(scratch))
    assert code == 0, local
    assert status["verdict"] == local["verdict"] == "not-affected"
    assert status["kernelRelease"] == local["kernel"]["release"] == os.uname().release
    assert status["bootID"] == local["kernel"]["boot_id"]
    assert status["node"] == node.name and status["check"] == CHECK
    assert status["mitigated"] is False and status["stale"] is False
    (remote_path,), (local_path,) = status["paths"], local["paths"]
    for key in ("path", "fstype", "verdict", "rule", "reason"):
        assert remote_path[key] == local_path[key], key
    assert remote_path["fstype"] == FSTYPE
    assert remote_path["repro"] == local_path["repro"]["outcome"] == "collapse_unsupported"
    eventually(lambda: node.node()["metadata"]["labels"].get(names.VERDICT_LABEL)
               == "not-affected", 60, "the verdict label on the node", diagnose)
    # The node condition: set on the real kubelet's node, and still there, not rewritten by
    # the operator (same lastHeartbeatTime), after the kubelet's next status sync.
    ours = eventually(lambda: condition(node.node()), 60, "the ThpDataLoss condition",
                      diagnose)
    assert (ours["status"], ours["reason"]) == ("False", "NotAffected"), ours
    assert status["kernelRelease"] in ours["message"] and FSTYPE in ours["message"]
    def heartbeat() -> str:
        return str((condition(node.node(), "Ready") or {}).get("lastHeartbeatTime"))

    synced = heartbeat()
    eventually(lambda: heartbeat() != synced, 90,
               "the kubelet's next node status sync", diagnose)
    assert condition(node.node()) == ours
    lap("condition_kept_s")
    check_status = eventually(lambda: (c := cluster.api("GET", f"{CHECKS}/{CHECK}")).get(
        "status", {}).get("phase") == "Completed" and c["status"], 60, "phase Completed",
        diagnose)
    assert check_status["nodes"] == check_status["checked"] == check_status["notAffected"] == 1
    print("\n$ kubectl get thpchecks\n" + kubectl_get(cluster, "thpchecks")
          + "$ kubectl get thpnoderesults\n" + kubectl_get(cluster, "thpnoderesults"))

    # 3. Mitigation: the ThpCheck asks for it, the node is labelled by hand (see the module
    # docstring), the unprivileged mitigation pod stops khugepaged on this machine.
    cluster.kubectl("patch", f"thpchecks.{names.GROUP}", CHECK, "--type=merge", "-p",
                    json.dumps({"spec": {"remediation": {"mitigate": True}}}))
    eventually(lambda: names.MITIGATION_DAEMONSET in daemonsets(cluster), 60,
               "the mitigation DaemonSet", diagnose)
    assert not pods(cluster, names.MITIGATION_ROLE), "mitigation pod on an unlabelled node"
    assert knob() == KERNEL_DEFAULT
    mark = time.monotonic()
    cluster.kubectl("label", "node", node.name, f"{names.MITIGATE_LABEL}=true")
    mitigator = eventually(lambda: next((p for p in pods(cluster, names.MITIGATION_ROLE)
                                         if ready(p)), None), 120, "mitigation pod Ready",
                           diagnose)
    assert mitigator["spec"]["nodeName"] == node.name
    assert knob() == STOPPED
    state = json.loads((state_dir / "mitigation.state").read_text())
    assert state["original"] == int(KERNEL_DEFAULT)
    lap("mitigation_applied_s")
    # ... with no privilege: as the API reads it back, and as the kernel runs it.
    (container,) = mitigator["spec"]["containers"]
    assert container["securityContext"]["privileged"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert_unprivileged(mitigation_processes(f"/host{state_dir}/mitigation.state"),
                        "mitigation")
    eventually(lambda: (result(cluster, node.name) or {}).get("status", {}).get("mitigated")
               is True, 60, "the result's mitigated: true", diagnose)
    eventually(lambda: node.node()["metadata"]["labels"].get(names.MITIGATED_LABEL) == "true",
               60, "the mitigated label", diagnose)
    print("\n$ kubectl get thpchecks   (mitigated)\n" + kubectl_get(cluster, "thpchecks")
          + "$ kubectl get thpnoderesults   (mitigated)\n"
          + kubectl_get(cluster, "thpnoderesults"))

    # 4. The label goes: the pod gets SIGTERM and restores the exact previous value. (Its log
    # is read through a file opened now: kubelet deletes it with the pod.)
    with node.open_pod_log(NAMESPACE, mitigator["metadata"]["name"], "mitigate") as log:
        cluster.kubectl("label", "node", node.name, f"{names.MITIGATE_LABEL}-")
        eventually(lambda: not pods(cluster, names.MITIGATION_ROLE), 120,
                   "mitigation pod gone", diagnose)
        assert knob() == KERNEL_DEFAULT
        assert not (state_dir / "mitigation.state").exists()
        lap("mitigation_restored_s")
        text = cri_log_text(log.read()) or "(empty: it logs at info, its level is warning)\n"
        print("mitigation pod log:\n" + text)

    # 5. The ThpCheck goes: its DaemonSets, results and node labels go with it.
    cluster.api("DELETE", f"{CHECKS}/{CHECK}")
    eventually(lambda: not cluster.api("GET", CHECKS)["items"], 120, "the ThpCheck deleted",
               diagnose)
    eventually(lambda: not daemonsets(cluster), 60, "the DaemonSets deleted", diagnose)
    assert not cluster.api("GET", RESULTS)["items"]
    labels = node.node()["metadata"]["labels"]
    assert not [k for k in labels if k.startswith(names.GROUP + "/")], labels
    assert condition(node.node()) is None
    assert names.CONDITION_BY_ANNOTATION not in (node.node()["metadata"].get("annotations")
                                                 or {})
    eventually(lambda: not pods(cluster, names.AGENT_ROLE), 120, "agent pods gone", diagnose)
    lap("check_deleted_s")

    # 6. helm uninstall runs the pre-delete hook (a Job on the real node) and removes the rest.
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m",
                 timeout=400)
    eventually(lambda: not cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"],
               120, "every pod of the release gone", diagnose)
    lap("helm_uninstall_s")
    assert knob() == KERNEL_DEFAULT
    print(f"timings: {json.dumps(timings)}")
