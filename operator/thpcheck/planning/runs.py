"""Every run ends: what became of each selected node's agent run, decided from its pods and
its node, and how many nodes hold a slot of the rolling update without ever freeing it.

A run is one attempt of the ``check`` init container in a node's current check pod. It ends
with the agent's result (``completed``), or without one:

- ``crashed``: the container was OOM-killed, crashed and is being restarted
  (``CrashLoopBackOff``), or cannot start (``ImagePullBackOff``, ``CreateContainerError``,
  ... see ``views.WAITING_FAILURES``): an ``error`` result with that reason at once;
- ``timed_out``: the run passed its deadline (``spec.runDeadline``, default derived from the
  reproducer's size) still running, or on a node that went NotReady: an ``error`` result;
- ``unschedulable``: the pod could not be scheduled until the deadline: an ``error`` result.

Before its deadline a run on a NotReady node, or an unschedulable pod, is *blocked*: no
result yet, but reported. The DaemonSet's rolling update counts every such pod as
unavailable for ever, so each one would hold one of ``maxConcurrent`` slots: the rollout
planner widens ``maxUnavailable`` by the number of ``stuck`` nodes instead (the pod template
does not change, so no pod is replaced for it), and the remaining nodes keep their
``maxConcurrent`` slots.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from thpcheck.contract.agent import CHECK
from thpcheck.contract.checkspec import CheckSpec
from thpcheck.contract.views import AgentPodView, DaemonSetView, NodeView
from thpcheck.model.timestamps import parse_time

# The default deadline: pod start-up and image pull, then per scratch path the base file's
# writing (a minute per 64 MiB) and two seconds per reproducer iteration, never below 15 min.
MINIMUM_DEFAULT_DEADLINE = timedelta(minutes=15)
START_UP = timedelta(minutes=5)
PER_BASE_64_MIB = timedelta(minutes=1)
PER_ITERATION = timedelta(seconds=2)
DISCOVERED_PATHS = 4  # scratch paths assumed for spec.discoverFilesystems
NODE_NOT_READY = "NodeNotReady"
UNSCHEDULABLE = "Unschedulable"
DEADLINE_EXCEEDED = "DeadlineExceeded"


class Outcome(StrEnum):
    """How a run ended (the label of ``thpcheck_runs_total``)."""

    COMPLETED = "completed"
    TIMED_OUT = "timed_out"
    CRASHED = "crashed"
    UNSCHEDULABLE = "unschedulable"


@dataclass(frozen=True)
class Failure:
    """A run that ended without the agent's result: it becomes an ``error`` result."""

    node: str
    pod: AgentPodView
    reason: str  # a waiting reason, OOMKilled, DeadlineExceeded or Unschedulable
    outcome: Outcome
    detail: str

    @property
    def message(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class Blocked:
    """A selected node whose run cannot progress now (no result yet)."""

    node: str
    reason: str  # NodeNotReady | Unschedulable
    detail: str


@dataclass(frozen=True)
class RunPlan:
    failures: dict[str, Failure] = field(default_factory=dict)
    blocked: dict[str, Blocked] = field(default_factory=dict)
    stuck: int = 0  # selected nodes whose pod is unavailable and will stay so


def default_deadline(spec: CheckSpec) -> timedelta:
    """A deadline that a healthy node meets with room to spare, from the reproducer's size."""
    repro = spec.reproducer
    paths = len(spec.paths) + (DISCOVERED_PATHS if spec.discover_filesystems else 0)
    per_path = timedelta(0)
    if repro.enabled:
        per_path = (PER_BASE_64_MIB * (repro.base_size_bytes / (64 << 20))
                    + PER_ITERATION * repro.iterations)
    derived = START_UP + per_path * paths
    return max(MINIMUM_DEFAULT_DEADLINE, timedelta(seconds=round(derived.total_seconds())))


def run_deadline(spec: CheckSpec) -> timedelta:
    return spec.run_deadline or default_deadline(spec)


def current_pod(pods: Iterable[AgentPodView]) -> AgentPodView | None:
    """The node's newest pod that is not being deleted (the DaemonSet keeps one per node)."""
    live = [p for p in pods if not p.deleting]
    return max(live, key=lambda p: (p.created_at, p.name), default=None)


def _of_revision(pod: AgentPodView, daemonset: DaemonSetView | None) -> bool:
    """True if the pod runs the DaemonSet's current template (same template and run)."""
    return daemonset is None or (pod.template == daemonset.template
                                 and pod.run_token == daemonset.run)


def _expired(pod: AgentPodView, now: datetime, deadline: timedelta) -> bool:
    started = parse_time(pod.started_at) or parse_time(pod.created_at)
    return started is not None and now - started > deadline


def _overdue(node: NodeView, pod: AgentPodView, deadline: timedelta) -> Failure:
    limit = _describe(deadline)
    if pod.unschedulable:
        return Failure(node.name, pod, UNSCHEDULABLE, Outcome.UNSCHEDULABLE,
                       f"the agent pod could not be scheduled within {limit}"
                       + (f": {pod.scheduling_message}" if pod.scheduling_message else ""))
    where = " (the node is NotReady)" if not node.ready else ""
    return Failure(node.name, pod, DEADLINE_EXCEEDED, Outcome.TIMED_OUT,
                   f"no result within spec.runDeadline {limit}{where}")


def _describe(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (seconds, "s")) if v) \
        or "0s"


