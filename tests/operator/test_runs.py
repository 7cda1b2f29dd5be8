"""Every run ends (pure): kubelet-shaped pod statuses -> failures, blocked nodes, stuck slots,
error results, the widened rollout and a status that names what is stuck."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.operator.factories import message, node, result
from thpcheck.contract import names
from thpcheck.contract.agent import WorkloadConfig
from thpcheck.contract.checkspec import parse_spec
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import (
    AgentPodView,
    DaemonSetView,
    agent_pod_view,
    node_view,
    result_view,
)
from thpcheck.model.verdict import Verdict
from thpcheck.planning.results import plan_results
from thpcheck.planning.rollout import Step, plan_rollout
from thpcheck.planning.runs import (
    DEADLINE_EXCEEDED,
    NODE_NOT_READY,
    UNSCHEDULABLE,
    Outcome,
    default_deadline,
    plan_runs,
    run_deadline,
)
from thpcheck.planning.status import StatusInputs, build_status

CHECK = CheckRef("weekly", "uid-check")
RUN = "2026-11-28T16:00:00Z"
NOW = datetime(2026, 11, 28, 16, 10, tzinfo=UTC)
DEADLINE = timedelta(minutes=15)
GRACE = timedelta(seconds=30)
DS = DaemonSetView(name="thpcheck-weekly", template="check", run=RUN, desired=3, updated=3)
CONFIG = WorkloadConfig(namespace="thp-checker", image="img:1")


def check_pod(node_name: str, *, check: dict[str, Any] | None = None,
              idle: dict[str, Any] | None = None, template: str = "check",
              created: str = "2026-11-28T16:00:01Z", conditions: list[dict[str, Any]] | None = None,
              uid: str = "") -> AgentPodView:
    """An agent pod as the kubelet reports it: ``check`` is the check init container's
    status entry (without its name), ``idle`` the main container's."""
    status: dict[str, Any] = {"phase": "Pending", "conditions": conditions or []}
    if check is not None:
        status["initContainerStatuses"] = [{"name": "check", **check}]
    if idle is not None:
        status["containerStatuses"] = [{"name": "idle", **idle}]
    return agent_pod_view({
        "metadata": {"name": f"p-{node_name}", "namespace": "thp-checker",
                     "uid": uid or f"uid-{node_name}", "creationTimestamp": created,
                     "labels": {names.TEMPLATE_LABEL: template},
                     "annotations": {names.CHECK_NAME_ANNOTATION: "weekly",
                                     names.RUN_ANNOTATION: RUN if template == "check" else ""}},
        "spec": {"nodeName": node_name},
        "status": status,
    })


def running(since: str = "2026-11-28T16:00:02Z") -> dict[str, Any]:
    return {"state": {"running": {"startedAt": since}}}


def crash_looping(exit_code: int = 1, reason: str = "Error", text: str = "Traceback ...") -> dict:
    return {"restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff",
                                  "message": "back-off 40s restarting failed container=check"}},
            "lastState": {"terminated": {"exitCode": exit_code, "reason": reason,
                                         "message": text,
                                         "finishedAt": "2026-11-28T16:05:00Z"}}}


def waiting(reason: str, text: str = "") -> dict[str, Any]:
    return {"state": {"waiting": {"reason": reason, "message": text or f"{reason} happened"}}}


def not_ready(name: str) -> Any:
    return node_view({"metadata": {"name": name, "uid": f"uid-{name}"},
                      "status": {"conditions": [{"type": "Ready", "status": "False"}]}})


# -- the kubelet's states ----------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "reason"), [
    (crash_looping(), "CrashLoopBackOff"),
    (crash_looping(137, "OOMKilled", ""), "OOMKilled"),
    (waiting("ImagePullBackOff", 'Back-off pulling image "img:1"'), "ImagePullBackOff"),
    (waiting("CreateContainerConfigError", 'secret "x" not found'),
     "CreateContainerConfigError"),
    (waiting("CreateContainerError", "context deadline exceeded"), "CreateContainerError"),
    ({"state": {"running": {"startedAt": "2026-11-28T16:05:10Z"}},
      "lastState": {"terminated": {"exitCode": 2, "reason": "Error"}}}, "CrashLoopBackOff"),
])
def test_a_check_container_that_cannot_run_is_a_failed_run_at_once(
        entry: dict[str, Any], reason: str) -> None:
    pod = check_pod("n1", check=entry)
    plan = plan_runs([node("n1")], [pod], DS, NOW, DEADLINE)
    failure = plan.failures["n1"]
    assert (failure.reason, failure.outcome) == (reason, Outcome.CRASHED)
    assert plan.stuck == 1 and not plan.blocked


