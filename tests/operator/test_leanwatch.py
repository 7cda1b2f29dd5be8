"""The operator's lean watches: what they keep of a node, and how listings and watch events
change their views and groups (the transport is scripted;
tests/operator/test_cluster_leanwatch.py runs them against the real API server)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from benchmarks.node_shapes import realistic_node

from tests.operator.factories import agent_pod, message, pod_body, result
from thpcheck.contract import names
from thpcheck.contract.checkspec import Remediation, parse_spec
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import (
    AgentPodView,
    MitigationPodView,
    NodeView,
    agent_pod_view,
    node_view,
    same_node,
)
from thpcheck.controller import events
from thpcheck.controller.api import ApiError
from thpcheck.controller.leanwatch import PAGE_SIZE, LeanWatch, ViewSet
from thpcheck.controller.recent import RecentWrites
from thpcheck.controller.watched import NODES, agent_pods, lean_node_view, mitigation_pods
from thpcheck.model.verdict import Verdict
from thpcheck.planning.prediction import node_record, predict_view
from thpcheck.planning.remediation import plan_cleanup, plan_remediation
from thpcheck.planning.results import plan_predicted_results, plan_results
from thpcheck.planning.runs import plan_runs
from thpcheck.planning.selection import selected_nodes
from thpcheck.planning.states import NodeState

CHECK = "weekly"
NOW = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)


def body(name: str, version: str = "1", uid: str = "", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid or f"uid-{name}", "resourceVersion": version,
                         "labels": labels},
            "spec": {}, "status": {"nodeInfo": {"kernelVersion": "6.12.90", "bootID": "b"}}}


# -- what the watch keeps of a node --------------------------------------------------------


def full_node() -> dict[str, Any]:
    """A node as a cloud provider's kubelet and controllers leave it (benchmarks/node_shapes),
    plus everything the operator itself puts on one: labels, its annotations, a taint and a
    cordon. Every NodeView field has a value here that is not its default."""
    node = realistic_node("gke-pool-07-a1b2", 7, kubelet_port=10250, kubelet_version="v1.36.3",
                          labels={"thpcheck-bench": "1"},
                          node_info={"kernelVersion": "6.12.90", "bootID": "boot-1",
                                     "osImage": "Debian GNU/Linux 12 (bookworm)"})
    meta = node["metadata"]
    meta.update(uid="6b0d1f8e-1c1a-4c55-9a0e-3f1f6a1f3c11", resourceVersion="812345",
                creationTimestamp="2026-11-02T08:14:31Z")
    meta["labels"].update({names.VERDICT_LABEL: "affected", names.MITIGATED_LABEL: "true",
                           names.MITIGATE_LABEL: "true"})
    meta["annotations"].update({names.CORDONED_BY_ANNOTATION: CHECK,
                                names.LABELLED_BY_ANNOTATION: CHECK,
                                names.MITIGATE_BY_ANNOTATION: CHECK,
                                names.CONDITION_BY_ANNOTATION: CHECK,
                                names.TAINTED_BY_ANNOTATION: CHECK})
    node["spec"].update(unschedulable=True, taints=[
        {"key": "dedicated", "value": "batch", "effect": "NoSchedule"}])
    node["status"]["conditions"].append({  # the operator's own condition
        "type": names.NODE_CONDITION, "status": "True", "reason": "DataLoss",
        "message": "kernel 6.12.90: data loss reproduced",
        "lastHeartbeatTime": "2026-11-28T15:59:50Z",
        "lastTransitionTime": "2026-11-28T15:40:02Z"})
    node["status"]["conditions"].append({  # as the kubelet reports it: NotReady
        "type": "Ready", "status": "False", "reason": "KubeletNotReady",
        "message": "container runtime network not ready",
        "lastHeartbeatTime": "2026-11-28T15:59:50Z",
        "lastTransitionTime": "2026-11-28T15:40:02Z"})
    return node


def kept_by_the_watch(node: Mapping[str, Any]) -> NodeView:
    """The view a running LeanWatch holds after listing ``node`` (its own parse, from the
    bytes the API server would send)."""
    page = {"kind": "NodeList", "metadata": {"resourceVersion": "9"},
            "items": [json.loads(json.dumps(node))]}
    transport = Scripted([page], [])
    watch = LeanWatch(transport, NODES, backoff=(0.01,))
    try:
        asyncio.run(asyncio.wait_for(watch.start(), 10))
    finally:
        watch.stop()
        transport.release.set()
    return watch.views[node["metadata"]["name"]]


class Recorded(NodeView):
    """A NodeView that notes every field read from it."""

    read: ClassVar[set[str]] = set()

    def __getattribute__(self, name: str) -> Any:
        if name in FIELDS:
            Recorded.read.add(name)
        return object.__getattribute__(self, name)


FIELDS = {f.name for f in dataclasses.fields(NodeView)}


def fields_the_planners_read(view: NodeView) -> set[str]:
    """Run every planner that takes nodes (selection, remediation, clean-up, results in
    both modes, runs, prediction, Events, the recent-writes overlay) on ``view`` and return
    the NodeView fields they read."""
    Recorded.read = set()
    node = Recorded(**{f: getattr(view, f) for f in FIELDS})
    spec = parse_spec({"nodeSelector": {"thpcheck-bench": "1"}, "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}]})
    selected = selected_nodes(spec, [node])
    assert selected == [node], "the check must select the node for the planners to see it"
    ref = CheckRef(CHECK, "uid-check")
    text = message("affected", kernel=view.kernel_version, boot_id=view.boot_id)
    pods = [agent_pod(CHECK, node.name, text)]
    stale = dataclasses.replace(result(CHECK, node.name, verdict="affected"), kernel_release="x")
    plan_results(ref, selected, pods, [], {}, NOW, timedelta(seconds=30))
    plan_results(ref, selected, pods, [stale], {node.name: True}, NOW, timedelta(seconds=30))
    plan_predicted_results(ref, selected, [stale], {}, NOW)
    running = dataclasses.replace(pods[0], run=None)
    for pod in ([], pods, [running]):
        plan_runs(selected, pod, None, NOW, timedelta(minutes=30))
    predict_view(node)
    node_record(node, "disagrees")
    states = {node.name: NodeState(node.name, Verdict.AFFECTED, False)}
    for remediation in (Remediation(label=True, cordon=True, max_cordoned=5, mitigate=True,
                                    taint="NoSchedule", condition=True),
                        Remediation(label=False, cordon=False, mitigate=False)):
        for paused in (False, True):
            plan_remediation(CHECK, remediation, paused=paused, selected=selected,
                             all_nodes=[node], states=states, cordoned=[node.name], now=NOW)
    plan_cleanup(CHECK, [node])
    events.node_reference(node)
    recent = RecentWrites()
    recent.wrote_node(node, "1")
    recent.overlay_nodes([node])
    return set(Recorded.read)


def default_of(spec: dataclasses.Field[Any]) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None if spec.default is dataclasses.MISSING else spec.default


def test_the_lean_view_holds_every_field_the_planners_read() -> None:
    """What the watch keeps of a real node equals the view of the whole object in every field
    a planner reads, and the realistic node gives every such field a value: a field a planner
    starts to read that the watch does not keep fails here, not silently in a cluster."""
    node = full_node()
    whole = node_view(node)
    kept = kept_by_the_watch(node)
    read = fields_the_planners_read(whole)
    # The planners read the node's identity, labels, marks, cordon, taints and kernel facts.
    assert {"name", "uid", "labels", "annotations", "unschedulable", "taints",
            "kernel_version", "boot_id", "os_image", "architecture", "ready",
            "condition"} <= read, read
    unset = sorted(f.name for f in dataclasses.fields(NodeView)
                   if getattr(whole, f.name) == default_of(f))
    assert not unset, f"the view of a full node leaves {unset} at the default: node_view() " \
        "does not fill them, or full_node() gives them no value (then this test cannot see " \
        "the watch drop them)"
    for name in sorted(read):
        assert getattr(kept, name) == getattr(whole, name), f"the watch drops {name}"
    assert kept == whole


def test_the_lean_view_drops_everything_else() -> None:
    """What a realistic node costs the operator: its view, not its 25 KiB of JSON."""
    node = full_node()
    kept = kept_by_the_watch(node)
    assert len(json.dumps(node)) > 20_000
    assert set(kept.annotations) == {  # only the operator's
        names.CORDONED_BY_ANNOTATION, names.LABELLED_BY_ANNOTATION,
        names.MITIGATE_BY_ANNOTATION, names.CONDITION_BY_ANNOTATION,
        names.TAINTED_BY_ANNOTATION}
    assert not hasattr(kept, "__dict__")  # slots: no per-view dict


def test_views_share_equal_strings() -> None:
    a = lean_node_view(json.loads(json.dumps(full_node())))
    b = lean_node_view(json.loads(json.dumps(full_node())))
    key_a = next(k for k in a.labels if k.startswith("cloud.google.com/gke-nodepool"))
    key_b = next(k for k in b.labels if k.startswith("cloud.google.com/gke-nodepool"))
    assert key_a is key_b and a.labels[key_a] is b.labels[key_b]
    assert a.kernel_version is b.kernel_version


# -- ViewSet: listings replace, events change ----------------------------------------------


def test_a_listing_replaces_the_set() -> None:
    state = ViewSet(same_node)
    assert state.replace([node_view(body("a")), node_view(body("b"))]) is True
    assert state.synced
    views = state.views
    assert state.replace([node_view(body("a")), node_view(body("b"))]) is False
    assert state.replace([node_view(body("a", "2")), node_view(body("c"))]) is True
    assert state.views is views  # changed in place: handlers hold this dict
    assert sorted(views) == ["a", "c"] and views["a"].resource_version == "2"


def test_only_changes_a_planner_sees_count() -> None:
    state = ViewSet(same_node)
    state.replace([node_view(body("a"))])
    assert state.apply("MODIFIED", node_view(body("a", "2"))) is False  # a heartbeat
    assert state.views["a"].resource_version == "2"  # kept: the overlay compares versions
    assert state.apply("MODIFIED", node_view(body("a", "3", team="x"))) is True
    assert state.apply("ADDED", node_view(body("b"))) is True
    assert state.apply("DELETED", node_view(body("b", uid="another-b"))) is False
    assert state.apply("DELETED", node_view(body("b"))) is True
    assert state.apply("DELETED", node_view(body("b"))) is False
    assert sorted(state.views) == ["a"]


# -- LeanWatch on a scripted transport ----------------------------------------------------


class Scripted:
    """List pages and watch streams, in order; then a watch that waits until released."""

    def __init__(self, pages: Sequence[Mapping[str, Any]],
                 streams: Sequence[Sequence[Mapping[str, Any]] | ApiError]) -> None:
        self.pages = list(pages)
        self.streams = list(streams)
        self.lists: list[Mapping[str, str]] = []
        self.watches: list[Mapping[str, str]] = []
        self.release = threading.Event()
        self.path = "/api/v1/nodes"

    def request_sync(self, verb: str, path: str, body: Any = None, content_type: str = "",
                     query: Mapping[str, str] | None = None, resource: str = "") -> Any:
        assert (verb, path) == ("GET", self.path)
        self.lists.append(dict(query or {}))
        return self.pages.pop(0)

    @contextlib.contextmanager
    def stream_sync(self, path: str, query: Mapping[str, str],
                    read_timeout: float) -> Iterator[Iterator[bytes]]:
        assert path == self.path
        self.watches.append(dict(query))
        if not self.streams:
            self.release.wait(30)
            yield iter(())
            return
        stream = self.streams.pop(0)
        if isinstance(stream, ApiError):
            raise stream
        yield iter([json.dumps(event).encode() + b"\n" for event in stream])


def page(*nodes: Mapping[str, Any], version: str = "10", token: str = "") -> dict[str, Any]:
    return {"kind": "NodeList", "items": list(nodes),
            "metadata": {"resourceVersion": version, "continue": token}}


async def settled(watch: LeanWatch[NodeView], transport: Scripted, watches: int) -> None:
    for _ in range(500):
        if len(transport.watches) >= watches and not transport.streams:
            await asyncio.sleep(0.05)  # let the last events reach the loop
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the watch opened {len(transport.watches)} watches, not {watches}")


def test_pages_then_a_watch_from_the_listing() -> None:
    transport = Scripted(
        [page(body("a"), token="next"), page(body("b"), version="11")],
        [[{"type": "MODIFIED", "object": body("a", "12", team="x")},
          {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
          {"type": "ADDED", "object": body("c", "16")},
          {"type": "MODIFIED", "object": body("c", "17")}]])
    changes: list[int] = []

    async def scenario() -> LeanWatch[NodeView]:
        watch = LeanWatch(transport, NODES, backoff=(0.01,))
        await watch.start(on_change=lambda _: changes.append(len(watch.views)))
        assert {"a", "b"} <= set(watch.views)  # complete when start() returns
        await settled(watch, transport, 2)
        watch.stop()
        return watch

    watch = asyncio.run(scenario())
    transport.release.set()
    assert transport.lists == [{"limit": str(PAGE_SIZE)},
                               {"limit": str(PAGE_SIZE), "continue": "next"}]
    assert transport.watches[0]["resourceVersion"] == "11"  # the listing's version
    assert transport.watches[1]["resourceVersion"] == "17"  # resumed, not re-listed
    assert sorted(watch.views) == ["a", "b", "c"]
    assert watch.views["a"].labels == {"team": "x"}
    assert changes == [2, 3]  # a's label, c added; not c's version bump


@pytest.mark.parametrize("gone", ["event", "status"])
def test_410_gone_relists_and_the_listing_replaces_the_set(gone: str) -> None:
    """A node deleted while no watch was open disappears, one created meanwhile appears: the
    new listing replaces the set, whether the 410 comes as a watch event or as the status."""
    expired: Sequence[Mapping[str, Any]] | ApiError = (
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                      "message": "too old resource version: 11 (900)"}}]
        if gone == "event" else ApiError("WATCH", "/api/v1/nodes", 410, "Gone", "too old"))
    transport = Scripted([page(body("a"), body("b"), version="11"),
                          page(body("a"), body("c"), version="950")], [expired])
    changes: list[list[str]] = []

    async def scenario() -> LeanWatch[NodeView]:
        watch = LeanWatch(transport, NODES, backoff=(0.01,))
        await watch.start(on_change=lambda _: changes.append(sorted(watch.views)))
        await settled(watch, transport, 2)
        watch.stop()
        return watch

    watch = asyncio.run(scenario())
    transport.release.set()
    assert sorted(watch.views) == ["a", "c"]
    assert changes == [["a", "c"]]
    assert transport.watches[-1]["resourceVersion"] == "950"
    assert watch.relists == 2


def test_a_broken_connection_resumes_without_a_listing() -> None:
    transport = Scripted([page(body("a"), version="11")],
                         [ApiError("WATCH", "/api/v1/nodes", 0, "ProtocolError", "reset"),
                          [{"type": "DELETED", "object": body("a", "14")}]])

    async def scenario() -> LeanWatch[NodeView]:
        watch = LeanWatch(transport, NODES, backoff=(0.01,))
        await watch.start()
        await settled(watch, transport, 3)
        watch.stop()
        return watch

    watch = asyncio.run(scenario())
    transport.release.set()
    assert len(transport.lists) == 1
    assert [w["resourceVersion"] for w in transport.watches] == ["11", "11", "14"]
    assert not watch.views


# -- pods and results: grouped as the planners read them ----------------------------------


def test_groups_read_as_an_index_and_follow_every_change() -> None:
    """Agent pods filed by check, as kopf's index filed them: a key holds its pods, a key
    with no pod left is gone, a listing refiles everything, a deletion of another
    incarnation of a name changes nothing."""
    state: ViewSet[AgentPodView] = ViewSet(group=lambda view: view.check)
    assert state.replace([agent_pod("a", "n1"), agent_pod("a", "n2"), agent_pod("b", "n1")])
    assert sorted(state.grouped) == ["a", "b"]
    assert sorted(p.node for p in state.grouped["a"]) == ["n1", "n2"]
    finished = agent_pod("a", "n1", message())
    assert state.apply("MODIFIED", finished) is True
    assert list(state.grouped["a"]).count(finished) == 1 and len(state.grouped["a"]) == 2
    assert state.apply("DELETED", agent_pod("b", "n1", uid="an-older-pod")) is False
    assert state.apply("DELETED", agent_pod("b", "n1")) is True
    assert "b" not in state.grouped and len(state.grouped) == 1
    grouped = state.grouped
    assert state.replace([agent_pod("c", "n3")]) is True
    assert state.grouped is grouped and sorted(grouped) == ["c"]  # live: handlers hold it


def test_mitigation_pods_without_a_node_are_not_filed() -> None:
    state = ViewSet(group=mitigation_pods("ns").group)
    state.replace([MitigationPodView("m1", "n1", ready=True, uid="1"),
                   MitigationPodView("m2", "", ready=False, uid="2")])
    assert sorted(state.views) == ["m1", "m2"] and list(state.grouped) == ["n1"]
    state.apply("MODIFIED", MitigationPodView("m2", "n2", ready=False, uid="2"))
    assert sorted(state.grouped) == ["n1", "n2"]


def pod_page(*bodies: Mapping[str, Any], version: str = "10") -> dict[str, Any]:
    return {"kind": "PodList", "items": list(bodies),
            "metadata": {"resourceVersion": version, "continue": ""}}


def test_the_agent_pod_watch_asks_for_its_pods_only_and_names_the_changed_pod() -> None:
    """The API server filters by role label (list and watch), and ``on_change`` gets the
    view that changed, so only its check's daemon is woken."""
    kind = agent_pods("thp-checker")
    first, done = pod_body("weekly", "n1", None), pod_body("weekly", "n1", message())
    done["metadata"]["resourceVersion"] = "12"
    transport = Scripted([pod_page(first)], [[{"type": "MODIFIED", "object": done}]])
    transport.path = kind.path
    changed: list[AgentPodView | None] = []

    async def scenario() -> LeanWatch[AgentPodView]:
        watch = LeanWatch(transport, kind, backoff=(0.01,))
        await watch.start(on_change=changed.append)
        await settled(watch, transport, 2)
        watch.stop()
        return watch

    watch = asyncio.run(scenario())
    transport.release.set()
    wanted = f"{names.POD_ROLE_LABEL}={names.AGENT_ROLE}"
    assert [q["labelSelector"] for q in transport.lists + transport.watches] == [wanted] * 3
    assert [view.check if view else None for view in changed] == ["weekly"]
    (pod,) = watch.grouped["weekly"]
    assert pod.run is not None and pod.run.result is not None  # the finished run, parsed
    assert pod == agent_pod_view(done)  # the view kopf's index kept, field for field
