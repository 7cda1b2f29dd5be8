"""Small, immutable views of the cluster objects the operator reads.

The operator keeps these in memory (kopf indexes) instead of whole objects: at 5,000 nodes
a full Node or Pod body is tens of kilobytes, a view a few hundred bytes. Parsing is pure, so
the planners are tested on plain dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from thpcheck.specs import names
from thpcheck.specs.termination import AgentResult, parse_termination


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class NodeView:
    """What the planners need of a Node."""

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


@dataclass(frozen=True)
class MitigationPodView:
    """A mitigation pod: Ready means its probe read the stopped value back on the node."""

    name: str
    node: str
    ready: bool
    deleting: bool = False


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

    @property
    def rolled_out(self) -> bool:
        """Every wanted pod runs the current template and is available."""
        return (self.observed_generation >= self.generation
                and self.updated >= self.desired and self.available >= self.desired)


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("metadata") or {}


def node_view(body: Mapping[str, Any]) -> NodeView:
    meta = _meta(body)
    spec = body.get("spec") or {}
    info = (body.get("status") or {}).get("nodeInfo") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k.startswith(names.GROUP + "/")}
    return NodeView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        labels=dict(meta.get("labels") or {}),
        annotations=annotations,
        unschedulable=bool(spec.get("unschedulable", False)),
        taints=tuple(Taint(t.get("key", ""), t.get("value", "") or "", t.get("effect", ""))
                     for t in spec.get("taints") or []),
        kernel_version=info.get("kernelVersion", "") or "",
        boot_id=info.get("bootID", "") or "",
        os_image=info.get("osImage", "") or "",
        architecture=info.get("architecture", "") or "",
    )


def _check_run(status: Mapping[str, Any]) -> CheckRun | None:
    for entry in status.get("initContainerStatuses") or []:
        if entry.get("name") != "check":
            continue
        terminated = (entry.get("state") or {}).get("terminated")
        if not terminated:
            return None
        exit_code = terminated.get("exitCode")
        message = terminated.get("message") or ""
        result = None
        if message or exit_code not in (0, None):
            result = parse_termination(message, exit_code, terminated.get("reason"))
        return CheckRun(exit_code=exit_code, finished_at=terminated.get("finishedAt") or "",
                        message=message, result=result)
    return None


def _unschedulable(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "PodScheduled" and c.get("status") == "False"
               and c.get("reason") == "Unschedulable" for c in status.get("conditions") or [])


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
    return AgentPodView(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        check=annotated_check(body) or labels.get(names.CHECK_LABEL, ""),
        node=_pod_node(body),
        template=labels.get(names.TEMPLATE_LABEL, ""),
        deleting=bool(meta.get("deletionTimestamp")),
        unschedulable=_unschedulable(status),
        run=_check_run(status),
    )


def mitigation_pod_view(body: Mapping[str, Any]) -> MitigationPodView:
    meta = _meta(body)
    status = body.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    return MitigationPodView(name=meta.get("name", ""), node=_pod_node(body), ready=ready,
                             deleting=bool(meta.get("deletionTimestamp")))


def result_view(body: Mapping[str, Any]) -> ResultView:
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
        kernel_release=status.get("kernelRelease", "") or "",
        boot_id=status.get("bootID", "") or "",
        checked_at=status.get("checkedAt", "") or "",
        resource_version=meta.get("resourceVersion", ""),
        run=_run_of(status.get("pod")),
        disagreement=_disagreement_of(status.get("prediction")),
        predicted=status.get("predicted") is True,
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
