"""Hostile or broken inputs never stall the loop, on the real control plane: a termination
message nested 1000 levels deep becomes an error result, and ThpNodeResults the operator did
not write are ignored, reported in status and by an Event, and never drive remediation."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.harness import Cluster
from devtools.cluster.operator import RESULTS_PATH, OperatorProcess
from tests.operator.cluster_kit import Kubelet, eventually, node, results
from tests.operator.test_cluster_operator import create_check, status_of
from thpcheck.contract import names

pytestmark = pytest.mark.cluster


def test_a_deeply_nested_termination_message_is_an_error_result(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    n0, n1 = make_nodes(2)
    name = f"deep-{test_id}"
    create_check(crds, checks, name, test_id, tmp_path / "scratch")
    pods = kubelet.wait_check_pods(name, [n0, n1])
    message, document = kubelet.run_agent(pods[n0])
    kubelet.terminate(pods[n0], "[" * 1000 + "]" * 1000)  # json.loads: RecursionError
    kubelet.terminate(pods[n1], message)
    written = time.monotonic()

    found = eventually(lambda: (r := results(crds, name)) and len(r) == 2 and r, 30,
                       what="both nodes' results")
    print(f"error result {time.monotonic() - written:.1f} s after the message")
    assert found[n0]["status"]["verdict"] == "error"
    assert "nests 1000 levels deep" in found[n0]["status"]["message"]
    assert found[n1]["status"]["verdict"] == document["verdict"]
    assert "reconcile failed" not in operator.tail(400)


def forged(cluster: Cluster, check: str, node_name: str, *, name: str | None = None,
           owner: dict[str, Any] | None = None, verdict: str = "affected",
           also_owned_by: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ThpNodeResult someone else wrote, claiming ``node_name`` of ``check`` is affected."""
    labels = {names.CHECK_LABEL: check, names.NODE_LABEL: node_name,
              names.VERDICT_LABEL: verdict}
    body = {"apiVersion": names.API_VERSION, "kind": names.RESULT_KIND,
            "metadata": {"name": name or names.result_name(check, node_name), "labels": labels,
                         "annotations": {names.CONTENT_HASH_ANNOTATION: "0123456789abcdef"},
                         "ownerReferences": [o for o in (owner, also_owned_by) if o]},
            "status": {"node": node_name, "check": check, "verdict": verdict,
                       "mitigated": False, "stale": False, "message": "trust me"}}
    created: dict[str, Any] = cluster.api("POST", RESULTS_PATH, body)
    return created


def test_results_the_operator_did_not_write_are_ignored_and_reported(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    n0, n1 = make_nodes(2)
    name = f"forged-{test_id}"
    create_check(crds, checks, name, test_id, tmp_path / "scratch",
                 remediation={"cordon": True, "maxCordoned": 2})
    check = crds.api("GET", f"/apis/{names.API_VERSION}/thpchecks/{name}")
    owner = {"apiVersion": names.API_VERSION, "kind": names.CHECK_KIND, "name": name,
             "uid": check["metadata"]["uid"], "controller": True}
    planted = [
        forged(crds, name, n1),  # the right name and labels, but no owner
        forged(crds, name, n1, name=f"copy-{name}.{n1}", owner=owner),  # a name not ours
        # An owner of an older check by that name. The garbage collector drops that dangling
        # reference (and would delete the result if no owner were left): the live Node as a
        # second owner keeps it for the operator to see.
        forged(crds, name, "gone-node", owner=copy.deepcopy(owner) | {"uid": "old-uid"},
               also_owned_by={"apiVersion": "v1", "kind": "Node", "name": n1,
                              "uid": node(crds, n1)["metadata"]["uid"]}),
    ]
    planted_at = time.monotonic()
    pods = kubelet.wait_check_pods(name, [n0, n1])
    message, document = kubelet.run_agent(pods[n0])
    kubelet.terminate(pods[n0], message)

    # The forgeries land one after another, and the operator's watch may deliver them
    # apart: the condition must come to name all three.
    def reported() -> dict[str, Any] | None:
        status = status_of(crds, name)
        found = {c["type"]: c for c in status.get("conditions") or []}
        condition = found.get("UntrustedResults", {})
        every = all(b["metadata"]["name"] in condition.get("message", "") for b in planted)
        return status if condition.get("status") == "True" and status.get("checked") == 1 \
            and every else None

    status = eventually(reported, 30, what="untrusted results in the status")
    print(f"UntrustedResults {time.monotonic() - planted_at:.1f} s after the forgeries "
          "(including the agent's run on the other node)")
    message_text = {c["type"]: c for c in status["conditions"]}["UntrustedResults"]["message"]
    for body in planted:
        assert body["metadata"]["name"] in message_text
    assert "no controller owner reference" in message_text
    assert status["affected"] == 0 and status["cordoned"] == 0

    # Never remediated, never rewritten or deleted, and one Warning Event on the check.
    assert not node(crds, n1)["spec"].get("unschedulable")
    assert names.VERDICT_LABEL not in node(crds, n1)["metadata"]["labels"]
    for body in planted:
        again = crds.api("GET", f"{RESULTS_PATH}/{body['metadata']['name']}")
        if body is planted[-1]:  # the garbage collector may have dropped its stale owner
            assert (again["status"], again["metadata"]["labels"]) == (
                body["status"], body["metadata"]["labels"])
        else:
            assert again["metadata"]["resourceVersion"] == body["metadata"]["resourceVersion"]

    def warnings() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = crds.api(
            "GET", "/api/v1/events?fieldSelector=involvedObject.kind=ThpCheck,"
            f"involvedObject.name={name}")["items"]
        return [e for e in items if e["reason"] == "UntrustedResult"]

    # The forgeries land one after another, so a reconcile may see the first before the
    # others: one Event per ignored result, each result named in exactly one of them.
    def reported_once() -> list[dict[str, Any]] | None:
        found = warnings()
        named = [b["metadata"]["name"] for b in planted for e in found
                 if any(f"{sep}{b['metadata']['name']}: " in e["message"]
                        for sep in (": ", "; "))]  # "copy-x" must not count as "x"
        return found if sorted(named) == sorted(b["metadata"]["name"] for b in planted) \
            else None

    found = eventually(reported_once, 30, what="each forgery named by one UntrustedResult Event")
    assert all(e["type"] == "Warning" and "ignored" in e["message"] for e in found)
    assert all(e.get("count", 1) == 1 for e in found), found  # none posted twice
    assert results(crds, name)[n0]["status"]["verdict"] == document["verdict"]
