"""The operator's ``mode: preflight`` on the real control plane, and the prediction it records
beside the agent's result in ``mode: full``.

The corpus fleet (``tests/preflight/fleet.py``: kwok nodes carrying real-world nodeInfo) is
predicted by a ``mode: preflight`` ThpCheck with no pod and no DaemonSet anywhere, and the
results say what ``thpcheck preflight`` says. A node's new kernel (or new OS image) rewrites its
result. In full mode the test plays the kubelet (``tests/operator/cluster_kit.py``): an agent
result that contradicts the prediction is recorded as a disagreement and raises one Warning on
the Node and on the ThpCheck, and nothing is written again while nothing changes.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.harness import Cluster, ClusterError
from devtools.cluster.operator import CHECKS_PATH, OperatorProcess
from tests.operator.cluster_kit import (
    DISAGREEMENT,
    Kubelet,
    check_events,
    get_check,
    node,
    node_events,
    results,
    with_verdict,
)
from tests.preflight.fleet import (
    RUN_LABEL,
    Fleet,
    assert_node_info_unchanged,
    keep_node_info,
    preflight,
    preflight_json,
)
from tests.support.wait import eventually
from tests.unit.test_preflight import CORPUS
from thpcheck.contract import names
from thpcheck.model.preflight import NodeInfo, predict_node
from thpcheck.model.verdict import CheckExit

pytestmark = pytest.mark.cluster

UBUNTU = {"osImage": "Ubuntu 22.04.4 LTS", "kernelVersion": "5.15.0-176-generic",
          "architecture": "amd64"}  # predicted not-affected (G1: the option is not set)
UEK8 = {"osImage": "Oracle Linux Server 9.6", "kernelVersion": "6.12.0-105.51.5.el9uek.x86_64",
        "architecture": "amd64"}  # predicted susceptible (G10)
FCOS_UNFIXED = {"osImage": "Fedora CoreOS 44.20260707.3.1",
                "kernelVersion": "7.1.3-200.fc44.x86_64", "architecture": "amd64"}


def create_check(cluster: Cluster, checks: list[str], name: str, **spec: Any) -> None:
    checks.append(name)
    cluster.api("POST", CHECKS_PATH, {"apiVersion": names.API_VERSION,
                                      "kind": names.CHECK_KIND, "metadata": {"name": name},
                                      "spec": spec})


def all_results(cluster: Cluster, check: str, count: int,
                timeout: float = 120) -> dict[str, dict[str, Any]]:
    def complete() -> dict[str, dict[str, Any]] | None:
        found = results(cluster, check)
        return found if len(found) == count else None

    # An API server answers 429 "storage is (re)initializing" right after the CRDs are
    # applied: a passing state, like a falsy result.
    found: dict[str, dict[str, Any]] = eventually(complete, timeout,
                                                  what=f"{count} results of {check}",
                                                  tolerate=(ClusterError,))
    return found


def status_of(cluster: Cluster, name: str) -> dict[str, Any]:
    status: dict[str, Any] = (get_check(cluster, name) or {}).get("status") or {}
    return status


def writes(operator: OperatorProcess, resource: str) -> list[str]:
    """The operator's counted API writes to ``resource`` (metric lines)."""
    return [line for line in operator.metrics().splitlines()
            if line.startswith("thpcheck_api_writes_total{") and f'resource="{resource}"' in line]


def quiet(cluster: Cluster, check: str, seconds: float = 4.0) -> None:
    """Several reconciles (status interval 1 s) later, no result was written again."""
    before = {n: r["metadata"]["resourceVersion"] for n, r in results(cluster, check).items()}
    time.sleep(seconds)
    after = {n: r["metadata"]["resourceVersion"] for n, r in results(cluster, check).items()}
    assert after == before


# -- mode: preflight ---------------------------------------------------------------------------


