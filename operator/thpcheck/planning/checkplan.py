"""One reconcile of one ThpCheck as plain data: observe, plan, apply.

The reconciler (``controller/reconciler.py``) gathers an ``Observed`` (its only reads) and
applies what these functions decide:

1. ``plan_check``: the agent DaemonSet step, the result writes, the Events due before any
   write (``UntrustedResult``), and everything later steps plan from;
2. ``plan_nodes``, under the cluster-wide cordon lock with the cordons the other checks claim:
   the remediation plan, whether it needs the lock while applied, and the status patch that
   persists the cordon budget before any node changes;
3. ``finish_check``, with the ``Outcomes`` (which writes went through): the node Events, the
   status, and whether to write it now, wait for the status interval, or write nothing.

``CheckMemory`` is what the operator remembers about a check between reconciles (lost on a
restart: the cluster's state rebuilds what matters). The planners only read it; the
reconciler records outcomes in it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any

from thpcheck.contract import names
from thpcheck.contract.agent import CHECK, WorkloadConfig
from thpcheck.contract.checkspec import CheckSpec, Mode, Remediation
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import (
    AgentPodView,
    DaemonSetView,
    NodeView,
    ResultView,
    condition_of,
)
from thpcheck.model.timestamps import parse_time
from thpcheck.model.verdict import Verdict
from thpcheck.planning.remediation import (
    CLUSTER_UNHEALTHY,
    MINOR_REASONS,
    ClusterLimits,
    NodeChange,
    PlannedAction,
    RemediationPlan,
    event_reason,
    plan_remediation,
)
from thpcheck.planning.results import ResultPlan, ResultWrite, plan_predicted_results, plan_results
from thpcheck.planning.rollout import RolloutPlan, Step, plan_rollout, rolled_out
from thpcheck.planning.runs import RunPlan, plan_runs, run_deadline
from thpcheck.planning.selection import selected_nodes
from thpcheck.planning.status import StatusInputs, build_status, progress_only

RUN_STARTED = "RunStarted"
UNTRUSTED_REASON = "UntrustedResult"
DISAGREEMENT_REASON = "PredictionDisagreement"
FORBIDDEN_REASON = "NodeConditionForbidden"
VERDICT_REASON = "VerdictChanged"
_WARNING_VERDICTS = {Verdict.AFFECTED.value, Verdict.SUSCEPTIBLE.value, Verdict.ERROR.value}
# What the API server says when it refuses a DaemonSet for good (retrying the same body is
# pointless): 400 Bad Request, 403 Forbidden (admission), 422 Invalid.
REJECTED_STATUSES = (400, 403, 422)
CHANGED_MEANWHILE = (404, 409)  # a node write that met a change: planned again at once
REJECTION_RETRY = 300.0  # seconds: an admission policy may be fixed without a spec change
UNTRUSTED_LISTED = 5  # results an UntrustedResult Event names
DISAGREEMENTS_LISTED = 3  # nodes the check's PredictionDisagreement Event names


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post, on ``node`` or (None) on the ThpCheck."""

    reason: str
    message: str
    warning: bool = False
    node: NodeView | None = None


@dataclass(frozen=True)
class Rejection:
    """The API server refused the agent DaemonSet of this generation, at ``at`` (monotonic
    seconds): not sent again until the spec changes or ``REJECTION_RETRY`` passed."""

    generation: int
    message: str
    at: float


@dataclass
class CheckMemory:
    """What this operator process remembers about one check between its reconciles."""

    # The status our last write produced (the watch may not have delivered it yet).
    written_status: Mapping[str, Any] | None = None
    # The check's resourceVersion before and after our last status write: while the watch
    # still shows "before", "after" is the version to use as a precondition.
    version_before: str = ""
    version_after: str = ""
    # When the status was last written (monotonic): progress-only changes wait for the
    # status interval (planning.status.progress_only).
    status_written_at: float = -math.inf
    rejection: Rejection | None = None
    # Results not written by the operator that an UntrustedResult Event has named already.
    reported_untrusted: frozenset[str] = frozenset()
    # nodes/status refused the node condition, and a Warning Event said so already.
    reported_forbidden: bool = False
    # The cordon list this check persisted last (the watch may not show it yet): the other
    # checks count it against the cluster-wide budget.
    cordon_claims: frozenset[str] = frozenset()

    def patched(self, live_version: str, response: Mapping[str, Any]) -> dict[str, Any]:
        """Record a status patch made on ``live_version``; returns the status it stored."""
        self.version_before = live_version
        self.version_after = str((response.get("metadata") or {}).get("resourceVersion", ""))
        return dict(response.get("status") or {})

    def precondition(self, live_version: str) -> str:
        """The resourceVersion a preconditioned status patch names."""
        if live_version == self.version_before and self.version_after:
            return self.version_after  # the watch has not delivered our last write yet
        return live_version


