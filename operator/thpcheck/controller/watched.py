"""What the operator watches, in one place.

kopf watches the few objects it runs handlers for (ThpChecks and our DaemonSets): the
registry (``controller/operator.py``) registers these, and the operator asks the API whether
any of them exists (``handled_listings``) when no kopf event may ever come to say it has
indexed. The kinds there is one of per node (nodes, agent and mitigation pods, results) are
the operator's own lean watches (``controller/leanwatch.py``): small views, paged listings.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thpcheck.contract import names
from thpcheck.contract.views import (
    AgentPodView,
    MitigationPodView,
    NodeView,
    ResultView,
    agent_pod_view,
    mitigation_pod_view,
    node_view,
    result_view,
    same_node,
)
from thpcheck.controller.api import (
    CHECKS_PATH,
    NODES_PATH,
    RESULTS_PATH,
    daemonsets_path,
    pods_path,
)
from thpcheck.controller.leanwatch import Kind, LeanWatch, Transport

CHECKS = (names.GROUP, names.VERSION, names.CHECK_PLURAL)
AGENT_PODS = {names.POD_ROLE_LABEL: names.AGENT_ROLE}
MITIGATION_PODS = {names.POD_ROLE_LABEL: names.MITIGATION_ROLE}
OUR_DAEMONSETS = {names.MANAGED_BY: names.MANAGER}


def selector(labels: Mapping[str, str]) -> str:
    """A label selector string for exact-value labels."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def lean_node_view(body: Mapping[str, Any]) -> NodeView:
    """The view kept of a node body; label keys and values, kernel and OS image are shared
    between views (``sys.intern``): most are the same on every node of a pool."""
    return node_view(body, sys.intern)


NODES: Kind[NodeView] = Kind("nodes", NODES_PATH, lean_node_view, same=same_node)
RESULTS: Kind[ResultView] = Kind("results", RESULTS_PATH, result_view,
                                 group=lambda view: view.check)


def agent_pods(namespace: str) -> Kind[AgentPodView]:
    """Agent pods, filed by their check's name."""
    return Kind("agent pods", pods_path(namespace), agent_pod_view,
                selector=selector(AGENT_PODS), group=lambda view: view.check)


def mitigation_pods(namespace: str) -> Kind[MitigationPodView]:
    """Mitigation pods, filed by their node's name (unscheduled ones are not filed)."""
    return Kind("mitigation pods", pods_path(namespace), mitigation_pod_view,
                selector=selector(MITIGATION_PODS), group=lambda view: view.node or None)


@dataclass
class LeanWatches:
    """The operator's own watches, one per kind it has one of per node."""

    nodes: LeanWatch[NodeView]
    agent_pods: LeanWatch[AgentPodView]
    mitigation_pods: LeanWatch[MitigationPodView]
    results: LeanWatch[ResultView]

    @classmethod
    def of(cls, transport: Transport, namespace: str, *, server_timeout: float,
           client_timeout: float) -> LeanWatches:
        def watch(kind: Kind[Any]) -> LeanWatch[Any]:
            return LeanWatch(transport, kind, server_timeout=server_timeout,
                             client_timeout=client_timeout)

        return cls(watch(NODES), watch(agent_pods(namespace)),
                   watch(mitigation_pods(namespace)), watch(RESULTS))

    def all(self) -> tuple[LeanWatch[Any], ...]:
        return (self.nodes, self.agent_pods, self.mitigation_pods, self.results)

    def stop(self) -> None:
        for watch in self.all():
            watch.stop()


def handled_listings(namespace: str) -> list[tuple[str, dict[str, str]]]:
    """(path, query) of one ``list`` (limit 1) per kind *and filter* that a kopf event handler
    fires on: if none lists an item, kopf will call no handler, so its indexes are as full
    (empty) as they will get without a new object."""
    one = {"limit": "1"}
    return [
        (CHECKS_PATH, one),
        (daemonsets_path(namespace), {**one, "labelSelector": selector(OUR_DAEMONSETS)}),
    ]
