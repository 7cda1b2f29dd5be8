"""One reconcile of one ThpCheck: observe (indexes), plan (pure specs), write what differs.

Order within a reconcile: the agent DaemonSet's rollout, the node results, remediation
(persisting the cordon budget before any cordon), the shared mitigation DaemonSet, Events,
then the status. Each step is idempotent, so a reconcile cut short by a crash or a conflict
is finished by the next one, and a reconcile with nothing to do writes nothing.

``mode: preflight`` skips the rollout (and deletes a DaemonSet left by full mode): the
results are the predictions from each node's ``status.nodeInfo``, and nothing that needs a
pod (mitigation) is planned.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import kopf
import structlog

from thpcheck.controller import events
from thpcheck.controller.api import ApiError, Conflict, NotFound
from thpcheck.controller.context import OperatorContext
from thpcheck.controller.indexes import Indexes
from thpcheck.model.timestamps import parse_time
from thpcheck.model.verdict import Verdict
from thpcheck.specs import names
from thpcheck.specs.agent import CheckRef
from thpcheck.specs.checkspec import CheckSpec, Mode, parse_spec
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
from thpcheck.specs.remediation import (
    CLUSTER_UNHEALTHY,
    MINOR_REASONS,
    NodeChange,
    PlannedAction,
    RemediationPlan,
    event_reason,
    plan_remediation,
)
from thpcheck.specs.results import (
    ResultPatch,
    ResultPlan,
    ResultWrite,
    plan_predicted_results,
    plan_results,
)
from thpcheck.specs.rollout import RolloutPlan, Step, plan_rollout, rolled_out
from thpcheck.specs.runs import RunPlan, plan_runs, run_deadline
from thpcheck.specs.selection import selected_nodes
from thpcheck.specs.status import StatusInputs, build_status, progress_only
from thpcheck.specs.views import (
    AgentPodView,
    DaemonSetView,
    NodeView,
    ResultView,
    node_view,
    result_view,
)

log = structlog.get_logger("thpcheck.operator")
T = TypeVar("T")
_WARNING_VERDICTS = {Verdict.AFFECTED.value, Verdict.SUSCEPTIBLE.value, Verdict.ERROR.value}
DISAGREEMENT_REASON = "PredictionDisagreement"
UNTRUSTED_REASON = "UntrustedResult"
# What the API server says when it refuses a DaemonSet for good (retrying the same body is
# pointless): 400 Bad Request, 403 Forbidden (admission), 422 Invalid.
_REJECTED = (400, 403, 422)
REJECTION_RETRY = 300.0  # seconds: an admission policy may be fixed without a spec change


@dataclass
class NodeNotes:
    """What happened to each node in this reconcile, for one Event per node."""

    verdicts: dict[str, tuple[str | None, str, str]] = field(default_factory=dict)
    actions: dict[str, list[PlannedAction]] = field(default_factory=dict)
    # New or changed contradictions of the preflight prediction (one Warning each).
    disagreements: dict[str, str] = field(default_factory=dict)


async def bounded(limit: int, jobs: Iterable[Awaitable[T]]) -> list[T]:
    """Await the jobs (not yet started coroutines) with at most ``limit`` in flight."""
    gate = asyncio.Semaphore(limit)

    async def run(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return list(await asyncio.gather(*(run(job) for job in jobs)))


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class CheckReconciler:
    """Reconciles one ThpCheck body against the indexes, with the operator's context."""

    def __init__(self, ctx: OperatorContext, body: kopf.Body, idx: Indexes,
                 now: datetime) -> None:
        meta = body.get("metadata", {})
        self.ctx = ctx
        self.body = body
        self.idx = idx
        self.now = now
        self.name = str(meta.get("name"))
        self.check = CheckRef(self.name, str(meta.get("uid")))
        self.generation = int(meta.get("generation") or 0)
        self.live_version = str(meta.get("resourceVersion") or "")
        self.spec: CheckSpec = parse_spec(body.get("spec"))
        self.preflight = self.spec.mode is Mode.PREFLIGHT
        live = dict(body.get("status") or {})
        self.previous: Mapping[str, Any] = ctx.written_status.get(self.name) or live
        self.live_status = live
        self.log = log.bind(check=self.name)
        self.notes = NodeNotes()
        self.runs = RunPlan()
        self.rollout_error = ""

    async def run(self) -> None:
        recent = self.ctx.recent
        nodes = recent.overlay_nodes(self.idx.all_nodes())
        by_name = {n.name: n for n in nodes}
        selected = selected_nodes(self.spec, nodes)
        remediation = self.spec.remediation
        if self.preflight:
            rollout = await self._retire_agent()
            observed = recent.overlay_results(self.idx.results_of(self.name), self.name)
            results = plan_predicted_results(self.check, selected, observed,
                                             self._mitigation_readiness(nodes), self.now)
            remediation = replace(remediation, mitigate=False)
        else:
            pods = await self._mount_failures(self.idx.pods_of(self.name))
            self.runs = plan_runs(selected, pods, self.idx.daemonset(self.name), self.now,
                                  run_deadline(self.spec))
            rollout = await self._roll_out(len(selected), self.runs.stuck)
            observed = recent.overlay_results(self.idx.results_of(self.name), self.name)
            results = plan_results(
                self.check, selected, pods, observed,
                self._mitigation_readiness(nodes), self.now,
                timedelta(seconds=self.ctx.settings.empty_result_grace), self.runs.failures)
        self._report_untrusted(results.untrusted)
        await self._write_results(results, by_name)
        # New cordons and taints are decided and made one check at a time (the cluster-wide
        # budget); a plan without one (labels, uncordons) is applied outside the lock.
        async with self.ctx.cordon_lock:
            remedy = plan_remediation(
                self.name, remediation, paused=self.spec.paused, selected=selected,
                all_nodes=nodes, states=results.states,
                cordoned=list(self.previous.get("cordonedNodes") or []),
                limits=self.ctx.settings.limits(self._claimed_by_others()), now=self.now)
            cordons = any(c.unschedulable or (c.taints is not None and any(
                t.key == names.TAINT_KEY for t in c.taints)) for c in remedy.changes)
            if cordons:
                cordoned = await self._remediate(remedy, by_name)
        if not cordons:
            cordoned = await self._remediate(remedy, by_name)
        self.ctx.cordon_claims[self.name] = frozenset(cordoned)
        await manage_mitigation_daemonset(self.ctx, self.idx)
        self._post_node_events(by_name, remedy)
        await self._write_status(rollout, results, remedy, cordoned, selected, nodes, observed)

    # -- the agent DaemonSet -------------------------------------------------------------

    async def _roll_out(self, nodes: int, stuck: int) -> RolloutPlan:
        observed = self.idx.daemonset(self.name)
        plan = plan_rollout(self.spec, self.check, self.ctx.settings.workload(), observed,
                            self.now, nodes, stuck)
        if plan.step is Step.NONE or plan.body is None:
            self.ctx.rejected_daemonsets.pop(self.name, None)
            return plan
        unchanged = RolloutPlan(Step.NONE, run=observed.run if observed else "")
        rejected = self.ctx.rejected_daemonsets.get(self.name)
        if rejected is not None and rejected[0] == self.generation \
                and time.monotonic() - rejected[2] < REJECTION_RETRY:
            self.rollout_error = rejected[1]  # the same spec would be refused again
            return unchanged
        kube = self.ctx.kube
        try:
            if plan.step is Step.CREATE:
                await kube.create_daemonset(plan.body)
            else:
                await kube.update_daemonset(plan.body)
        except Conflict:
            self.log.info("daemonset changed meanwhile; retrying next reconcile",
                          step=plan.step.value)
            return unchanged
        except ApiError as exc:
            if exc.status not in _REJECTED:
                raise
            self.rollout_error = exc.message
            self.ctx.rejected_daemonsets[self.name] = (self.generation, exc.message,
                                                       time.monotonic())
            self.log.warning("agent daemonset rejected", step=plan.step.value,
                             status=exc.status, error=exc.message)
            return unchanged
        self.ctx.rejected_daemonsets.pop(self.name, None)
        self.log.info("agent daemonset", step=plan.step.value, run=plan.run)
        if plan.starts_run:
            events.on_check(self.body, reason="RunStarted", message=(
                f"checking every selected node, {self.spec.max_concurrent} at a time "
                f"(run {plan.run})"))
        return plan

    async def _retire_agent(self) -> RolloutPlan:
        """``mode: preflight`` runs nothing on the nodes: delete a DaemonSet from full mode."""
        if self.idx.daemonset(self.name) is not None:
            try:
                await self.ctx.kube.delete_daemonset(self.ctx.settings.namespace,
                                                     names.agent_daemonset_name(self.name))
            except ApiError as exc:
                self.log.warning("agent daemonset not deleted", error=str(exc))
            else:
                self.log.info("agent daemonset deleted", reason="mode preflight")
        return RolloutPlan(Step.NONE)

    # -- results -----------------------------------------------------------------------

    async def _mount_failures(self, pods: list[AgentPodView]) -> list[AgentPodView]:
        """Check pods stuck Pending on their node: the kubelet's FailedMount Events name a
        missing path, which becomes the pod's trouble and the run planner's error result
        (``specs.hostpaths``). One field-selected list per namespace, shared by all checks,
        when ``events_due`` says so (not one per pod)."""
        stuck = stuck_pods(pods, self.now)
        failures: dict[str, list[str]] = {}
        for namespace in sorted({p.namespace for p in stuck}):
            here = [p for p in stuck if p.namespace == namespace]
            async with self.ctx.mount_events_lock:
                seen = self.ctx.mount_events.setdefault(namespace, MountEvents())
                if events_due(seen.read_at, here, self.now):
                    await self._read_mount_events(namespace, seen, here)
            failures.update(mount_failures(seen.missing, here))
        return with_mount_failures(pods, failures)

    async def _read_mount_events(self, namespace: str, seen: MountEvents,
                                 stuck: list[AgentPodView]) -> None:
        seen.read_at = self.now  # also after a failure: the next try waits like a reread
        try:
            found = await self.ctx.kube.list_events(namespace, FAILED_MOUNT_SELECTOR)
        except ApiError as exc:
            self.log.warning("FailedMount events not read", namespace=namespace,
                             error=str(exc))
            return
        before, seen.missing = seen.missing, missing_by_pod(found)
        for pod in stuck:
            if pod.uid in seen.missing and pod.uid not in before:
                self.log.warning("agent pod cannot mount its paths", pod=pod.name,
                                 node=pod.node, missing=seen.missing[pod.uid])

    def _mitigation_readiness(self, nodes: Iterable[NodeView]) -> dict[str, bool]:
        """Nodes labelled for mitigation -> is their mitigation pod Ready."""
        return {n.name: self.idx.mitigation_ready(n.name) for n in nodes
                if n.labels.get(names.MITIGATE_LABEL) == "true"}

    async def _write_results(self, plan: ResultPlan, nodes: Mapping[str, NodeView]) -> None:
        kube = self.ctx.kube

        recent = self.ctx.recent

        async def write(item: ResultWrite) -> None:
            try:
                if item.create:
                    try:
                        written = await kube.create_result(item.body)
                    except Conflict:
                        written = await kube.replace_result(item.body)
                else:
                    try:
                        written = await kube.replace_result(item.body)
                    except NotFound:
                        written = await kube.create_result(item.body)
            except ApiError as exc:
                self.log.warning("result not written", node=item.node, error=str(exc))
                return
            recent.wrote_result(result_view(written), item.before)
            self.ctx.metrics.results_written.labels(check=self.name).inc()
            if item.duration_seconds is not None and item.new_run:
                self.ctx.metrics.check_duration.observe(item.duration_seconds)
            if item.outcome and item.new_run:
                self.ctx.metrics.runs.labels(check=self.name, outcome=item.outcome).inc()
            if item.previous_verdict != item.verdict.value:
                self.notes.verdicts[item.node] = (item.previous_verdict, item.verdict.value,
                                                  item.body["status"].get("message", ""))
            if item.disagreement and item.disagreement != item.previous_disagreement:
                self.notes.disagreements[item.node] = item.disagreement

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

        jobs = [*(write(item) for item in plan.writes),
                *(patch(p) for p in plan.patches),
                *(delete(name) for name in plan.deletes)]
        if jobs:
            await bounded(self.ctx.settings.api_workers, jobs)
            self.log.info("results", written=len(plan.writes), patched=len(plan.patches),
                          deleted=len(plan.deletes))

    def _report_untrusted(self, untrusted: Mapping[str, str]) -> None:
        """One Warning Event on the check per result it ignores as not written by the
        operator (reported once per operator process; the status lists them all along)."""
        seen = self.ctx.reported_untrusted.setdefault(self.name, set())
        fresh = {name: why for name, why in untrusted.items() if name not in seen}
        seen.intersection_update(untrusted)
        if not fresh:
            return
        seen.update(fresh)
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(fresh.items())[:5])
        more = f" (and {len(fresh) - 5} more)" if len(fresh) > 5 else ""
        self.log.warning("results not written by the operator are ignored",
                         results=sorted(fresh)[:20])
        events.on_check(self.body, reason=UNTRUSTED_REASON, warning=True, message=(
            f"{len(fresh)} ThpNodeResults name this check but were not written by the "
            f"operator; they are ignored (never used for remediation): {listed}{more}"))

    # -- remediation -------------------------------------------------------------------

    def _claimed_by_others(self) -> frozenset[str]:
        """Nodes the other checks persisted as cordoned (status.cordonedNodes), from the
        index and from this process's own latest writes, whichever lists more."""
        claimed: set[str] = set()
        for summary in self.idx.check_summaries():
            if summary.name != self.name:
                claimed.update(summary.cordoned)
        for check, nodes in self.ctx.cordon_claims.items():
            if check != self.name:
                claimed.update(nodes)
        return frozenset(claimed)

    async def _remediate(self, plan: RemediationPlan,
                         nodes: Mapping[str, NodeView]) -> list[str]:
        """Persist the cordon list, then change the nodes; returns the list to report."""
        stored = sorted(self.previous.get("cordonedNodes") or [])
        if plan.changes and plan.cordoned_before != stored:
            try:
                response = await self._patch_status(
                    {"cordonedNodes": plan.cordoned_before,
                     "cordoned": len(plan.cordoned_before)}, precondition=True)
            except ApiError as exc:
                # A conflict means someone else wrote in between: plan again from fresh state.
                self.log.info("cordon budget not persisted; retrying", error=str(exc))
                self.ctx.triggers.poke(self.name)
                return stored
            self.previous = {**self.previous, **response}
            self.ctx.cordon_claims[self.name] = frozenset(plan.cordoned_before)

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
                if exc.status == 403 and item.status_patch() is not None:
                    self._report_forbidden_condition(exc)
                return
            self.ctx.recent.wrote_node(node_view(written), nodes[item.node].resource_version)
            self.notes.actions[item.node] = item.actions
            self.log.info("node changed", node=item.node,
                          actions=[a.action.value for a in item.actions])

        if plan.changes:
            await bounded(self.ctx.settings.api_workers,
                          [change(item) for item in plan.changes])
        return plan.cordoned_after

    def _report_forbidden_condition(self, exc: ApiError) -> None:
        """One Warning Event per operator process: the condition needs nodes/status."""
        if self.name in self.ctx.reported_forbidden:
            return
        self.ctx.reported_forbidden.add(self.name)
        events.on_check(self.body, reason="NodeConditionForbidden", warning=True, message=(
            f"spec.remediation.condition needs patch on nodes/status, which the operator "
            f"lacks ({exc.message}): set the chart value remediation.condition=true, or "
            "turn condition off"))

    # -- events ------------------------------------------------------------------------

    def _post_node_events(self, nodes: Mapping[str, NodeView], plan: RemediationPlan) -> None:
        applied = self.notes.actions
        for name in sorted(set(self.notes.verdicts) | set(applied)):
            node = nodes.get(name)
            if node is None:
                continue
            parts, warning = [], False
            reason = ""
            if name in self.notes.verdicts:
                old, new, summary = self.notes.verdicts[name]
                parts.append(f"verdict {new} (was {old or 'unchecked'}): {summary}")
                warning = new in _WARNING_VERDICTS
                reason = "VerdictChanged"
            actions = applied.get(name, [])
            if actions:
                parts.extend(f"{a.action.value.lower()}: {a.reason}" for a in actions)
                top = event_reason(actions, applied=True)
                if not reason or top not in MINOR_REASONS:
                    reason = top
            events.on_node(node, reason=reason, warning=warning,
                           message=f"ThpCheck {self.name}: " + "; ".join(parts))
        if self.spec.remediation.dry_run or self.spec.paused:
            self._post_planned_events(nodes, plan.planned)
        self._post_disagreements(nodes)

    def _post_disagreements(self, nodes: Mapping[str, NodeView]) -> None:
        """A Warning on each node whose agent result newly contradicts its prediction, and
        one on the check listing them: the model or the distro table is wrong there."""
        found = self.notes.disagreements
        for name, text in sorted(found.items()):
            node = nodes.get(name)
            if node is not None:
                events.on_node(node, reason=DISAGREEMENT_REASON, warning=True, message=(
                    f"ThpCheck {self.name}: the agent contradicts the preflight prediction: "
                    f"{text}"))
        if found:
            listed = "; ".join(f"{n}: {t}" for n, t in sorted(found.items())[:3])
            more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
            events.on_check(self.body, reason=DISAGREEMENT_REASON, warning=True, message=(
                f"{len(found)} nodes contradict the preflight prediction, so the model or the "
                f"distro table is wrong for them: {listed}{more}"))

    def _post_planned_events(self, nodes: Mapping[str, NodeView],
                             planned: Sequence[PlannedAction]) -> None:
        """Would* events, only for actions the previous status did not list already."""
        before = {(a.get("node"), a.get("action"))
                  for a in self.previous.get("plannedActions") or []}
        fresh: dict[str, list[PlannedAction]] = {}
        for action in planned:
            if (action.node, action.action.value) not in before:
                fresh.setdefault(action.node, []).append(action)
        mode = "dry run" if self.spec.remediation.dry_run else "paused"
        for name, actions in fresh.items():
            node = nodes.get(name)
            if node is not None:
                events.on_node(node, reason=event_reason(actions, applied=False), message=(
                    f"ThpCheck {self.name} ({mode}): " + "; ".join(
                        f"would {a.action.value.lower()}: {a.reason}" for a in actions)))

    # -- status ------------------------------------------------------------------------

    async def _write_status(self, rollout: RolloutPlan, results: ResultPlan,
                            remedy: RemediationPlan, cordoned: Sequence[str],
                            selected: Sequence[NodeView], nodes: Sequence[NodeView],
                            observed: Sequence[ResultView]) -> None:
        daemonset = self.idx.daemonset(self.name)
        pods = [] if self.preflight else self.idx.pods_of(self.name)
        rolling = not self.preflight and not self.rollout_error and (
            rollout.step is not Step.NONE or daemonset is None
            or daemonset.template != "check" or not rolled_out(daemonset, self.runs.stuck))
        status = build_status(StatusInputs(
            generation=self.generation,
            selected=[n.name for n in selected],
            states=results.states,
            now=self.now,
            last_run_at=rollout.run,
            rolling_out=rolling,
            unschedulable=sum(1 for p in pods if p.unschedulable and not p.deleting),
            cordoned_nodes=cordoned,
            blocked_cordons=remedy.blocked_cordons,
            blocked_reason=remedy.blocked_reason,
            blocked_message=remedy.blocked_message,
            paused=self.spec.paused,
            dry_run=self.spec.remediation.dry_run,
            planned=remedy.planned if (self.spec.remediation.dry_run or self.spec.paused)
            else (),
            previous_conditions=list(self.previous.get("conditions") or []),
            predicted=self.preflight,
            disagreements=len(results.disagreements),
            failed={n: f.reason for n, f in self.runs.failures.items()},
            blocked={n: b.reason for n, b in self.runs.blocked.items()},
            rollout_error=self.rollout_error,
            untrusted=results.untrusted,
        ))
        self._record_metrics(status, results, nodes, observed)
        if canonical(status) in (canonical(self.live_status), canonical(self.previous)):
            return
        since = time.monotonic() - self.ctx.status_written_at.get(self.name, -math.inf)
        if progress_only(self.previous, status) and since < self.ctx.settings.status_interval:
            return  # only the counts moved: written on a later reconcile (one per interval)
        if status["phase"] != self.previous.get("phase"):
            events.on_check(self.body, reason=status["phase"], message=status["message"],
                            warning=status["phase"] == "Degraded")
        blocked = _condition(status, "RemediationBlocked")
        if (blocked.get("reason") == CLUSTER_UNHEALTHY
                and _condition(self.previous, "RemediationBlocked").get("reason")
                != CLUSTER_UNHEALTHY):
            events.on_check(self.body, reason=CLUSTER_UNHEALTHY, warning=True,
                            message=str(blocked.get("message", "")))
        patch = {**{k: None for k in self.live_status if k not in status}, **status}
        try:
            self.ctx.written_status[self.name] = await self._patch_status(patch) or status
        except ApiError as exc:
            self.log.warning("status not written", error=str(exc))
            return
        self.ctx.status_written_at[self.name] = time.monotonic()
        self.log.info("status", phase=status["phase"], checked=status["checked"],
                      nodes=status["nodes"], affected=status["affected"])

    async def _patch_status(self, status: Mapping[str, Any], *,
                            precondition: bool = False) -> dict[str, Any]:
        """Patch the status (optionally only if unchanged since read); returns the stored one."""
        version = self.live_version
        before, after = self.ctx.status_versions.get(self.name, ("", ""))
        if version == before and after:
            version = after  # the watch has not delivered our last write yet
        body: dict[str, Any] = {"status": dict(status)}
        if precondition:
            body["metadata"] = {"resourceVersion": version}
        response = await self.ctx.kube.patch_check_status(self.name, body) or {}
        self.ctx.status_versions[self.name] = (
            self.live_version, str(response.get("metadata", {}).get("resourceVersion", "")))
        stored: dict[str, Any] = response.get("status") or {}
        return stored

    def _record_metrics(self, status: Mapping[str, Any], results: ResultPlan,
                        nodes: Sequence[NodeView], observed: Sequence[ResultView]) -> None:
        by_verdict = {v.value: 0 for v in Verdict}
        for state in results.states.values():
            if state.verdict is not None:
                by_verdict[state.verdict.value] += 1
        unchecked = sum(1 for s in results.states.values() if s.verdict is None)
        labelled = self._mitigation_readiness(nodes)
        times = [t for t in (parse_time(r.checked_at) for r in observed) if t is not None]
        interval = self.spec.interval
        self.ctx.metrics.record_check(
            self.name, by_verdict, unchecked=unchecked, mitigated=int(status["mitigated"]),
            cordoned=int(status["cordoned"]),
            unverified=sum(1 for ready in labelled.values() if not ready),
            oldest_age=(self.now - min(times)).total_seconds() if times else None,
            affected_unmitigated=sum(1 for s in results.states.values()
                                     if s.verdict is Verdict.AFFECTED and not s.mitigated),
            disagreements=len(results.disagreements),
            interval=(interval.total_seconds() if interval and not self.preflight else None))


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


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})




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
