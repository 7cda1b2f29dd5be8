"""ThpCheck status: counts, phase and conditions, computed from the node states.

Computed whole on every reconcile and written only when it differs from what is stored,
so a quiet cluster costs no writes; condition transition times survive unchanged conditions.
While a run only moves the counts (``progress_only``), the reconciler writes at most once per
status interval instead of on every reconcile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from thpcheck.model.timestamps import format_time
from thpcheck.model.verdict import Verdict
from thpcheck.planning.remediation import PlannedAction
from thpcheck.planning.states import NodeState

PLANNED_LIMIT = 500
NAMED_LIMIT = 5  # nodes (or results) a condition message names, with their reasons
_COUNT_FIELDS = {
    Verdict.AFFECTED: "affected",
    Verdict.SUSCEPTIBLE: "susceptible",
    Verdict.NOT_AFFECTED: "notAffected",
    Verdict.UNKNOWN: "unknown",
    Verdict.ERROR: "errors",
}


# What a run changes on nearly every reconcile: the counts and the messages quoting them.
PROGRESS_FIELDS = frozenset({"checked", "stale", "mitigated", "affected", "susceptible",
                             "notAffected", "unknown", "errors", "disagreements", "message"})


def progress_only(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """True if ``after`` differs from ``before`` in progress counts and messages only: the same
    phase, conditions (type, status, reason), cordons, planned actions and generation."""
    def shape(status: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
        conditions = [(c.get("type"), c.get("status"), c.get("reason"))
                      for c in status.get("conditions") or []]
        rest = {k: v for k, v in status.items()
                if k not in PROGRESS_FIELDS and k != "conditions"}
        return conditions, rest

    return bool(before) and shape(before) == shape(after)


@dataclass(frozen=True)
class StatusInputs:
    generation: int
    selected: Sequence[str]
    states: Mapping[str, NodeState]
    now: datetime
    last_run_at: str = ""
    rolling_out: bool = False
    unschedulable: int = 0
    cordoned_nodes: Sequence[str] = ()
    blocked_cordons: int = 0
    paused: bool = False
    dry_run: bool = False
    planned: Sequence[PlannedAction] = ()
    previous_conditions: Sequence[Mapping[str, Any]] = field(default_factory=list)
    predicted: bool = False  # mode: preflight (results are predictions, no agent runs)
    disagreements: int = 0  # selected nodes whose agent result contradicts the prediction
    # Runs that ended without the agent's result (node -> reason, planning.runs.Failure), and
    # nodes whose run cannot progress now (node -> reason, planning.runs.Blocked).
    failed: Mapping[str, str] = field(default_factory=dict)
    blocked: Mapping[str, str] = field(default_factory=dict)
    rollout_error: str = ""  # the API server refused the agent DaemonSet (its message)
    untrusted: Mapping[str, str] = field(default_factory=dict)  # result name -> why ignored
    # What holds the blocked cordons back (planning.remediation: BudgetExhausted,
    # ClusterBudgetExhausted, ClusterUnhealthy) and the sentence saying so.
    blocked_reason: str = ""
    blocked_message: str = ""


def counts(selected: Sequence[str], states: Mapping[str, NodeState]) -> dict[str, int]:
    """Per-verdict counts, checked (fresh results) and mitigated, over selected nodes."""
    present = [states[n] for n in selected if n in states and states[n].verdict is not None]
    by_verdict = Counter(s.verdict for s in present)
    result = {"nodes": len(selected),
              "checked": sum(1 for s in present if not s.stale),
              "stale": sum(1 for s in present if s.stale),
              "mitigated": sum(1 for s in present if s.mitigated)}
    result.update({name: by_verdict.get(v, 0) for v, name in _COUNT_FIELDS.items()})
    return result


def phase(numbers: Mapping[str, int], unschedulable: int, stuck: bool = False) -> str:
    if numbers["errors"] or unschedulable or stuck:
        return "Degraded"
    if numbers["checked"] == 0:
        return "Pending"
    if numbers["checked"] < numbers["nodes"]:
        return "Running"
    return "Completed"


def condition(previous: Sequence[Mapping[str, Any]], type_: str, status: bool, reason: str,
              message: str, now: datetime, generation: int) -> dict[str, Any]:
    """A metav1.Condition that keeps its lastTransitionTime while its status holds."""
    value = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == type_), None)
    since = (old.get("lastTransitionTime") if old and old.get("status") == value
             else format_time(now))
    return {"type": type_, "status": value, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation}


def _message(numbers: Mapping[str, int], current: str, predicted: bool = False) -> str:
    if numbers["nodes"] == 0:
        return "no node matches spec.nodeSelector and spec.tolerations"
    done = "predicted from kernel and OS image" if predicted else "checked"
    text = (f"{numbers['checked']}/{numbers['nodes']} nodes {done}: "
            f"{numbers['affected']} affected, {numbers['susceptible']} susceptible, "
            f"{numbers['notAffected']} not affected, {numbers['unknown']} unknown, "
            f"{numbers['errors']} errors")
    return f"{current}: {text}"


def _named(items: Mapping[str, str]) -> str:
    """Up to NAMED_LIMIT names with their reasons: "n1 (CrashLoopBackOff), n2 (...) and 3
    more"."""
    listed = [f"{name} ({items[name]})" for name in sorted(items)[:NAMED_LIMIT]]
    more = len(items) - NAMED_LIMIT
    return ", ".join(listed) + (f" and {more} more" if more > 0 else "")


