"""From agent pods to ThpNodeResults: which result each node should have, and which writes
bring the observed results there.

Level-based, so a restarted operator neither loses nor duplicates anything: result names are
deterministic, and a result is rewritten only when its content hash (over what came from the
pod, and the preflight prediction recorded beside it) differs, or patched when only
``mitigated``/``stale`` changed. In ``mode: preflight`` the prediction is the whole result
(``plan_predicted_results``), rewritten when the node's kernel or OS image changes.

A standing proof (``planning.proof``) is recorded beside the latest run as ``status.proof``: the
node's state, and the ``thpcheck.io/verdict`` labels, carry the proof's ``affected`` while it
stands, whatever the latest run says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from thpcheck import __version__
from thpcheck.contract import names
from thpcheck.contract.agent import CHECK
from thpcheck.contract.proof import Proof
from thpcheck.contract.refs import CheckRef, hash_of
from thpcheck.contract.views import (
    OOM_KILLED,
    AgentPodView,
    CheckRun,
    NodeView,
    ResultView,
    filesystems_of,
)
from thpcheck.model.preflight import NodePrediction
from thpcheck.model.result import VERDICTS, AgentResult, error_result
from thpcheck.model.text import clip_bytes
from thpcheck.model.timestamps import format_time, parse_time
from thpcheck.model.verdict import Verdict
from thpcheck.planning.prediction import disagreement, node_record, predict_view
from thpcheck.planning.proof import Run, effective_verdict, recorded_proof, standing_proof
from thpcheck.planning.runs import Failure, Outcome
from thpcheck.planning.states import NodeState

MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class ResultWrite:
    """Create (no ``existing``) or replace a result with ``body``."""

    name: str
    node: str
    body: dict[str, Any]
    previous_verdict: str | None
    verdict: Verdict
    create: bool
    duration_seconds: float | None
    before: str = ""  # the observed result's resourceVersion ("" when creating)
    new_run: bool = True  # an agent run this result had not recorded yet (or a prediction)
    disagreement: str = ""  # the agent contradicts the prediction (see planning.prediction)
    previous_disagreement: str = ""
    outcome: str = ""  # how the run ended (planning.runs.Outcome); "" for predictions


@dataclass(frozen=True)
class ResultPatch:
    """Only ``mitigated``/``stale`` changed: a small merge patch."""

    name: str
    node: str
    patch: dict[str, Any]
    before: str = ""  # the observed result's resourceVersion


@dataclass(frozen=True)
class ResultPlan:
    writes: list[ResultWrite]
    patches: list[ResultPatch]
    deletes: list[str]
    states: dict[str, NodeState]
    pending: list[str]  # nodes with a finished pod but no result yet (awaiting the message)
    # Selected nodes whose current result contradicts its prediction, and why.
    disagreements: dict[str, str] = field(default_factory=dict)
    # Results claiming to be the check's that the operator did not write (name -> why): they
    # are neither used, nor rewritten, nor deleted.
    untrusted: dict[str, str] = field(default_factory=dict)


def summary(result: AgentResult) -> str:
    """One line: the problem for errors, else each path's verdict and rule."""
    parts = [result.problem] if result.problem else []
    for path in result.paths:
        detail = f"{path.path} {path.fstype or '?'} {path.verdict.value}"
        if path.rule:
            detail += f" ({path.rule})"
        if path.reason:
            detail += f": {path.reason}"
        parts.append(detail)
    if result.truncated:
        parts.append("some path detail was dropped to fit the termination message")
    return clip_bytes("; ".join(parts) or result.verdict.value, MESSAGE_LIMIT)


def _drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


def is_stale(kernel_release: str | None, boot_id: str | None, node: NodeView) -> bool:
    """The node booted another kernel, or rebooted, since the check (when both are known)."""
    if kernel_release and node.kernel_version and kernel_release != node.kernel_version:
        return True
    return bool(boot_id and node.boot_id and boot_id != node.boot_id)


