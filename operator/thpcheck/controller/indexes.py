"""In-memory indexes of the objects the operator reads, kept current by watches.

Nodes, agent and mitigation pods and results (one or more per node) are the operator's own
lean watches (``thpcheck.controller.leanwatch``, listed before kopf starts). ThpChecks and
DaemonSets (a few per cluster) are kopf's: ``kopf.index`` handlers store small views
(``thpcheck.contract.views``), not bodies, and write nothing to the objects. kopf fills every
index from the initial listing before any other handler runs, so a restarted operator plans
from complete state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import kopf

from thpcheck.contract.checkspec import Mode, parse_spec
from thpcheck.contract.views import (
    AgentPodView,
    DaemonSetView,
    MitigationPodView,
    NodeView,
    ResultView,
    annotated_check,
    daemonset_view,
)
from thpcheck.controller.watched import LeanWatches

T = TypeVar("T")

# Index ids: kopf passes each index to handlers as a keyword argument of this name.
DAEMONSETS = "daemonsets"
CHECKS = "check_summaries"
KOPF_INDEXES = (DAEMONSETS, CHECKS)


@dataclass(frozen=True)
class CheckSummary:
    """What other checks need to know of a ThpCheck (the mitigation DaemonSet is shared)."""

    name: str
    mitigate: bool
    deleting: bool
    cordoned: tuple[str, ...] = ()  # status.cordonedNodes (the cluster-wide cordon budget)


async def index_daemonset(body: kopf.Body, **_: Any) -> dict[str, DaemonSetView]:
    """Agent DaemonSets under their check's name; the mitigation one under its own name."""
    view = daemonset_view(body)
    key = annotated_check(body) or view.name
    return {key: view}


async def index_check(body: kopf.Body, **_: Any) -> dict[str, CheckSummary]:
    meta = body.get("metadata", {})
    spec = parse_spec(body.get("spec"))
    name = str(meta.get("name", ""))
    # A preflight check runs no pod on any node, the mitigation's included.
    mitigate = spec.remediation.mitigate and spec.mode is Mode.FULL
    cordoned = tuple((body.get("status") or {}).get("cordonedNodes") or ())
    return {name: CheckSummary(name, mitigate, bool(meta.get("deletionTimestamp")), cordoned)}


def _values(index: Mapping[Any, Iterable[T]]) -> Iterator[T]:
    for store in index.values():
        yield from store


def _one(index: Mapping[str, Iterable[T]], key: str) -> T | None:
    if key not in index:
        return None
    return next(iter(index[key]), None)


@dataclass(frozen=True)
class Indexes:
    """Typed access to everything the planners read: the lean watches' views and kopf's
    indexes (both live; a reconcile reads them between awaits)."""

    nodes: Mapping[str, NodeView]
    agent_pods: Mapping[str, Iterable[AgentPodView]]
    mitigation_pods: Mapping[str, Iterable[MitigationPodView]]
    results: Mapping[str, Iterable[ResultView]]
    daemonsets: Mapping[str, Iterable[DaemonSetView]]
    checks: Mapping[str, Iterable[CheckSummary]]

    @classmethod
    def of(cls, kopf_indexes: Mapping[str, Any], lean: LeanWatches) -> Indexes:
        return cls(lean.nodes.views, lean.agent_pods.grouped, lean.mitigation_pods.grouped,
                   lean.results.grouped, kopf_indexes[DAEMONSETS], kopf_indexes[CHECKS])

    def counts(self) -> dict[str, int]:
        """How many objects of each kind are indexed."""
        return {"nodes": len(self.nodes),
                "checks": sum(1 for _ in _values(self.checks)),
                "results": sum(1 for _ in _values(self.results)),
                "agentPods": sum(1 for _ in _values(self.agent_pods)),
                "mitigationPods": sum(1 for _ in _values(self.mitigation_pods)),
                "daemonsets": sum(1 for _ in _values(self.daemonsets))}

    def all_nodes(self) -> list[NodeView]:
        return list(self.nodes.values())

    def pods_of(self, check: str) -> list[AgentPodView]:
        return list(self.agent_pods[check]) if check in self.agent_pods else []

    def results_of(self, check: str) -> list[ResultView]:
        return list(self.results[check]) if check in self.results else []

    def daemonset(self, key: str) -> DaemonSetView | None:
        return _one(self.daemonsets, key)

    def mitigation_ready(self, node: str) -> bool:
        """True if a live mitigation pod on ``node`` is Ready (its probe verified)."""
        if node not in self.mitigation_pods:
            return False
        return any(p.ready and not p.deleting for p in self.mitigation_pods[node])

    def check_summaries(self) -> list[CheckSummary]:
        return list(_values(self.checks))
