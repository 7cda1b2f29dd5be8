"""Check pods the kubelet cannot start because a scratch path is missing on their node.

User paths are hostPath volumes of type ``Directory`` (``specs.agent.scratch_volume_type``):
a path missing on a node is never created there; the kubelet refuses the volume instead, and
retries until the directory appears. The pod stays ``Pending`` on its node and the only
record of why is the kubelet's ``FailedMount`` Event (pod status has no message for it). The
operator reads those Events for such pods and marks the pod's trouble ``FailedMount``, naming
the path: the run planner (``specs.runs``) then ends the run with an ``error`` result and
frees the rollout slot the waiting pod holds, as for any container that cannot start. Pure:
the controller fetches the Events and applies ``with_mount_failures``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from thpcheck.model.timestamps import parse_time
from thpcheck.specs.agent import CHECK
from thpcheck.specs.views import AgentPodView, Trouble

FAILED_MOUNT = "FailedMount"
# kubelet, pkg/volume/hostpath: checkTypeInternal for HostPathDirectory.
_TYPE_CHECK = re.compile(r"hostPath type check failed: (/\S*) is not a directory")
# How long a bound pod may stay Pending before its Events are read (image pulls, sandbox).
STUCK_AFTER = timedelta(seconds=20)


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
