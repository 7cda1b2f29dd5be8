"""Kubernetes Events on Nodes and ThpChecks, posted through kopf's background poster.

One Event per node per reconcile at most (its most important change names it), so a run
costs one Event per node, not one per label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from thpcheck.specs.views import NodeView

MESSAGE_LIMIT = 1000


def node_reference(node: NodeView) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "uid": node.uid}}


def _post(body: Mapping[str, Any], *, warning: bool, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type="Warning" if warning else "Normal", reason=reason,
               message=message[:MESSAGE_LIMIT])


def on_node(node: NodeView, *, reason: str, message: str, warning: bool = False) -> None:
    _post(node_reference(node), warning=warning, reason=reason, message=message)


def on_check(body: Mapping[str, Any], *, reason: str, message: str,
             warning: bool = False) -> None:
    _post(body, warning=warning, reason=reason, message=message)
