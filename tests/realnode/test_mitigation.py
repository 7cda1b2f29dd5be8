"""The mitigation cannot leak or lapse, on a real node: the chart installed with Helm, the
operator in a pod, a real kubelet and containerd running the unprivileged mitigation pods
against this machine's ``khugepaged/scan_sleep_millisecs``.

1. ``helm upgrade`` to a new image: the knob, read every 100 ms throughout, never leaves
   4294967295 (the new mitigation pod holds the node before the old one stops, and the old
   one then leaves the value alone).
2. The mitigation pod killed with SIGKILL (every instance of it, until its pod is gone) and
   the node unlabelled: nothing in that pod can restore, yet the restore DaemonSet's pod
   puts the exact original value back within 60 s.
3. ``helm uninstall``: the pre-delete hook confirms the restore on the node and succeeds.

The node is labelled ``thpcheck.io/mitigate=true`` by hand (as in test_e2e: a real kubelet
owns pod status, so an affected result cannot be injected); a ThpCheck with
``remediation.mitigate`` and a selector matching no node keeps the DaemonSets wanted.
The knob is restored in ``finally`` whatever happens.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.cluster.realnode import thp_knob as knob
from tests.realnode.conftest import RealCluster
from tests.realnode.test_e2e import (
    CHART,
    CHECKS,
    KERNEL_DEFAULT,
    NAMESPACE,
    RELEASE,
    STOPPED,
    VALUES,
    assert_unprivileged,
    eventually,
    knob_restored,
    kubectl_get,
    mitigation_processes,
    pods,
    ready,
)
from thpcheck.contract import names

pytestmark = pytest.mark.realnode
CHECK = "mitigate-only"
RESTORE_WITHIN = 60.0
UPGRADE_TAG_SUFFIX = "-upgrade"


def helm(rc: RealCluster, verb: str, tmp_path: Path, state_dir: Path, tag: str) -> None:
    """helm install or upgrade with the test's values and the image ``tag``."""
    cluster = rc.cluster
    api = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
           {"name": "KUBERNETES_SERVICE_PORT", "value": str(cluster.ports["apiserver"])}]
    generated = tmp_path / f"values-{verb}.yaml"
    generated.write_text(yaml.safe_dump({
        "image": {"tag": tag},
        "operator": {"extraEnv": api},
        "cleanup": {"extraEnv": api},
        "agent": {"mitigationStateDir": str(state_dir)},
    }))
    cluster.helm(verb, RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
                 "-f", str(VALUES), "-f", str(generated), "--wait", "--timeout", "5m",
                 timeout=400)


@contextmanager
def repeating(step: Callable[[], None], interval: float, name: str) -> Iterator[None]:
    """Call ``step`` every ``interval`` seconds in a background thread while the block runs."""
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            step()
            done.wait(interval)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)


@contextmanager
def sampled(interval: float = 0.1) -> Iterator[list[str]]:
    """Read the knob every ``interval`` seconds in the background while the block runs."""
    samples: list[str] = []
    with repeating(lambda: samples.append(knob()), interval, "knob sampler"):
        yield samples


@contextmanager
def killing(state_file: str) -> Iterator[list[int]]:
    """SIGKILL every mitigation process as soon as it appears, while the block runs."""
    killed: list[int] = []

    def kill() -> None:
        for pid in mitigation_processes(state_file):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass

    with repeating(kill, 0.02, "killer"):
        yield killed


def test_the_mitigation_neither_lapses_on_upgrade_nor_leaks_after_a_kill(
        realnode: RealCluster, tmp_path: Path) -> None:
    original = knob()
    assert original == KERNEL_DEFAULT, f"the knob is {original}: restore it first"
    state_dir = realnode.node.workdir / "mitigation-state"
    with knob_restored(original, state_dir / "mitigation.state"):
        run(realnode, tmp_path, state_dir)
    assert knob() == KERNEL_DEFAULT