@dataclass(frozen=True)
class Knobs:
    """The operator settings a reconcile plans with."""

    workload: WorkloadConfig
    status_interval: float = 5.0  # seconds between progress-only status writes
    empty_result_grace: float = 30.0  # seconds


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile reads, read before any write."""

    check: CheckRef
    knobs: Knobs
    generation: int = 0
    live_version: str = ""  # the check's resourceVersion
    live_status: Mapping[str, Any] = field(default_factory=dict)
    nodes: Sequence[NodeView] = ()  # every node, with this process's latest writes
    pods: Sequence[AgentPodView] = ()  # the check's agent pods, mount failures included
    daemonset: DaemonSetView | None = None  # the check's agent DaemonSet
    results: Sequence[ResultView] = ()  # the check's results, with this process's writes
    mitigation_ready: Mapping[str, bool] = field(default_factory=dict)  # labelled nodes
    clock: float = 0.0  # monotonic seconds (the DaemonSet rejection back-off)

    @cached_property
    def by_name(self) -> Mapping[str, NodeView]:
        """``nodes`` by name, built once per reconcile."""
        return {n.name: n for n in self.nodes}


class DaemonSetAction(StrEnum):
    NONE = "none"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"  # mode: preflight runs nothing on the nodes
    HELD = "held"  # the same spec was refused: not sent again yet


@dataclass(frozen=True)
class DaemonSetStep:
    action: DaemonSetAction
    rollout: RolloutPlan  # the rollout once the step is made
    unchanged: RolloutPlan  # the rollout when the write does not go through
    error: str = ""  # HELD: the API server's refusal, still standing
    started: Event | None = None  # RunStarted, posted once the write went through
    name: str = ""  # the agent DaemonSet's name

    @property
    def body(self) -> dict[str, Any] | None:
        """The DaemonSet to create or update, if any."""
        writes = self.action in (DaemonSetAction.CREATE, DaemonSetAction.UPDATE)
        return self.rollout.body if writes else None


@dataclass(frozen=True)
class CheckPlan:
    observed: Observed
    spec: CheckSpec
    now: datetime
    selected: Sequence[NodeView]
    previous: Mapping[str, Any]  # the status as last written (ours, else the live one)
    daemonset: DaemonSetStep
    runs: RunPlan
    results: ResultPlan
    remediation: Remediation  # in effect (preflight mitigates nothing: it has no pods)
    events: list[Event]  # to post before any write
    reported_untrusted: frozenset[str]  # CheckMemory.reported_untrusted after this plan

    @property
    def preflight(self) -> bool:
        return self.spec.mode is Mode.PREFLIGHT


@dataclass(frozen=True)
class NodeStep:
    remedy: RemediationPlan
    holds: bool  # new cordons or taints: applied before the cordon lock is released
    # The preconditioned status patch persisting the cordon list before any node changes
    # (None: unchanged). If it fails, no node changes and ``stored`` is reported.
    budget: dict[str, Any] | None
    stored: list[str]


class Written(StrEnum):
    DONE = "done"
    CONFLICT = "conflict"  # changed meanwhile: the next reconcile plans again
    REJECTED = "rejected"  # refused for good (REJECTED_STATUSES)


def refusal(status: int) -> Written | None:
    """What an API error status means for a DaemonSet write (None: not the API's answer
    to this body, so the reconcile fails and is retried)."""
    if status == 409:
        return Written.CONFLICT
    return Written.REJECTED if status in REJECTED_STATUSES else None


@dataclass
class Outcomes:
    """What the reconciler's writes did, for ``finish_check``."""

    daemonset: Written = Written.DONE
    daemonset_error: str = ""  # REJECTED: the API server's message
    results: list[ResultWrite] = field(default_factory=list)  # written
    changes: list[NodeChange] = field(default_factory=list)  # applied
    # Node changes the API refused: (change, HTTP status, message).
    refused: list[tuple[NodeChange, int, str]] = field(default_factory=list)
    budget: Mapping[str, Any] | None = None  # the status the budget patch stored
    budget_failed: bool = False  # the budget patch failed: no node was changed
    cordoned: Sequence[str] = ()  # status.cordonedNodes to report


