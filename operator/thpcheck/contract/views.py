"""Small, immutable views of the cluster objects the operator reads.

The operator keeps these in memory (its lean watches and kopf's indexes) instead of whole
objects: a full Node or Pod body is tens of kilobytes parsed, a view one to three. Parsing
is pure, so the planners are tested on plain dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from thpcheck.contract import names
from thpcheck.contract.proof import Proof, parse_proof
from thpcheck.contract.termination import parse_termination
from thpcheck.model.result import AgentResult, error_result
from thpcheck.model.text import one_line
from thpcheck.model.wire import wire_key

# Waiting reasons of a container that will not start without someone fixing something: a run
# stuck in one of them ends at once, as an ``error`` result naming the reason.
WAITING_FAILURES = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull",
                              "InvalidImageName", "CreateContainerConfigError",
                              "CreateContainerError", "RunContainerError"})
OOM_KILLED = "OOMKilled"
QUOTE_LIMIT = 200  # characters of a container's or the scheduler's message quoted


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str
    time_added: str = ""  # kept as read (NoExecute taints carry it)

    def to_spec(self) -> dict[str, str]:
        spec = {"key": self.key, "value": self.value, "effect": self.effect,
                "timeAdded": self.time_added}
        return {k: v for k, v in spec.items() if v}


@dataclass(frozen=True)
class NodeCondition:
    """The node's names.NODE_CONDITION condition, as the planners compare it."""

    status: str
    reason: str = ""
    message: str = ""
    last_transition: str = ""


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the planners need of a Node: all the operator keeps of one (the rest of a
    real node, 20-40 KiB of JSON, is parsed and dropped as it arrives)."""

    name: str
    uid: str = ""
    resource_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)  # thpcheck.io/* only
    unschedulable: bool = False
    taints: tuple[Taint, ...] = ()
    kernel_version: str = ""
    boot_id: str = ""
    os_image: str = ""
    architecture: str = ""
    ready: bool = True  # condition Ready is True (or not reported yet)
    condition: NodeCondition | None = None  # the names.NODE_CONDITION condition, if any

    @property
    def excluded(self) -> bool:
        return self.labels.get(names.EXCLUDE_LABEL) == "true"


@dataclass(frozen=True)
class CheckRun:
    """The terminated ``check`` init container of an agent pod: the kubelet's record."""

    exit_code: int | None
    finished_at: str
    message: str
    result: AgentResult | None  # None: exited 0 without a termination message
    reason: str = ""  # the kubelet's reason: Completed, Error, OOMKilled


@dataclass(frozen=True)
class Trouble:
    """A container that crashed (and is being restarted) or cannot start at all."""

    reason: str  # a WAITING_FAILURES reason, or OOMKilled
    detail: str  # what the kubelet said: the last exit and its message, or why it waits


@dataclass(frozen=True)
class AgentPodView:
    """An agent pod of some ThpCheck (label thpcheck.io/component=agent)."""

    name: str
    namespace: str
    uid: str
    check: str  # the ThpCheck's name (from the annotation; the label may be hashed)
    node: str
    template: str  # standby | check
    deleting: bool = False
    unschedulable: bool = False
    run: CheckRun | None = None
    run_token: str = ""  # the pod template's thpcheck.io/run annotation
    created_at: str = ""
    started_at: str = ""  # when the current attempt of the check began (RFC 3339)
    trouble: Trouble | None = None  # the check (or standby's idle) container cannot run
    scheduling_message: str = ""  # the scheduler's word when the pod is unschedulable
    pending: bool = False  # bound to its node (spec.nodeName) and still phase Pending


@dataclass(frozen=True)
class MitigationPodView:
    """A mitigation pod: Ready means its probe read the stopped value back on the node."""

    name: str
    node: str
    ready: bool
    deleting: bool = False
    uid: str = ""


@dataclass(frozen=True)
class ResultView:
    """What the operator needs to know of a ThpNodeResult it wrote."""

    name: str
    check: str
    node: str
    content_hash: str
    verdict: str | None
    mitigated: bool
    stale: bool
    kernel_release: str
    boot_id: str
    checked_at: str = ""
    resource_version: str = ""
    run: str = ""  # "<pod uid>/<finishedAt>" of the agent run the result came from
    disagreement: str = ""  # status.prediction.disagreement
    predicted: bool = False  # written from the preflight prediction (mode: preflight)
    owner_uid: str = ""  # uid of its controller ownerReference to the ThpCheck status.check
    mismatch: str = ""  # its name, labels or annotations are not what the operator writes
    proof: Proof | None = None  # status.proof: affected proven on a kernel (planning.proof)
    filesystems: tuple[str, ...] = ()  # filesystems_of(status.paths)
    uid: str = ""


