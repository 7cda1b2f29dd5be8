"""The operator's own list and watch of Nodes, keeping a small view of each and nothing more.

kopf keeps every watched object whole: at start-up it lists all nodes and holds each parsed
body (and a worker, a queue and a barrier toggle per node) until every one is indexed, and
while running it parses each event into a body it keeps until that node's worker idles out.
A real cloud node is 20-40 KiB of JSON (images, managedFields, conditions), 60-120 KiB as
Python objects: at 5,000 such nodes kopf's start-up alone held about 400 MiB. The operator
needs a few hundred bytes of each (``thpcheck.contract.views.NodeView``).

So nodes are not a kopf resource. This watch lists them in pages of ``PAGE_SIZE`` and turns
each into its view as the page is parsed (a page of realistic nodes is a few MiB, freed
before the next one), then watches from the list's resourceVersion, one event (one node) at
a time. Label keys and values, kernel and OS image are shared between views
(``sys.intern``): most are the same on every node of a pool.

Convergence is a re-list's: when the watch's resourceVersion is gone (410, after an API
server restart or compaction) the nodes are listed again and the new listing *replaces* the
set, so a node deleted while no watch was open is gone from the view, and one created
meanwhile is in it. Other failures (connection lost, server timeout) resume the watch from
the last version seen (bookmarks keep it fresh); repeated errors back off from 0.5 s to 30 s.

Blocking I/O and JSON parsing run in one thread of their own; the views are changed only on
the event loop (``call_soon_threadsafe``), between the handlers' awaits, so a reconcile never
sees a half-applied relist. ``on_change`` runs on the loop after a change a planner could
see (not after a heartbeat that only moved the resourceVersion).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from thpcheck.contract.views import NodeView, node_view, same_node
from thpcheck.controller.api import NODES_PATH, ApiError

log = structlog.get_logger("thpcheck.operator")

PAGE_SIZE = 100  # realistic nodes: a 2.5 MiB page, about 8 MiB while parsed
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # seconds after 1, 2, ... failures


class Transport(Protocol):
    """The two requests the watch makes (``thpcheck.controller.api.Kube`` provides both)."""

    def request_sync(self, verb: str, path: str, body: Any = None,
                     content_type: str = ..., query: Mapping[str, str] | None = None,
                     resource: str = "") -> Any: ...

    def stream_sync(self, path: str, query: Mapping[str, str],
                    read_timeout: float) -> AbstractContextManager[Iterator[bytes]]: ...


class Expired(Exception):
    """The watch's resourceVersion is gone (410): only a new listing can catch up."""


def lean_view(body: Mapping[str, Any]) -> NodeView:
    """The view the watch keeps of a node body (strings shared between nodes)."""
    return node_view(body, sys.intern)


@dataclass
class NodeViews:
    """The current views by node name, and how watch events and listings change them.

    Pure bookkeeping (tested with plain data); each method returns True when a planner
    would see the change."""

    views: dict[str, NodeView] = field(default_factory=dict)
    synced: bool = False  # a complete listing has been applied

    def replace(self, listed: Iterable[NodeView]) -> bool:
        """A complete listing: it becomes the set (nodes it lacks were deleted)."""
        fresh = {view.name: view for view in listed}
        changed = not self.synced or fresh.keys() != self.views.keys() or any(
            not same_node(self.views[name], view) for name, view in fresh.items())
        self.views.clear()  # in place: the handlers' Indexes hold this dict
        self.views.update(fresh)
        self.synced = True
        return changed

    def apply(self, kind: str, view: NodeView) -> bool:
        """One watch event (ADDED, MODIFIED or DELETED) for ``view``'s node."""
        old = self.views.get(view.name)
        if kind == "DELETED":
            if old is None or (old.uid and view.uid and old.uid != view.uid):
                return False  # already gone, or a newer node of the same name
            del self.views[view.name]
            return True
        self.views[view.name] = view
        return old is None or not same_node(old, view)