class StatusDecision(StrEnum):
    UNCHANGED = "unchanged"  # as stored (or as our last write left it): nothing to write
    WAIT = "wait"  # only progress moved, within the status interval: a later reconcile
    WRITE = "write"


@dataclass(frozen=True)
class CheckMetrics:
    by_verdict: dict[str, int]
    gauges: dict[str, Any]  # the keyword arguments of Metrics.record_check


@dataclass(frozen=True)
class Finish:
    status: dict[str, Any]
    decision: StatusDecision
    patch: dict[str, Any] | None  # the status merge patch when WRITE (null for removed keys)
    events: list[Event]
    metrics: CheckMetrics
    rejection: Rejection | None  # CheckMemory.rejection after this reconcile
    reported_forbidden: bool
    # Plan again at once: the budget patch or a node change met a concurrent change (409)
    # or a vanished node (404).
    replan: bool = False

    def remember(self, memory: CheckMemory) -> None:
        """Record this reconcile's decisions in the check's memory."""
        memory.rejection, memory.reported_forbidden = self.rejection, self.reported_forbidden


# -- plan_check ------------------------------------------------------------------------


def plan_check(observed: Observed, spec: CheckSpec, memory: CheckMemory,
               now: datetime) -> CheckPlan:
    """Every write of a reconcile that does not depend on another write's outcome."""
    check, preflight = observed.check, spec.mode is Mode.PREFLIGHT
    selected = selected_nodes(spec, observed.nodes)
    remediation = spec.remediation
    runs = RunPlan()
    if preflight:
        none = RolloutPlan(Step.NONE)
        daemonset = DaemonSetStep(
            DaemonSetAction.DELETE if observed.daemonset is not None else DaemonSetAction.NONE,
            none, none, name=names.agent_daemonset_name(check.name))
        results = plan_predicted_results(check, selected, observed.results,
                                         observed.mitigation_ready, now)
        remediation = replace(remediation, mitigate=False)
    else:
        runs = plan_runs(selected, observed.pods, observed.daemonset, now, run_deadline(spec))
        daemonset = _daemonset_step(observed, spec, memory, now, len(selected), runs.stuck)
        results = plan_results(
            check, selected, observed.pods, observed.results, observed.mitigation_ready, now,
            timedelta(seconds=observed.knobs.empty_result_grace), runs.failures)
    fresh = {name: why for name, why in results.untrusted.items()
             if name not in memory.reported_untrusted}
    return CheckPlan(
        observed=observed, spec=spec, now=now, selected=selected,
        previous=memory.written_status or observed.live_status, daemonset=daemonset,
        runs=runs, results=results, remediation=remediation,
        events=[_untrusted_event(fresh)] if fresh else [],
        reported_untrusted=frozenset(results.untrusted))


def _daemonset_step(observed: Observed, spec: CheckSpec, memory: CheckMemory, now: datetime,
                    nodes: int, stuck: int) -> DaemonSetStep:
    plan = plan_rollout(spec, observed.check, observed.knobs.workload, observed.daemonset,
                        now, nodes, stuck)
    if plan.step is Step.NONE or plan.body is None:
        return DaemonSetStep(DaemonSetAction.NONE, plan, plan)
    unchanged = RolloutPlan(Step.NONE, run=observed.daemonset.run if observed.daemonset else "")
    refused = memory.rejection
    if refused is not None and refused.generation == observed.generation \
            and observed.clock - refused.at < REJECTION_RETRY:
        return DaemonSetStep(DaemonSetAction.HELD, unchanged, unchanged, error=refused.message)
    started = Event(RUN_STARTED, f"checking every selected node, {spec.max_concurrent} at a "
                    f"time (run {plan.run})") if plan.starts_run else None
    action = DaemonSetAction.CREATE if plan.step is Step.CREATE else DaemonSetAction.UPDATE
    return DaemonSetStep(action, plan, unchanged, started=started)