def test_oom_killed_terminated_state_is_an_error_result_naming_it() -> None:
    entry = {"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                      "finishedAt": "2026-11-28T16:05:00Z"}}}
    pod = check_pod("n1", check=entry)
    assert pod.run is not None and pod.run.result is not None
    assert pod.run.result.verdict is Verdict.ERROR
    assert pod.run.result.problem is not None and "OOMKilled" in pod.run.result.problem
    write = plan_results(CHECK, [node("n1")], [pod], [], {}, NOW, GRACE).writes[0]
    assert write.verdict is Verdict.ERROR and write.outcome == "crashed"


def test_waiting_to_start_normally_is_no_failure() -> None:
    pods = [check_pod("n1", check=waiting("PodInitializing")),
            check_pod("n2", check=running()),
            check_pod("n3", check=waiting("ContainerCreating"))]
    plan = plan_runs([node("n1"), node("n2"), node("n3")], pods, DS, NOW, DEADLINE)
    assert not plan.failures and not plan.blocked and plan.stuck == 0


def test_a_run_past_its_deadline_times_out_and_a_finished_one_never_does() -> None:
    hung = check_pod("n1", check=running("2026-11-28T15:40:00Z"))
    done = check_pod("n2", check={"state": {"terminated": {
        "exitCode": 0, "message": message(), "finishedAt": "2026-11-28T15:41:00Z"}}},
        created="2026-11-28T15:00:00Z")
    plan = plan_runs([node("n1"), node("n2")], [hung, done], DS, NOW, DEADLINE)
    assert plan.failures["n1"].reason == DEADLINE_EXCEEDED
    assert plan.failures["n1"].outcome is Outcome.TIMED_OUT
    assert "15m" in plan.failures["n1"].detail
    assert "n2" not in plan.failures


def test_the_deadline_counts_from_the_current_attempt_not_the_pods_age() -> None:
    # A reboot re-runs the init container of a days-old pod: Initialized goes False then.
    rebooted = check_pod("n1", check=waiting("PodInitializing"), created="2026-11-20T00:00:00Z",
                         conditions=[{"type": "Initialized", "status": "False",
                                      "lastTransitionTime": "2026-11-28T16:09:00Z"}])
    assert not plan_runs([node("n1")], [rebooted], DS, NOW, DEADLINE).failures


def test_a_notready_node_is_blocked_holds_a_slot_and_times_out_at_the_deadline() -> None:
    early = check_pod("n1", check=running("2026-11-28T16:05:00Z"))
    plan = plan_runs([not_ready("n1")], [early], DS, NOW, DEADLINE)
    assert plan.blocked["n1"].reason == NODE_NOT_READY and plan.stuck == 1
    late = check_pod("n1", check=running("2026-11-28T15:50:00Z"))
    plan = plan_runs([not_ready("n1")], [late], DS, NOW, DEADLINE)
    assert plan.failures["n1"].reason == DEADLINE_EXCEEDED
    assert "NotReady" in plan.failures["n1"].detail
    # A NotReady node still holds a slot once its run is done (its pod is not Ready).
    finished = check_pod("n1", check={"state": {"terminated": {
        "exitCode": 0, "message": message(), "finishedAt": "2026-11-28T16:01:00Z"}}})
    plan = plan_runs([not_ready("n1")], [finished], DS, NOW, DEADLINE)
    assert not plan.blocked and not plan.failures and plan.stuck == 1


def test_an_unschedulable_pod_is_blocked_then_ends_unschedulable() -> None:
    conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                   "message": "0/9 nodes are available: 1 Insufficient cpu."}]
    fresh = check_pod("n1", conditions=conditions, created="2026-11-28T16:09:00Z")
    plan = plan_runs([node("n1")], [fresh], DS, NOW, DEADLINE)
    assert plan.blocked["n1"].reason == UNSCHEDULABLE and plan.stuck == 1
    assert "Insufficient cpu" in plan.blocked["n1"].detail
    old = check_pod("n1", conditions=conditions, created="2026-11-28T15:00:00Z")
    failure = plan_runs([node("n1")], [old], DS, NOW, DEADLINE).failures["n1"]
    assert (failure.reason, failure.outcome) == (UNSCHEDULABLE, Outcome.UNSCHEDULABLE)