def test_preflight_mode_predicts_the_fleet_as_the_cli_does_with_no_pod(
        crds: Cluster, kubeconfig: Path, fleet: Fleet, operator: OperatorProcess,
        checks: list[str]) -> None:
    name = f"preflight-{fleet.run}"
    create_check(crds, checks, name, mode="preflight", nodeSelector={RUN_LABEL: fleet.run})
    found = all_results(crds, name, len(fleet.nodes))

    cli = preflight(kubeconfig, "--selector", fleet.selector, "--json")
    assert cli.returncode == CheckExit.AT_RISK, cli.stderr
    predicted = {n["node"]: n for n in preflight_json(cli)["nodes"]}
    assert_node_info_unchanged(crds, fleet)
    assert set(found) == set(predicted) == set(fleet.nodes)
    for node_name, result in found.items():
        status, want, case = result["status"], predicted[node_name], fleet.nodes[node_name]
        record = status["prediction"]
        assert status["predicted"] is True and status["stale"] is False, node_name
        assert status["verdict"] == record["verdict"] == want["verdict"] == case.verdict
        assert result["metadata"]["labels"][names.VERDICT_LABEL] == case.verdict
        assert (record["rule"], record["reason"], record["confidence"], record.get("grade"),
                record.get("distro")) == (
            want["rule"], want["reason"], want["confidence"], want["grade"],
            want["distro"]["id"] if want["distro"] else None), node_name
        assert record["atRisk"] == [f["filesystem"] for f in want["filesystems"]["at_risk"]]
        assert record["notAtRisk"] == [f["filesystem"]
                                       for f in want["filesystems"]["not_at_risk"]]
        assert (status["kernelRelease"], status.get("osImage", "")) == (
            want["kernel_version"], want["os_image"])
        assert (record["kernelVersion"], record["osImage"]) == (case.kernel, case.os_image)
        assert status.get("readOnlyThpForFs") == want["kernel"]["read_only_thp_for_fs"]
        assert status.get("configSource") == want["kernel"]["config_source"]
        assert "paths" not in status and "pod" not in status
        assert status["message"].startswith(f"predicted from kernel and OS image "
                                            f"({case.confidence}): ")

    # No pod at all: no DaemonSet, nothing in the operator's namespace, nothing on the fleet.
    assert crds.api("GET", f"/apis/apps/v1/namespaces/{operator.namespace}/daemonsets")[
        "items"] == []
    assert crds.api("GET", f"/api/v1/namespaces/{operator.namespace}/pods")["items"] == []
    on_fleet = [p["metadata"]["name"] for p in crds.api("GET", "/api/v1/pods")["items"]
                if p["spec"].get("nodeName") in fleet.nodes]
    assert on_fleet == []
    assert writes(operator, "daemonsets") == [] and writes(operator, "pods") == []

    counts = {v: sum(c.verdict == v for c in CORPUS) for v in ("susceptible", "not-affected",
                                                              "unknown")}

    def completed() -> dict[str, Any] | None:
        status = status_of(crds, name)
        return status if status.get("checked") == len(fleet.nodes) else None

    status = eventually(completed, what="the check's status")
    assert (status["phase"], status["nodes"], status["susceptible"], status["notAffected"],
            status["unknown"], status["affected"], status["disagreements"]) == (
        "Completed", len(fleet.nodes), counts["susceptible"], counts["not-affected"],
        counts["unknown"], 0, 0)
    assert f"{len(fleet.nodes)}/{len(fleet.nodes)} nodes predicted from kernel and OS image" \
        in status["message"]
    assert "lastRunAt" not in status

    # The nodes carry the predicted verdict as their label (spec.remediation.label).
    def labelled() -> bool:
        return all(node(crds, n)["metadata"]["labels"].get(names.VERDICT_LABEL) == c.verdict
                   for n, c in fleet.nodes.items())

    eventually(labelled, what="verdict labels on the fleet")
    quiet(crds, name)
    assert f'thpcheck_results_written_total{{check="{name}"}} {float(len(fleet.nodes))}' in \
        operator.metrics()
    print(crds.kubectl("get", "thpchecks", name, "-o", "wide").stdout)
    print(crds.kubectl("get", "thpnoderesults", "-l", f"{names.CHECK_LABEL}={name}").stdout)
    print(crds.kubectl("get", "thpnoderesults", "-l", f"{names.CHECK_LABEL}={name}",
                       "-o", "wide").stdout)


