"""The reconcile's planners (pure): every Event the reconcile posts, with its wording, reason
and type, and the status write-or-wait decision, from plain views and dataclasses."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.operator.factories import agent_pod, message, node
from thpcheck.contract import names
from thpcheck.contract.agent import WorkloadConfig
from thpcheck.contract.checkspec import CheckSpec, parse_spec
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import DaemonSetView, NodeView, ResultView, result_view
from thpcheck.model.verdict import Verdict
from thpcheck.planning.checkplan import (
    REJECTION_RETRY,
    CheckMemory,
    CheckPlan,
    DaemonSetAction,
    Event,
    Finish,
    Knobs,
    NodeStep,
    Observed,
    Outcomes,
    Rejection,
    StatusDecision,
    Written,
    finish_check,
    plan_check,
    plan_nodes,
    routine,
)
from thpcheck.planning.remediation import ClusterLimits
from thpcheck.planning.rollout import Step

CHECK = CheckRef("weekly", "uid-check")
NOW = datetime(2026, 11, 28, 16, 1, tzinfo=UTC)
KNOBS = Knobs(WorkloadConfig(namespace="thp-checker", image="agent:1"), status_interval=5.0)
CLOCK = 1000.0


def observe(nodes: list[NodeView], *, pods: Any = (), results: list[ResultView] | None = None,
            status: dict[str, Any] | None = None, daemonset: DaemonSetView | None = None,
            generation: int = 1, clock: float = CLOCK) -> Observed:
    return Observed(CHECK, KNOBS, generation=generation, live_version="100",
                    live_status=status or {}, nodes=nodes, pods=list(pods),
                    daemonset=daemonset, results=results or [], clock=clock)


def succeeded(plan: CheckPlan, step: NodeStep) -> Outcomes:
    """Every write of the plan went through."""
    return Outcomes(results=list(plan.results.writes), changes=list(step.remedy.changes),
                    budget=step.budget["status"] if step.budget else None,
                    cordoned=step.remedy.cordoned_after)


def reconcile(observed: Observed, spec: CheckSpec, memory: CheckMemory | None = None, *,
              done: Outcomes | None = None, limits: ClusterLimits | None = None,
              clock: float = CLOCK) -> tuple[CheckPlan, NodeStep, Finish]:
    memory = memory or CheckMemory()
    plan = plan_check(observed, spec, memory, NOW)
    step = plan_nodes(plan, memory, limits or ClusterLimits(max_cordoned=10))
    finish = finish_check(plan, step, done if done is not None else succeeded(plan, step),
                          memory, clock)
    return plan, step, finish


def reasons(events: list[Event]) -> list[tuple[str, str, bool]]:
    """(where, reason, warning) of each Event: "check" or the node's name."""
    return [(e.node.name if e.node else "check", e.reason, e.warning) for e in events]


def written_views(plan: CheckPlan) -> list[ResultView]:
    """The results as the API returns them after the plan's writes."""
    return [result_view({**w.body, "metadata": {**w.body["metadata"], "resourceVersion": "5"}})
            for w in plan.results.writes]


SPEC = parse_spec({"maxConcurrent": 10})
AFFECTED = [agent_pod("weekly", "n1", message("affected")),
            agent_pod("weekly", "n2", message("not-affected"))]
TWO = [node("n1"), node("n2")]


# -- the agent DaemonSet -------------------------------------------------------------------


def test_a_run_started_event_comes_with_the_daemonset_write_that_starts_the_run() -> None:
    plan, _, _ = reconcile(observe(TWO), SPEC)
    step = plan.daemonset
    assert step.action is DaemonSetAction.CREATE and step.rollout.step is Step.CREATE
    assert step.started == Event("RunStarted", "checking every selected node, 10 at a time "
                                 f"(run {step.rollout.run})")
    standby, _, _ = reconcile(observe(TWO), parse_spec({"maxConcurrent": 1}))
    assert standby.daemonset.action is DaemonSetAction.CREATE
    assert standby.daemonset.started is None  # on standby: no run starts yet