def result_content(check: CheckRef, node: NodeView, pod: AgentPodView,
                   result: AgentResult,
                   prediction: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The pod-derived part of a result's status, with the prediction recorded beside it
    (hashed to detect changes)."""
    run = pod.run
    return _drop_none({
        "node": node.name,
        "check": check.name,
        "predicted": False,
        "prediction": dict(prediction) if prediction is not None else None,
        **result.to_status(),
        "osImage": node.os_image or None,
        "checkedAt": result.checked_at or (run.finished_at if run else None) or None,
        "message": summary(result),
        "pod": _drop_none({"name": pod.name, "uid": pod.uid,
                           "finishedAt": (run.finished_at if run else None) or None,
                           "exitCode": run.exit_code if run else None}),
    })


def result_labels(check: CheckRef, node: str, verdict: Verdict) -> dict[str, str]:
    return {names.CHECK_LABEL: names.label_value(check.name),
            names.NODE_LABEL: names.label_value(node),
            names.VERDICT_LABEL: verdict.value,
            names.MANAGED_BY: names.MANAGER}


def result_body(check: CheckRef, node: NodeView, content: Mapping[str, Any], *,
                mitigated: bool, stale: bool) -> dict[str, Any]:
    """A whole ThpNodeResult, owned by the ThpCheck (controller) and the Node. Its verdict
    label is the standing proof's while there is one (``planning.proof``)."""
    verdict = Verdict((content.get("proof") or content)["verdict"])
    labels = result_labels(check, node.name, verdict)
    owners = [check.owner_reference()]
    if node.uid:
        owners.append({"apiVersion": "v1", "kind": "Node", "name": node.name,
                       "uid": node.uid, "blockOwnerDeletion": False})
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.RESULT_KIND,
        "metadata": {
            "name": names.result_name(check.name, node.name),
            "labels": labels,
            "annotations": {names.CONTENT_HASH_ANNOTATION: hash_of([labels, content])},
            "ownerReferences": owners,
        },
        "status": {**content, "mitigated": mitigated, "stale": stale},
    }


def predicted_content(check: CheckRef, node: NodeView,
                      prediction: NodePrediction) -> dict[str, Any]:
    """A ``mode: preflight`` result's status from the prediction alone (hashed; ``checkedAt``
    is added at write time, so an unchanged prediction is never rewritten)."""
    config = prediction.config
    return _drop_none({
        "node": node.name,
        "check": check.name,
        "verdict": prediction.verdict.value,
        "predicted": True,
        "prediction": node_record(node),
        "kernelRelease": node.kernel_version or None,
        "osImage": node.os_image or None,
        "readOnlyThpForFs": config.read_only_thp,
        "configSource": config.source,
        "agentVersion": __version__,
        "message": clip_bytes(f"predicted from kernel and OS image ({prediction.confidence}): "
                              f"{prediction.reason}", MESSAGE_LIMIT),
    })


def untrusted_reason(view: ResultView, check: CheckRef) -> str:
    """Why a result that names ``check`` in its status was not written by this operator for
    that check ("" if it was): the operator always sets a controller ownerReference to the
    ThpCheck (with its uid), and the name, labels and content hash it derives from the
    status."""
    if not view.owner_uid:
        return f"no controller owner reference to ThpCheck {check.name}"
    if view.owner_uid != check.uid:
        return (f"its owner reference is to another ThpCheck {check.name} (uid "
                f"{view.owner_uid}, not {check.uid})")
    return view.mismatch


def trusted_results(check: CheckRef, observed: Iterable[ResultView],
                    untrusted: dict[str, str]) -> dict[str, ResultView]:
    """The check's own results by node; the others go into ``untrusted`` (name -> why)."""
    results: dict[str, ResultView] = {}
    for view in observed:
        why = untrusted_reason(view, check)
        if why:
            untrusted[view.name] = why
        else:
            results[view.node] = view
    return results


def run_id(pod: AgentPodView) -> str:
    """Identifies an agent run (recorded as the result's pod uid and finish time)."""
    return f"{pod.uid}/{pod.run.finished_at if pod.run else ''}"


def run_outcome(run: CheckRun | None) -> Outcome:
    if run is not None and (run.reason == OOM_KILLED or run.exit_code not in (0, None)):
        return Outcome.CRASHED
    return Outcome.COMPLETED


def failure_result(failure: Failure) -> AgentResult:
    """The ``error`` result of a run that ended without the agent's: the reason, and the
    attempt's start as ``checkedAt`` (stable, so the result is written once per attempt)."""
    pod = failure.pod
    return replace(error_result(failure.message),
                   checked_at=pod.started_at or pod.created_at or None)


