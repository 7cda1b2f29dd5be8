"""The reads of a reconcile, made before any write: what ``planning.checkplan`` plans from.

The indexes (kept by watches) with this process's latest writes laid over them, the
FailedMount Events of agent pods stuck on a missing host path (one listing per namespace,
shared by all checks), and the cordons the other checks claim (read under the cordon lock).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import structlog

from thpcheck.contract import names
from thpcheck.contract.checkspec import CheckSpec, Mode
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import AgentPodView
from thpcheck.controller.api import ApiError
from thpcheck.controller.context import OperatorContext
from thpcheck.controller.indexes import Indexes
from thpcheck.planning.checkplan import Observed
from thpcheck.planning.hostpaths import (
    FAILED_MOUNT_SELECTOR,
    MountEvents,
    events_due,
    missing_by_pod,
    mount_failures,
    stuck_pods,
    with_mount_failures,
)
from thpcheck.planning.remediation import ClusterLimits

log = structlog.get_logger("thpcheck.operator")


async def observe_check(ctx: OperatorContext, idx: Indexes, body: Mapping[str, Any],
                        spec: CheckSpec, now: datetime) -> Observed:
    """Everything one reconcile of the check ``body`` reads."""
    meta, recent = body.get("metadata", {}), ctx.recent
    name = str(meta.get("name"))
    nodes = recent.overlay_nodes(idx.all_nodes())
    pods = ([] if spec.mode is Mode.PREFLIGHT
            else await observe_mount_failures(ctx, idx.pods_of(name), now))
    return Observed(
        CheckRef(name, str(meta.get("uid"))), ctx.settings.knobs(),
        generation=int(meta.get("generation") or 0),
        live_version=str(meta.get("resourceVersion") or ""),
        live_status=dict(body.get("status") or {}), nodes=nodes, pods=pods,
        daemonset=idx.daemonset(name),
        results=recent.overlay_results(idx.results_of(name), name),
        mitigation_ready={n.name: idx.mitigation_ready(n.name) for n in nodes
                          if n.labels.get(names.MITIGATE_LABEL) == "true"},
        clock=time.monotonic())


def cluster_limits(ctx: OperatorContext, idx: Indexes, check: str) -> ClusterLimits:
    """The cluster-wide cordon limits, with the nodes the other checks persisted as cordoned
    (status.cordonedNodes) from the index and from this process's own latest writes,
    whichever lists more. Read under the cordon lock."""
    claimed = {n for s in idx.check_summaries() if s.name != check for n in s.cordoned}
    claimed.update(n for other, memory in ctx.memories.items() if other != check
                   for n in memory.cordon_claims)
    return ctx.settings.limits(frozenset(claimed))


async def observe_mount_failures(ctx: OperatorContext, pods: list[AgentPodView],
                                 now: datetime) -> list[AgentPodView]:
    """Check pods stuck Pending on their node: the kubelet's FailedMount Events name a
    missing path, which becomes the pod's trouble and the run planner's error result
    (``planning.hostpaths``). One field-selected list per namespace, shared by all checks,
    when ``events_due`` says so (not one per pod)."""
    stuck = stuck_pods(pods, now)
    failures: dict[str, list[str]] = {}
    for namespace in sorted({p.namespace for p in stuck}):
        here = [p for p in stuck if p.namespace == namespace]
        async with ctx.mount_events_lock:
            seen = ctx.mount_events.setdefault(namespace, MountEvents())
            if events_due(seen.read_at, here, now):
                await _read_mount_events(ctx, namespace, seen, here, now)
        failures.update(mount_failures(seen.missing, here))
    return with_mount_failures(pods, failures)


async def _read_mount_events(ctx: OperatorContext, namespace: str, seen: MountEvents,
                             stuck: list[AgentPodView], now: datetime) -> None:
    seen.read_at = now  # also after a failure: the next try waits like a reread
    try:
        found = await ctx.kube.list_events(namespace, FAILED_MOUNT_SELECTOR)
    except ApiError as exc:
        log.warning("FailedMount events not read", namespace=namespace, error=str(exc))
        return
    before, seen.missing = seen.missing, missing_by_pod(found)
    for pod in stuck:
        if pod.uid in seen.missing and pod.uid not in before:
            log.warning("agent pod cannot mount its paths", pod=pod.name, node=pod.node,
                        missing=seen.missing[pod.uid])