def _untrusted_event(fresh: Mapping[str, str]) -> Event:
    """One Warning per result ignored as not written by the operator (once per process)."""
    listed = "; ".join(f"{name}: {why}"
                       for name, why in sorted(fresh.items())[:UNTRUSTED_LISTED])
    more = (f" (and {len(fresh) - UNTRUSTED_LISTED} more)"
            if len(fresh) > UNTRUSTED_LISTED else "")
    return Event(UNTRUSTED_REASON, warning=True, message=(
        f"{len(fresh)} ThpNodeResults name this check but were not written by the "
        f"operator; they are ignored (never used for remediation): {listed}{more}"))


# -- plan_nodes ------------------------------------------------------------------------


def plan_nodes(plan: CheckPlan, memory: CheckMemory, limits: ClusterLimits) -> NodeStep:
    """Remediation, planned under the cordon lock (``limits.claimed``: what the other checks
    hold now), and the status patch that persists the cordon budget first."""
    spec, stored = plan.spec, sorted(plan.previous.get("cordonedNodes") or [])
    remedy = plan_remediation(
        plan.observed.check.name, plan.remediation, paused=spec.paused, selected=plan.selected,
        all_nodes=plan.observed.nodes, states=plan.results.states,
        cordoned=list(plan.previous.get("cordonedNodes") or []), limits=limits, now=plan.now)
    holds = any(c.unschedulable or (c.taints is not None and any(
        t.key == names.TAINT_KEY for t in c.taints)) for c in remedy.changes)
    budget = None
    if remedy.changes and remedy.cordoned_before != stored:
        budget = {"status": {"cordonedNodes": remedy.cordoned_before,
                             "cordoned": len(remedy.cordoned_before)},
                  "metadata": {"resourceVersion":
                               memory.precondition(plan.observed.live_version)}}
    return NodeStep(remedy, holds, budget, stored)


# -- finish_check ----------------------------------------------------------------------


def finish_check(plan: CheckPlan, step: NodeStep, done: Outcomes, memory: CheckMemory,
                 clock: float) -> Finish:
    """From what the writes did: the node Events, the status, and whether to write it now
    (``clock``: monotonic seconds, against ``memory.status_written_at``)."""
    observed, spec, results = plan.observed, plan.spec, plan.results
    previous = {**plan.previous, **done.budget} if done.budget is not None else plan.previous
    rollout, error, rejection = _rollout_outcome(plan, done, memory)
    daemonset = observed.daemonset
    rolling = not plan.preflight and not error and (
        rollout.step is not Step.NONE or daemonset is None
        or daemonset.template != CHECK or not rolled_out(daemonset, plan.runs.stuck))
    remedy = step.remedy
    planning = spec.remediation.dry_run or spec.paused
    status = build_status(StatusInputs(
        generation=observed.generation,
        selected=[n.name for n in plan.selected],
        states=results.states,
        now=plan.now,
        last_run_at=rollout.run,
        rolling_out=rolling,
        unschedulable=sum(1 for p in observed.pods if p.unschedulable and not p.deleting),
        cordoned_nodes=done.cordoned,
        blocked_cordons=remedy.blocked_cordons,
        blocked_reason=remedy.blocked_reason,
        blocked_message=remedy.blocked_message,
        paused=spec.paused,
        dry_run=spec.remediation.dry_run,
        planned=remedy.planned if planning else (),
        previous_conditions=list(previous.get("conditions") or []),
        predicted=plan.preflight,
        disagreements=len(results.disagreements),
        failed={n: f.reason for n, f in plan.runs.failures.items()},
        blocked={n: b.reason for n, b in plan.runs.blocked.items()},
        rollout_error=error,
        untrusted=results.untrusted,
    ))
    forbidden = _forbidden_event(done, memory)
    found = [forbidden] if forbidden is not None else []
    found += _node_events(plan, done)
    if planning:
        found += _planned_events(plan, previous, remedy.planned)
    found += _disagreement_events(plan, done)
    decision, status_events = _status_decision(plan, status, previous, memory, clock)
    patch = None
    if decision is StatusDecision.WRITE:
        patch = {**{k: None for k in observed.live_status if k not in status}, **status}
    replan = done.budget_failed or any(code in CHANGED_MEANWHILE for _, code, _ in done.refused)
    return Finish(status, decision, patch, found + status_events, check_metrics(plan, status),
                  rejection, memory.reported_forbidden or forbidden is not None, replan)