def test_a_new_kernel_or_os_image_rewrites_the_predicted_result(
        crds: Cluster, operator: OperatorProcess, checks: list[str],
        make_node: Callable[..., str]) -> None:
    label = uuid.uuid4().hex[:8]
    n = make_node(FCOS_UNFIXED, {"thpcheck-test": label})
    keep_node_info(crds, n, FCOS_UNFIXED)
    name = f"kernel-{label}"
    create_check(crds, checks, name, mode="preflight", nodeSelector={"thpcheck-test": label})
    first = all_results(crds, name, 1)[n]
    assert (first["status"]["verdict"], first["status"]["prediction"]["rule"]) == (
        "susceptible", "G12")
    quiet(crds, name, 2.0)  # kwok's heartbeats change nothing predicted

    for info in ({**FCOS_UNFIXED, "kernelVersion": "7.1.10-200.fc44.x86_64"},  # the fixed kernel
                 {**UBUNTU, "osImage": "Ubuntu 24.04.3 LTS",  # the node reimaged
                  "kernelVersion": "6.8.0-86-generic"}):
        want = predict_node(NodeInfo(n, info["kernelVersion"], info["osImage"], "amd64"))
        before = results(crds, name)[n]
        keep_node_info(crds, n, info)  # patches the node's status like a kubelet would

        def rewritten(info: dict[str, str] = info, before: dict[str, Any] = before,
                      ) -> dict[str, Any] | None:
            current = results(crds, name).get(n)
            if current is None or current["status"]["prediction"]["kernelVersion"] != \
                    info["kernelVersion"]:
                return None
            assert current["metadata"]["resourceVersion"] != before["metadata"][
                "resourceVersion"]
            return current

        result = eventually(rewritten, what=f"the result for {info['kernelVersion']}")
        status = result["status"]
        assert (status["verdict"], status["prediction"]["rule"], status["kernelRelease"],
                status["osImage"]) == (want.verdict.value, want.rule, info["kernelVersion"],
                                       info["osImage"])
        assert status["checkedAt"] >= before["status"]["checkedAt"]
        assert result["metadata"]["uid"] == first["metadata"]["uid"]  # rewritten, not replaced
        eventually(lambda want=want: node(crds, n)["metadata"]["labels"].get(
            names.VERDICT_LABEL) == want.verdict.value, what="the node's new verdict label")
    assert [e["reason"] for e in node_events(crds, n)].count("VerdictChanged") == 2


# -- mode: full, the prediction beside the agent's result ---------------------------------------


def _agent_message(document: dict[str, Any], *, kernel: str, config: bool,
                   verdict: str) -> str:
    """The real agent's document as if it had run on a node with this kernel and config."""
    changed = copy.deepcopy(document)
    changed["kernel"].update(release=kernel, read_only_thp_for_fs=config,
                             config_source="proc/config.gz")
    return with_verdict(changed, verdict)


