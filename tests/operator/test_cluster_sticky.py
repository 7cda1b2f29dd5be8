"""Sticky protection on the real control plane: an `error` re-run of a proven node keeps its
mitigation label and its cordon; a new boot ID with a fixed kernel lifts them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.harness import Cluster
from devtools.cluster.operator import OperatorProcess, with_verdict
from tests.operator.cluster_kit import Kubelet, eventually, new_check, node, results
from thpcheck.contract import names

pytestmark = pytest.mark.cluster


def rerun(kubelet: Kubelet, check: str, on: str, text: str) -> None:
    """The kubelet's record of a later run of the node's check container."""
    time.sleep(1.1)  # finishedAt has one-second resolution: a later run, a new result
    pod = kubelet.check_pod(check, on)
    assert pod is not None
    kubelet.terminate(pod, text)


def test_an_error_rerun_keeps_protection_and_a_fixed_kernel_lifts_it(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    mitigated, cordoned = make_nodes(2, labels={f"t{test_id}-n0": {"group": "m"},
                                                f"t{test_id}-n1": {"group": "c"}})
    mitigator, cordoner = f"sticky-m-{test_id}", f"sticky-c-{test_id}"
    new_check(crds, checks, mitigator, {"thpcheck-test": test_id, "group": "m"},
              tmp_path / "scratch", {"mitigate": True})
    new_check(crds, checks, cordoner, {"thpcheck-test": test_id, "group": "c"},
              tmp_path / "scratch", {"cordon": True})
    pods = {mitigated: kubelet.wait_check_pods(mitigator, [mitigated])[mitigated],
            cordoned: kubelet.wait_check_pods(cordoner, [cordoned])[cordoned]}
    _, document = kubelet.run_agent(pods[mitigated])
    kubelet.terminate(pods[mitigated], with_verdict(document, "affected"))
    kubelet.terminate(pods[cordoned], with_verdict(document, "affected"))
    owner = {mitigated: mitigator, cordoned: cordoner}

    def marks(name: str) -> dict[str, Any]:
        meta = node(crds, name)
        labels, annotations = meta["metadata"]["labels"], meta["metadata"].get("annotations") or {}
        return {"unschedulable": bool(meta["spec"].get("unschedulable")),
                "verdict": labels.get(names.VERDICT_LABEL),
                "mitigate": labels.get(names.MITIGATE_LABEL),
                "cordoned-by": annotations.get(names.CORDONED_BY_ANNOTATION)}

    protected = {mitigated: {"unschedulable": False, "verdict": "affected", "mitigate": "true",
                             "cordoned-by": None},
                 cordoned: {"unschedulable": True, "verdict": "affected", "mitigate": None,
                            "cordoned-by": cordoner}}
    eventually(lambda: {n: marks(n) for n in protected} == protected, timeout=60,
               what="the mitigation label on one node, the cordon on the other")

    # An error re-run (disk full, pod evicted, run killed): the result says error and shows
    # the standing proof; the labels, the mitigation and the cordon stay.
    error = json.loads(with_verdict(document, "error"))
    for name in protected:
        rerun(kubelet, owner[name], name, json.dumps(error))

    def errored(name: str) -> dict[str, Any] | None:
        found = results(crds, owner[name]).get(name, {}).get("status") or {}
        return found if found.get("verdict") == "error" else None

    errors = {name: eventually(lambda n=name: errored(n), what=f"the error result of {name}")
              for name in protected}
    for _ in range(6):  # several reconciles (the status interval is 1 s here)
        assert {n: marks(n) for n in protected} == protected
        time.sleep(1)
    for name, status in errors.items():
        assert status["proof"]["verdict"] == "affected"
        assert status["proof"]["kernelRelease"] == document["kernel"]["release"]
        assert status["proof"]["bootID"] == document["kernel"]["boot_id"]
        assert status["proof"]["provenAt"]
        labels = results(crds, owner[name])[name]["metadata"]["labels"]
        assert labels[names.VERDICT_LABEL] == "affected"

    # A new boot ID with a fixed kernel, then its result: protection is lifted.
    fixed = json.loads(with_verdict(document, "not-affected"))
    fixed["bootID"] = f"rebooted-{test_id}"
    for name in protected:
        crds.api("PATCH", f"/api/v1/nodes/{name}/status",
                 {"status": {"nodeInfo": {"bootID": fixed["bootID"]}}},
                 content_type="application/merge-patch+json")
        rerun(kubelet, owner[name], name, json.dumps(fixed))
    lifted = {"unschedulable": False, "verdict": "not-affected", "mitigate": None,
              "cordoned-by": None}
    eventually(lambda: all(marks(n) == lifted for n in protected), timeout=60,
               what="protection lifted by a fixed kernel's result")
    for name in protected:
        assert "proof" not in results(crds, owner[name])[name]["status"]
