"""``thpcheck uninstall-cleanup``: the chart's pre-delete hook. Deletes every ThpCheck, waits
until the operator has undone their changes and let them go, and confirms that no node keeps
a mark or a mitigation record (the steps and every decision: ``thpcheck.planning.uninstall``).

It talks to the API through the package's one client (``thpcheck.controller.api.Kube``, the
credentials in the documented order; in the hook Job, the Job's ServiceAccount). Needs list and
delete on thpchecks.thpcheck.io, list on nodes, list on pods in the namespace, get on the
DaemonSets ``thpcheck-mitigation`` and ``thpcheck-mitigation-restore`` there and delete on
the latter; nothing else (the chart's templates/cleanup-hook.yaml grants exactly that).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import TYPE_CHECKING

from thpcheck.cli.args import KUBECONFIG_HELP, add_common_options
from thpcheck.contract import names
from thpcheck.contract.views import daemonset_view, mitigation_pod_view, node_view
from thpcheck.planning import uninstall

if TYPE_CHECKING:  # the Kubernetes client is imported only when the command runs
    from thpcheck.controller.api import Kube

NAME = "uninstall-cleanup"
TIMEOUT_ENV = "THPCHECK_CLEANUP_TIMEOUT"
NAMESPACE_ENV = "THPCHECK_NAMESPACE"
DEFAULT_TIMEOUT = 240.0
POLL = 2.0  # seconds between two looks


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        NAME, help="the chart's pre-delete hook: delete every ThpCheck and confirm that "
        "nothing is left on the nodes",
        description="Delete every ThpCheck, wait until the operator has undone their node "
        "changes and removed them, then confirm that no node carries a mark of a ThpCheck or "
        "is labelled thpcheck.io/mitigate=true by hand (that fails at once), that the "
        "mitigation DaemonSet is gone and that the restore DaemonSet is Ready on every node "
        "it should run on (then delete it). Exit 0 when all holds, 1 when something is left "
        "after the timeout (naming it) or an API request fails, 2 no usable kubeconfig or a "
        "bad option. Run by the chart's pre-delete hook Job (docs/helm.md, 'Uninstall').")
    parser.add_argument("--kubeconfig", metavar="FILE", help=KUBECONFIG_HELP)
    parser.add_argument("--namespace", metavar="NS", default=os.environ.get(NAMESPACE_ENV, ""),
                        help="the operator's namespace, where the mitigation DaemonSets live "
                        f"(default ${NAMESPACE_ENV}; none: they are not looked at)")
    parser.add_argument("--timeout", metavar="SECONDS", type=_seconds,
                        default=os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT)),
                        help=f"give up after this long (default ${TIMEOUT_ENV}, else "
                        f"{DEFAULT_TIMEOUT:g})")
    add_common_options(parser)
    parser.set_defaults(func=main)


def _say(text: str, error: bool = False) -> None:
    print(text, file=sys.stderr if error else sys.stdout, flush=True)


def main(args: argparse.Namespace) -> int:
    from thpcheck.controller.api import ApiError, Kube
    from thpcheck.controller.credentials import StartupError, one_line

    try:
        kube = Kube.connect(args.kubeconfig)
    except StartupError as exc:
        _say(f"thpcheck {NAME}: {exc}", error=True)
        return int(exc.exit)
    try:
        return asyncio.run(clean_up(kube, args.namespace, args.timeout))
    except ApiError as exc:  # the request, the server and its answer, on one line
        _say(f"thpcheck {NAME}: {one_line(exc, 600)} (API server {kube.server})", error=True)
        return 1
    finally:
        kube.close()


async def clean_up(kube: Kube, namespace: str, limit: float) -> int:
    """The three steps (``thpcheck.planning.uninstall``), giving up after ``limit`` seconds;
    the exit code."""
    deadline = time.monotonic() + limit
    checks = await _checks(kube)
    if checks is None:
        _say(uninstall.no_crd())
    for name in checks or []:
        if await kube.delete_check(name):
            _say(uninstall.deleting(name))
    while checks is not None:
        left = await _checks(kube) or []
        if not left:
            _say(uninstall.checks_gone(len(checks)))
            break
        if time.monotonic() > deadline:
            _say(uninstall.checks_left(limit, left), error=True)
            return 1
        await asyncio.sleep(POLL)
    while True:
        found = uninstall.leftovers(await observe(kube, namespace))
        if found.delete_restore:
            await kube.delete_daemonset(namespace, names.RESTORE_DAEMONSET)
        decided = uninstall.verdict(found, limit, time.monotonic() > deadline)
        if decided.exit is not None:
            _say(decided.message, decided.error)
            return decided.exit
        await asyncio.sleep(POLL)


async def _checks(kube: Kube) -> list[str] | None:
    """The ThpChecks' names; None when the CRD is not installed."""
    from thpcheck.controller.api import NotFound

    try:
        return sorted(await kube.check_names())
    except NotFound:
        return None


async def observe(kube: Kube, namespace: str) -> uninstall.Observed:
    """One look at the nodes and (with a namespace) the mitigation DaemonSets."""
    nodes = [node_view(n) for n in await kube.list_nodes()]
    if not namespace:
        return uninstall.Observed(nodes)
    mitigation = await kube.get_daemonset(namespace, names.MITIGATION_DAEMONSET)
    restore = await kube.get_daemonset(namespace, names.RESTORE_DAEMONSET)
    pods = (await kube.list_pods(namespace, uninstall.RESTORE_PODS) if restore is not None
            else [])
    return uninstall.Observed(nodes, namespace, mitigation is not None,
                              daemonset_view(restore) if restore is not None else None,
                              [mitigation_pod_view(p) for p in pods])
