"""When each of the two cluster-wide mitigation DaemonSets should exist (their bodies are
built in ``contract.mitigation``)."""

from __future__ import annotations

from collections.abc import Iterable

from thpcheck.contract.mitigation import runs_restore
from thpcheck.contract.views import DaemonSetView, NodeView


def restore_nodes(nodes: Iterable[NodeView]) -> int:
    """How many nodes the restore DaemonSet should run on."""
    return sum(1 for n in nodes if runs_restore(n))


def restore_confirmed(view: DaemonSetView, nodes: Iterable[NodeView]) -> bool:
    """Every pod of the restore DaemonSet runs its current template, and as many are Ready
    as there are nodes it should run on: no record is left anywhere it runs. (Counted
    against the nodes, not the DaemonSet's desired count: that still counts a deleted node
    until its pod is garbage-collected, and counts nothing before its first sync.)"""
    return (view.observed_generation >= view.generation and view.updated >= view.desired
            and view.ready >= restore_nodes(nodes))


def wanted_daemonsets(*, mitigating: bool, labelled: bool, mitigation: DaemonSetView | None,
                      restore: DaemonSetView | None,
                      nodes: Iterable[NodeView]) -> tuple[bool, bool]:
    """(mitigation DaemonSet wanted, restore DaemonSet wanted).

    The mitigation DaemonSet while a check mitigates or a node is labelled for it. The
    restore DaemonSet with it, and after it until the restore is confirmed everywhere (a
    fresh restore DaemonSet is confirmed only once its status counts every node)."""
    apply = mitigating or labelled
    keep_restore = restore is not None and not restore_confirmed(restore, nodes)
    return apply, apply or mitigation is not None or keep_restore
