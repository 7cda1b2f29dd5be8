"""Sticky protection (planning.proof): a node proven affected keeps its labels, cordon and
mitigation on that kernel whatever a later run that cannot tell says; only a completed
not-affected run on the same kernel, a deciding result from a new kernel, deselection,
exclusion, remediation turned off, or the ThpCheck's deletion lift them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.operator.factories import BOOT, KERNEL, agent_pod, message, node, result
from thpcheck.contract import names
from thpcheck.contract.checkspec import Remediation
from thpcheck.contract.proof import Proof
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import NodeView, ResultView, result_view
from thpcheck.model.verdict import Verdict
from thpcheck.planning.proof import Run, standing_proof
from thpcheck.planning.remediation import Action, plan_cleanup, plan_remediation
from thpcheck.planning.results import ResultPlan, plan_results

CHECK = CheckRef("weekly", "uid-check")  # the factories' owner uid
NOW = datetime(2026, 11, 28, 17, 0, tzinfo=UTC)
GRACE = timedelta(seconds=30)
FULL = Remediation(label=True, cordon=True, mitigate=True, max_cordoned=1)
PROVEN_AT = "2026-11-28T16:00:00Z"
UNDO = {Action.UNMITIGATE, Action.UNCORDON, Action.UNLABEL}


def protected(**overrides: object) -> NodeView:
    """n1 with every mark a check makes on an affected node: verdict labels, the
    mitigation label and a cordon, each annotated as ours."""
    labels = {names.VERDICT_LABEL: "affected", names.MITIGATED_LABEL: "false",
              names.MITIGATE_LABEL: "true", **overrides.pop("labels", {})}  # type: ignore[dict-item]
    return node("n1", unschedulable=True, labels=labels, annotations={
        names.LABELLED_BY_ANNOTATION: CHECK.name, names.CORDONED_BY_ANNOTATION: CHECK.name,
        names.MITIGATE_BY_ANNOTATION: CHECK.name}, **overrides)  # type: ignore[arg-type]


def proven(n1: NodeView) -> ResultView:
    """The result an affected run wrote (with its proof), as read back from the API."""
    first = plan_results(CHECK, [n1], [agent_pod(CHECK.name, "n1", message("affected"),
                                                 finished_at="2026-11-28T16:00:05Z")],
                         [], {"n1": False}, NOW, GRACE)
    return result_view(first.writes[0].body)


def rerun(n1: NodeView, existing: ResultView, text: str, exit_code: int = 0) -> ResultPlan:
    pod = agent_pod(CHECK.name, "n1", text, finished_at="2026-11-28T16:30:00Z",
                    exit_code=exit_code)
    return plan_results(CHECK, [n1], [pod], [existing], {"n1": False}, NOW, GRACE)


def undone(n1: NodeView, plan: ResultPlan, remediation: Remediation = FULL,
           selected: bool = True) -> dict[Action, str]:
    """The undo actions remediation plans on n1 (and whether its labels would change)."""
    remedy = plan_remediation(CHECK.name, remediation, paused=False,
                              selected=[n1] if selected else [], all_nodes=[n1],
                              states=plan.states, cordoned=["n1"])
    return {a.action: a.reason for a in remedy.planned if a.action in UNDO | {Action.LABEL}}


# -- the pure rule ---------------------------------------------------------------------------


PROOF = Proof(PROVEN_AT, KERNEL, BOOT)


@pytest.mark.parametrize(("run", "stands"), [
    (None, True),
    (Run(Verdict.ERROR, KERNEL, BOOT, "t"), True),
    (Run(Verdict.UNKNOWN, KERNEL, BOOT, "t"), True),
    (Run(Verdict.SUSCEPTIBLE, KERNEL, BOOT, "t"), True),
    (Run(Verdict.ERROR, "", "", "t"), True),  # a crashed run knows no kernel
    (Run(Verdict.AFFECTED, KERNEL, BOOT, "later"), True),
    (Run(Verdict.NOT_AFFECTED, KERNEL, BOOT, "t"), False),
    (Run(Verdict.ERROR, KERNEL, "boot-2", "t"), True),  # rebooted, nothing known yet
    (Run(Verdict.UNKNOWN, "6.12.96", BOOT, "t"), True),
    (Run(Verdict.NOT_AFFECTED, KERNEL, "boot-2", "t"), False),
    (Run(Verdict.SUSCEPTIBLE, "6.12.96", "boot-2", "t"), False),
    (Run(Verdict.NOT_AFFECTED, KERNEL, BOOT, "", predicted=True), True),
    (Run(Verdict.SUSCEPTIBLE, "6.12.96", "boot-2", "", predicted=True), False),
])
def test_which_runs_lift_a_proof(run: Run | None, stands: bool) -> None:
    assert (standing_proof(PROOF, run) == PROOF) is stands


def test_a_proof_is_made_by_an_affected_run_only_and_keeps_its_first_time() -> None:
    assert standing_proof(None, Run(Verdict.AFFECTED, KERNEL, BOOT, PROVEN_AT)) == PROOF
    assert standing_proof(None, Run(Verdict.SUSCEPTIBLE, KERNEL, BOOT, "t")) is None
    assert standing_proof(None, Run(Verdict.AFFECTED, KERNEL, BOOT, "t", predicted=True)) is None
    again = Run(Verdict.AFFECTED, KERNEL, BOOT, "2026-11-29T00:00:00Z")
    assert standing_proof(PROOF, again) == PROOF
    new_kernel = Run(Verdict.AFFECTED, "6.12.96", "boot-2", "2026-11-29T00:00:00Z")
    assert standing_proof(PROOF, new_kernel) == Proof("2026-11-29T00:00:00Z", "6.12.96",
                                                      "boot-2")


# -- through the planners: nothing is lifted by a run that cannot tell ------------------------


INCONCLUSIVE = {
    "error": (message("error"), 0),
    "unknown": (message("unknown"), 0),
    "susceptible": (message("susceptible"), 0),
    "timeout": ("", 137),  # killed at the deadline: no message, exit 137
}


@pytest.mark.parametrize("legacy", [False, True], ids=["proof-recorded", "older-result"])
@pytest.mark.parametrize("outcome", sorted(INCONCLUSIVE))
def test_an_inconclusive_rerun_lifts_nothing(outcome: str, legacy: bool) -> None:
    n1 = protected()
    existing = (result(CHECK.name, "n1", verdict="affected") if legacy else proven(n1))
    text, exit_code = INCONCLUSIVE[outcome]
    plan = rerun(n1, existing, text, exit_code)
    state = plan.states["n1"]
    assert state.verdict is Verdict.AFFECTED
    assert state.latest is (Verdict.SUSCEPTIBLE if outcome == "susceptible"
                            else Verdict(outcome) if outcome != "timeout" else Verdict.ERROR)
    assert undone(n1, plan) == {}  # no Unmitigate, Uncordon, Unlabel, not even a relabel
    (write,) = plan.writes  # the result shows both: the latest run and the standing proof
    status = write.body["status"]
    assert status["verdict"] == state.latest.value
    assert status["proof"]["verdict"] == "affected"
    assert (status["proof"]["kernelRelease"], status["proof"]["bootID"]) == (KERNEL, BOOT)
    assert write.body["metadata"]["labels"][names.VERDICT_LABEL] == "affected"
    # The next reconcile reads the rewritten result back: still protected, nothing to write.
    again = rerun(n1, result_view(write.body), text, exit_code)
    assert again.states["n1"].verdict is Verdict.AFFECTED and not again.writes


def test_without_a_newer_run_the_recorded_proof_holds() -> None:
    n1 = protected()
    existing = proven(n1)
    stored = result_view({**rerun(n1, existing, message("error")).writes[0].body})
    kept = plan_results(CHECK, [n1], [], [stored], {"n1": False}, NOW, GRACE)
    assert kept.states["n1"].verdict is Verdict.AFFECTED
    assert undone(n1, kept) == {}


# -- what lifts it -----------------------------------------------------------------------------


def test_a_completed_not_affected_run_on_the_same_kernel_lifts_everything() -> None:
    n1 = protected()
    plan = rerun(n1, proven(n1), message("not-affected"))
    assert plan.states["n1"].verdict is Verdict.NOT_AFFECTED
    assert "proof" not in plan.writes[0].body["status"]
    actions = undone(n1, plan)
    assert set(actions) == {Action.UNMITIGATE, Action.UNCORDON, Action.LABEL}
    assert actions[Action.LABEL].startswith("verdict not-affected")


def test_a_new_boot_holds_until_its_own_result_decides() -> None:
    n1 = protected()
    existing = proven(n1)
    rebooted = protected(boot_id="boot-2")
    waiting = plan_results(CHECK, [rebooted], [], [existing], {"n1": False}, NOW, GRACE)
    assert waiting.states["n1"].verdict is Verdict.AFFECTED and waiting.states["n1"].stale
    assert undone(rebooted, waiting) == {}
    errored = rerun(rebooted, existing, message("error", boot_id="boot-2"))
    assert undone(rebooted, errored) == {}
    fixed = rerun(rebooted, existing, message("not-affected", kernel="6.12.96",
                                              boot_id="boot-2"))
    assert set(undone(rebooted, fixed)) == {Action.UNMITIGATE, Action.UNCORDON, Action.LABEL}


@pytest.mark.parametrize("lift", ["deselected", "excluded", "remediation off", "deleted"])
def test_leaving_scope_lifts_the_protection_of_a_proven_node(lift: str) -> None:
    n1 = protected()
    existing = proven(n1)
    if lift == "deleted":
        (change,) = plan_cleanup(CHECK.name, [n1])
        assert {a.action for a in change.actions} == UNDO
        return
    target = protected(labels={names.EXCLUDE_LABEL: "true"}) if lift == "excluded" else n1
    plan = rerun(target, existing, message("error"))
    assert plan.states["n1"].verdict is Verdict.AFFECTED  # the proof itself stands
    remediation = Remediation(label=False, cordon=False, mitigate=False) \
        if lift == "remediation off" else FULL
    actions = undone(target, plan, remediation, selected=lift != "deselected")
    assert set(actions) == UNDO
