"""Remediation planning: node labels, cordons within a budget, and mitigation labels.

Rules, all derived from the node's own marks so they hold across restarts:

- The operator touches only what it marked: ``labelled-by``, ``cordoned-by`` and
  ``mitigate-by`` annotations name the ThpCheck that made a change, and only that check
  undoes it. A node another check (or an admin) marked is left alone.
- Nodes labelled ``thpcheck.io/exclude=true`` get no new action; marks made before the
  exclusion are undone.
- A node already unschedulable without our annotation was cordoned by an admin: never
  cordoned by us (so never uncordoned), never counted.
- The cordon budget is counted from ``status.cordonedNodes``, which is written before a node
  is cordoned: a crash between the two leaves the budget over-counted, never exceeded.
- On top of it (``ClusterLimits``, from the operator's settings): a cluster-wide cap across
  all ThpChecks, counted from every check's ``status.cordonedNodes`` and every node a check
  has marked cordoned, and a health guard: no new cordon while more than ``max_unhealthy``
  of the check's selected nodes are NotReady or unschedulable for other reasons (an admin,
  a drain; not a ThpCheck's cordon).
- A taint (``spec.remediation.taint``) is a hold like a cordon, within the same budgets: a
  node cordoned, tainted or both counts once in ``status.cordonedNodes``; ``tainted-by``
  names the check, and only the taint it wrote (``names.TAINT_KEY``) is ever removed.
- The node condition (``spec.remediation.condition``) follows the effective verdict (the
  standing proof, like the labels): True on an affected node, False on a not-affected one,
  Unknown otherwise. ``condition-by`` is written before the condition is set and removed
  after it is gone, so a ``names.NODE_CONDITION`` condition without it is someone else's and
  never touched.
- Dry run and paused plan the same way but change nothing; dry run lists the plan.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from thpcheck.contract import names
from thpcheck.contract.checkspec import Remediation
from thpcheck.contract.quantities import IntOrPercent, budget
from thpcheck.contract.views import NodeView, Taint
from thpcheck.model.timestamps import format_time
from thpcheck.model.verdict import Verdict
from thpcheck.planning.states import NodeState


class Action(StrEnum):
    LABEL = "Label"
    UNLABEL = "Unlabel"
    CORDON = "Cordon"
    UNCORDON = "Uncordon"
    MITIGATE = "Mitigate"
    UNMITIGATE = "Unmitigate"
    TAINT = "Taint"
    UNTAINT = "Untaint"
    SET_CONDITION = "SetCondition"
    REMOVE_CONDITION = "RemoveCondition"


# Event reasons when done, and when only planned (dry run).
DONE_REASONS = {
    Action.LABEL: "Labelled", Action.UNLABEL: "Unlabelled", Action.CORDON: "Cordoned",
    Action.UNCORDON: "Uncordoned", Action.MITIGATE: "MitigationRequested",
    Action.UNMITIGATE: "MitigationRemoved", Action.TAINT: "Tainted",
    Action.UNTAINT: "Untainted", Action.SET_CONDITION: "ConditionSet",
    Action.REMOVE_CONDITION: "ConditionRemoved",
}
WOULD_REASONS = {
    Action.LABEL: "WouldLabel", Action.UNLABEL: "WouldUnlabel", Action.CORDON: "WouldCordon",
    Action.UNCORDON: "WouldUncordon", Action.MITIGATE: "WouldMitigate",
    Action.UNMITIGATE: "WouldUnmitigate", Action.TAINT: "WouldTaint",
    Action.UNTAINT: "WouldUntaint", Action.SET_CONDITION: "WouldSetCondition",
    Action.REMOVE_CONDITION: "WouldRemoveCondition",
}
# The most important action names a node's event when several happen at once.
PRIORITY = (Action.CORDON, Action.UNCORDON, Action.TAINT, Action.UNTAINT, Action.MITIGATE,
            Action.UNMITIGATE, Action.SET_CONDITION, Action.REMOVE_CONDITION, Action.LABEL,
            Action.UNLABEL)
# Reasons that do not name a node's Event when its verdict changed in the same reconcile.
MINOR_REASONS = frozenset({"Labelled", "Unlabelled", "ConditionSet", "ConditionRemoved"})


@dataclass(frozen=True)
class PlannedAction:
    node: str
    action: Action
    reason: str

    def to_status(self) -> dict[str, str]:
        return {"node": self.node, "action": self.action.value, "reason": self.reason[:256]}


@dataclass
class NodeChange:
    """Everything to change on one node: one merge patch of the Node and, for the node
    condition, one strategic merge patch of its status (``status_patch``). Setting the
    condition, the Node patch (which writes ``condition-by``) goes first; removing it, last
    (``condition_first``)."""

    node: str
    labels: dict[str, str | None] = field(default_factory=dict)
    annotations: dict[str, str | None] = field(default_factory=dict)
    unschedulable: bool | None = None  # True cordon, False uncordon, None unchanged
    actions: list[PlannedAction] = field(default_factory=list)
    resource_version: str = ""  # precondition when cordoning or tainting (never clobber)
    taints: tuple[Taint, ...] | None = None  # the node's whole new taint list, None unchanged
    condition: dict[str, str] | None = None  # the condition to set
    remove_condition: bool = False

    @property
    def condition_first(self) -> bool:
        return self.remove_condition

    def patch(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {}
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        body: dict[str, Any] = {}
        spec: dict[str, Any] = {}
        if self.unschedulable is not None:
            spec["unschedulable"] = True if self.unschedulable else None
        if self.taints is not None:  # a list is replaced whole: only on an unchanged node
            spec["taints"] = [t.to_spec() for t in self.taints] or None
        if spec:
            body["spec"] = spec
            if (self.unschedulable or self.taints is not None) and self.resource_version:
                metadata["resourceVersion"] = self.resource_version
        if metadata:
            body["metadata"] = metadata
        return body

    def status_patch(self) -> dict[str, Any] | None:
        """The node status patch (strategic merge: only our condition type), if any."""
        if self.condition is not None:
            return {"status": {"conditions": [dict(self.condition)]}}
        if self.remove_condition:
            return {"status": {"conditions": [{"type": names.NODE_CONDITION,
                                               "$patch": "delete"}]}}
        return None


# Why affected nodes wait for a cordon (the RemediationBlocked condition's reason).
BUDGET_EXHAUSTED = "BudgetExhausted"
CLUSTER_BUDGET_EXHAUSTED = "ClusterBudgetExhausted"
CLUSTER_UNHEALTHY = "ClusterUnhealthy"


@dataclass(frozen=True)
class ClusterLimits:
    """Limits across all ThpChecks (the operator's settings) and what the others hold."""

    max_cordoned: IntOrPercent = 1  # nodes cordoned by all ThpChecks together (% of all nodes)
    max_unhealthy: IntOrPercent = "10%"  # of the check's selected nodes, before new cordons
    claimed: frozenset[str] = frozenset()  # nodes other checks persisted as cordoned


@dataclass(frozen=True)
class RemediationPlan:
    changes: list[NodeChange]  # to apply (empty under dry run or paused)
    planned: list[PlannedAction]  # every action, applied or not
    cordoned_before: list[str]  # status.cordonedNodes to persist before changing nodes
    cordoned_after: list[str]  # status.cordonedNodes once the changes are made
    blocked_cordons: int  # affected nodes waiting for budget
    blocked_reason: str = ""  # BUDGET_EXHAUSTED, CLUSTER_BUDGET_EXHAUSTED or CLUSTER_UNHEALTHY
    blocked_message: str = ""


def _ours(node: NodeView, annotation: str, check: str) -> bool:
    return node.annotations.get(annotation) == check


def _free_or_ours(node: NodeView, annotation: str, check: str) -> bool:
    return node.annotations.get(annotation) in (None, check)


def _change(changes: dict[str, NodeChange], node: NodeView) -> NodeChange:
    return changes.setdefault(node.name, NodeChange(node.name))


def _plan_labels(change: dict[str, NodeChange], node: NodeView, check: str,
                 state: NodeState | None, wanted: bool,
                 undo_reason: str = "labels no longer wanted") -> None:
    if wanted and state is not None and state.verdict is not None:
        desired = {names.VERDICT_LABEL: state.verdict.value,
                   names.MITIGATED_LABEL: "true" if state.mitigated else "false"}
        current = {k: node.labels.get(k) for k in desired}
        if current != desired or not _ours(node, names.LABELLED_BY_ANNOTATION, check):
            entry = _change(change, node)
            entry.labels.update(desired)
            entry.annotations[names.LABELLED_BY_ANNOTATION] = check
            entry.actions.append(PlannedAction(node.name, Action.LABEL, (
                f"verdict {state.verdict.value}, mitigated "
                f"{'true' if state.mitigated else 'false'}")))
    elif _ours(node, names.LABELLED_BY_ANNOTATION, check):
        entry = _change(change, node)
        entry.labels.update({names.VERDICT_LABEL: None, names.MITIGATED_LABEL: None})
        entry.annotations[names.LABELLED_BY_ANNOTATION] = None
        entry.actions.append(PlannedAction(node.name, Action.UNLABEL, undo_reason))


def _plan_mitigation(change: dict[str, NodeChange], node: NodeView, check: str,
                     wanted: bool, undo_reason: str = "mitigation no longer needed") -> None:
    ours = _ours(node, names.MITIGATE_BY_ANNOTATION, check)
    if wanted and not (ours and node.labels.get(names.MITIGATE_LABEL) == "true"):
        entry = _change(change, node)
        entry.labels[names.MITIGATE_LABEL] = "true"
        entry.annotations[names.MITIGATE_BY_ANNOTATION] = check
        entry.actions.append(PlannedAction(node.name, Action.MITIGATE,
                                           "affected: stop khugepaged"))
    elif not wanted and ours:
        entry = _change(change, node)
        entry.labels[names.MITIGATE_LABEL] = None
        entry.annotations[names.MITIGATE_BY_ANNOTATION] = None
        entry.actions.append(PlannedAction(node.name, Action.UNMITIGATE, undo_reason))


def _verdict_condition(check: str, node: NodeView,
                       state: NodeState) -> tuple[str, str, str] | None:
    """The condition's (status, reason, message) for the node's effective verdict."""
    verdict = state.verdict
    if verdict is None:
        return None
    kernel = (state.proof.kernel_release if state.proof and state.proof.kernel_release
              else node.kernel_version) or "unknown"
    result = f"ThpNodeResult {names.result_name(check, node.name)}"
    where = f" on {', '.join(state.filesystems)}" if state.filesystems else ""
    if verdict is Verdict.AFFECTED:
        since = f", proven {state.proof.proven_at}" if state.proof and state.proof.proven_at \
            else ""
        return ("True", "Affected", f"kernel {kernel} loses written data{where} "
                f"(CONFIG_READ_ONLY_THP_FOR_FS purge bug{since}; {result})")
    if verdict is Verdict.NOT_AFFECTED:
        return ("False", "NotAffected", f"kernel {kernel} checked not affected{where} "
                f"({result})")
    reason = {Verdict.SUSCEPTIBLE: "Susceptible", Verdict.ERROR: "CheckFailed"}.get(
        verdict, "Unknown")
    return ("Unknown", reason, f"kernel {kernel}: verdict {verdict.value}, data loss not "
            f"proven either way ({result})")


def _plan_condition(change: dict[str, NodeChange], node: NodeView, check: str,
                    state: NodeState | None, wanted: bool, now: str,
                    undo_reason: str = "condition no longer wanted") -> None:
    ours = _ours(node, names.CONDITION_BY_ANNOTATION, check)
    desired = _verdict_condition(check, node, state) if wanted and state else None
    if wanted and desired is not None:
        current = node.condition
        if ours and current is not None and \
                (current.status, current.reason, current.message) == desired:
            return
        status, reason, message = desired
        entry = _change(change, node)
        if not ours:
            entry.annotations[names.CONDITION_BY_ANNOTATION] = check
        same = current is not None and current.status == status and current.last_transition
        entry.condition = {
            "type": names.NODE_CONDITION, "status": status, "reason": reason,
            "message": message,
            "lastTransitionTime": current.last_transition if same and current else now,
            "lastHeartbeatTime": now}
        entry.actions.append(PlannedAction(node.name, Action.SET_CONDITION,
                                           f"{names.NODE_CONDITION}={status} ({reason})"))
    elif not wanted and ours:
        entry = _change(change, node)
        entry.annotations[names.CONDITION_BY_ANNOTATION] = None
        # No condition there (never set: nodes/status refused, or a writer dropped it): only
        # the annotation goes, so a missing permission cannot block the clean-up.
        entry.remove_condition = node.condition is not None
        entry.actions.append(PlannedAction(node.name, Action.REMOVE_CONDITION, undo_reason))


def our_taint(effect: str) -> Taint:
    return Taint(names.TAINT_KEY, names.TAINT_VALUE, effect)


def _set_taint(entry: NodeChange, node: NodeView, check: str, effect: str | None,
               reason: str) -> None:
    """Make the node carry our taint with ``effect`` (None: not at all)."""
    kept = tuple(t for t in node.taints if t.key != names.TAINT_KEY)
    entry.taints = kept + ((our_taint(effect),) if effect else ())
    entry.resource_version = node.resource_version
    entry.annotations[names.TAINTED_BY_ANNOTATION] = check if effect else None
    entry.actions.append(PlannedAction(node.name, Action.TAINT if effect else Action.UNTAINT,
                                       reason))


def _has_taint(node: NodeView, effect: str) -> bool:
    return [t for t in node.taints if t.key == names.TAINT_KEY] == [our_taint(effect)]


def unhealthy(nodes: Iterable[NodeView]) -> list[str]:
    """Nodes that are NotReady, or unschedulable for a reason other than a ThpCheck."""
    return sorted(n.name for n in nodes if not n.ready or (
        n.unschedulable and names.CORDONED_BY_ANNOTATION not in n.annotations))


def _cordon_room(check: str, remediation: Remediation, limits: ClusterLimits | None,
                 selected: Sequence[NodeView], nodes: Mapping[str, NodeView],
                 current: set[str], keep: set[str]) -> tuple[int, str, str]:
    """How many new cordons the budgets allow, and what limits them (reason, message)."""
    room = max(0, budget(remediation.max_cordoned, len(selected)) - len(keep))
    why = (BUDGET_EXHAUSTED, "the spec.remediation.maxCordoned budget")
    if limits is None:
        return room, *why
    sick = unhealthy(selected)
    allowed = budget(limits.max_unhealthy, len(selected))
    if len(sick) > allowed:
        listed = ", ".join(sick[:5]) + (f" and {len(sick) - 5} more" if len(sick) > 5 else "")
        return 0, CLUSTER_UNHEALTHY, (
            f"{len(sick)} of {len(selected)} selected nodes are NotReady or cordoned by "
            f"someone else ({listed}), more than the {limits.max_unhealthy} the operator "
            "allows (THPCHECK_MAX_UNHEALTHY): no new cordon until they recover")
    others = {n for n in limits.claimed if n in nodes} | {
        n.name for n in nodes.values() if any(
            n.annotations.get(a) not in (None, check) for a in HOLD_ANNOTATIONS)}
    cluster = max(0, budget(limits.max_cordoned, len(nodes)) - len(others | current))
    if cluster < room:
        return cluster, CLUSTER_BUDGET_EXHAUSTED, (
            f"the cluster-wide budget of {limits.max_cordoned} cordons across all ThpChecks "
            f"(THPCHECK_CLUSTER_MAX_CORDONED; {len(others)} held by other checks)")
    return room, *why


HOLD_ANNOTATIONS = (names.CORDONED_BY_ANNOTATION, names.TAINTED_BY_ANNOTATION)


def plan_remediation(check: str, remediation: Remediation, *, paused: bool,
                     selected: Sequence[NodeView], all_nodes: Iterable[NodeView],
                     states: Mapping[str, NodeState], cordoned: Sequence[str],
                     limits: ClusterLimits | None = None,
                     now: datetime | None = None) -> RemediationPlan:
    """Everything remediation should change now, and the budget bookkeeping. ``limits``:
    the cluster-wide cap and health guard (None: the check's own budget only). A hold is a
    cordon, a taint or both (``remediation.cordon``, ``remediation.taint``); ``now`` stamps
    the node condition."""
    stamp = format_time(now or datetime.now(UTC))
    nodes = {n.name: n for n in all_nodes}
    chosen = {n.name for n in selected}
    changes: dict[str, NodeChange] = {}

    def affected(node: NodeView) -> bool:
        state = states.get(node.name)
        return (node.name in chosen and not node.excluded and state is not None
                and state.verdict is Verdict.AFFECTED)

    def wants_hold(node: NodeView) -> bool:
        state = states.get(node.name)
        return ((remediation.cordon or bool(remediation.taint)) and affected(node)
                and state is not None and not state.mitigated
                and (not node.unschedulable or _ours(node, names.CORDONED_BY_ANNOTATION, check))
                and _free_or_ours(node, names.TAINTED_BY_ANNOTATION, check))

    for node in nodes.values():
        in_scope = node.name in chosen and not node.excluded
        _plan_labels(changes, node, check, states.get(node.name),
                     remediation.label and in_scope
                     and _free_or_ours(node, names.LABELLED_BY_ANNOTATION, check))
        _plan_mitigation(changes, node, check, remediation.mitigate and affected(node)
                         and _free_or_ours(node, names.MITIGATE_BY_ANNOTATION, check))
        _plan_condition(changes, node, check, states.get(node.name),
                        remediation.condition and in_scope
                        and _free_or_ours(node, names.CONDITION_BY_ANNOTATION, check)
                        and (node.condition is None
                             or _ours(node, names.CONDITION_BY_ANNOTATION, check)), stamp)

    # Holds: the persisted list, plus any node carrying our mark that the list lost.
    current = {n for n in cordoned if n in nodes}
    current |= {n.name for n in nodes.values()
                if any(_ours(n, a, check) for a in HOLD_ANNOTATIONS)}
    release = sorted(n for n in current if not wants_hold(nodes[n]))
    keep = current - set(release)
    room, reason, limit = _cordon_room(check, remediation, limits, selected, nodes, current,
                                       keep)
    candidates = sorted(n.name for n in nodes.values() if wants_hold(n) and n.name not in keep)
    picks, blocked = candidates[:room], candidates[room:]
    hold = "cordon" if remediation.cordon else "taint"
    message = (f"{len(blocked)} affected nodes wait for a {hold}: {limit}" if blocked else "")
    for name in release:
        node = nodes[name]
        why = _uncordon_reason(node, remediation, states.get(name), name in chosen)
        if _ours(node, names.CORDONED_BY_ANNOTATION, check):
            _uncordon(_change(changes, node), why)
        if _ours(node, names.TAINTED_BY_ANNOTATION, check):
            _set_taint(_change(changes, node), node, check, None, why)
    for name in sorted(set(picks) | keep):
        node = nodes[name]
        cordoned_here = _ours(node, names.CORDONED_BY_ANNOTATION, check)
        if remediation.cordon and (name in picks or not cordoned_here):
            entry = _change(changes, node)
            entry.unschedulable = True
            entry.resource_version = node.resource_version
            entry.annotations[names.CORDONED_BY_ANNOTATION] = check
            entry.actions.append(PlannedAction(name, Action.CORDON, "affected and not mitigated"))
        elif not remediation.cordon and cordoned_here:
            _uncordon(_change(changes, node), "spec.remediation.cordon is off")
        tainted_here = _ours(node, names.TAINTED_BY_ANNOTATION, check)
        if remediation.taint and not (tainted_here and _has_taint(node, remediation.taint)):
            _set_taint(_change(changes, node), node, check, remediation.taint,
                       f"affected and not mitigated ({remediation.taint})")
        elif not remediation.taint and tainted_here:
            _set_taint(_change(changes, node), node, check, None,
                       "spec.remediation.taint is off")

    ordered = [changes[n] for n in sorted(changes)]
    planned = [a for c in ordered for a in c.actions]
    why = reason if blocked else ""
    if remediation.dry_run or paused:
        return RemediationPlan([], planned, sorted(current), sorted(current), len(blocked),
                               why, message)
    after = sorted(keep | set(picks))
    return RemediationPlan(ordered, planned, sorted(current | set(picks)), after, len(blocked),
                           why, message)


def _uncordon(entry: NodeChange, reason: str) -> None:
    entry.unschedulable = False
    entry.annotations[names.CORDONED_BY_ANNOTATION] = None
    entry.actions.append(PlannedAction(entry.node, Action.UNCORDON, reason))


def _uncordon_reason(node: NodeView, remediation: Remediation, state: NodeState | None,
                     selected: bool) -> str:
    if not remediation.cordon and not remediation.taint:
        return "spec.remediation.cordon and .taint are off"
    if not selected:
        return "the node is no longer selected"
    if node.excluded:
        return f"the node is labelled {names.EXCLUDE_LABEL}=true"
    if state is not None and state.mitigated:
        return "mitigated"
    return "no longer affected"


MARK_ANNOTATIONS = (names.LABELLED_BY_ANNOTATION, names.CORDONED_BY_ANNOTATION,
                    names.MITIGATE_BY_ANNOTATION, names.TAINTED_BY_ANNOTATION,
                    names.CONDITION_BY_ANNOTATION)


def plan_cleanup(check: str, all_nodes: Iterable[NodeView],
                 reason: str = "the ThpCheck was deleted") -> list[NodeChange]:
    """Undo every mark ``check`` made (the ThpCheck is being deleted)."""
    changes: dict[str, NodeChange] = {}
    for node in all_nodes:
        _undo_marks(changes, node, check, reason)
    return [changes[n] for n in sorted(changes)]


def _undo_marks(changes: dict[str, NodeChange], node: NodeView, check: str,
                reason: str) -> None:
    _plan_labels(changes, node, check, None, wanted=False, undo_reason=reason)
    _plan_mitigation(changes, node, check, wanted=False, undo_reason=reason)
    _plan_condition(changes, node, check, None, False, "", undo_reason=reason)
    if _ours(node, names.CORDONED_BY_ANNOTATION, check):
        _uncordon(_change(changes, node), reason)
    if _ours(node, names.TAINTED_BY_ANNOTATION, check):
        _set_taint(_change(changes, node), node, check, None, reason)


def marked_by(node: NodeView) -> set[str]:
    """The ThpChecks whose marks the node carries (labels, cordon, mitigation label)."""
    return {node.annotations[a] for a in MARK_ANNOTATIONS if node.annotations.get(a)}


def plan_orphans(all_nodes: Iterable[NodeView], checks: Collection[str]) -> list[NodeChange]:
    """Undo the marks of ThpChecks that no longer exist (``checks``: those that do): their
    finalizer was removed by hand, or the operator was down while they were deleted."""
    changes: dict[str, NodeChange] = {}
    for node in all_nodes:
        for gone in sorted(marked_by(node) - set(checks)):
            _undo_marks(changes, node, gone, f"ThpCheck {gone} no longer exists (its marks "
                        "outlived it: finalizer removed by hand, or deleted while the "
                        "operator was down)")
    return [changes[n] for n in sorted(changes)]


def event_reason(actions: Sequence[PlannedAction], *, applied: bool) -> str:
    """One Event per node per reconcile: named after its most important action."""
    kinds = {a.action for a in actions}
    top = next(a for a in PRIORITY if a in kinds)
    return (DONE_REASONS if applied else WOULD_REASONS)[top]