def run(rc: RealCluster, tmp_path: Path, state_dir: Path) -> None:
    cluster, node, image = rc.cluster, rc.node, rc.image
    figures: dict[str, Any] = {}

    def diagnose() -> str:
        return (kubectl_get(cluster, "pods,daemonsets", "-n", NAMESPACE)
                + kubectl_get(cluster, "thpchecks") + node.all_pod_logs())

    def mitigators() -> list[dict[str, Any]]:
        return [p for p in pods(cluster, names.MITIGATION_ROLE)
                if not p["metadata"].get("deletionTimestamp")]

    helm(rc, "install", tmp_path, state_dir, image.version)
    cluster.api("POST", CHECKS, {
        "apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.CHECK_KIND,
        "metadata": {"name": CHECK},
        "spec": {"nodeSelector": {"thpcheck-test": "no-such-node"},
                 "remediation": {"label": False, "mitigate": True}}})
    daemonsets = f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets"
    eventually(lambda: {names.MITIGATION_DAEMONSET, names.RESTORE_DAEMONSET} <= {
        d["metadata"]["name"] for d in cluster.api("GET", daemonsets)["items"]}, 60,
        "both mitigation DaemonSets", diagnose)
    cluster.kubectl("label", "node", node.name, f"{names.MITIGATE_LABEL}=true")
    first = eventually(lambda: next((p for p in mitigators() if ready(p)), None), 120,
                       "the mitigation pod Ready", diagnose)
    assert knob() == STOPPED

    # 1. helm upgrade to another image: the new pod holds the node before the old one stops.
    new_tag = image.version + UPGRADE_TAG_SUFFIX
    node.ctr("images", "tag", f"localhost/thp-checker:{image.version}",
             f"localhost/thp-checker:{new_tag}")
    started = time.monotonic()
    with sampled() as samples:
        helm(rc, "upgrade", tmp_path, state_dir, new_tag)

        def upgraded() -> bool:
            current = mitigators()
            return (len(current) == 1 and ready(current[0])
                    and current[0]["spec"]["containers"][0]["image"].endswith(new_tag)
                    and current[0]["metadata"]["uid"] != first["metadata"]["uid"])

        eventually(upgraded, 240, "the mitigation pod replaced by the new image's", diagnose)
        eventually(lambda: len(pods(cluster, names.MITIGATION_ROLE)) == 1, 60,
                   "the old mitigation pod gone", diagnose)
    figures["upgrade_s"] = round(time.monotonic() - started, 1)
    figures["upgrade_samples"] = len(samples)
    lapses = sorted({s for s in samples if s != STOPPED})
    assert not lapses, f"khugepaged ran during the upgrade: values {lapses} were read"
    assert len(samples) > 50, samples

    # 2. SIGKILL (every instance, until the pod is gone) and unlabel: the pod cannot restore.
    state_file = f"/host{state_dir}/mitigation.state"
    assert_unprivileged(mitigation_processes(state_file), "mitigation")
    with killing(state_file) as killed:
        eventually(lambda: killed, 30, "the mitigation process killed", diagnose)
        unlabelled = time.monotonic()
        cluster.kubectl("label", "node", node.name, f"{names.MITIGATE_LABEL}-")
        eventually(lambda: not pods(cluster, names.MITIGATION_ROLE), 120,
                   "the mitigation pod gone", diagnose)
    restored = eventually(lambda: knob() == KERNEL_DEFAULT and time.monotonic(),
                          RESTORE_WITHIN, "khugepaged restored by the restore DaemonSet",
                          diagnose)
    figures["killed_pids"] = len(set(killed))
    # The restore pod that did it has no privilege either.
    assert_unprivileged(mitigation_processes(state_file, restore=True), "restore")
    figures["restore_after_unlabel_s"] = round(restored - unlabelled, 1)
    assert not (state_dir / "mitigation.state").exists()

    # 3. helm uninstall: the hook deletes the ThpCheck and confirms the restore.
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m",
                 timeout=400)
    eventually(lambda: not cluster.api("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"],
               120, "every pod of the release gone", diagnose)
    assert knob() == KERNEL_DEFAULT
    print(f"\nmitigation figures: {figures}")