def test_only_pods_of_the_current_revision_hold_a_slot() -> None:
    # An old crash-looping pod is replaced by the DaemonSet at no cost: not stuck.
    old = check_pod("n1", check=crash_looping())
    newer_run = DaemonSetView(name="thpcheck-weekly", template="check", run="2026-11-29T00:00:00Z")
    plan = plan_runs([node("n1")], [old], newer_run, NOW, DEADLINE)
    assert plan.failures and plan.stuck == 0
    # A standby pod whose idle container cannot be pulled blocks the run's start otherwise.
    standby = check_pod("n2", template="standby", idle=waiting("ImagePullBackOff"))
    on_standby = DaemonSetView(name="thpcheck-weekly", template="standby", run="")
    plan = plan_runs([node("n2")], [standby], on_standby, NOW, DEADLINE)
    assert not plan.failures and plan.stuck == 1


def test_the_newest_pod_of_a_node_is_the_current_one() -> None:
    old = check_pod("n1", check=crash_looping(), created="2026-11-28T15:00:00Z", uid="old")
    new = check_pod("n1", check=running(), created="2026-11-28T16:09:00Z", uid="new")
    assert not plan_runs([node("n1")], [old, new], DS, NOW, DEADLINE).failures


# -- the deadline --------------------------------------------------------------------------


def test_the_default_deadline_grows_with_the_reproducer() -> None:
    assert default_deadline(parse_spec({})) == timedelta(minutes=15)
    big = parse_spec({"reproducer": {"iterations": 2000, "baseSizeBytes": 1 << 30},
                      "paths": ["/a", "/b"]})
    # 5m + 2 paths x (16 x 1m + 2000 x 2s)
    assert default_deadline(big) == timedelta(minutes=5) + 2 * (
        timedelta(minutes=16) + timedelta(seconds=4000))
    assert default_deadline(parse_spec({"reproducer": {"enabled": False}})) == timedelta(
        minutes=15)
    assert run_deadline(parse_spec({"runDeadline": "45s"})) == timedelta(seconds=45)


# -- error results -------------------------------------------------------------------------


def test_a_failed_run_is_written_once_as_an_error_result_naming_the_reason() -> None:
    pod = check_pod("n1", check=crash_looping(137, "OOMKilled"))
    failures = plan_runs([node("n1")], [pod], DS, NOW, DEADLINE).failures
    plan = plan_results(CHECK, [node("n1")], [pod], [], {}, NOW, GRACE, failures)
    (write,) = plan.writes
    assert write.verdict is Verdict.ERROR and write.outcome == "crashed" and write.new_run
    status = write.body["status"]
    assert status["message"].startswith("OOMKilled: the container ran out of memory")
    assert status["pod"] == {"name": "p-n1", "uid": "uid-n1"}
    assert status["checkedAt"] == "2026-11-28T16:00:01Z"
    # Recorded: the next crash of the same pod (a new back-off message) writes nothing.
    stored = result_view(write.body | {"metadata": {**write.body["metadata"],
                                                    "resourceVersion": "5"}})
    again = check_pod("n1", check=crash_looping(137, "OOMKilled", "other tail"))
    failures = plan_runs([node("n1")], [again], DS, NOW, DEADLINE).failures
    plan = plan_results(CHECK, [node("n1")], [again], [stored], {}, NOW, GRACE, failures)
    assert not plan.writes and plan.states["n1"].verdict is Verdict.ERROR


def test_a_failure_replaces_an_older_runs_result_and_a_later_success_replaces_it() -> None:
    older = result("weekly", "n1", verdict="not-affected")
    pod = check_pod("n1", check=waiting("ImagePullBackOff"))
    failures = plan_runs([node("n1")], [pod], DS, NOW, DEADLINE).failures
    (write,) = plan_results(CHECK, [node("n1")], [pod], [older], {}, NOW, GRACE,
                            failures).writes
    assert write.previous_verdict == "not-affected" and write.verdict is Verdict.ERROR
    healed = check_pod("n1", check={"state": {"terminated": {
        "exitCode": 0, "message": message("affected"),
        "finishedAt": "2026-11-28T16:08:00Z"}}})
    failures = plan_runs([node("n1")], [healed], DS, NOW, DEADLINE).failures
    assert not failures
    (write,) = plan_results(CHECK, [node("n1")], [healed], [], {}, NOW, GRACE, failures).writes
    assert write.verdict is Verdict.AFFECTED and write.outcome == "completed"


# -- the rollout -----------------------------------------------------------------------------


