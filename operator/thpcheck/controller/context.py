"""State shared by the operator's handlers for the life of the process (kopf's ``memo``).

Nothing here is the source of truth: after a restart it starts empty and the cluster's
state (indexes, status, node marks) rebuilds everything that matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from thpcheck.controller.api import Kube
from thpcheck.controller.indexes import Indexes
from thpcheck.controller.metrics import Metrics
from thpcheck.controller.recent import RecentWrites
from thpcheck.controller.settings import Settings
from thpcheck.controller.watched import LeanWatches
from thpcheck.planning.checkplan import CheckMemory
from thpcheck.planning.hostpaths import MountEvents


class Triggers:
    """One wake-up flag per ThpCheck: watch events set it, the check's daemon waits on it."""

    def __init__(self) -> None:
        self._flags: dict[str, asyncio.Event] = {}

    def flag(self, check: str) -> asyncio.Event:
        return self._flags.setdefault(check, asyncio.Event())

    def poke(self, check: str) -> None:
        self.flag(check).set()

    def poke_all(self) -> None:
        for flag in self._flags.values():
            flag.set()

    def forget(self, check: str) -> None:
        self._flags.pop(check, None)


@dataclass
class OperatorContext:
    settings: Settings
    kube: Kube
    metrics: Metrics
    triggers: Triggers = field(default_factory=Triggers)
    recent: RecentWrites = field(default_factory=RecentWrites)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    mitigation_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Cordon decisions of all checks, one at a time (the cluster-wide cordon budget; each
    # check's memory holds the cordon list it persisted last).
    cordon_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # What this process remembers about each check between its reconciles.
    memories: dict[str, CheckMemory] = field(default_factory=dict)
    # The orphan sweep (controller.handlers.sweep_forever), started once nodes are listed.
    sweeper: asyncio.Task[None] | None = None
    # kopf's indexes, handed to the start-up handler: live objects for the whole process,
    # filled by kopf's initial listings (see ``indexed``).
    kopf_indexes: Mapping[str, Any] = field(default_factory=dict)
    # What was indexed when kopf's indexes were known filled (counts per kind): at the first
    # kopf event, or when the API showed nothing kopf handles (controller.handlers); None
    # before. /readyz reports it (controller/health.py).
    indexed: dict[str, int] | None = None
    # The /healthz and /readyz server (an aiohttp AppRunner), while it runs.
    health_server: Any = None
    # The last listing of each namespace's FailedMount Events (agent pods the kubelet cannot
    # start for a missing hostPath), shared by all checks; one listing at a time.
    mount_events: dict[str, MountEvents] = field(default_factory=dict)
    mount_events_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The views of all nodes, agent and mitigation pods and results (started by the start-up
    # handler, before kopf watches anything).
    watches: LeanWatches = field(init=False)
    # Tasks started from the watches' callbacks (kept so they are not collected early).
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.watches = LeanWatches.of(self.kube, self.settings.namespace,
                                      server_timeout=self.settings.watch_server_timeout,
                                      client_timeout=self.settings.watch_client_timeout)

    def indexes(self) -> Indexes:
        """The lean watches' views and kopf's indexes, as the planners read them."""
        return Indexes.of(self.kopf_indexes, self.watches)

    def lock(self, check: str) -> asyncio.Lock:
        """Serialises a check's reconciles and its deletion clean-up."""
        return self.locks.setdefault(check, asyncio.Lock())

    def memory(self, check: str) -> CheckMemory:
        return self.memories.setdefault(check, CheckMemory())

    def forget(self, check: str) -> None:
        self.locks.pop(check, None)
        self.memories.pop(check, None)
        self.triggers.forget(check)
        self.metrics.forget_check(check)


MEMO_KEY = "thpcheck"


def context_of(memo: Any) -> OperatorContext:
    """The context stored in kopf's memo by ``thpcheck.controller.operator.run``."""
    context = memo[MEMO_KEY]
    if not isinstance(context, OperatorContext):
        raise TypeError("kopf memo does not hold the operator context")
    return context
