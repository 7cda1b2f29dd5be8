"""Kubernetes Events on Nodes and ThpChecks, posted through kopf's background poster.

One Event per node per reconcile at most (its most important change names it), so a run
costs one Event per node, not one per label.

kopf's poster queue exists only inside its handlers' tasks; work the operator starts itself
(the orphan sweep, started once the nodes are listed) posts through the API instead
(``post_outside_kopf_with``), with the same fields kopf's poster writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import structlog

from thpcheck.contract import names
from thpcheck.contract.views import NodeView
from thpcheck.planning.checkplan import Event

MESSAGE_LIMIT = 1000


def node_reference(node: NodeView) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "uid": node.uid}}


log = structlog.get_logger("thpcheck.events")
# Cluster-scoped objects' Events go to this namespace (as kopf's poster does).
EVENT_NAMESPACE = "default"
EVENT_NAME_PREFIX = "thpcheck-"  # kopf's posting.event_name_prefix (controller/operator.py)

Poster = Callable[[dict[str, Any]], Awaitable[Any]]
_outside_kopf: list[Poster] = []
_posting: set[asyncio.Task[None]] = set()


def post_outside_kopf_with(post: Poster) -> None:
    """Where no kopf handler runs, post Event bodies with ``post`` (an API call)."""
    _outside_kopf[:] = [post]


def event_body(ref: Mapping[str, Any], *, type_: str, reason: str, message: str,
               now: datetime) -> dict[str, Any]:
    """A core/v1 Event as kopf's poster writes it."""
    meta = ref.get("metadata") or {}
    stamp = now.isoformat()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"namespace": meta.get("namespace") or EVENT_NAMESPACE,
                     "generateName": EVENT_NAME_PREFIX},
        "type": type_, "reason": reason, "message": message, "action": "Action?",
        "reportingComponent": names.MANAGER, "reportingInstance": names.MANAGER,
        "source": {"component": names.MANAGER},
        "involvedObject": {"apiVersion": ref.get("apiVersion"), "kind": ref.get("kind"),
                           "name": meta.get("name"), "uid": meta.get("uid"),
                           "namespace": meta.get("namespace") or EVENT_NAMESPACE},
        "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": stamp,
    }


def _post(body: Mapping[str, Any], *, warning: bool, reason: str, message: str) -> None:
    type_ = "Warning" if warning else "Normal"
    try:
        kopf.event(cast(kopf.Body, body), type=type_, reason=reason,
                   message=message[:MESSAGE_LIMIT])
    except LookupError:  # not in a kopf handler's task: kopf has no poster queue here
        if not _outside_kopf:
            raise
        _post_directly(_outside_kopf[0], event_body(
            body, type_=type_, reason=reason, message=message[:MESSAGE_LIMIT],
            now=datetime.now(UTC)))


def _post_directly(post: Poster, event: dict[str, Any]) -> None:
    async def send() -> None:
        try:
            await post(event)
        except Exception as exc:  # an Event is not worth failing the work for (as kopf)
            log.warning("event not posted", reason=event["reason"], error=str(exc))

    task = asyncio.get_running_loop().create_task(send())
    _posting.add(task)
    task.add_done_callback(_posting.discard)


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
