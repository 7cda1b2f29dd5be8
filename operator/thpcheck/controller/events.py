"""Kubernetes Events on Nodes and ThpChecks, posted through the operator's own client.

One Event per node per reconcile at most (its most important change names it), so a run
costs one Event per node, not one per label.

Why not kopf's poster: it posts each object's Events from a worker that waits a second for
more before it exits, and runs at most ``worker_limit`` such workers, so a run that posts
one Event on each of thousands of nodes is posted at about ``worker_limit`` Events a second:
at 5,000 nodes over a thousand were still queued 90 s after the check completed, and the
queue was part of the operator's peak memory (docs/benchmarks.md). ``EventPoster`` posts
from one bounded backlog with a few concurrent requests, through the same counted client as
every other write, and drops the oldest Event (counted) rather than grow without bound while
the API refuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from thpcheck.contract import names
from thpcheck.contract.views import NodeView
from thpcheck.planning.checkplan import Event

MESSAGE_LIMIT = 1000
# Events in flight at once take a quarter of the client's threads (settings.api_workers), so
# result and node writes are never starved by Events.
API_SHARE = 4
# Events waiting at most; past it the oldest is dropped. Normally the backlog is near empty
# (a few requests at once outpace results); it fills only while the API refuses or stalls,
# and then an unbounded one would grow by a node's Event per result. 5,000 bodies are ~15 MiB.
BACKLOG = 5000


def workers_for(api_workers: int) -> int:
    """How many Events an operator with ``api_workers`` client threads posts at once."""
    return max(1, api_workers // API_SHARE)


def node_reference(node: NodeView) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "uid": node.uid}}


log = structlog.get_logger("thpcheck.events")
# Cluster-scoped objects' Events go to this namespace (as kopf's poster does).
EVENT_NAMESPACE = "default"
EVENT_NAME_PREFIX = "thpcheck-"  # also kopf's posting.event_name_prefix (its own Events)

Poster = Callable[[dict[str, Any]], Awaitable[Any]]


class EventPoster:
    """Posts Event bodies with ``post``: at most ``workers`` at once, from a backlog of at
    most ``backlog`` (the oldest dropped past it). Create it inside the running loop."""

    def __init__(self, post: Poster, *, workers: int, backlog: int = BACKLOG,
                 dropped: Callable[[], None] | None = None) -> None:
        self._post = post
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=backlog)
        self._on_drop = dropped
        self.dropped = 0
        self._in_flight = 0
        self._workers = [asyncio.get_running_loop().create_task(self._work())
                         for _ in range(workers)]

    @property
    def pending(self) -> int:
        """Events submitted and not yet posted (or given up)."""
        return self._queue.qsize() + self._in_flight

    def submit(self, event: dict[str, Any]) -> None:
        if self._queue.full():
            oldest = self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("events dropped: the API is not taking them as fast as they come",
                            dropped=self.dropped, oldest_reason=oldest["reason"])
        self._queue.put_nowait(event)

    async def _work(self) -> None:
        while True:
            event = await self._queue.get()
            self._in_flight += 1
            try:
                await self._post(event)
            except Exception as exc:  # an Event is not worth failing the work for (as kopf)
                log.warning("event not posted", reason=event["reason"], error=str(exc))
            finally:
                self._in_flight -= 1
                self._queue.task_done()

    async def flush(self, within: float) -> bool:
        """Wait until every submitted Event is posted (True), at most ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), within)
            return True
        return False

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)


_installed: list[EventPoster] = []


def install(poster: EventPoster | None) -> None:
    """Post every Event with ``poster`` from now on (None: none; posting then fails)."""
    _installed[:] = [poster] if poster is not None else []


def installed() -> EventPoster | None:
    return _installed[0] if _installed else None


def event_body(ref: Mapping[str, Any], *, type_: str, reason: str, message: str,
               now: datetime) -> dict[str, Any]:
    """A core/v1 Event with the fields kopf's poster writes."""
    meta = ref.get("metadata") or {}
    stamp = now.isoformat()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"namespace": meta.get("namespace") or EVENT_NAMESPACE,
                     "generateName": EVENT_NAME_PREFIX},
        "type": type_, "reason": reason, "message": message[:MESSAGE_LIMIT],
        "action": "Action?",
        "reportingComponent": names.MANAGER, "reportingInstance": names.MANAGER,
        "source": {"component": names.MANAGER},
        "involvedObject": {"apiVersion": ref.get("apiVersion"), "kind": ref.get("kind"),
                           "name": meta.get("name"), "uid": meta.get("uid"),
                           "namespace": meta.get("namespace") or EVENT_NAMESPACE},
        "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": stamp,
    }


def _post(ref: Mapping[str, Any], *, warning: bool, reason: str, message: str) -> None:
    poster = installed()
    if poster is None:
        raise LookupError(f"no Event poster installed to post {reason}: the operator installs "
                          "one at start-up (controller/handlers.start_watches)")
    poster.submit(event_body(ref, type_="Warning" if warning else "Normal", reason=reason,
                             message=message, now=datetime.now(UTC)))


def on_node(node: NodeView, *, reason: str, message: str, warning: bool = False) -> None:
    _post(node_reference(node), warning=warning, reason=reason, message=message)


def on_check(body: Mapping[str, Any], *, reason: str, message: str,
             warning: bool = False) -> None:
    _post(body, warning=warning, reason=reason, message=message)


def post(body: Mapping[str, Any], planned: Iterable[Event], bound: Any = log) -> None:
    """Post planned Events (planning.checkplan.Event) on the check ``body`` or their node; a
    Warning on the check is logged too."""
    for event in planned:
        if event.node is not None:
            on_node(event.node, reason=event.reason, message=event.message,
                    warning=event.warning)
            continue
        if event.warning:
            bound.warning("check event", reason=event.reason, message=event.message[:300])
        on_check(body, reason=event.reason, message=event.message, warning=event.warning)