def stored_proof(existing: ResultView | None) -> Proof | None:
    """The proof a stored result records (``planning.proof.recorded_proof``)."""
    if existing is None:
        return None
    return recorded_proof(existing.proof, existing.verdict, predicted=existing.predicted,
                          kernel_release=existing.kernel_release, boot_id=existing.boot_id,
                          checked_at=existing.checked_at)


def record_proof(content: dict[str, Any], proof: Proof | None) -> None:
    """Put the standing proof beside the run (hashed with it: a lifted proof rewrites)."""
    if proof is not None:
        content["proof"] = proof.to_status()


def node_state(node: str, latest: Verdict, proof: Proof | None, *, mitigated: bool,
               stale: bool, filesystems: tuple[str, ...] = ()) -> NodeState:
    verdict = effective_verdict(latest, proof)
    return NodeState(node, verdict, mitigated, stale,
                     latest=latest if latest is not verdict else None, proof=proof,
                     filesystems=filesystems)


def latest_run(pods: Iterable[AgentPodView]) -> AgentPodView | None:
    """The check pod whose check container finished last (standby pods check nothing)."""
    finished = [p for p in pods if p.template == CHECK and p.run is not None]
    return max(finished, key=lambda p: p.run.finished_at if p.run else "", default=None)


def _pod_result(pod: AgentPodView, now: datetime, grace: timedelta) -> AgentResult | None:
    """The pod's result; None while an empty exit-0 message may still be filled in."""
    run = pod.run
    if run is None:
        return None
    if run.result is not None:
        return run.result
    finished = parse_time(run.finished_at)
    if finished is not None and now - finished < grace:
        return None
    return error_result("the check container exited 0 without writing a result")


def plan_results(check: CheckRef, selected: Sequence[NodeView],
                 pods: Iterable[AgentPodView], observed: Iterable[ResultView],
                 mitigated_by_pod: Mapping[str, bool], now: datetime,
                 grace: timedelta, failures: Mapping[str, Failure] | None = None) -> ResultPlan:
    """The writes that make every selected node's result match its latest agent run.

    ``mitigated_by_pod`` maps nodes labelled for mitigation to their mitigation pod's
    readiness; other nodes take ``mitigated`` from the agent's own report. ``failures`` are
    current runs that ended without the agent's result (``planning.runs.plan_runs``): each
    becomes an ``error`` result naming the reason, written once per attempt. Results of nodes
    no longer selected, or deleted, are deleted: the garbage collector cannot do it while
    the ThpCheck exists, because it only collects an object once *all* its owners are gone.
    Results the operator did not write are ignored (``ResultPlan.untrusted``).
    """
    by_node: dict[str, list[AgentPodView]] = {}
    for agent_pod in pods:
        by_node.setdefault(agent_pod.node, []).append(agent_pod)
    plan = ResultPlan([], [], [], {}, [])
    results = trusted_results(check, observed, plan.untrusted)
    failures = failures or {}
    for node in selected:
        existing = results.get(node.name)
        failure = failures.get(node.name)
        if failure is not None:
            pod: AgentPodView | None = failure.pod
            result: AgentResult | None = failure_result(failure)
            outcome = failure.outcome
            if existing is not None and existing.run == run_id(failure.pod):
                result = None  # this attempt's failure is recorded already
        else:
            pod = latest_run(by_node.get(node.name, ()))
            result = _pod_result(pod, now, grace) if pod else None
            outcome = run_outcome(pod.run if pod else None)
        if pod is not None and result is None and pod.run is not None:
            plan.pending.append(node.name)
        if result is None or pod is None:
            if existing is None:
                plan.states[node.name] = NodeState(node.name, None)
                continue
            _keep(plan, node, existing, mitigated_by_pod)
            continue
        mitigated = mitigated_by_pod.get(node.name, result.mitigated)
        stale = is_stale(result.kernel_release, result.boot_id, node)
        prediction = predict_view(node)
        why = disagreement(prediction, result, node.kernel_version) or ""
        content = result_content(check, node, pod, result, node_record(node, why))
        proof = standing_proof(stored_proof(existing), Run(
            result.verdict, result.kernel_release or "", result.boot_id or "",
            str(content.get("checkedAt") or "")))
        record_proof(content, proof)
        body = result_body(check, node, content, mitigated=mitigated, stale=stale)
        digest = body["metadata"]["annotations"][names.CONTENT_HASH_ANNOTATION]
        plan.states[node.name] = node_state(node.name, result.verdict, proof,
                                            mitigated=mitigated, stale=stale,
                                            filesystems=filesystems_of(content.get("paths")))
        if why:
            plan.disagreements[node.name] = why
        if existing is None or existing.content_hash != digest:
            durations = [p.duration_seconds for p in result.paths
                         if p.duration_seconds is not None]
            run = run_id(pod)
            plan.writes.append(ResultWrite(
                name=body["metadata"]["name"], node=node.name, body=body,
                previous_verdict=(existing.verdict if existing and not existing.predicted
                                  else None),
                verdict=result.verdict, create=existing is None,
                duration_seconds=sum(durations) if durations else None,
                before=existing.resource_version if existing else "",
                new_run=existing is None or existing.run != run, disagreement=why,
                previous_disagreement=existing.disagreement if existing else "",
                outcome=outcome.value))
        else:
            _refresh_flags(plan, existing, mitigated, stale)
    node_names = {n.name for n in selected}
    plan.deletes.extend(r.name for r in results.values() if r.node not in node_names)
    return plan


