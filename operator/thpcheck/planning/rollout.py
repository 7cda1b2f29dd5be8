"""The next step for a ThpCheck's agent DaemonSet, decided from what is observed.

Create on standby; switch to the check template once every standby pod is up (so the
rolling update, not pod creation, paces the first run); roll again when the template changes
or ``schedule.interval`` has passed since the current run started. Paused checks keep their
DaemonSet as it is. When ``maxConcurrent`` covers every selected node anyway, the standby
step would only cost two extra pod operations per node: the DaemonSet starts on the check
template.

Stuck nodes (``planning.runs``: NotReady, or a pod that failed, cannot start or cannot be
scheduled) hold a rollout slot for ever, as the DaemonSet controller counts their pods
unavailable. ``maxUnavailable`` is then ``maxConcurrent`` (resolved) plus the stuck count:
the update strategy is not part of the pod template, so changing it replaces no pod, and
the healthy nodes keep ``maxConcurrent`` slots. Stuck nodes do not hold back the start of a
run either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from thpcheck.contract import names
from thpcheck.contract.agent import CHECK, STANDBY, WorkloadConfig, agent_daemonset
from thpcheck.contract.checkspec import CheckSpec
from thpcheck.contract.quantities import concurrency
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import DaemonSetView
from thpcheck.model.timestamps import RFC3339, format_time


class Step(StrEnum):
    CREATE = "create"  # no DaemonSet yet: create it on standby
    START_RUN = "start-run"  # standby pods are up: switch to the check template
    UPDATE = "update"  # the spec changed: roll the new template (same run)
    RERUN = "rerun"  # schedule.interval passed: roll with a new run token
    NONE = "none"


@dataclass(frozen=True)
class RolloutPlan:
    step: Step
    body: dict[str, Any] | None = None  # the desired DaemonSet for any step but NONE
    run: str = ""  # the current run's token (its start, RFC 3339) after the step

    @property
    def starts_run(self) -> bool:
        return self.step in (Step.START_RUN, Step.RERUN) or (
            self.step is Step.CREATE and bool(self.run))


def run_token(now: datetime) -> str:
    return format_time(now)


def parse_token(token: str) -> datetime | None:
    try:
        return datetime.strptime(token, RFC3339).replace(tzinfo=UTC)
    except ValueError:
        return None


def _changed(desired: dict[str, Any], observed: DaemonSetView) -> bool:
    wanted: str = desired["metadata"]["annotations"][names.TEMPLATE_HASH_ANNOTATION]
    return wanted != observed.template_hash


def max_unavailable(spec: CheckSpec, nodes: int, stuck: int) -> int | str:
    """``spec.maxConcurrent``, widened by the nodes that hold a slot for ever."""
    if not stuck:
        return spec.max_concurrent
    return concurrency(spec.max_concurrent, nodes) + stuck


def rolled_out(observed: DaemonSetView, stuck: int) -> bool:
    """Every wanted pod runs the current template and is available, but for stuck nodes."""
    return (observed.observed_generation >= observed.generation
            and observed.updated + stuck >= observed.desired
            and observed.available + stuck >= observed.desired)


def plan_rollout(spec: CheckSpec, check: CheckRef, config: WorkloadConfig,
                 observed: DaemonSetView | None, now: datetime, nodes: int,
                 stuck: int = 0) -> RolloutPlan:
    """What to do with the agent DaemonSet now (``now`` is timezone-aware; ``nodes`` is the
    number of selected nodes, ``stuck`` how many of them hold a rollout slot for ever)."""
    widest = max_unavailable(spec, nodes, stuck)

    def daemonset(template: str, run: str) -> dict[str, Any]:
        return agent_daemonset(spec, check, config, template=template, run=run,
                               max_unavailable=widest)

    if observed is None:
        if nodes and not spec.paused and concurrency(spec.max_concurrent, nodes) >= nodes:
            run = run_token(now)
            return RolloutPlan(Step.CREATE, daemonset(CHECK, run), run)
        return RolloutPlan(Step.CREATE, daemonset(STANDBY, ""))
    if spec.paused:
        return RolloutPlan(Step.NONE, run=observed.run)
    if observed.template != CHECK:
        if rolled_out(observed, stuck):
            run = run_token(now)
            return RolloutPlan(Step.START_RUN, daemonset(CHECK, run), run)
        standby = daemonset(STANDBY, "")
        return RolloutPlan(Step.UPDATE if _changed(standby, observed) else Step.NONE,
                           standby)
    started = parse_token(observed.run)
    if spec.interval is not None and (started is None or now - started >= spec.interval):
        run = run_token(now)
        return RolloutPlan(Step.RERUN, daemonset(CHECK, run), run)
    desired = daemonset(CHECK, observed.run)
    return RolloutPlan(Step.UPDATE if _changed(desired, observed) else Step.NONE, desired,
                       observed.run)
