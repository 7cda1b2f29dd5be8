"""The operator's own list and watch of the objects it has one of per node (nodes, agent
pods, mitigation pods, ThpNodeResults), keeping a small view of each and nothing more.

kopf keeps every watched object whole: at start-up it lists them and holds each parsed body
(and a worker, a queue and a barrier toggle per object) until every one is indexed, and while
running it parses each event into a body it keeps until that object's worker idles out. When
a watch's resourceVersion is gone (410: compaction, an API server restart, a watch closed on
a slow reader) it lists the resource again, in one response unless told otherwise, and holds
every body once more. Per node that is a real cloud node (20-40 KiB of JSON, 60-120 KiB as
Python objects), a check pod (8 KiB, about 40 KiB) and a result: at 15,000 realistic nodes one
such re-list of the check pods took the operator from 189 to 554 MiB within a minute (797
MiB peak). The operator needs a few hundred bytes of each (``thpcheck.contract.views``).

So these are not kopf resources. A ``LeanWatch`` lists its ``Kind`` in pages of
``PAGE_SIZE`` and turns each object into its view as the page is parsed (a page is a few MiB
at most, freed before the next one), then watches from the list's resourceVersion, one event
(one object) at a time. Only views cross to the event loop.

Convergence is a re-list's: when the watch's resourceVersion is gone (410) the kind is listed
again and the new listing *replaces* the set, so an object deleted while no watch was open is
gone from the views, and one created meanwhile is in them. Other failures (connection lost,
server timeout) resume the watch from the last version seen (bookmarks keep it fresh);
repeated errors back off from 0.5 s to 30 s.

Blocking I/O and JSON parsing run in one thread per kind; the views are changed only on the
event loop (``call_soon_threadsafe``), between the handlers' awaits, so a reconcile never
sees a half-applied relist. ``on_change`` runs on the loop after a change a planner could
see (not after a heartbeat that only moved a node's resourceVersion), with the view that
changed (None after a listing that changed the set).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import structlog

from thpcheck.controller.api import ApiError

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


class Viewed(Protocol):
    """A view knows the name and uid of its object (its key in the set, and which
    incarnation of the name a deletion is for)."""

    @property
    def name(self) -> str: ...

    @property
    def uid(self) -> str: ...


V = TypeVar("V", bound=Viewed)


def _equal(a: Any, b: Any) -> bool:
    return bool(a == b)


@dataclass(frozen=True)
class Kind(Generic[V]):
    """What one lean watch lists and keeps: the objects at ``path`` matching ``selector``,
    each as ``view(body)``. ``same`` says whether a planner would see no difference between
    two views of an object; ``group`` (if any) files views under a key, as an index does
    (agent pods by check, mitigation pods by node)."""

    what: str  # for logs and the thread's name: "nodes", "agent pods", ...
    path: str
    view: Callable[[Mapping[str, Any]], V]
    selector: str = ""
    same: Callable[[V, V], bool] = _equal
    group: Callable[[V], str | None] | None = None


class Expired(Exception):
    """The watch's resourceVersion is gone (410): only a new listing can catch up."""


class Grouped(Mapping[str, Collection[V]]):
    """The views filed by group key, read as an index: key -> the views filed under it.
    A live window on the set's groups (the handlers' Indexes hold it)."""

    def __init__(self, groups: dict[str, dict[str, V]]) -> None:
        self._groups = groups

    def __getitem__(self, key: str) -> Collection[V]:
        return self._groups[key].values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)


class ViewSet(Generic[V]):
    """The current views by object name, and how watch events and listings change them.

    Pure bookkeeping (tested with plain data); each method returns True when a planner
    would see the change."""

    def __init__(self, same: Callable[[V, V], bool] = _equal,
                 group: Callable[[V], str | None] | None = None) -> None:
        self.same = same
        self.group = group
        self.views: dict[str, V] = {}
        self.groups: dict[str, dict[str, V]] = {}
        self.grouped: Grouped[V] = Grouped(self.groups)
        self.synced = False  # a complete listing has been applied

    def replace(self, listed: Iterable[V]) -> bool:
        """A complete listing: it becomes the set (objects it lacks were deleted)."""
        fresh = {view.name: view for view in listed}
        changed = not self.synced or fresh.keys() != self.views.keys() or any(
            not self.same(self.views[name], view) for name, view in fresh.items())
        self.views.clear()  # in place: the handlers' Indexes hold these dicts
        self.views.update(fresh)
        self.groups.clear()
        for view in fresh.values():
            self._file(view)
        self.synced = True
        return changed

    def apply(self, kind: str, view: V) -> bool:
        """One watch event (ADDED, MODIFIED or DELETED) for ``view``'s object."""
        old = self.views.get(view.name)
        if kind == "DELETED":
            if old is None or (old.uid and view.uid and old.uid != view.uid):
                return False  # already gone, or a newer object of the same name
            del self.views[view.name]
            self._unfile(old)
            return True
        if old is not None:
            self._unfile(old)
        self.views[view.name] = view
        self._file(view)
        return old is None or not self.same(old, view)

    def _file(self, view: V) -> None:
        key = self.group(view) if self.group is not None else None
        if key is not None:
            self.groups.setdefault(key, {})[view.name] = view

    def _unfile(self, view: V) -> None:
        key = self.group(view) if self.group is not None else None
        if key is None or key not in self.groups:
            return
        filed = self.groups[key]
        filed.pop(view.name, None)
        if not filed:
            del self.groups[key]


