"""The operator's readiness on the real control plane: ``/readyz`` answers 200 only once kopf
has listed and indexed every watched kind, and says what it indexed; ``/healthz`` answers
before that. The chart's readinessProbe uses it (tests/chart/test_least_privilege.py)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.cluster.harness import Cluster
from devtools.cluster.operator import OperatorProcess, install_crds
from tests.operator.cluster_kit import node, node_events
from tests.support.wait import eventually
from thpcheck.contract import names

pytestmark = pytest.mark.cluster
NODES = 40


def probe(port: int, path: str) -> tuple[int, dict[str, object] | None]:
    """(HTTP status or 0 when nothing answers, the JSON body if any)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            text = reply.read().decode()
            status = reply.status
    except urllib.error.HTTPError as exc:
        text, status = exc.read().decode(), exc.code
    except OSError:
        return 0, None
    try:
        return status, json.loads(text)
    except ValueError:
        return status, None


def test_ready_only_once_every_index_is_filled(crds: Cluster, namespace: str, tmp_path: Path,
                                              make_nodes: Callable[..., list[str]]) -> None:
    mine = make_nodes(NODES)
    before = len(crds.api("GET", "/api/v1/nodes")["items"])
    operator = OperatorProcess(crds, namespace, tmp_path / "logs")
    process = operator.launch()
    samples: list[tuple[float, int, int, dict[str, object] | None]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < 60:
            assert process.poll() is None, operator.tail()
            ready, body = probe(operator.health_port, "/readyz")
            live, _ = probe(operator.health_port, "/healthz")
            samples.append((round(time.monotonic() - started, 3), ready, live, body))
            if ready == 200 and len([s for s in samples if s[1] == 200]) >= 20:
                break
            time.sleep(0.02)
        first = next((s for s in samples if s[1] == 200), None)
        assert first is not None, f"/readyz never answered 200: {samples[-5:]}\n{operator.tail()}"
        # At the moment it first said ready, every node was indexed (kopf's start-up
        # barrier lifted); what it answered before was "not ready" or nothing at all.
        body = first[3]
        assert body is not None and body["ready"] is True, body
        indexed = body["indexed"]
        assert isinstance(indexed, dict)
        assert indexed["nodes"] >= len(mine), (indexed, before)
        earlier = {s[1] for s in samples if s[0] < first[0]}
        assert earlier <= {0, 503}, earlier
        # Ready stays ready, and the process is live throughout.
        assert {s[1] for s in samples if s[0] >= first[0]} == {200}
        assert {s[2] for s in samples if s[0] >= first[0]} == {200}
        not_ready = [s for s in samples if s[1] == 503]
        if not_ready:
            assert not_ready[0][3] == {"ready": False, "waiting": (
                "kopf's initial listing and indexing of every watched kind")}
        print(f"\nreadiness: first 200 after {first[0]} s, indexed {indexed}; "
              f"{len(not_ready)} samples answered 503 before, "
              f"{len([s for s in samples if s[1] == 0 and s[0] < first[0]])} nothing")
    finally:
        operator.stop()


def test_a_cluster_holding_only_orphaned_marks_is_swept_and_ready(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    """Nothing kopf handles exists (no ThpCheck, result, pod or DaemonSet of ours: nodes
    come through the operator's own watch), so kopf never runs a handler. A node still
    carries a gone check's marks (its finalizer removed by hand while the operator was down,
    the garbage collector took the rest): the sweep undoes them, and the operator is ready."""
    cluster = make_cluster(nodes=1)
    install_crds(cluster)
    namespace = "thpcheck-quiet"
    cluster.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": namespace}})
    name = cluster.api("GET", "/api/v1/nodes")["items"][0]["metadata"]["name"]
    gone = "deleted-while-down"
    cluster.api("PATCH", f"/api/v1/nodes/{name}", {
        "metadata": {"labels": {names.VERDICT_LABEL: "affected"},
                     "annotations": {names.CORDONED_BY_ANNOTATION: gone,
                                     names.LABELLED_BY_ANNOTATION: gone}},
        "spec": {"unschedulable": True}}, "application/merge-patch+json")

    operator = OperatorProcess(cluster, namespace, tmp_path / "logs")
    operator.start()
    try:
        def swept() -> bool:
            body = node(cluster, name)
            annotations = body["metadata"].get("annotations") or {}
            return (not body["spec"].get("unschedulable")
                    and names.VERDICT_LABEL not in body["metadata"].get("labels", {})
                    and not {names.CORDONED_BY_ANNOTATION,
                             names.LABELLED_BY_ANNOTATION} & set(annotations))

        eventually(swept, timeout=30, what=f"the marks of {gone} undone on {name}")
        eventually(lambda: any(e["reason"] == "Uncordoned" and gone in e["message"]
                               for e in node_events(cluster, name)), timeout=30,
                   what="an Event on the node saying so (posted outside kopf's handlers)")

        status, body = 0, None

        def ready() -> bool:
            nonlocal status, body
            status, body = probe(operator.health_port, "/readyz")
            return status == 200

        eventually(ready, timeout=30, what="/readyz 200 with nothing for kopf to handle")
        assert body is not None and body["indexed"] == {
            "nodes": 1, "checks": 0, "results": 0, "agentPods": 0, "mitigationPods": 0,
            "daemonsets": 0}, body
    finally:
        operator.stop()