@dataclass(frozen=True)
class DaemonSetView:
    """An agent DaemonSet's identity and rollout progress."""

    name: str
    generation: int = 0
    observed_generation: int = 0
    template: str = ""  # standby | check
    template_hash: str = ""
    run: str = ""
    desired: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("metadata") or {}


def _same(text: str) -> str:
    return text


def node_view(body: Mapping[str, Any], share: Callable[[str], str] = _same) -> NodeView:
    """The view of a Node body. ``share`` may return one shared copy of equal strings (label
    keys and values, kernel, OS image: the same on most nodes of a fleet), so that thousands
    of views hold one copy of each instead of one per node."""
    meta = _meta(body)
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    info = status.get("nodeInfo") or {}
    annotations = {share(k): v for k, v in (meta.get("annotations") or {}).items()
                   if k.startswith(names.GROUP + "/")}
    ready = next((c.get("status") == "True" for c in status.get("conditions") or []
                  if c.get("type") == "Ready"), True)
    return NodeView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        labels={share(k): share(v) for k, v in (meta.get("labels") or {}).items()},
        annotations=annotations,
        unschedulable=bool(spec.get("unschedulable", False)),
        taints=tuple(Taint(share(t.get("key", "")), share(t.get("value", "") or ""),
                           share(t.get("effect", "")), t.get("timeAdded", "") or "")
                     for t in spec.get("taints") or []),
        kernel_version=share(info.get("kernelVersion", "") or ""),
        boot_id=info.get("bootID", "") or "",
        os_image=share(info.get("osImage", "") or ""),
        architecture=share(info.get("architecture", "") or ""),
        ready=ready,
        condition=_node_condition(status),
    )


def _node_condition(status: Mapping[str, Any]) -> NodeCondition | None:
    found = condition_of(status, names.NODE_CONDITION)
    if not found:
        return None
    return NodeCondition(str(found.get("status") or ""), str(found.get("reason") or ""),
                         str(found.get("message") or ""),
                         str(found.get("lastTransitionTime") or ""))


def filesystems_of(paths: Any) -> tuple[str, ...]:
    """The filesystem types of a result's ``status.paths``: those found affected, else all."""
    entries = [p for p in paths if isinstance(p, Mapping)] if isinstance(paths, list) else []
    affected = [p for p in entries if p.get("verdict") == "affected"]
    return tuple(sorted({str(p["fstype"]) for p in affected or entries if p.get("fstype")}))


def same_node(a: NodeView, b: NodeView) -> bool:
    """True if the planners would see no difference (only the resourceVersion moved: a
    heartbeat, kubelet status, images)."""
    return replace(a, resource_version=b.resource_version) == b