def _rollout_outcome(plan: CheckPlan, done: Outcomes,
                     memory: CheckMemory) -> tuple[RolloutPlan, str, Rejection | None]:
    """The rollout as made, the API server's refusal (if any), the rejection to remember."""
    step = plan.daemonset
    if plan.preflight:
        return step.rollout, "", memory.rejection
    if step.action is DaemonSetAction.NONE:
        return step.rollout, "", None
    if step.action is DaemonSetAction.HELD:
        return step.unchanged, step.error, memory.rejection
    if done.daemonset is Written.DONE:
        return step.rollout, "", None
    if done.daemonset is Written.REJECTED:
        return step.unchanged, done.daemonset_error, Rejection(
            plan.observed.generation, done.daemonset_error, plan.observed.clock)
    return step.unchanged, "", memory.rejection


def _forbidden_event(done: Outcomes, memory: CheckMemory) -> Event | None:
    """One Warning per operator process: the node condition needs patch on nodes/status."""
    refused = [message for change, status, message in done.refused
               if status == 403 and change.status_patch() is not None]
    if not refused or memory.reported_forbidden:
        return None
    return Event(FORBIDDEN_REASON, warning=True, message=(
        f"spec.remediation.condition needs patch on nodes/status, which the operator "
        f"lacks ({refused[0]}): set the chart value remediation.condition=true, or "
        "turn condition off"))


def routine(previous_verdict: str | None, verdict: str) -> bool:
    """A node's first verdict, clean: the label, the ThpNodeResult and the check's counts
    record it, and an Event would be one more write per node of a healthy fleet (thousands
    of Events no one reads at a first run). Anything else about a verdict is news."""
    return previous_verdict is None and verdict == Verdict.NOT_AFFECTED.value


def _node_events(plan: CheckPlan, done: Outcomes) -> list[Event]:
    """One Event per node whose verdict changed or that was changed, named after its most
    important change (a verdict change outranks minor actions); none for a ``routine`` first
    verdict with no more than the minor actions that record it (its labels)."""
    nodes = plan.observed.by_name
    verdicts = {w.node: (w.previous_verdict, w.verdict.value, w.body["status"].get("message", ""))
                for w in done.results if w.previous_verdict != w.verdict.value}
    applied = {c.node: c.actions for c in done.changes}
    found = []
    for name in sorted(set(verdicts) | set(applied)):
        node = nodes.get(name)
        if node is None:
            continue
        actions = applied.get(name, [])
        top = event_reason(actions, applied=True) if actions else None
        parts: list[str] = []
        reason, warning = "", False
        if name in verdicts:
            old, new, summary = verdicts[name]
            if routine(old, new) and (top is None or top in MINOR_REASONS):
                continue
            parts.append(f"verdict {new} (was {old or 'unchecked'}): {summary}")
            reason, warning = VERDICT_REASON, new in _WARNING_VERDICTS
        if top is not None:
            parts.extend(f"{a.action.value.lower()}: {a.reason}" for a in actions)
            if not reason or top not in MINOR_REASONS:
                reason = top
        found.append(Event(reason, f"ThpCheck {plan.observed.check.name}: " + "; ".join(parts),
                           warning, node))
    return found


