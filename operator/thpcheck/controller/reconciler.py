"""One reconcile of one ThpCheck: observe, plan (pure: ``specs.checkplan``), apply.

``CheckReconciler`` reads everything first (the indexes, this process's latest writes, the
FailedMount Events of stuck pods), asks the planners, applies their writes with bounded
concurrency and the conflict policy, and records the outcomes in the check's memory
(``specs.checkplan.CheckMemory``). Order: the agent DaemonSet's rollout, the node results,
remediation (persisting the cordon budget before any cordon), the shared mitigation DaemonSet,
Events, then the status. Each step is idempotent, so a reconcile cut short by a crash or a
conflict is finished by the next one, and a reconcile with nothing to do writes nothing.

``mode: preflight`` skips the rollout (and deletes a DaemonSet left by full mode): the
results are the predictions from each node's ``status.nodeInfo``, and nothing that needs a
pod (mitigation) is planned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import kopf
import structlog

from thpcheck.controller import events
from thpcheck.controller.api import ApiError, Conflict, NotFound
from thpcheck.controller.context import OperatorContext
from thpcheck.controller.indexes import Indexes
from thpcheck.specs import names
from thpcheck.specs.agent import CheckRef
from thpcheck.specs.checkplan import (
    REJECTED_STATUSES,
    CheckPlan,
    DaemonSetAction,
    DaemonSetStep,
    Event,
    Finish,
    Knobs,
    NodeStep,
    Observed,
    Outcomes,
    Written,
    finish_check,
    plan_check,
    plan_nodes,
)
from thpcheck.specs.checkspec import Mode, parse_spec
from thpcheck.specs.hostpaths import (
    FAILED_MOUNT_SELECTOR,
    MountEvents,
    events_due,
    missing_by_pod,
    mount_failures,
    stuck_pods,
    with_mount_failures,
)
from thpcheck.specs.mitigation import mitigation_daemonset, restore_daemonset, wanted_daemonsets
from thpcheck.specs.remediation import NodeChange
from thpcheck.specs.results import ResultPatch, ResultPlan, ResultWrite
from thpcheck.specs.views import AgentPodView, DaemonSetView, node_view, result_view

log = structlog.get_logger("thpcheck.operator")
T = TypeVar("T")


async def bounded(limit: int, jobs: Iterable[Awaitable[T]]) -> list[T]:
    """Await the jobs (not yet started coroutines) with at most ``limit`` in flight."""
    gate = asyncio.Semaphore(limit)

    async def run(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return list(await asyncio.gather(*(run(job) for job in jobs)))


class CheckReconciler:
    """Applies one reconcile of one ThpCheck body, with the operator's context."""

    def __init__(self, ctx: OperatorContext, body: kopf.Body, idx: Indexes,
                 now: datetime) -> None:
        meta = body.get("metadata", {})
        self.ctx, self.body, self.idx, self.now = ctx, body, idx, now
        self.name = str(meta.get("name"))
        self.check = CheckRef(self.name, str(meta.get("uid")))
        self.spec = parse_spec(body.get("spec"))
        self.memory = ctx.memory(self.name)
        self.log = log.bind(check=self.name)

    async def run(self) -> None:
        plan = plan_check(await self._observe(), self.spec, self.memory, self.now)
        done = Outcomes()
        await self._daemonset(plan.daemonset, done)
        self.memory.reported_untrusted = plan.reported_untrusted
        self._post(plan.events)
        await self._results(plan.results, done)
        # New cordons and taints are decided and made one check at a time (the cluster-wide
        # budget); a plan without one (labels, uncordons) is applied outside the lock.
        async with self.ctx.cordon_lock:
            step = plan_nodes(plan, self.memory, self.ctx.settings.limits(self._claimed()))
            if step.holds:
                await self._nodes(plan, step, done)
        if not step.holds:
            await self._nodes(plan, step, done)
        self.memory.cordon_claims = frozenset(done.cordoned)
        await manage_mitigation_daemonset(self.ctx, self.idx)
        finish = finish_check(plan, step, done, self.memory, time.monotonic())
        self.memory.rejection = finish.rejection
        self.memory.reported_forbidden = finish.reported_forbidden
        self._post(finish.events)
        self.ctx.metrics.record_check(self.name, finish.metrics.by_verdict,
                                      **finish.metrics.gauges)
        if finish.patch is not None:
            await self._write_status(plan, finish)

    async def _observe(self) -> Observed:
        """Every read of the reconcile (the planners see nothing else)."""
        meta, settings, recent = self.body.get("metadata", {}), self.ctx.settings, self.ctx.recent
        nodes = recent.overlay_nodes(self.idx.all_nodes())
        pods = ([] if self.spec.mode is Mode.PREFLIGHT
                else await self._mount_failures(self.idx.pods_of(self.name)))
        return Observed(
            self.check, Knobs(settings.workload(), settings.status_interval,
                              settings.empty_result_grace),
            generation=int(meta.get("generation") or 0),
            live_version=str(meta.get("resourceVersion") or ""),
            live_status=dict(self.body.get("status") or {}), nodes=nodes, pods=pods,
            daemonset=self.idx.daemonset(self.name),
            results=recent.overlay_results(self.idx.results_of(self.name), self.name),
            mitigation_ready={n.name: self.idx.mitigation_ready(n.name) for n in nodes
                              if n.labels.get(names.MITIGATE_LABEL) == "true"},
            clock=time.monotonic())

    async def _mount_failures(self, pods: list[AgentPodView]) -> list[AgentPodView]:
        return await observe_mount_failures(self.ctx, pods, self.now)

    def _claimed(self) -> frozenset[str]:
        """Nodes the other checks persisted as cordoned (status.cordonedNodes), from the
        index and from this process's own latest writes, whichever lists more."""
        claimed = {n for s in self.idx.check_summaries() if s.name != self.name
                   for n in s.cordoned}
        claimed.update(n for check, memory in self.ctx.memories.items() if check != self.name
                       for n in memory.cordon_claims)
        return frozenset(claimed)

    def _post(self, planned: Iterable[Event]) -> None:
        for e in planned:
            if e.node is None:
                if e.warning:
                    self.log.warning("check event", reason=e.reason, message=e.message[:300])
                events.on_check(self.body, reason=e.reason, message=e.message,
                                warning=e.warning)
            else:
                events.on_node(e.node, reason=e.reason, message=e.message, warning=e.warning)

    async def _daemonset(self, step: DaemonSetStep, done: Outcomes) -> None:
        kube, action, body = self.ctx.kube, step.action, step.rollout.body
        try:
            if action is DaemonSetAction.DELETE:
                await kube.delete_daemonset(self.ctx.settings.namespace,
                                            names.agent_daemonset_name(self.name))
            elif action in (DaemonSetAction.CREATE, DaemonSetAction.UPDATE) and body:
                await (kube.create_daemonset if action is DaemonSetAction.CREATE
                       else kube.update_daemonset)(body)
            else:
                return
        except ApiError as exc:
            if action is DaemonSetAction.DELETE:
                self.log.warning("agent daemonset not deleted", error=str(exc))
            elif isinstance(exc, Conflict):
                done.daemonset = Written.CONFLICT
                self.log.info("daemonset changed meanwhile; retrying next reconcile",
                              step=step.rollout.step.value)
            elif exc.status in REJECTED_STATUSES:
                done.daemonset, done.daemonset_error = Written.REJECTED, exc.message
                self.log.warning("agent daemonset rejected", step=step.rollout.step.value,
                                 status=exc.status, error=exc.message)
            else:
                raise
            return
        self.log.info("agent daemonset", step=action.value, run=step.rollout.run)
        self._post([step.started] if step.started else [])

    async def _results(self, plan: ResultPlan, done: Outcomes) -> None:
        kube, recent = self.ctx.kube, self.ctx.recent

        async def write(item: ResultWrite) -> None:
            first, then, gone = ((kube.create_result, kube.replace_result, Conflict)
                                 if item.create else
                                 (kube.replace_result, kube.create_result, NotFound))
            try:
                try:
                    written = await first(item.body)
                except gone:  # created meanwhile, or deleted meanwhile
                    written = await then(item.body)
            except ApiError as exc:
                self.log.warning("result not written", node=item.node, error=str(exc))
                return
            recent.wrote_result(result_view(written), item.before)
            self.ctx.metrics.wrote_result(self.name, item)
            done.results.append(item)

        async def patch(item: ResultPatch) -> None:
            try:
                written = await kube.patch_result(item.name, item.patch)
            except ApiError as exc:
                self.log.warning("result not patched", result=item.name, error=str(exc))
                return
            recent.wrote_result(result_view(written), item.before)

        async def delete(name: str) -> None:
            recent.forget_result(name)
            try:
                await kube.delete_result(name)
            except ApiError as exc:
                self.log.warning("result not deleted", result=name, error=str(exc))

        jobs = [*map(write, plan.writes), *map(patch, plan.patches), *map(delete, plan.deletes)]
        if jobs:
            await bounded(self.ctx.settings.api_workers, jobs)
            self.log.info("results", written=len(plan.writes), patched=len(plan.patches),
                          deleted=len(plan.deletes))

    async def _nodes(self, plan: CheckPlan, step: NodeStep, done: Outcomes) -> None:
        """Persist the cordon list (preconditioned), then change the nodes."""
        done.cordoned = step.stored
        if step.budget is not None:
            try:
                done.budget = await self._patch_status(plan, step.budget)
            except ApiError as exc:
                # A conflict means someone else wrote in between: plan again from fresh state.
                self.log.info("cordon budget not persisted; retrying", error=str(exc))
                self.ctx.triggers.poke(self.name)
                return
            self.memory.cordon_claims = frozenset(step.remedy.cordoned_before)
        versions = {n.name: n.resource_version for n in plan.observed.nodes}

        async def change(item: NodeChange) -> None:
            try:
                written = await apply_node_change(self.ctx, item)
            except (Conflict, NotFound) as exc:
                self.log.info("node changed meanwhile; retrying", node=item.node,
                              error=str(exc))
                self.ctx.triggers.poke(self.name)
                return
            except ApiError as exc:
                self.log.warning("node not changed", node=item.node, error=str(exc))
                done.refused.append((item, exc.status, exc.message))
                return
            self.ctx.recent.wrote_node(node_view(written), versions[item.node])
            done.changes.append(item)
            self.log.info("node changed", node=item.node,
                          actions=[a.action.value for a in item.actions])

        if step.remedy.changes:
            await bounded(self.ctx.settings.api_workers, map(change, step.remedy.changes))
        done.cordoned = step.remedy.cordoned_after

    async def _write_status(self, plan: CheckPlan, finish: Finish) -> None:
        try:
            stored = await self._patch_status(plan, {"status": finish.patch})
        except ApiError as exc:
            self.log.warning("status not written", error=str(exc))
            return
        self.memory.written_status = stored or finish.status
        self.memory.status_written_at = time.monotonic()
        status = finish.status
        self.log.info("status", phase=status["phase"], checked=status["checked"],
                      nodes=status["nodes"], affected=status["affected"])

    async def _patch_status(self, plan: CheckPlan, body: dict[str, Any]) -> dict[str, Any]:
        """Patch the status; returns the stored one, and remembers the versions."""
        response = await self.ctx.kube.patch_check_status(self.name, body) or {}
        self.memory.version_before = plan.observed.live_version
        self.memory.version_after = str(response.get("metadata", {}).get("resourceVersion", ""))
        stored: dict[str, Any] = response.get("status") or {}
        return stored