def _assess(node: NodeView, pod: AgentPodView | None, now: datetime,
            deadline: timedelta) -> Failure | Blocked | None:
    """The node's run, if it failed or cannot progress (None: finished or under way)."""
    if pod is not None and pod.run is not None:
        return None  # the check container finished: its result is the run's end
    if pod is not None and pod.template == CHECK:
        if pod.trouble is not None:
            return Failure(node.name, pod, pod.trouble.reason, Outcome.CRASHED,
                           pod.trouble.detail)
        if _expired(pod, now, deadline):
            return _overdue(node, pod, deadline)
    if pod is not None and pod.unschedulable:
        return Blocked(node.name, UNSCHEDULABLE,
                       pod.scheduling_message or "the agent pod cannot be scheduled")
    if not node.ready:
        return Blocked(node.name, NODE_NOT_READY, "the node is NotReady")
    return None


def _holds_slot(node: NodeView, pod: AgentPodView | None, daemonset: DaemonSetView | None,
                verdict: Failure | Blocked | None) -> bool:
    """True if the DaemonSet controller counts the node's pod as unavailable and it will stay
    so: every NotReady node (the node controller marks its pods not Ready), and a Ready node
    whose pod of the current revision failed, cannot be scheduled, or cannot start."""
    if not node.ready:
        return True
    if pod is None or not _of_revision(pod, daemonset):
        return False  # an old pod: the DaemonSet replaces an unavailable one at no cost
    return (isinstance(verdict, Failure) or pod.unschedulable
            or (pod.trouble is not None and pod.run is None))


def plan_runs(selected: Sequence[NodeView], pods: Iterable[AgentPodView],
              daemonset: DaemonSetView | None, now: datetime,
              deadline: timedelta) -> RunPlan:
    """Which runs failed or are blocked, and how many nodes hold a rollout slot for ever.

    Only a node's current pod counts, and only while its check container has not finished
    (a finished one has the agent's result, whatever happened later).
    """
    by_node: dict[str, list[AgentPodView]] = {}
    for agent_pod in pods:
        by_node.setdefault(agent_pod.node, []).append(agent_pod)
    plan = RunPlan()
    stuck = 0
    for node in selected:
        pod = current_pod(by_node.get(node.name, ()))
        verdict = _assess(node, pod, now, deadline)
        if isinstance(verdict, Failure):
            plan.failures[node.name] = verdict
        elif isinstance(verdict, Blocked):
            plan.blocked[node.name] = verdict
        stuck += _holds_slot(node, pod, daemonset, verdict)
    return RunPlan(plan.failures, plan.blocked, stuck)