def _keep(plan: ResultPlan, node: NodeView, existing: ResultView,
          mitigated_by_pod: Mapping[str, bool]) -> None:
    """No newer run: keep the result, refreshing only ``mitigated`` and ``stale``. A result
    left by ``mode: preflight`` is kept (its verdict keeps the node's labels) but counts as
    stale until the agent's result replaces it; the object itself is not patched for that."""
    mitigated = mitigated_by_pod.get(node.name, existing.mitigated)
    stale = is_stale(existing.kernel_release, existing.boot_id, node)
    verdict = VERDICTS.get(existing.verdict or "", Verdict.ERROR)
    plan.states[node.name] = node_state(node.name, verdict, stored_proof(existing),
                                        mitigated=mitigated, stale=stale or existing.predicted,
                                        filesystems=existing.filesystems)
    if existing.disagreement:
        plan.disagreements[node.name] = existing.disagreement
    _refresh_flags(plan, existing, mitigated, stale)


def _refresh_flags(plan: ResultPlan, existing: ResultView, mitigated: bool, stale: bool) -> None:
    """Patch only ``status.mitigated`` and ``status.stale``, and only when either changed."""
    if (existing.mitigated, existing.stale) != (mitigated, stale):
        plan.patches.append(ResultPatch(existing.name, existing.node, {
            "status": {"mitigated": mitigated, "stale": stale}}, existing.resource_version))


def plan_predicted_results(check: CheckRef, selected: Sequence[NodeView],
                           observed: Iterable[ResultView],
                           mitigated_by_pod: Mapping[str, bool], now: datetime) -> ResultPlan:
    """``mode: preflight``: every selected node's result is its prediction from
    ``status.nodeInfo``, rewritten only when the prediction's inputs or outcome change (a new
    kernel or OS image, or a new model version). No pod is involved; ``mitigated`` still
    comes from a mitigation pod another check may run on the node. Results of nodes no
    longer selected are deleted, as in full mode."""
    plan = ResultPlan([], [], [], {}, [])
    results = trusted_results(check, observed, plan.untrusted)
    written_at = format_time(now)
    for node in selected:
        existing = results.get(node.name)
        prediction = predict_view(node)
        mitigated = mitigated_by_pod.get(node.name, False)
        content = predicted_content(check, node, prediction)
        proof = standing_proof(stored_proof(existing), Run(
            prediction.verdict, node.kernel_version, node.boot_id, "", predicted=True))
        record_proof(content, proof)
        body = result_body(check, node, content, mitigated=mitigated, stale=False)
        digest = body["metadata"]["annotations"][names.CONTENT_HASH_ANNOTATION]
        plan.states[node.name] = node_state(node.name, prediction.verdict, proof,
                                            mitigated=mitigated, stale=False)
        if existing is None or existing.content_hash != digest:
            body["status"]["checkedAt"] = written_at
            plan.writes.append(ResultWrite(
                name=body["metadata"]["name"], node=node.name, body=body,
                previous_verdict=existing.verdict if existing else None,
                verdict=prediction.verdict, create=existing is None, duration_seconds=None,
                before=existing.resource_version if existing else "", new_run=False,
                previous_disagreement=existing.disagreement if existing else ""))
        else:
            _refresh_flags(plan, existing, mitigated, False)
    node_names = {n.name for n in selected}
    plan.deletes.extend(r.name for r in results.values() if r.node not in node_names)
    return plan