class NodeWatch:
    """Lists and watches nodes in a thread; applies what it sees on the event loop."""

    def __init__(self, transport: Transport, *, page_size: int = PAGE_SIZE,
                 server_timeout: float = 300.0, client_timeout: float = 330.0,
                 backoff: tuple[float, ...] = BACKOFF) -> None:
        self.transport = transport
        self.page_size = page_size
        self.server_timeout = server_timeout
        self.client_timeout = client_timeout
        self.backoff = backoff
        self.state = NodeViews()
        self.version = ""  # the last resourceVersion seen; "" when a listing is due
        self.relists = 0
        self.on_change: Callable[[], None] = lambda: None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listed: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def views(self) -> Mapping[str, NodeView]:
        """Node name -> view; the same dict for the life of the watch, changed in place."""
        return self.state.views

    # -- life cycle (event loop) ----------------------------------------------------------

    async def start(self, on_change: Callable[[], None] | None = None) -> None:
        """Start the thread and return once the first listing is applied."""
        if on_change is not None:
            self.on_change = on_change
        if self._thread is None:  # started once, however often this is awaited
            self._loop = asyncio.get_running_loop()
            self._listed = asyncio.Event()
            self._thread = threading.Thread(target=self._run, name="node-watch", daemon=True)
            self._thread.start()
        assert self._listed is not None
        await self._listed.wait()

    def stop(self) -> None:
        """Ask the thread to end; it does at its next event or request timeout (it is a
        daemon thread, so it never holds the process)."""
        self._stopping.set()

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if not self.version:
                    self._list()
                self._watch()
                failures = 0
            except Expired:
                log.info("node watch expired; listing nodes again", version=self.version)
                self.version = ""
                failures = 0
            except Exception as exc:  # a watch never gives up; it reports and backs off
                delay = self.backoff[min(failures, len(self.backoff) - 1)]
                failures += 1
                log.warning("node watch failed; retrying", error=str(exc)[:300],
                            retry_in_s=delay, failures=failures)
                self._stopping.wait(delay)

    def _list(self) -> None:
        """Every node, page by page, each turned into its view as its page is parsed."""
        views: list[NodeView] = []
        query = {"limit": str(self.page_size)}
        while True:
            page = self.transport.request_sync("GET", NODES_PATH, query=query)
            views.extend(lean_view(item) for item in page.get("items") or ())
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            del page  # one page at a time
            if not token:
                break
            query = {"limit": str(self.page_size), "continue": token}
        version = str(meta.get("resourceVersion") or "")
        self.relists += 1
        self._call(self._replace, views)
        self.version = version

    def _watch(self) -> None:
        query = {"watch": "true", "resourceVersion": self.version,
                 "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(int(self.server_timeout))}
        try:
            stream = self.transport.stream_sync(NODES_PATH, query, self.client_timeout)
            with stream as lines:
                for line in lines:
                    if self._stopping.is_set():
                        return
                    if line.strip():
                        self._event(json.loads(line))
        except ApiError as exc:
            if exc.status == 410:
                raise Expired(str(exc)) from exc
            raise

    def _event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        body = event.get("object") or {}
        if kind == "ERROR":
            if body.get("code") == 410:
                raise Expired(str(body.get("message", "")))
            raise RuntimeError(f"watch error: {body.get('message', body)}")
        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._call(self._apply, str(kind), lean_view(body))
        if version:
            self.version = version

    def _call(self, function: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(function, *args)

    # -- on the event loop ----------------------------------------------------------------

    def _replace(self, views: list[NodeView]) -> None:
        first = not self.state.synced
        changed = self.state.replace(views)
        log.info("nodes listed", nodes=len(views), listing=self.relists, changed=changed)
        if self._listed is not None:
            self._listed.set()
        if changed and not first:
            self.on_change()

    def _apply(self, kind: str, view: NodeView) -> None:
        if self.state.apply(kind, view):
            self.on_change()