def _degraded(inputs: StatusInputs, numbers: Mapping[str, int]) -> tuple[str, str]:
    """The Degraded condition's reason and message: what is stuck, naming the nodes."""
    parts = []
    if inputs.rollout_error:
        parts.append(f"the API server rejected the agent DaemonSet: {inputs.rollout_error}")
    if inputs.failed:
        parts.append(f"{len(inputs.failed)} runs ended without a result: "
                     f"{_named(inputs.failed)}")
    if inputs.blocked:
        parts.append(f"{len(inputs.blocked)} nodes cannot run the check now: "
                     f"{_named(inputs.blocked)}")
    parts.append(f"{numbers['errors']} nodes could not be checked, {inputs.unschedulable} "
                 "agent pods cannot be scheduled (no room on their nodes; an agent pod never "
                 "preempts a workload)")
    reason = ("DaemonSetRejected" if inputs.rollout_error else
              "RunsFailed" if inputs.failed else
              "NodesBlocked" if inputs.blocked else
              "AgentErrors" if numbers["errors"] else
              "Unschedulable" if inputs.unschedulable else "AsExpected")
    return reason, "; ".join(parts)


def _progressing(inputs: StatusInputs, numbers: Mapping[str, int]) -> tuple[bool, str, str]:
    """A run is in progress while the DaemonSet rolls or an unchecked node can still be
    checked; it is stalled when only blocked nodes (or a rejected DaemonSet) are left."""
    unchecked_blocked = sum(1 for n in inputs.blocked
                            if n in inputs.states and inputs.states[n].verdict is None)
    waiting = numbers["nodes"] - numbers["checked"] - unchecked_blocked
    if inputs.rollout_error:
        return False, "DaemonSetRejected", (f"the API server rejected the agent DaemonSet: "
                                            f"{inputs.rollout_error}")
    if inputs.rolling_out or (numbers["nodes"] > 0 and waiting > 0):
        return True, "RunInProgress", "agent pods are rolling through the nodes"
    if unchecked_blocked:
        return False, "RunStalled", (f"the run cannot finish: {len(inputs.blocked)} nodes "
                                     f"cannot run the check now: {_named(inputs.blocked)}")
    return False, "RunFinished", "no run in progress"


def _untrusted(inputs: StatusInputs) -> tuple[bool, str, str]:
    if not inputs.untrusted:
        return False, "None", "every result of this check was written by the operator"
    return True, "ForeignResults", (
        f"{len(inputs.untrusted)} ThpNodeResults name this check but were not written by the "
        f"operator, and are ignored: {_named(inputs.untrusted)}")


def build_status(inputs: StatusInputs) -> dict[str, Any]:
    """The whole ``status`` of a ThpCheck."""
    numbers = counts(inputs.selected, inputs.states)
    current = phase(numbers, inputs.unschedulable,
                    bool(inputs.blocked or inputs.rollout_error))
    previous, now, generation = inputs.previous_conditions, inputs.now, inputs.generation
    complete = numbers["nodes"] > 0 and numbers["checked"] == numbers["nodes"]
    progressing, progress_reason, progress_message = _progressing(inputs, numbers)
    degraded_reason, degraded_message = _degraded(inputs, numbers)
    blocked_reason, blocked_message = _blocked(inputs)
    foreign, foreign_reason, foreign_message = _untrusted(inputs)
    conditions = [
        condition(previous, "Ready", complete, "AllNodesChecked" if complete else "Checking",
                  _message(numbers, current, inputs.predicted), now, generation),
        condition(previous, "Progressing", progressing, progress_reason, progress_message,
                  now, generation),
        condition(previous, "Degraded", degraded_reason != "AsExpected", degraded_reason,
                  degraded_message, now, generation),
        condition(previous, "RemediationBlocked", blocked_reason != "NotBlocked",
                  blocked_reason, blocked_message, now, generation),
        condition(previous, "UntrustedResults", foreign, foreign_reason, foreign_message,
                  now, generation),
    ]
    status: dict[str, Any] = {
        "phase": current,
        "observedGeneration": generation,
        **numbers,
        "cordoned": len(inputs.cordoned_nodes),
        "cordonedNodes": sorted(inputs.cordoned_nodes),
        "plannedActions": [a.to_status() for a in inputs.planned[:PLANNED_LIMIT]],
        "plannedActionCount": len(inputs.planned),
        "disagreements": inputs.disagreements,
        "unschedulable": inputs.unschedulable,
        "message": _message(numbers, current, inputs.predicted),
        "conditions": conditions,
    }
    if inputs.last_run_at:
        status["lastRunAt"] = inputs.last_run_at
    return status


def _blocked(inputs: StatusInputs) -> tuple[str, str]:
    if inputs.paused:
        return "Paused", "spec.paused is set: no new actions are taken"
    if inputs.dry_run:
        return "DryRun", ("spec.remediation.dryRun is set: status.plannedActions lists what "
                          "would be done")
    if inputs.blocked_cordons and inputs.blocked_reason:
        return inputs.blocked_reason, inputs.blocked_message
    if inputs.blocked_cordons:
        return "BudgetExhausted", (f"{inputs.blocked_cordons} affected nodes wait for the "
                                   "spec.remediation.maxCordoned budget")
    return "NotBlocked", "remediation is not blocked"
