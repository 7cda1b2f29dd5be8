"""One reconcile of one ThpCheck: observe, plan (pure: ``planning.checkplan``), apply.

``CheckReconciler`` reads everything first (the indexes, this process's latest writes, the
FailedMount Events of stuck pods), asks the planners, applies their writes with bounded
concurrency and the conflict policy, and records the outcomes in the check's memory
(``planning.checkplan.CheckMemory``). Order: the agent DaemonSet's rollout, the node results,
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

from thpcheck.contract import names
from thpcheck.contract.checkspec import parse_spec
from thpcheck.contract.mitigation import mitigation_daemonset, restore_daemonset
from thpcheck.contract.views import AgentPodView, DaemonSetView, node_view, result_view
from thpcheck.controller import events
from thpcheck.controller.api import ApiError, Conflict, NotFound
from thpcheck.controller.context import OperatorContext
from thpcheck.controller.indexes import Indexes
from thpcheck.controller.observe import cluster_limits, observe_check, observe_mount_failures
from thpcheck.planning.checkplan import (
    CheckPlan,
    DaemonSetAction,
    DaemonSetStep,
    Finish,
    NodeStep,
    Outcomes,
    Written,
    finish_check,
    plan_check,
    plan_nodes,
    refusal,
)
from thpcheck.planning.mitigation import wanted_daemonsets
from thpcheck.planning.remediation import NodeChange
from thpcheck.planning.results import ResultPatch, ResultPlan, ResultWrite

log = structlog.get_logger("thpcheck.operator")
T = TypeVar("T")
STATUS_LOGGED = ("phase", "checked", "nodes", "affected")


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
        self.ctx, self.body, self.idx, self.now = ctx, body, idx, now
        self.name = str(body.get("metadata", {}).get("name"))
        self.spec = parse_spec(body.get("spec"))
        self.memory = ctx.memory(self.name)
        self.log = log.bind(check=self.name)

    async def run(self) -> None:
        observed = await observe_check(self.ctx, self.idx, self.body, self.spec, self.now)
        plan = plan_check(observed, self.spec, self.memory, self.now)
        done = Outcomes()
        await self._daemonset(plan.daemonset, done)
        self.memory.reported_untrusted = plan.reported_untrusted
        events.post(self.body, plan.events, self.log)
        await self._results(plan.results, done)
        # New cordons and taints are decided and made one check at a time (the cluster-wide
        # budget); a plan without one (labels, uncordons) is applied outside the lock.
        async with self.ctx.cordon_lock:
            step = plan_nodes(plan, self.memory, cluster_limits(self.ctx, self.idx, self.name))
            if step.holds:
                await self._nodes(plan, step, done)
        if not step.holds:
            await self._nodes(plan, step, done)
        self.memory.cordon_claims = frozenset(done.cordoned)
        await manage_mitigation_daemonset(self.ctx, self.idx)
        finish = finish_check(plan, step, done, self.memory, time.monotonic())
        finish.remember(self.memory)
        events.post(self.body, finish.events, self.log)
        if finish.replan:  # a write met a change it did not plan for: plan again at once
            self.ctx.triggers.poke(self.name)
        self.ctx.metrics.record_check(self.name, finish.metrics.by_verdict,
                                      **finish.metrics.gauges)
        if finish.patch is not None:
            await self._write_status(plan, finish)

    async def _mount_failures(self, pods: list[AgentPodView]) -> list[AgentPodView]:
        return await observe_mount_failures(self.ctx, pods, self.now)

    async def _try(self, write: Awaitable[T], failed: str, **where: str) -> T | None:
        """The write's response, or None (logged) if the API refused it."""
        try:
            return await write
        except ApiError as exc:
            self.log.warning(failed, error=str(exc), **where)
            return None

    async def _daemonset(self, step: DaemonSetStep, done: Outcomes) -> None:
        kube, rollout = self.ctx.kube, step.rollout
        if step.action is DaemonSetAction.DELETE:
            await self._try(kube.delete_daemonset(self.ctx.settings.namespace, step.name),
                            "agent daemonset not deleted")
        if step.body is None:
            return
        try:
            await (kube.create_daemonset if step.action is DaemonSetAction.CREATE
                   else kube.update_daemonset)(step.body)
        except ApiError as exc:
            outcome = refusal(exc.status)
            if outcome is None:
                raise
            done.daemonset, done.daemonset_error = outcome, exc.message
            (self.log.warning if outcome is Written.REJECTED else self.log.info)(
                f"agent daemonset {outcome.value}", step=rollout.step.value,
                status=exc.status, error=exc.message)
            return
        self.log.info("agent daemonset", step=rollout.step.value, run=rollout.run)
        events.post(self.body, [step.started] if step.started else [], self.log)

    async def _write_result(self, item: ResultWrite) -> Any:
        """Create (a conflict: it exists, replace it) or replace (gone: create it)."""
        kube = self.ctx.kube
        first, then, missed = ((kube.create_result, kube.replace_result, Conflict) if item.create
                               else (kube.replace_result, kube.create_result, NotFound))
        try:
            return await first(item.body)
        except missed:
            return await then(item.body)

    async def _results(self, plan: ResultPlan, done: Outcomes) -> None:
        recent, kube = self.ctx.recent, self.ctx.kube

        async def write(item: ResultWrite) -> None:
            written = await self._try(self._write_result(item), "result not written",
                                      node=item.node)
            if written is not None:
                recent.wrote_result(result_view(written), item.before)
                self.ctx.metrics.wrote_result(self.name, item)
                done.results.append(item)

        async def patch(item: ResultPatch) -> None:
            written = await self._try(kube.patch_result(item.name, item.patch),
                                      "result not patched", result=item.name)
            if written is not None:
                recent.wrote_result(result_view(written), item.before)

        async def delete(name: str) -> None:
            recent.forget_result(name)
            await self._try(kube.delete_result(name), "result not deleted", result=name)

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
            except ApiError as exc:  # someone else wrote in between: replanned from fresh state
                self.log.info("cordon budget not persisted; retrying", error=str(exc))
                done.budget_failed = True
                return
            self.memory.cordon_claims = frozenset(step.remedy.cordoned_before)
        nodes = plan.observed.by_name

        async def change(item: NodeChange) -> None:
            try:
                written = await apply_node_change(self.ctx, item)
            except ApiError as exc:  # changed meanwhile (409, 404: replanned) or refused
                (self.log.info if isinstance(exc, (Conflict, NotFound)) else self.log.warning)(
                    "node not changed", node=item.node, status=exc.status, error=str(exc))
                done.refused.append((item, exc.status, exc.message))
                return
            self.ctx.recent.wrote_node(node_view(written), nodes[item.node].resource_version)
            done.changes.append(item)
            self.log.info("node changed", node=item.node,
                          actions=[a.action.value for a in item.actions])

        await bounded(self.ctx.settings.api_workers, map(change, step.remedy.changes))
        done.cordoned = step.remedy.cordoned_after

    async def _write_status(self, plan: CheckPlan, finish: Finish) -> None:
        stored = await self._try(self._patch_status(plan, {"status": finish.patch}),
                                 "status not written")
        if stored is not None:
            self.memory.written_status = stored or finish.status
            self.memory.status_written_at = time.monotonic()
            self.log.info("status", **{k: finish.status[k] for k in STATUS_LOGGED})

    async def _patch_status(self, plan: CheckPlan, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.ctx.kube.patch_check_status(self.name, body) or {}
        return self.memory.patched(plan.observed.live_version, response)


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
    everywhere (contract.mitigation.wanted_daemonsets); delete each when it is not wanted.
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