async def observe_mount_failures(ctx: OperatorContext, pods: list[AgentPodView],
                                 now: datetime) -> list[AgentPodView]:
    """Check pods stuck Pending on their node: the kubelet's FailedMount Events name a
    missing path, which becomes the pod's trouble and the run planner's error result
    (``specs.hostpaths``). One field-selected list per namespace, shared by all checks,
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


async def apply_node_change(ctx: OperatorContext, change: NodeChange) -> Any:
    """Apply one planned node change: the Node merge patch and the status patch of the node
    condition, in the order that keeps ``condition-by`` on the node while our condition is
    (so a condition without it is never ours). Returns the Node as last written."""
    status = change.status_patch()
    body = change.patch()
    written: Any = None
    if status is not None and change.condition_first:
        written = await ctx.kube.patch_node_status(change.node, status)
    if body:
        written = await ctx.kube.patch_node(change.node, body)
    if status is not None and not change.condition_first:
        written = await ctx.kube.patch_node_status(change.node, status)
    return written


async def manage_mitigation_daemonset(ctx: OperatorContext, idx: Indexes,
                                      unlabelled: Collection[str] = frozenset()) -> None:
    """Keep the shared mitigation DaemonSet while any check mitigates or any node is still
    labelled for it, and the restore DaemonSet with it and until it has confirmed the restore
    everywhere (specs.mitigation.wanted_daemonsets); delete each when it is not wanted.
    ``unlabelled``: nodes whose label was just removed (the index may not show it yet)."""
    async with ctx.mitigation_lock:
        nodes = [replace(n, labels={k: v for k, v in n.labels.items()
                                    if k != names.MITIGATE_LABEL})
                 if n.name in unlabelled else n
                 for n in ctx.recent.overlay_nodes(idx.all_nodes())]
        mitigation = idx.daemonset(names.MITIGATION_DAEMONSET)
        restore = idx.daemonset(names.RESTORE_DAEMONSET)
        want_mitigation, want_restore = wanted_daemonsets(
            mitigating=any(c.mitigate and not c.deleting for c in idx.check_summaries()),
            labelled=any(n.labels.get(names.MITIGATE_LABEL) == "true" for n in nodes),
            mitigation=mitigation, restore=restore, nodes=nodes)
        workload = ctx.settings.workload()
        await _reconcile_daemonset(ctx, workload.namespace, mitigation, want_mitigation,
                                   lambda: mitigation_daemonset(workload))
        await _reconcile_daemonset(ctx, workload.namespace, restore, want_restore,
                                   lambda: restore_daemonset(workload))


async def _reconcile_daemonset(ctx: OperatorContext, namespace: str,
                               observed: DaemonSetView | None, wanted: bool,
                               build: Callable[[], dict[str, Any]]) -> None:
    """Create, update (its template hash differs) or delete one shared DaemonSet."""
    try:
        if wanted:
            desired = build()
            digest = desired["metadata"]["annotations"][names.TEMPLATE_HASH_ANNOTATION]
            if observed is None:
                await ctx.kube.create_daemonset(desired)
                log.info("daemonset created", name=desired["metadata"]["name"])
            elif observed.template_hash != digest:
                await ctx.kube.update_daemonset(desired)
        elif observed is not None:
            await ctx.kube.delete_daemonset(namespace, observed.name)
            log.info("daemonset deleted", name=observed.name)
    except Conflict:
        pass  # created or changed meanwhile (the index lags our own writes)
    except ApiError as exc:
        log.warning("daemonset not reconciled", name=observed.name if observed else "",
                    error=str(exc))