def _check_status(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for entry in status.get("initContainerStatuses") or []:
        if entry.get("name") == "check":
            return entry  # type: ignore[no-any-return]
    return None


def _check_run(status: Mapping[str, Any]) -> CheckRun | None:
    entry = _check_status(status)
    terminated = ((entry or {}).get("state") or {}).get("terminated")
    if not terminated:
        return None
    exit_code = terminated.get("exitCode")
    message = terminated.get("message") or ""
    reason = terminated.get("reason") or ""
    result = None
    if reason == OOM_KILLED:
        result = error_result(f"{OOM_KILLED}: the check container ran out of memory "
                              f"({_last_words(terminated)})")
    elif message or exit_code not in (0, None):
        result = parse_termination(message, exit_code, reason)
    return CheckRun(exit_code=exit_code, finished_at=terminated.get("finishedAt") or "",
                    message=message, result=result, reason=reason)


def _last_words(terminated: Mapping[str, Any]) -> str:
    """The exit of a terminated container as one short line (stable across restarts)."""
    text = f"exit {terminated.get('exitCode')}"
    if terminated.get("reason"):
        text += f", {terminated['reason']}"
    if terminated.get("message"):
        text += f": {one_line(terminated['message'], QUOTE_LIMIT)}"
    return text


def _trouble(entry: Mapping[str, Any] | None) -> Trouble | None:
    """A container that cannot run: OOM-killed, crashed and restarting, or waiting for
    something that will not come by itself (WAITING_FAILURES)."""
    if not entry:
        return None
    state = entry.get("state") or {}
    last = (entry.get("lastState") or {}).get("terminated") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    if last.get("reason") == OOM_KILLED and not terminated:
        return Trouble(OOM_KILLED, f"the container ran out of memory ({_last_words(last)})")
    reason = waiting.get("reason") or ""
    if reason == "CrashLoopBackOff":
        return Trouble(reason, f"the container keeps failing ({_last_words(last)})"
                       if last else "the container keeps failing")
    if reason in WAITING_FAILURES:
        return Trouble(reason, one_line(waiting.get("message") or reason, QUOTE_LIMIT))
    if last and last.get("exitCode") not in (0, None) and not terminated:
        return Trouble("CrashLoopBackOff",
                       f"the container failed and is being restarted ({_last_words(last)})")
    return None


def condition_of(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    """The condition of ``type_`` in an object's ``status.conditions`` ({} when absent)."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def _unschedulable(status: Mapping[str, Any]) -> bool:
    scheduled = condition_of(status, "PodScheduled")
    return scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"


def _started_at(meta: Mapping[str, Any], status: Mapping[str, Any],
                entry: Mapping[str, Any] | None) -> str:
    """When the current attempt at the check began: the check container's start while it
    runs, else when the pod last began initialising (a reboot restarts the init container),
    else when the pod was created."""
    running = ((entry or {}).get("state") or {}).get("running") or {}
    if running.get("startedAt"):
        return str(running["startedAt"])
    initialized = condition_of(status, "Initialized")
    if initialized.get("status") == "False" and initialized.get("lastTransitionTime"):
        return max(str(initialized["lastTransitionTime"]), str(meta.get("creationTimestamp") or ""))
    return str(meta.get("creationTimestamp") or "")


def _pod_node(body: Mapping[str, Any]) -> str:
    """The pod's node: spec.nodeName once bound, else the DaemonSet's node affinity."""
    spec = body.get("spec") or {}
    if spec.get("nodeName"):
        return str(spec["nodeName"])
    terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get(
                 "nodeSelectorTerms") or []
    for term in terms:
        for expr in term.get("matchFields") or []:
            if expr.get("key") == "metadata.name" and expr.get("values"):
                return str(expr["values"][0])
    return ""


def annotated_check(body: Mapping[str, Any]) -> str | None:
    """The full name of the ThpCheck an agent pod or DaemonSet belongs to (an annotation: the
    label may be hashed), or None for objects of no single check."""
    annotations = _meta(body).get("annotations") or {}
    check = annotations.get(names.CHECK_NAME_ANNOTATION)
    return str(check) if check else None


def agent_pod_view(body: Mapping[str, Any]) -> AgentPodView:
    meta = _meta(body)
    labels = meta.get("labels") or {}
    status = body.get("status") or {}
    check = _check_status(status)
    # A check pod's trouble is its check container's; a standby pod's, its idle container's.
    trouble = _trouble(check) if check else next(
        (t for t in map(_trouble, status.get("containerStatuses") or []) if t), None)
    unschedulable = _unschedulable(status)
    return AgentPodView(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        check=annotated_check(body) or labels.get(names.CHECK_LABEL, ""),
        node=_pod_node(body),
        template=labels.get(names.TEMPLATE_LABEL, ""),
        deleting=bool(meta.get("deletionTimestamp")),
        unschedulable=unschedulable,
        run=_check_run(status),
        run_token=str((meta.get("annotations") or {}).get(names.RUN_ANNOTATION) or ""),
        created_at=str(meta.get("creationTimestamp") or ""),
        started_at=_started_at(meta, status, check),
        trouble=trouble,
        scheduling_message=(one_line(condition_of(status, "PodScheduled").get("message") or "",
                                     QUOTE_LIMIT)
                            if unschedulable else ""),
        pending=bool((body.get("spec") or {}).get("nodeName"))
        and status.get("phase") == "Pending",
    )


def mitigation_pod_view(body: Mapping[str, Any]) -> MitigationPodView:
    meta = _meta(body)
    status = body.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    return MitigationPodView(name=meta.get("name", ""), node=_pod_node(body), ready=ready,
                             deleting=bool(meta.get("deletionTimestamp")),
                             uid=meta.get("uid", ""))


def _controller_uid(meta: Mapping[str, Any], check: str) -> str:
    """The uid of the result's controller ownerReference to ThpCheck ``check`` ("" if none)."""
    for owner in meta.get("ownerReferences") or []:
        if (owner.get("kind") == names.CHECK_KIND and owner.get("controller") is True
                and str(owner.get("apiVersion", "")).startswith(names.GROUP + "/")
                and owner.get("name") == check):
            return str(owner.get("uid") or "")
    return ""


def _result_mismatch(meta: Mapping[str, Any], status: Mapping[str, Any]) -> str:
    """How a result's name, labels or annotations differ from what the operator writes for
    its ``status.check`` and ``status.node`` ("" when they agree)."""
    check, node = str(status.get("check") or ""), str(status.get("node") or "")
    labels = meta.get("labels") or {}
    if not check or not node:
        return "status.check or status.node is missing"
    if meta.get("name") != names.result_name(check, node):
        return f"its name is not {names.result_name(check, node)}"
    if labels.get(names.CHECK_LABEL) != names.label_value(check):
        return f"label {names.CHECK_LABEL} does not name ThpCheck {check}"
    if labels.get(names.NODE_LABEL) != names.label_value(node):
        return f"label {names.NODE_LABEL} does not match status.node {node}"
    proof = parse_proof(status.get("proof"))  # the label is the standing proof's verdict
    if labels.get(names.VERDICT_LABEL) != (proof.verdict.value if proof else status.get("verdict")):
        return f"label {names.VERDICT_LABEL} does not match status.verdict (or status.proof)"
    if not (meta.get("annotations") or {}).get(names.CONTENT_HASH_ANNOTATION):
        return f"annotation {names.CONTENT_HASH_ANNOTATION} is missing"
    return ""


def result_view(body: Mapping[str, Any]) -> ResultView:
    """The fields the agent's result gives a ThpNodeResult are read by their one key mapping
    (``model.wire``); the rest are the operator's own (``planning.results``)."""
    meta = _meta(body)
    status = body.get("status") or {}
    return ResultView(
        name=meta.get("name", ""),
        check=status.get("check", ""),
        node=status.get("node", ""),
        content_hash=(meta.get("annotations") or {}).get(names.CONTENT_HASH_ANNOTATION, ""),
        verdict=status.get("verdict"),
        mitigated=bool(status.get("mitigated", False)),
        stale=bool(status.get("stale", False)),
        kernel_release=status.get(wire_key("kernel_release"), "") or "",
        boot_id=status.get(wire_key("boot_id"), "") or "",
        checked_at=status.get(wire_key("checked_at"), "") or "",
        resource_version=meta.get("resourceVersion", ""),
        run=_run_of(status.get("pod")),
        disagreement=_disagreement_of(status.get("prediction")),
        predicted=status.get("predicted") is True,
        owner_uid=_controller_uid(meta, str(status.get("check") or "")),
        mismatch=_result_mismatch(meta, status),
        proof=parse_proof(status.get("proof")),
        filesystems=filesystems_of(status.get("paths")),
        uid=meta.get("uid", ""),
    )


def _run_of(pod: Any) -> str:
    if not isinstance(pod, Mapping) or not pod.get("uid"):
        return ""
    return f"{pod['uid']}/{pod.get('finishedAt') or ''}"


def _disagreement_of(prediction: Any) -> str:
    return str(prediction.get("disagreement") or "") if isinstance(prediction, Mapping) else ""


def daemonset_view(body: Mapping[str, Any]) -> DaemonSetView:
    meta = _meta(body)
    status = body.get("status") or {}
    template_meta = ((body.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return DaemonSetView(
        name=meta.get("name", ""),
        generation=int(meta.get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        template=(template_meta.get("labels") or {}).get(names.TEMPLATE_LABEL, ""),
        template_hash=(meta.get("annotations") or {}).get(names.TEMPLATE_HASH_ANNOTATION, ""),
        run=(template_meta.get("annotations") or {}).get(names.RUN_ANNOTATION, ""),
        desired=int(status.get("desiredNumberScheduled") or 0),
        updated=int(status.get("updatedNumberScheduled") or 0),
        ready=int(status.get("numberReady") or 0),
        available=int(status.get("numberAvailable") or 0),
    )
