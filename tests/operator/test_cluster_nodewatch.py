"""The lean node watch on the real control plane: it follows node changes, and after the real
kube-apiserver restarts with etcd compacted (its old resourceVersion gone: 410, as a rule) a
new listing replaces the set, so a node deleted while no watch was open vanishes from the view.

test_nodewatch.py covers each path on a scripted transport; this test proves them against the
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
from thpcheck.controller.api import Kube
from thpcheck.controller.metrics import Metrics
from thpcheck.controller.nodewatch import NodeWatch

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
    watch = NodeWatch(transport, server_timeout=60, client_timeout=90)

    async def scenario() -> None:
        changed = asyncio.Event()
        await watch.start(on_change=changed.set)
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

        transport.running.clear()  # no request gets through until the deletions are done
        try:
            # Restart first: every watch ends; the new server's cache starts at etcd's
            # current revision, and after compaction the old resourceVersion is gone.
            await asyncio.to_thread(cluster.restart_apiserver)
            await asyncio.to_thread(cluster.delete_node, "w-gone")
            await asyncio.to_thread(cluster.add_node, "w-new", wait=False)
            await asyncio.to_thread(cluster.compact_etcd)
        finally:
            transport.running.set()
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