def _planned_events(plan: CheckPlan, previous: Mapping[str, Any],
                    planned: Sequence[PlannedAction]) -> list[Event]:
    """Would* Events (dry run, paused), only for actions the previous status did not list."""
    nodes = plan.observed.by_name
    before = {(a.get("node"), a.get("action")) for a in previous.get("plannedActions") or []}
    fresh: dict[str, list[PlannedAction]] = {}
    for action in planned:
        if (action.node, action.action.value) not in before:
            fresh.setdefault(action.node, []).append(action)
    mode = "dry run" if plan.spec.remediation.dry_run else "paused"
    return [Event(event_reason(actions, applied=False), node=nodes[name], message=(
                f"ThpCheck {plan.observed.check.name} ({mode}): " + "; ".join(
                    f"would {a.action.value.lower()}: {a.reason}" for a in actions)))
            for name, actions in fresh.items() if name in nodes]


def _disagreement_events(plan: CheckPlan, done: Outcomes) -> list[Event]:
    """A Warning on each node whose written result newly contradicts its prediction, and one
    on the check listing them: the model or the distro table is wrong there."""
    nodes, name = plan.observed.by_name, plan.observed.check.name
    found = {w.node: w.disagreement for w in done.results
             if w.disagreement and w.disagreement != w.previous_disagreement}
    posted = [Event(DISAGREEMENT_REASON, warning=True, node=nodes[node], message=(
                  f"ThpCheck {name}: the agent contradicts the preflight prediction: {text}"))
              for node, text in sorted(found.items()) if node in nodes]
    if found:
        listed = "; ".join(f"{n}: {t}" for n, t in sorted(found.items())[:DISAGREEMENTS_LISTED])
        more = (f" (and {len(found) - DISAGREEMENTS_LISTED} more)"
                if len(found) > DISAGREEMENTS_LISTED else "")
        posted.append(Event(DISAGREEMENT_REASON, warning=True, message=(
            f"{len(found)} nodes contradict the preflight prediction, so the model or the "
            f"distro table is wrong for them: {listed}{more}")))
    return posted


def _status_decision(plan: CheckPlan, status: Mapping[str, Any], previous: Mapping[str, Any],
                     memory: CheckMemory, clock: float) -> tuple[StatusDecision, list[Event]]:
    """Write a status that differs from the stored one and from our last write, but only the
    counts moving waits for the status interval; a new phase and a newly unhealthy cluster
    each make an Event with the write."""
    if canonical(status) in (canonical(plan.observed.live_status), canonical(previous)):
        return StatusDecision.UNCHANGED, []
    if progress_only(previous, status) \
            and clock - memory.status_written_at < plan.observed.knobs.status_interval:
        return StatusDecision.WAIT, []
    found = []
    if status["phase"] != previous.get("phase"):
        found.append(Event(status["phase"], status["message"],
                           warning=status["phase"] == "Degraded"))
    blocked = condition_of(status, "RemediationBlocked")
    if (blocked.get("reason") == CLUSTER_UNHEALTHY
            and condition_of(previous, "RemediationBlocked").get("reason") != CLUSTER_UNHEALTHY):
        found.append(Event(CLUSTER_UNHEALTHY, str(blocked.get("message", "")), warning=True))
    return StatusDecision.WRITE, found


def check_metrics(plan: CheckPlan, status: Mapping[str, Any]) -> CheckMetrics:
    """The check's gauges (controller.metrics.Metrics.record_check)."""
    states, observed = plan.results.states, plan.observed
    by_verdict = {v.value: 0 for v in Verdict}
    for state in states.values():
        if state.verdict is not None:
            by_verdict[state.verdict.value] += 1
    times = [t for t in (parse_time(r.checked_at) for r in observed.results) if t is not None]
    interval = plan.spec.interval
    return CheckMetrics(by_verdict, {
        "unchecked": sum(1 for s in states.values() if s.verdict is None),
        "mitigated": int(status["mitigated"]),
        "cordoned": int(status["cordoned"]),
        "unverified": sum(1 for ready in observed.mitigation_ready.values() if not ready),
        "oldest_age": (plan.now - min(times)).total_seconds() if times else None,
        "affected_unmitigated": sum(1 for s in states.values()
                                    if s.verdict is Verdict.AFFECTED and not s.mitigated),
        "disagreements": len(plan.results.disagreements),
        "interval": (interval.total_seconds() if interval and not plan.preflight else None),
    })