def test_stuck_nodes_widen_max_unavailable_without_touching_the_pod_template() -> None:
    spec = parse_spec({"maxConcurrent": "10%"})
    calm = plan_rollout(spec, CHECK, CONFIG, None, NOW, 40)
    widened = plan_rollout(spec, CHECK, CONFIG, None, NOW, 40, stuck=3)
    strategy = widened.body["spec"]["updateStrategy"]["rollingUpdate"]  # type: ignore[index]
    assert calm.body["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"  # type: ignore[index]
    assert strategy["maxUnavailable"] == 4 + 3
    assert calm.body["spec"]["template"] == widened.body["spec"]["template"]  # type: ignore[index]


def test_an_existing_daemonset_is_patched_when_the_stuck_count_changes() -> None:
    spec = parse_spec({"maxConcurrent": 1})
    body = plan_rollout(spec, CHECK, CONFIG, None, NOW, 5).body
    assert body is not None
    observed = DaemonSetView(name="thpcheck-weekly", generation=1, observed_generation=1,
                             template="standby", run="", desired=5, updated=5, available=3,
                             template_hash=body["metadata"]["annotations"][
                                 names.TEMPLATE_HASH_ANNOTATION])
    assert plan_rollout(spec, CHECK, CONFIG, observed, NOW, 5).step is Step.NONE
    assert plan_rollout(spec, CHECK, CONFIG, observed, NOW, 5, stuck=1).step is Step.UPDATE


def test_stuck_standby_pods_do_not_hold_back_the_start_of_the_run() -> None:
    spec = parse_spec({"maxConcurrent": 1})
    standby = DaemonSetView(name="thpcheck-weekly", generation=1, observed_generation=1,
                            template="standby", desired=5, updated=5, available=4)
    assert plan_rollout(spec, CHECK, CONFIG, standby, NOW, 5).step is not Step.START_RUN
    assert plan_rollout(spec, CHECK, CONFIG, standby, NOW, 5, stuck=1).step is Step.START_RUN


# -- the status names what is stuck ----------------------------------------------------------


def status_of(**kw: Any) -> dict[str, Any]:
    from thpcheck.planning.states import NodeState

    selected = kw.pop("selected", ["n1", "n2", "n3"])
    verdicts = kw.pop("verdicts", {})
    states = {n: NodeState(n, Verdict(verdicts[n]) if n in verdicts else None) for n in selected}
    return build_status(StatusInputs(generation=1, selected=selected, states=states, now=NOW,
                                     **kw))


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_degraded_names_up_to_five_nodes_and_their_reasons() -> None:
    failed = {f"n{i}": "CrashLoopBackOff" for i in range(7)}
    status = status_of(selected=list(failed), verdicts=dict.fromkeys(failed, "error"),
                       failed=failed)
    degraded = conditions(status)["Degraded"]
    assert (status["phase"], degraded["status"], degraded["reason"]) == (
        "Degraded", "True", "RunsFailed")
    assert ("7 runs ended without a result: n0 (CrashLoopBackOff), n1 (CrashLoopBackOff), "
            "n2 (CrashLoopBackOff), n3 (CrashLoopBackOff), n4 (CrashLoopBackOff) and 2 more"
            ) in degraded["message"]


def test_a_run_left_with_only_blocked_nodes_is_stalled_and_degraded() -> None:
    status = status_of(verdicts={"n1": "not-affected", "n2": "not-affected"},
                       blocked={"n3": NODE_NOT_READY})
    found = conditions(status)
    assert status["phase"] == "Degraded"
    assert (found["Progressing"]["status"], found["Progressing"]["reason"]) == (
        "False", "RunStalled")
    assert "n3 (NodeNotReady)" in found["Progressing"]["message"]
    assert found["Degraded"]["reason"] == "NodesBlocked"
    # While other nodes can still be checked, the run is in progress.
    busy = status_of(verdicts={"n1": "not-affected"}, blocked={"n3": NODE_NOT_READY})
    assert conditions(busy)["Progressing"]["reason"] == "RunInProgress"


def test_a_rejected_daemonset_is_degraded_with_the_apis_message() -> None:
    status = status_of(rolling_out=True, rollout_error='DaemonSet.apps "x" is invalid: bad')
    found = conditions(status)
    assert found["Degraded"]["reason"] == "DaemonSetRejected"
    assert 'DaemonSet.apps "x" is invalid: bad' in found["Degraded"]["message"]
    assert (found["Progressing"]["status"], found["Progressing"]["reason"]) == (
        "False", "DaemonSetRejected")


def test_untrusted_results_are_a_condition_naming_them() -> None:
    quiet = conditions(status_of())["UntrustedResults"]
    assert (quiet["status"], quiet["reason"]) == ("False", "None")
    found = conditions(status_of(untrusted={"weekly.n9": "no controller owner reference"}))
    assert found["UntrustedResults"]["status"] == "True"
    assert "weekly.n9 (no controller owner reference)" in found["UntrustedResults"]["message"]