class LeanWatch(Generic[V]):
    """Lists and watches one kind in a thread; applies what it sees on the event loop."""

    def __init__(self, transport: Transport, kind: Kind[V], *, page_size: int = PAGE_SIZE,
                 server_timeout: float = 300.0, client_timeout: float = 330.0,
                 backoff: tuple[float, ...] = BACKOFF) -> None:
        self.transport = transport
        self.kind = kind
        self.page_size = page_size
        self.server_timeout = server_timeout
        self.client_timeout = client_timeout
        self.backoff = backoff
        self.state: ViewSet[V] = ViewSet(kind.same, kind.group)
        self.version = ""  # the last resourceVersion seen; "" when a listing is due
        self.relists = 0
        self.on_change: Callable[[V | None], None] = lambda _: None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listed: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def views(self) -> Mapping[str, V]:
        """Object name -> view; the same dict for the life of the watch, changed in place."""
        return self.state.views

    @property
    def grouped(self) -> Mapping[str, Collection[V]]:
        """Group key -> views (the kind's ``group``); live, like ``views``."""
        return self.state.grouped

    # -- life cycle (event loop) ----------------------------------------------------------

    async def start(self, on_change: Callable[[V | None], None] | None = None) -> None:
        """Start the thread and return once the first listing is applied."""
        if on_change is not None:
            self.on_change = on_change
        if self._thread is None:  # started once, however often this is awaited
            self._loop = asyncio.get_running_loop()
            self._listed = asyncio.Event()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"watch {self.kind.what}")
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
                log.info("watch expired; listing again", kind=self.kind.what,
                         version=self.version)
                self.version = ""
                failures = 0
            except Exception as exc:  # a watch never gives up; it reports and backs off
                delay = self.backoff[min(failures, len(self.backoff) - 1)]
                failures += 1
                log.warning("watch failed; retrying", kind=self.kind.what,
                            error=str(exc)[:300], retry_in_s=delay, failures=failures)
                self._stopping.wait(delay)

    def _query(self, **query: str) -> dict[str, str]:
        if self.kind.selector:
            query["labelSelector"] = self.kind.selector
        return query

    def _list(self) -> None:
        """Every object, page by page, each turned into its view as its page is parsed."""
        views: list[V] = []
        query = self._query(limit=str(self.page_size))
        while True:
            page = self.transport.request_sync("GET", self.kind.path, query=query)
            views.extend(self.kind.view(item) for item in page.get("items") or ())
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            del page  # one page at a time
            if not token:
                break
            query = self._query(limit=str(self.page_size), **{"continue": token})
        version = str(meta.get("resourceVersion") or "")
        self.relists += 1
        self._call(self._replace, views)
        self.version = version

    def _watch(self) -> None:
        query = self._query(watch="true", resourceVersion=self.version,
                            allowWatchBookmarks="true",
                            timeoutSeconds=str(int(self.server_timeout)))
        try:
            stream = self.transport.stream_sync(self.kind.path, query, self.client_timeout)
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
            self._call(self._apply, str(kind), self.kind.view(body))
        if version:
            self.version = version

    def _call(self, function: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(function, *args)

    # -- on the event loop ----------------------------------------------------------------

    def _replace(self, views: list[V]) -> None:
        first = not self.state.synced
        changed = self.state.replace(views)
        log.info("listed", kind=self.kind.what, objects=len(views), listing=self.relists,
                 changed=changed)
        if self._listed is not None:
            self._listed.set()
        if changed and not first:
            self.on_change(None)

    def _apply(self, kind: str, view: V) -> None:
        if self.state.apply(kind, view):
            self.on_change(view)