def test_full_mode_records_the_prediction_and_warns_on_a_disagreement(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_node: Callable[..., str], tmp_path: Path) -> None:
    label = uuid.uuid4().hex[:8]
    ubuntu = make_node(UBUNTU, {"thpcheck-test": label})
    uek = make_node(UEK8, {"thpcheck-test": label})
    for n, info in ((ubuntu, UBUNTU), (uek, UEK8)):
        keep_node_info(crds, n, info)
    name = f"full-{label}"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    create_check(crds, checks, name, nodeSelector={"thpcheck-test": label},
                 paths=[str(scratch)], reproducer={"iterations": 2, "baseSizeBytes": 4 << 20})
    pods = kubelet.wait_check_pods(name, [ubuntu, uek])
    _, document = kubelet.run_agent(pods[ubuntu])  # a real agent run on this machine
    # Data lost on a node whose kernel the model says never arms the purge (G1): the model or
    # the distro table is wrong there. On the UEK node the agent agrees with the prediction.
    kubelet.terminate(pods[ubuntu], _agent_message(
        document, kernel=UBUNTU["kernelVersion"], config=False, verdict="affected"))
    kubelet.terminate(pods[uek], _agent_message(
        document, kernel=UEK8["kernelVersion"], config=True, verdict="susceptible"))

    found = all_results(crds, name, 2)
    wrong, right = found[ubuntu]["status"], found[uek]["status"]
    assert wrong["predicted"] is False and wrong["verdict"] == "affected"
    assert (wrong["prediction"]["verdict"], wrong["prediction"]["rule"],
            wrong["prediction"]["confidence"]) == ("not-affected", "G1", "config-known")
    assert wrong["prediction"]["disagreement"].startswith(
        "predicted not-affected (G1) but the agent found ")
    assert right["verdict"] == "susceptible" and "disagreement" not in right["prediction"]
    assert (right["prediction"]["verdict"], right["prediction"]["rule"]) == ("susceptible",
                                                                           "G10")

    def warned(events: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = eventually(
            lambda: [e for e in events() if e["reason"] == DISAGREEMENT],
            what="a PredictionDisagreement Event")
        return found

    (on_node,) = warned(lambda: node_events(crds, ubuntu))
    (on_check,) = warned(lambda: check_events(crds, name))
    assert on_node["type"] == on_check["type"] == "Warning"
    assert wrong["prediction"]["disagreement"] in on_node["message"]
    assert on_check["message"].startswith("1 nodes contradict the preflight prediction")
    assert ubuntu in on_check["message"]
    assert DISAGREEMENT not in [e["reason"] for e in node_events(crds, uek)]

    eventually(lambda: status_of(crds, name).get("disagreements") == 1,
               what="status.disagreements")
    eventually(lambda: f'thpcheck_prediction_disagreements{{check="{name}"}} 1.0'
               in operator.metrics(), what="the disagreement metric")

    # Nothing changed, nothing written or posted again.
    quiet(crds, name)
    assert f'thpcheck_results_written_total{{check="{name}"}} 2.0' in operator.metrics()
    assert [e["reason"] for e in node_events(crds, ubuntu)].count(DISAGREEMENT) == 1
    assert [e["reason"] for e in check_events(crds, name)].count(DISAGREEMENT) == 1
    print(crds.kubectl("get", "thpnoderesults", "-l", f"{names.CHECK_LABEL}={name}",
                       "-o", "wide").stdout)


def test_switching_a_full_check_to_preflight_removes_its_agent(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_node: Callable[..., str], tmp_path: Path) -> None:
    label = uuid.uuid4().hex[:8]
    n = make_node(UEK8, {"thpcheck-test": label})
    keep_node_info(crds, n, UEK8)
    name = f"switch-{label}"
    create_check(crds, checks, name, nodeSelector={"thpcheck-test": label},
                 paths=[str(tmp_path)], reproducer={"iterations": 2, "baseSizeBytes": 4 << 20})
    kubelet.wait_check_pods(name, [n])
    daemonsets = f"/apis/apps/v1/namespaces/{operator.namespace}/daemonsets"
    assert [d["metadata"]["name"] for d in crds.api("GET", daemonsets)["items"]] == [
        names.agent_daemonset_name(name)]

    crds.api("PATCH", f"{CHECKS_PATH}/{name}", {"spec": {"mode": "preflight"}},
             content_type="application/merge-patch+json")
    eventually(lambda: crds.api("GET", daemonsets)["items"] == [], what="no DaemonSet")
    eventually(lambda: kubelet.pods(name) == [], what="the agent pods gone")
    result = eventually(lambda: (r := results(crds, name).get(n)) and
                        r["status"].get("predicted") and r, what="the predicted result")
    assert (result["status"]["verdict"], result["status"]["prediction"]["rule"]) == (
        "susceptible", "G10")
    assert crds.api("GET", daemonsets)["items"] == []  # and it is not created again
