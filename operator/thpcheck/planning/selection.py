"""Which nodes a ThpCheck covers: its nodeSelector, and taints its tolerations allow.

The count of selected nodes is what "every node checked" and percentage budgets refer to,
so it must match where the DaemonSet can actually run a pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from thpcheck.contract.checkspec import CheckSpec
from thpcheck.contract.views import NodeView, Taint

# The DaemonSet controller adds these tolerations to every DaemonSet pod.
DAEMONSET_TOLERATED = frozenset({
    "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable",
    "node.kubernetes.io/disk-pressure", "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/pid-pressure", "node.kubernetes.io/unschedulable",
})
_BLOCKING = ("NoSchedule", "NoExecute")


def matches_selector(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Taint) -> bool:
    """Kubernetes' toleration rule for one taint."""
    if taint.key in DAEMONSET_TOLERATED:
        return True
    for toleration in tolerations:
        effect = toleration.get("effect") or ""
        if effect and effect != taint.effect:
            continue
        key = toleration.get("key") or ""
        operator = toleration.get("operator") or "Equal"
        if operator == "Exists" and (not key or key == taint.key):
            return True
        if operator == "Equal" and key == taint.key and (
                (toleration.get("value") or "") == taint.value):
            return True
    return False


def runs_on(spec: CheckSpec, node: NodeView) -> bool:
    """True if the check's agent pod can run on ``node``."""
    if not matches_selector(node.labels, spec.node_selector):
        return False
    return all(tolerates(spec.tolerations, t) for t in node.taints if t.effect in _BLOCKING)


def selected_nodes(spec: CheckSpec, nodes: Iterable[NodeView]) -> Sequence[NodeView]:
    """The nodes the check covers, sorted by name."""
    return sorted((n for n in nodes if runs_on(spec, n)), key=lambda n: n.name)
