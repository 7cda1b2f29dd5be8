"""kopf's re-list without forgotten deletions.

kopf 1.45 lists a resource, then watches it from the list's resourceVersion. When a watch ends
with ``410 Gone`` (the version was compacted away, as after a kube-apiserver restart, whose
new watch cache starts at the current version), ``watching.continuous_watch`` returns and
``infinite_watch`` lists the resource again. The new listing yields every object that exists
(as events of type None), then ``Bookmark.LISTED``. An object deleted while no watch was
open yields nothing at all: kopf never discards it, so it stays in kopf's indexes and
per-object memory for ever. For the operator that means results kept for nodes that are
gone, a result deleted meanwhile never written again (the index still shows it), a deleted
pod still counted.

The fix sits where the re-list happens, in the one stream every kopf watcher consumes: a
wrapper of ``infinite_watch`` remembers each object it has seen (uid -> its identity and
labels; a few hundred bytes) and, when a listing ends, emits a ``DELETED`` event for every
remembered object that the listing did not contain, before passing the ``LISTED`` mark on.
kopf then does what it does for any deletion: indexes discard the object, its memory and
daemons are dropped, and ``on.event`` handlers see it. The synthetic body carries
``metadata.deletionTimestamp`` so that a handler reading it sees an object that is going.

The patch is applied only to a kopf whose watch stream has the shape it was written against
(kopf 1.45); on any other it stays off, with a warning.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from thpcheck.model.timestamps import format_time

log = structlog.get_logger("thpcheck.operator")

_PATCHED = "_thpcheck_relist_deletions"
_PARAMETERS = ("settings", "resource", "namespace", "operator_paused")


def remembered(body: Mapping[str, Any]) -> dict[str, Any]:
    """What is kept of an object to announce its deletion: kind, identity and labels."""
    meta = body.get("metadata") or {}
    kept = {key: meta[key] for key in ("name", "namespace", "uid", "labels") if key in meta}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": kept}


def deleted_event(kept: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """A DELETED watch event for an object the re-list no longer shows."""
    meta = {**kept["metadata"],
            "deletionTimestamp": format_time(now)}
    return {"type": "DELETED", "object": {**kept, "metadata": meta}}


async def reconciled(stream: AsyncIterator[Any], listed: Any, get_uid: Callable[[Any], str],
                     on_gone: Callable[[int], None] | None = None) -> AsyncIterator[Any]:
    """The watch ``stream`` with a DELETED event for each object a re-list no longer shows.

    ``listed`` is kopf's end-of-listing mark. A listing's objects come as events of type None;
    a None event for an object already seen in the current listing means a new listing began
    (a previous one was cut short), so the set of listed objects starts again.
    """
    known: dict[str, dict[str, Any]] = {}
    listing: set[str] = set()
    async for event in stream:
        if event is listed:
            gone = [uid for uid in known if uid not in listing]
            for uid in gone:
                yield deleted_event(known.pop(uid), datetime.now(UTC))
            if gone and on_gone is not None:
                on_gone(len(gone))
            listing = set()
            yield event
            continue
        if not isinstance(event, Mapping) or not isinstance(event.get("object"), Mapping) \
                or event.get("type") in ("BOOKMARK", "ERROR"):
            yield event
            continue
        uid = str(get_uid(event))
        kind = event.get("type")
        if kind is None:
            if uid in listing:
                listing = set()
            listing.add(uid)
        if kind == "DELETED":
            known.pop(uid, None)
        else:
            known[uid] = remembered(event["object"])
        yield event


def _shape_matches(watching: Any, queueing: Any) -> bool:
    """The internals this patch relies on, checked rather than assumed."""
    stream = getattr(watching, "infinite_watch", None)
    bookmark = getattr(watching, "Bookmark", None)
    if not inspect.isasyncgenfunction(stream) or not hasattr(bookmark, "LISTED"):
        return False
    if not callable(getattr(queueing, "get_uid", None)):
        return False
    parameters = inspect.signature(stream).parameters
    return all(name in parameters and parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
               for name in _PARAMETERS)


def announce_relist_deletions() -> bool:
    """Patch kopf's watch stream once; True when the patch is in effect."""
    from kopf._cogs.clients import watching
    from kopf._core.reactor import queueing

    if getattr(watching, _PATCHED, False):
        return True
    if not _shape_matches(watching, queueing):
        log.warning("kopf's watch stream changed shape: objects deleted while a watch was "
                    "down are left as kopf keeps them")
        return False
    original = watching.infinite_watch

    async def infinite_watch(**kwargs: Any) -> AsyncIterator[Any]:
        resource = kwargs.get("resource")

        def gone(count: int) -> None:
            log.info("re-list found objects deleted while no watch was open",
                     resource=str(resource), deleted=count)

        async for event in reconciled(original(**kwargs), watching.Bookmark.LISTED,
                                      queueing.get_uid, gone):
            yield event

    watching.infinite_watch = infinite_watch
    setattr(watching, _PATCHED, True)
    return True