def test_a_rejected_daemonset_is_held_for_its_generation_until_the_retry_interval() -> None:
    refused = CheckMemory(rejection=Rejection(1, "denied by policy", CLOCK))
    held, _, finish = reconcile(observe(TWO, clock=CLOCK + REJECTION_RETRY - 1), SPEC, refused)
    assert held.daemonset.action is DaemonSetAction.HELD
    assert finish.rejection == refused.rejection  # kept
    assert finish.status["phase"] == "Degraded"
    degraded = next(c for c in finish.status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "DaemonSetRejected" and "denied by policy" in degraded["message"]
    later, _, _ = reconcile(observe(TWO, clock=CLOCK + REJECTION_RETRY), SPEC, refused)
    assert later.daemonset.action is DaemonSetAction.CREATE
    changed, _, _ = reconcile(observe(TWO, generation=2), SPEC, refused)
    assert changed.daemonset.action is DaemonSetAction.CREATE


def test_the_daemonset_outcome_decides_the_rejection_remembered_and_the_rollout() -> None:
    refused = Outcomes(daemonset=Written.REJECTED, daemonset_error="admission says no")
    plan, _, finish = reconcile(observe(TWO), SPEC, done=refused)
    assert finish.rejection == Rejection(1, "admission says no", CLOCK)
    assert "lastRunAt" not in finish.status  # the run did not start
    assert finish.events[-1] == Event("Degraded", finish.status["message"], warning=True)
    memory = CheckMemory(rejection=Rejection(0, "old", 1.0))
    _, _, conflict = reconcile(observe(TWO), SPEC, memory,
                               done=Outcomes(daemonset=Written.CONFLICT))
    assert conflict.rejection == memory.rejection and "lastRunAt" not in conflict.status
    _, _, done = reconcile(observe(TWO), SPEC, memory)
    assert done.rejection is None and done.status["lastRunAt"] == plan.daemonset.rollout.run


def test_preflight_deletes_the_agent_daemonset_and_starts_no_run() -> None:
    spec = parse_spec({"mode": "preflight"})
    plan, _, finish = reconcile(observe(TWO, daemonset=DaemonSetView("thpcheck-weekly")), spec)
    assert plan.daemonset.action is DaemonSetAction.DELETE and plan.daemonset.started is None
    assert "RunStarted" not in [e.reason for e in finish.events]
    again, _, _ = reconcile(observe(TWO), spec)
    assert again.daemonset.action is DaemonSetAction.NONE


# -- results -------------------------------------------------------------------------------


def test_untrusted_results_are_reported_once_each_before_any_write() -> None:
    plan, _, _ = reconcile(observe(TWO, pods=AFFECTED), SPEC)
    foreign = [replace(v, owner_uid="someone-else", name=f"{v.name}.x{i}")
               for v in written_views(plan) for i in range(3)]
    first, _, _ = reconcile(observe(TWO, results=foreign), SPEC)
    (event,) = first.events
    assert (event.reason, event.warning, event.node) == ("UntrustedResult", True, None)
    assert event.message.startswith("6 ThpNodeResults name this check but were not written "
                                    "by the operator; they are ignored (never used for "
                                    "remediation): ")
    assert event.message.endswith(" (and 1 more)")
    assert first.reported_untrusted == {v.name for v in foreign}
    seen = CheckMemory(reported_untrusted=first.reported_untrusted - {foreign[0].name})
    again, _, _ = reconcile(observe(TWO, results=foreign), SPEC, seen)
    (event,) = again.events
    assert event.message.startswith("1 ThpNodeResults") and foreign[0].name in event.message
    quiet, _, _ = reconcile(observe(TWO, results=foreign), SPEC,
                            CheckMemory(reported_untrusted=first.reported_untrusted))
    assert quiet.events == []


def test_a_written_result_that_changes_the_verdict_makes_one_event_per_node() -> None:
    plan, _, finish = reconcile(observe(TWO, pods=AFFECTED), SPEC)
    node_events = [e for e in finish.events if e.node is not None]
    # n2's first verdict is clean: routine, recorded by its label and result, no Event
    assert reasons(node_events) == [("n1", "VerdictChanged", True)]
    assert node_events[0].message.startswith("ThpCheck weekly: verdict affected (was "
                                             "unchecked): /var/lib/thpcheck ext4 affected")
    # A clean verdict that changes one the node had is news; a write that failed posts
    # nothing for its node.
    healed = Outcomes(results=[replace(w, previous_verdict="affected")
                               for w in plan.results.writes if w.node == "n2"])
    _, _, finish = reconcile(observe(TWO, pods=AFFECTED), SPEC, done=healed)
    (n2,) = [e for e in finish.events if e.node]
    assert (n2.node.name, n2.reason, n2.warning) == ("n2", "VerdictChanged", False)
    assert n2.message.startswith("ThpCheck weekly: verdict not-affected (was affected): ")
    # An unchanged verdict posts nothing.
    again, _, finish = reconcile(observe(TWO, pods=AFFECTED, results=written_views(plan)),
                                 SPEC)
    assert not again.results.writes
    assert "VerdictChanged" not in [e.reason for e in finish.events]


def test_a_new_disagreement_with_the_prediction_warns_on_the_node_and_the_check() -> None:
    plan, _, _ = reconcile(observe(TWO, pods=AFFECTED), SPEC)
    writes = [replace(w, disagreement=f"predicted not-affected, {w.node} says otherwise")
              for w in plan.results.writes]
    _, _, finish = reconcile(observe(TWO, pods=AFFECTED), SPEC, done=Outcomes(results=writes))
    found = [e for e in finish.events if e.reason == "PredictionDisagreement"]
    assert reasons(found) == [("n1", "PredictionDisagreement", True),
                              ("n2", "PredictionDisagreement", True),
                              ("check", "PredictionDisagreement", True)]
    assert found[0].message == ("ThpCheck weekly: the agent contradicts the preflight "
                                "prediction: predicted not-affected, n1 says otherwise")
    assert found[2].message.startswith("2 nodes contradict the preflight prediction, so the "
                                       "model or the distro table is wrong for them: n1: ")
    known = [replace(w, previous_disagreement=w.disagreement) for w in writes]
    _, _, finish = reconcile(observe(TWO, pods=AFFECTED), SPEC, done=Outcomes(results=known))
    assert "PredictionDisagreement" not in [e.reason for e in finish.events]


# -- remediation ---------------------------------------------------------------------------

CORDON = parse_spec({"maxConcurrent": 10, "remediation": {"cordon": True, "maxCordoned": 5}})


def test_an_applied_cordon_names_the_nodes_event_over_its_verdict_change() -> None:
    _, step, finish = reconcile(observe(TWO, pods=AFFECTED), CORDON)
    assert step.holds and step.budget == {
        "status": {"cordonedNodes": ["n1"], "cordoned": 1},
        "metadata": {"resourceVersion": "100"}}
    (n1,) = [e for e in finish.events if e.node and e.node.name == "n1"]
    assert (n1.reason, n1.warning) == ("Cordoned", True)
    assert n1.message.startswith("ThpCheck weekly: verdict affected (was unchecked): ")
    assert n1.message.endswith("; label: verdict affected, mitigated false; "
                               "cordon: affected and not mitigated")
    # n2's first, clean verdict and the labels that record it: no Event.
    assert [e for e in finish.events if e.node and e.node.name == "n2"] == []
    assert finish.status["cordonedNodes"] == ["n1"]


def test_node_changes_that_failed_post_no_event_and_a_failed_budget_reports_stored() -> None:
    plan, step, _ = reconcile(observe(TWO, pods=AFFECTED), CORDON)
    done = Outcomes(results=list(plan.results.writes), cordoned=step.stored)
    _, _, finish = reconcile(observe(TWO, pods=AFFECTED), CORDON, done=done)
    # n1's cordon was not stored, so it was not made: its Event is the verdict change alone
    assert [(e.node.name, e.reason) for e in finish.events if e.node] == [
        ("n1", "VerdictChanged")]
    assert finish.status["cordonedNodes"] == [] and finish.status["cordoned"] == 0


def test_labels_alone_make_labelled_events_and_the_unlabel_reason() -> None:
    labelled = [replace(v, verdict="affected") for v in written_views(
        reconcile(observe(TWO, pods=AFFECTED), SPEC)[0])]
    _, step, finish = reconcile(observe(TWO, results=labelled), SPEC)
    assert reasons([e for e in finish.events if e.node]) == [("n1", "Labelled", False),
                                                             ("n2", "Labelled", False)]
    assert not step.holds and step.budget is None
    marked = [node(n, labels={names.VERDICT_LABEL: "affected"},
                   annotations={names.LABELLED_BY_ANNOTATION: "weekly"}) for n in ("n1", "n2")]
    off = parse_spec({"remediation": {"label": False}})
    _, _, finish = reconcile(observe(marked, results=labelled), off)
    assert {e.reason for e in finish.events if e.node} == {"Unlabelled"}


@pytest.mark.parametrize(("spec", "mode"), [
    ({"remediation": {"cordon": True, "dryRun": True}}, "dry run"),
    ({"remediation": {"cordon": True}, "paused": True}, "paused"),
])
def test_dry_run_and_paused_post_would_events_once_per_new_planned_action(
        spec: dict[str, Any], mode: str) -> None:
    parsed = parse_spec({**spec, "maxConcurrent": 10})
    views = [replace(v, verdict="affected") for v in written_views(
        reconcile(observe(TWO, pods=AFFECTED), SPEC)[0])]
    _, step, finish = reconcile(observe(TWO, results=views), parsed)
    assert step.remedy.changes == [] and step.budget is None
    (n1, n2) = [e for e in finish.events if e.node]
    assert (n1.reason, n1.warning) == ("WouldCordon", False)
    assert n1.message == (f"ThpCheck weekly ({mode}): would label: verdict affected, "
                          "mitigated false; would cordon: affected and not mitigated")
    assert n2.reason == "WouldLabel"
    # Listed in the status already: not posted again.
    _, _, again = reconcile(observe(TWO, results=views, status=finish.status), parsed)
    assert not [e for e in again.events if e.node]


def test_a_refused_node_condition_warns_once_per_process() -> None:
    spec = parse_spec({"maxConcurrent": 10, "remediation": {"condition": True}})
    plan, step, _ = reconcile(observe(TWO, pods=AFFECTED), spec)
    (change, *_) = step.remedy.changes
    done = Outcomes(results=list(plan.results.writes),
                    refused=[(change, 403, 'nodes "n1" is forbidden')])
    _, _, finish = reconcile(observe(TWO, pods=AFFECTED), spec, done=done)
    (event,) = [e for e in finish.events if e.reason == "NodeConditionForbidden"]
    assert event.warning and event.node is None
    assert event.message == (
        "spec.remediation.condition needs patch on nodes/status, which the operator lacks "
        '(nodes "n1" is forbidden): set the chart value remediation.condition=true, or turn '
        "condition off")
    assert finish.reported_forbidden
    _, _, later = reconcile(observe(TWO, pods=AFFECTED), spec,
                            CheckMemory(reported_forbidden=True), done=done)
    assert "NodeConditionForbidden" not in [e.reason for e in later.events]
    other = Outcomes(refused=[(change, 500, "boom")])
    _, _, finish = reconcile(observe(TWO, pods=AFFECTED), spec, done=other)
    assert "NodeConditionForbidden" not in [e.reason for e in finish.events]
    assert not finish.reported_forbidden


def test_a_newly_unhealthy_cluster_warns_with_the_status_write() -> None:
    sick = [node("n1"), node("n2", unschedulable=True)]
    limits = ClusterLimits(max_cordoned=10, max_unhealthy=0)
    _, step, finish = reconcile(observe(sick, pods=AFFECTED), CORDON, limits=limits)
    assert step.remedy.blocked_reason == "ClusterUnhealthy" and not step.holds
    (event,) = [e for e in finish.events if e.reason == "ClusterUnhealthy"]
    assert event.warning and event.node is None
    assert event.message.startswith("1 affected nodes wait for a cordon: 1 of 2 selected "
                                    "nodes are NotReady or cordoned by someone else (n2)")
    # Still unhealthy at the next write: no second Event.
    _, _, again = reconcile(observe(sick, pods=AFFECTED, status={**finish.status, "checked": 0}),
                            CORDON, limits=limits)
    assert again.decision is StatusDecision.WRITE
    assert "ClusterUnhealthy" not in [e.reason for e in again.events]


def test_the_budget_patch_names_the_version_of_our_last_write_until_the_watch_shows_it() -> None:
    memory = CheckMemory(version_before="100", version_after="104")
    plan = plan_check(observe(TWO, pods=AFFECTED), CORDON, memory, NOW)
    step = plan_nodes(plan, memory, ClusterLimits(max_cordoned=10))
    assert step.budget is not None and step.budget["metadata"] == {"resourceVersion": "104"}
    moved = CheckMemory(version_before="99", version_after="104")
    step = plan_nodes(plan, moved, ClusterLimits(max_cordoned=10))
    assert step.budget is not None and step.budget["metadata"] == {"resourceVersion": "100"}


def test_other_checks_claims_hold_back_new_cordons() -> None:
    claimed = ClusterLimits(max_cordoned=1, claimed=frozenset({"n2"}))
    _, step, finish = reconcile(observe(TWO, pods=AFFECTED), CORDON, limits=claimed)
    assert step.remedy.blocked_cordons == 1 and not step.holds
    blocked = next(c for c in finish.status["conditions"] if c["type"] == "RemediationBlocked")
    assert blocked["reason"] == "ClusterBudgetExhausted"


# -- the status: write, wait or nothing -----------------------------------------------------


def test_a_first_status_is_written_with_its_phase_event() -> None:
    _, _, finish = reconcile(observe(TWO, pods=AFFECTED), SPEC)
    assert finish.decision is StatusDecision.WRITE
    assert finish.patch == finish.status
    assert finish.events[-1] == Event("Completed", "Completed: 2/2 nodes checked: 1 affected, "
                                      "0 susceptible, 1 not affected, 0 unknown, 0 errors")


def test_the_status_as_stored_or_as_last_written_is_not_written_again() -> None:
    _, _, first = reconcile(observe(TWO, pods=AFFECTED), SPEC)
    _, _, same = reconcile(observe(TWO, pods=AFFECTED, status=first.status), SPEC)
    assert same.decision is StatusDecision.UNCHANGED and same.patch is None
    assert all(e.reason not in ("Completed", "Running") for e in same.events)
    memory = CheckMemory(written_status=first.status, status_written_at=CLOCK)
    stale_live = {**first.status, "checked": 0}  # the watch has not delivered our write
    _, _, ours = reconcile(observe(TWO, pods=AFFECTED, status=stale_live), SPEC, memory)
    assert ours.decision is StatusDecision.UNCHANGED


def progress(checked: int) -> tuple[list[NodeView], list[Any]]:
    """Ten nodes, ``checked`` of them with an agent result: a run in progress."""
    nodes = [node(f"n{i}") for i in range(10)]
    return nodes, [agent_pod("weekly", f"n{i}", message()) for i in range(checked)]


def test_progress_only_changes_wait_for_the_status_interval() -> None:
    nodes, pods = progress(3)
    _, _, first = reconcile(observe(nodes, pods=pods), SPEC)
    assert first.status["phase"] == "Running"
    nodes, pods = progress(4)
    memory = CheckMemory(written_status=first.status, status_written_at=CLOCK)
    _, _, soon = reconcile(observe(nodes, pods=pods, status=first.status), SPEC, memory,
                           clock=CLOCK + 4.9)
    assert soon.decision is StatusDecision.WAIT and soon.patch is None
    assert soon.status["checked"] == 4
    _, _, later = reconcile(observe(nodes, pods=pods, status=first.status), SPEC, memory,
                            clock=CLOCK + 5.0)
    assert later.decision is StatusDecision.WRITE and later.patch is not None
    assert later.patch["checked"] == 4
    assert [e.reason for e in later.events if e.node is None] == []  # same phase: no Event


def test_a_phase_change_is_written_at_once_with_its_event() -> None:
    nodes, pods = progress(9)
    _, _, first = reconcile(observe(nodes, pods=pods), SPEC)
    nodes, pods = progress(10)
    memory = CheckMemory(written_status=first.status, status_written_at=CLOCK)
    _, _, done = reconcile(observe(nodes, pods=pods, status=first.status), SPEC, memory,
                           clock=CLOCK + 0.1)
    assert done.decision is StatusDecision.WRITE
    assert [e for e in done.events if e.node is None][-1] == Event(
        "Completed", "Completed: 10/10 nodes checked: 0 affected, 0 susceptible, "
        "10 not affected, 0 unknown, 0 errors")


def test_a_condition_change_is_written_at_once() -> None:
    nodes, pods = progress(3)
    _, _, first = reconcile(observe(nodes, pods=pods), SPEC)
    memory = CheckMemory(written_status=first.status, status_written_at=CLOCK)
    paused = parse_spec({"maxConcurrent": 10, "paused": True})
    _, _, now = reconcile(observe(nodes, pods=pods, status=first.status), paused, memory,
                          clock=CLOCK + 0.1)
    assert now.decision is StatusDecision.WRITE


def test_a_never_written_check_writes_progress_at_once() -> None:
    nodes, pods = progress(3)
    _, _, first = reconcile(observe(nodes, pods=pods), SPEC)
    nodes, pods = progress(4)
    fresh = CheckMemory()  # a restarted operator: written_at is -inf
    assert fresh.status_written_at == -math.inf
    _, _, now = reconcile(observe(nodes, pods=pods, status=first.status), SPEC, fresh)
    assert now.decision is StatusDecision.WRITE


def test_the_patch_removes_keys_the_new_status_lacks() -> None:
    _, _, finish = reconcile(observe(TWO, pods=AFFECTED, status={"phase": "Running",
                                                                 "lastRunAt": "x",
                                                                 "legacy": 1}),
                             parse_spec({"mode": "preflight"}))
    assert finish.patch is not None
    assert finish.patch["legacy"] is None and finish.patch["lastRunAt"] is None


def test_degraded_is_a_warning_phase_event() -> None:
    broken = [agent_pod("weekly", "n1", message("error")),
              agent_pod("weekly", "n2", message())]
    _, _, finish = reconcile(observe(TWO, pods=broken), SPEC)
    (phase,) = [e for e in finish.events if e.reason == "Degraded"]
    assert phase.warning and phase.node is None


def test_metrics_count_the_planned_states() -> None:
    _, _, finish = reconcile(observe(TWO, pods=AFFECTED), SPEC)
    assert finish.metrics.by_verdict[Verdict.AFFECTED.value] == 1
    assert finish.metrics.gauges["affected_unmitigated"] == 1
    assert finish.metrics.gauges["interval"] is None
    weekly = parse_spec({"schedule": {"interval": "168h"}})
    _, _, finish = reconcile(observe(TWO, pods=AFFECTED), weekly)
    assert finish.metrics.gauges["interval"] == timedelta(hours=168).total_seconds()


def test_a_write_that_met_a_concurrent_change_plans_again_at_once() -> None:
    _, step, _ = reconcile(observe(TWO, pods=AFFECTED), CORDON)
    (change, *_) = step.remedy.changes
    for refused, replan in ((409, True), (404, True), (403, False), (500, False)):
        _, _, finish = reconcile(observe(TWO, pods=AFFECTED), CORDON,
                                 done=Outcomes(refused=[(change, refused, "x")]))
        assert finish.replan is replan, refused
    _, _, finish = reconcile(observe(TWO, pods=AFFECTED), CORDON,
                             done=Outcomes(budget_failed=True, cordoned=step.stored))
    assert finish.replan
    assert not reconcile(observe(TWO, pods=AFFECTED), CORDON)[2].replan


@pytest.mark.parametrize(("previous", "verdict", "quiet"), [
    (None, "not-affected", True),  # a first, clean verdict: routine
    (None, "affected", False), (None, "susceptible", False), (None, "unknown", False),
    (None, "error", False),
    ("affected", "not-affected", False),  # healed: news
    ("unknown", "not-affected", False), ("not-affected", "susceptible", False),
])
def test_only_a_first_clean_verdict_is_routine(previous: str | None, verdict: str,
                                               quiet: bool) -> None:
    assert routine(previous, verdict) is quiet
