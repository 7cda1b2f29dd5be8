"""The uninstall clean-up's decisions (``thpcheck uninstall-cleanup``, the chart's pre-delete
hook), from what it observed: every message it prints and when it stops.

Before Helm deletes the operator, the clean-up

1. deletes every ThpCheck and waits until all are gone: the operator's finalizer on each
   undoes what that check did (node labels and annotations, cordons, the mitigation label,
   results) before it lets the ThpCheck go;
2. confirms the nodes are clean: no node carries a mark of a ThpCheck (the operator's orphan
   sweep undoes marks whose ThpCheck is gone), and no node is labelled
   ``thpcheck.io/mitigate=true`` by hand (that fails at once: the uninstall would lift a
   mitigation it cannot confirm; remove the label first);
3. confirms khugepaged is restored: the mitigation DaemonSet is gone (the operator deletes it
   once no node is labelled for it) and the restore DaemonSet (on every node not labelled for
   mitigation) is Ready on every node it should run on, so no mitigation record is left
   anywhere; then it deletes the restore DaemonSet.

Exit 0 when all holds (or the CRD is not installed and nothing is left), 1 otherwise, naming
the ThpChecks or nodes and what is left after the timeout: Helm then stops the uninstall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from thpcheck.contract import names
from thpcheck.contract.mitigation import runs_restore
from thpcheck.contract.views import DaemonSetView, MitigationPodView, NodeView
from thpcheck.planning.mitigation import restore_confirmed, restore_nodes
from thpcheck.planning.remediation import marked_by

NAMED = 10  # nodes named per problem
HELP = "See docs/helm.md, 'Uninstall'."
RESTORE_PODS = f"{names.COMPONENT}={names.RESTORE_COMPONENT}"  # the restore pods' selector


def listed(items: Sequence[str]) -> str:
    """The first ``NAMED`` items, comma-separated, and how many more."""
    more = len(items) - NAMED
    return ", ".join(items[:NAMED]) + (f" and {more} more" if more > 0 else "")


# -- step 1: the ThpChecks -------------------------------------------------------------------


def no_crd() -> str:
    return "thpchecks.thpcheck.io is not installed: no ThpCheck to delete"


def deleting(check: str) -> str:
    return f"deleting ThpCheck {check}"


def checks_gone(count: int) -> str:
    return f"all {count} ThpChecks are gone; the operator undid their changes"


def checks_left(timeout: float, left: Sequence[str]) -> str:
    """Why the clean-up fails when ThpChecks outlive the timeout (stderr)."""
    return (f"ThpChecks still present after {timeout:.0f}s: {', '.join(left)}. The operator "
            "removes them once it has undone their node changes: is it running? See the "
            "ThpChecks' CleanupBlocked condition and docs/helm.md, 'Uninstall'.")


# -- steps 2 and 3: the nodes and the mitigation DaemonSets ---------------------------------


@dataclass(frozen=True)
class Observed:
    """One look at the cluster once the ThpChecks are gone (``namespace`` empty: the
    DaemonSets are not looked at)."""

    nodes: Sequence[NodeView]
    namespace: str = ""
    mitigation: bool = False  # the mitigation DaemonSet exists
    restore: DaemonSetView | None = None  # the restore DaemonSet, if it exists
    restore_pods: Sequence[MitigationPodView] = ()


@dataclass(frozen=True)
class Leftovers:
    """What still stands between the cluster and a clean uninstall."""

    by_hand: tuple[str, ...] = ()  # nodes labelled thpcheck.io/mitigate=true by hand
    problems: tuple[str, ...] = ()  # waiting for these
    confirmed: str = ""  # the restore, once confirmed
    delete_restore: bool = False  # delete the restore DaemonSet now (its work is done)


def leftovers(seen: Observed) -> Leftovers:
    nodes = seen.nodes
    by_hand = tuple(sorted(n.name for n in nodes if n.labels.get(names.MITIGATE_LABEL) == "true"
                           and not n.annotations.get(names.MITIGATE_BY_ANNOTATION)))
    marked = sorted(f"{n.name} ({', '.join(sorted(marked_by(n)))})" for n in nodes
                    if marked_by(n))
    problems = [f"nodes still carrying marks of a ThpCheck: {listed(marked)}"] if marked else []
    if not seen.namespace:
        return Leftovers(by_hand, tuple(problems))
    if seen.mitigation:
        problems.append(f"DaemonSet {seen.namespace}/{names.MITIGATION_DAEMONSET} still "
                        "present (the operator deletes it once no node is labelled)")
    view = seen.restore
    if view is None:
        return Leftovers(by_hand, tuple(problems), "no mitigation record left to confirm")
    if restore_confirmed(view, nodes):
        return Leftovers(by_hand, tuple(problems),
                         f"khugepaged restore confirmed on all {view.desired} nodes not "
                         "labelled for mitigation: no mitigation record left",
                         delete_restore=not problems)
    ready = {p.node for p in seen.restore_pods if p.ready}
    waiting = sorted(n.name for n in nodes if runs_restore(n) and n.name not in ready)
    problems.append(
        "khugepaged restore not confirmed (no Ready restore pod: a mitigation record may be "
        f"left) on {len(waiting)} nodes: {listed(waiting) or 'none'} (DaemonSet "
        f"{names.RESTORE_DAEMONSET}: {view.ready} of {view.desired} pods Ready, "
        f"{view.updated} current, for {restore_nodes(nodes)} nodes)")
    return Leftovers(by_hand, tuple(problems))


@dataclass(frozen=True)
class Verdict:
    """After one look: stop with ``exit`` (None: look again in a moment), printing
    ``message`` (to stderr when ``error``)."""

    exit: int | None
    message: str = ""
    error: bool = False


def verdict(found: Leftovers, timeout: float, timed_out: bool) -> Verdict:
    if found.by_hand:
        return Verdict(1, f"nodes labelled {names.MITIGATE_LABEL}=true by hand: "
                       f"{listed(found.by_hand)}. Uninstalling would lift their mitigation "
                       "without confirming the restore: remove the label (kubectl label node "
                       f"NAME {names.MITIGATE_LABEL}-) and run the uninstall again.", True)
    if not found.problems and found.confirmed:
        return Verdict(0, found.confirmed)
    if timed_out:
        return Verdict(1, f"after {timeout:.0f}s: " + "; ".join(found.problems) + f". {HELP}",
                       True)
    return Verdict(None)
