"""Check pods the kubelet cannot start because a scratch path is missing on their node.

User paths are hostPath volumes of type ``Directory`` (``contract.agent.scratch_volume_type``):
a path missing on a node is never created there; the kubelet refuses the volume instead, and
retries until the directory appears. The pod stays ``Pending`` on its node and the only
record of why is the kubelet's ``FailedMount`` Event (pod status has no message for it). The
operator reads those Events for such pods and marks the pod's trouble ``FailedMount``, naming
the path: the run planner (``planning.runs``) then ends the run with an ``error`` result and
frees the rollout slot the waiting pod holds, as for any container that cannot start.

The Events are read with one field-selected list per namespace (``FAILED_MOUNT_SELECTOR``),
not one per pod: at 5,000 nodes a list per stuck pod was tens of thousands of requests in a
rollout. ``events_due`` says when to list again, ``missing_by_pod`` distils a listing and
``mount_failures`` matches it to the stuck pods by uid. Pure: the controller lists the Events
and applies ``with_mount_failures``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from thpcheck.contract.agent import CHECK
from thpcheck.contract.views import AgentPodView, Trouble
from thpcheck.model.timestamps import parse_time

FAILED_MOUNT = "FailedMount"
# The kubelet's FailedMount Events about pods: what one list of a namespace's Events selects.
FAILED_MOUNT_SELECTOR = f"reason={FAILED_MOUNT},involvedObject.kind=Pod"
# kubelet, pkg/volume/hostpath: checkTypeInternal for HostPathDirectory.
_TYPE_CHECK = re.compile(r"hostPath type check failed: (/\S*) is not a directory")
# How long a bound pod may stay Pending before its Events are read (image pulls, sandbox).
STUCK_AFTER = timedelta(seconds=20)
# How long a listing of a namespace's FailedMount Events stands for the pods it covered.
EVENTS_REREAD = timedelta(seconds=30)


@dataclass
class MountEvents:
    """The last listing of one namespace's FailedMount Events: when it was made (the
    reconcile's clock) and the missing paths per pod uid (pods without any left out)."""

    read_at: datetime | None = None
    missing: dict[str, list[str]] = field(default_factory=dict)


def stuck_pods(pods: Iterable[AgentPodView], now: datetime,
               after: timedelta = STUCK_AFTER) -> list[AgentPodView]:
    """Check pods bound to a node, still Pending, without a run, older than ``after``."""
    found = []
    for pod in pods:
        if (pod.template != CHECK or pod.deleting or pod.run is not None or not pod.pending
                or pod.trouble is not None):
            continue
        created = parse_time(pod.created_at)
        if created is not None and now - created >= after:
            found.append(pod)
    return found


def missing_paths(messages: Iterable[str]) -> list[str]:
    """The host paths a pod's ``FailedMount`` messages say are not directories, in order."""
    paths: list[str] = []
    for message in messages:
        for path in _TYPE_CHECK.findall(message):
            if path not in paths:
                paths.append(path)
    return paths


def mount_trouble(paths: Sequence[str]) -> Trouble:
    """What the node's error result says while its pod waits for missing directories."""
    listed = ", ".join(paths)
    return Trouble(FAILED_MOUNT, (
        f"the kubelet cannot mount {listed}: does not exist on this node (or is not a "
        "directory); nothing was created. Create the directory or remove it from spec.paths; "
        "the agent pod waits until it exists"))


def with_mount_failures(pods: Sequence[AgentPodView],
                        failures: Mapping[str, list[str]]) -> list[AgentPodView]:
    """``pods`` with the missing paths of each pod uid in ``failures`` as its trouble."""
    return [replace(p, trouble=mount_trouble(failures[p.uid]))
            if p.uid in failures and p.run is None and p.trouble is None else p
            for p in pods]


def missing_by_pod(events: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Pod uid -> the host paths its ``FailedMount`` Events say are missing, from one listing
    (``involvedObject.uid`` names the pod; Events about other kinds or reasons are ignored)."""
    messages: dict[str, list[str]] = {}
    for event in events:
        involved = event.get("involvedObject") or {}
        uid = str(involved.get("uid") or "")
        if event.get("reason") == FAILED_MOUNT and involved.get("kind") == "Pod" and uid:
            messages.setdefault(uid, []).append(str(event.get("message") or ""))
    found = {uid: missing_paths(texts) for uid, texts in messages.items()}
    return {uid: paths for uid, paths in found.items() if paths}


def mount_failures(missing: Mapping[str, Sequence[str]],
                   stuck: Iterable[AgentPodView]) -> dict[str, list[str]]:
    """The stuck pods' missing paths (``missing`` from ``missing_by_pod``), by pod uid."""
    return {p.uid: list(missing[p.uid]) for p in stuck if p.uid in missing}


def events_due(read_at: datetime | None, stuck: Iterable[AgentPodView], now: datetime,
               reread: timedelta = EVENTS_REREAD, after: timedelta = STUCK_AFTER) -> bool:
    """List the namespace's FailedMount Events now? Only for stuck pods: when there was no
    listing yet, the last one is ``reread`` old, or a pod became stuck after it (so a pod's
    first look comes as soon as it is stuck, as with a read per pod)."""
    pods = list(stuck)
    if not pods:
        return False
    if read_at is None or now - read_at >= reread:
        return True
    for pod in pods:
        created = parse_time(pod.created_at)
        if created is None or created + after > read_at:
            return True
    return False
