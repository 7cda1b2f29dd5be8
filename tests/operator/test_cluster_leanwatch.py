"""The lean watches on the real control plane: they follow changes, and after the real
kube-apiserver restarts with etcd compacted (its old resourceVersion gone: 410, as a rule) a
new listing replaces the set, so an object deleted while no watch was open vanishes from the
views (and from its group), for nodes and for the agent pods of a namespace.

test_leanwatch.py covers each path on a scripted transport; these tests prove them against the
API server's real answers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import pytest

from devtools.cluster.harness import Cluster
from thpcheck.contract import names
from thpcheck.controller.api import Kube
from thpcheck.controller.leanwatch import LeanWatch
from thpcheck.controller.metrics import Metrics
from thpcheck.controller.watched import NODES, agent_pods

pytestmark = pytest.mark.cluster


class Pausable:
    """The operator's transport, with a switch that holds every new request (as a stopped
    process would) until released."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.running = threading.Event()
        self.running.set()

    def request_sync(self, verb: str, path: str, body: Any = None, content_type: str = "",
                     query: Mapping[str, str] | None = None, resource: str = "") -> Any:
        self.running.wait()
        return self.kube.request_sync(verb, path, body, query=query)

    def stream_sync(self, path: str, query: Mapping[str, str],
                    read_timeout: float) -> AbstractContextManager[Iterator[bytes]]:
        self.running.wait()
        return self.kube.stream_sync(path, query, read_timeout)


async def while_no_watch_is_open(transport: Pausable, cluster: Cluster,
                                 changes: Callable[[], object]) -> None:
    """Make ``changes`` while the watch cannot see them: the API server restarts first (every
    watch ends; the new server's cache starts at etcd's current revision), and after
    compaction the old resourceVersion is gone."""
    transport.running.clear()  # no request gets through until the changes are made
    try:
        await asyncio.to_thread(cluster.restart_apiserver)
        await asyncio.to_thread(changes)
        await asyncio.to_thread(cluster.compact_etcd)
    finally:
        transport.running.set()


async def until(changed: asyncio.Event, condition: Callable[[], bool], seconds: float,
                what: str) -> None:
    """Wait for ``condition``, checking it after each change the watch reports."""
    try:
        async with asyncio.timeout(seconds):
            while not condition():
                await changed.wait()
                changed.clear()
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}") from None


def api_nodes(cluster: Cluster) -> set[str]:
    return {n["metadata"]["name"] for n in cluster.api("GET", "/api/v1/nodes")["items"]}


def test_the_node_view_follows_changes_and_converges_after_410(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2)
    kube = Kube.connect(str(cluster.kubeconfig), Metrics(), 4)
    transport = Pausable(kube)
    watch = LeanWatch(transport, NODES, server_timeout=60, client_timeout=90)

    async def scenario() -> None:
        changed = asyncio.Event()
        await watch.start(on_change=lambda _: changed.set())
        assert set(watch.views) == api_nodes(cluster)  # complete when start() returns
        await asyncio.to_thread(cluster.add_node, "w-keep", labels={"team": "a"})
        await asyncio.to_thread(cluster.add_node, "w-gone")
        await until(changed, lambda: {"w-keep", "w-gone"} <= set(watch.views), 30,
                    "the new nodes")
        assert watch.views["w-keep"].labels["team"] == "a"
        await asyncio.to_thread(cluster.api, "PATCH", "/api/v1/nodes/w-keep",
                                {"metadata": {"labels": {"team": "b"}}},
                                "application/merge-patch+json")
        await until(changed, lambda: watch.views["w-keep"].labels.get("team") == "b", 30,
                    "the label")
        listings = watch.relists

        await while_no_watch_is_open(transport, cluster, lambda: (
            cluster.delete_node("w-gone"), cluster.add_node("w-new", wait=False)))
        # A just restarted server answers 429 while its caches fill: the watch retries.
        wanted = await asyncio.to_thread(api_nodes, cluster)
        await until(changed, lambda: set(watch.views) == wanted, 60,
                    f"the view to equal {wanted}")
        assert "w-gone" not in watch.views and "w-new" in watch.views
        # Usually the resumed watch gets 410 and a new listing replaces the set (the 410 paths
        # are scripted in test_nodewatch.py). Once, in a full run on a loaded machine, the
        # restarted server served the old resourceVersion and the watch itself delivered the
        # deletion: the view converged all the same. Never more than one new listing.
        assert watch.relists - listings in (0, 1), watch.relists - listings
        print(f"\nconverged after the restart with {watch.relists - listings} new listing(s)")

    try:
        asyncio.run(scenario())
    finally:
        watch.stop()
        kube.close()


NAMESPACE = "lean"


def agent_pod(name: str, check: str, role: str = names.AGENT_ROLE) -> dict[str, Any]:
    """An agent pod as the DaemonSet makes one, bound to a node no kubelet serves (it stays
    Pending: only the watch's view of it matters here)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {names.POD_ROLE_LABEL: role},
                         "annotations": {names.CHECK_NAME_ANNOTATION: check}},
            "spec": {"nodeName": f"node-of-{name}",
                     "containers": [{"name": "idle", "image": "thp-checker:test"}]}}


def test_agent_pods_are_grouped_by_check_and_converge_after_410(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0)
    cluster.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": NAMESPACE}})
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
    for name, check in (("p1", "a"), ("p2", "a"), ("p3", "b")):
        cluster.api("POST", pods, agent_pod(name, check))
    cluster.api("POST", pods, agent_pod("m1", "a", role=names.MITIGATION_ROLE))
    kube = Kube.connect(str(cluster.kubeconfig), Metrics(), 4)
    transport = Pausable(kube)
    watch = LeanWatch(transport, agent_pods(NAMESPACE), server_timeout=60, client_timeout=90)

    def groups() -> dict[str, list[str]]:
        return {check: sorted(p.name for p in views) for check, views in watch.grouped.items()}

    async def scenario() -> None:
        changed = asyncio.Event()
        woken: list[str] = []
        await watch.start(on_change=lambda view: (woken.append(view.check if view else "*"),
                                                  changed.set()))
        assert groups() == {"a": ["p1", "p2"], "b": ["p3"]}  # not the mitigation pod
        await asyncio.to_thread(cluster.api, "POST", pods, agent_pod("p4", "c"))
        await until(changed, lambda: "c" in watch.grouped, 30, "the new pod")
        assert woken == ["c"]  # only its check is woken

        await while_no_watch_is_open(transport, cluster, lambda: (
            cluster.api("DELETE", f"{pods}/p3?gracePeriodSeconds=0"),
            cluster.api("POST", pods, agent_pod("p5", "a"))))
        await until(changed, lambda: groups() == {"a": ["p1", "p2", "p5"], "c": ["p4"]}, 60,
                    "the groups after the restart")

    try:
        asyncio.run(scenario())
    finally:
        watch.stop()
        kube.close()
