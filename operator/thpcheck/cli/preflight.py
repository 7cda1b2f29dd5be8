"""``thpcheck preflight``: predict every node from the API alone (no pods, no privileges).

Reads ``status.nodeInfo`` (kernel release, OS image, architecture) of the nodes matching a
label selector and predicts each from the model (``thpcheck.model.preflight``). Needs only
``list`` on nodes. The Kubernetes client (``thpcheck.controller.api``, the package's one, with
its one credential order) is imported here, lazily, so the other subcommands (``check`` runs
in every agent pod) never pay for it. ``--nodes-file`` reads the same nodes
from saved ``kubectl get nodes`` output instead, with no cluster at all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from thpcheck.cli.args import KUBECONFIG_HELP, add_common_options
from thpcheck.model.preflight import (
    NodeInfo,
    NodesDocumentError,
    node_info,
    nodes_from_documents,
    predict_nodes,
    preflight_exit_code,
    render_table,
    to_document,
)
from thpcheck.model.timestamps import format_time
from thpcheck.model.verdict import CheckExit


class PreflightError(Exception):
    """The nodes could not be read; ``exit`` says whether it was bad input or an error."""

    def __init__(self, message: str, exit: CheckExit = CheckExit.BAD_INPUT) -> None:
        super().__init__(message)
        self.exit = exit


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "preflight", help="predict every node's exposure from the API alone (no pods)",
        description="Read the nodes' kernel release and OS image from the Kubernetes API and "
        "predict each node from the distro table, the fixed stable releases and the 7.2 "
        "removal, without running anything on the nodes. Needs only 'list nodes'. Exit 0 "
        "nothing susceptible or unknown, 1 some susceptible, 2 bad input (kubeconfig, "
        "selector, nodes file), 3 some unknown (or no node matched) and nothing susceptible, "
        "5 the API server cannot be reached, 6 it rejects the credentials, 7 RBAC denies "
        "'list nodes'.")
    parser.add_argument("--kubeconfig", metavar="FILE", help=KUBECONFIG_HELP)
    parser.add_argument("--selector", "-l", metavar="SELECTOR",
                        help="label selector for the nodes, e.g. 'node-role.kubernetes.io/"
                        "worker' or 'pool in (a,b)'")
    parser.add_argument("--nodes-file", metavar="FILE",
                        help="predict the nodes saved in FILE ('-': stdin) instead of asking a "
                        "cluster: the output of 'kubectl get nodes -o json' or '-o yaml' (a "
                        "List, or a single Node)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    add_common_options(parser)
    parser.set_defaults(func=main)


def list_nodes(kubeconfig: str | None, selector: str | None) -> list[NodeInfo]:
    """The nodes matching ``selector`` (all pages), as the prediction's input."""
    from thpcheck.controller import credentials
    from thpcheck.controller.api import NODES_PATH, ApiError, Kube

    kube = Kube.connect(kubeconfig, retries=1)  # fail fast on a wrong server address
    try:
        items = kube.list_sync(NODES_PATH, {"labelSelector": selector} if selector else None)
    except ApiError as exc:
        if exc.status == 400 and selector:
            raise PreflightError(f"--selector {selector!r}: "
                                 f"{credentials.api_message(exc.detail)}") from exc
        if exc.status in (0, 401, 403):
            raise kube.startup_error(exc, "list nodes") from exc
        raise PreflightError(f"listing nodes at {kube.server} failed (HTTP {exc.status}): "
                             f"{credentials.api_message(exc.detail)}",
                             CheckExit.INCONCLUSIVE) from exc
    finally:
        kube.close()
    return [node_info(item) for item in items]


NODES_FILE_HINT = ("pass the output of 'kubectl get nodes -o json' (or -o yaml): a List, or a "
                   "single Node")


def _parse_saved(text: str) -> list[Any]:
    """JSON, else YAML (one or more documents); ValueError when it is neither."""
    try:
        return [json.loads(text)]
    except ValueError:
        pass
    import yaml  # only here: JSON needs no YAML parser

    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"neither JSON nor YAML{where}") from exc


def read_nodes_file(path: str) -> list[NodeInfo]:
    """The nodes saved in ``path`` ('-': stdin); PreflightError (bad input) when it is not
    ``kubectl get nodes`` output."""
    label = "stdin" if path == "-" else path
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as handle:
                raw = handle.read()
    except FileNotFoundError:
        raise PreflightError(f"--nodes-file {label}: no such file") from None
    except OSError as exc:
        raise PreflightError(f"--nodes-file {label}: cannot be read ({exc.strerror})") from None
    try:
        return nodes_from_documents(_parse_saved(raw.decode("utf-8")))
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except (ValueError, NodesDocumentError) as exc:  # NodesDocumentError is a ValueError
        problem = str(exc)
    raise PreflightError(f"--nodes-file {label}: {problem}; {NODES_FILE_HINT}")


def _nodes(args: argparse.Namespace) -> list[NodeInfo]:
    if args.nodes_file is None:
        return list_nodes(args.kubeconfig, args.selector)
    for flag, value in (("--kubeconfig", args.kubeconfig), ("--selector", args.selector)):
        if value is not None:
            raise PreflightError(f"{flag} does not apply to --nodes-file (the nodes are already "
                                 "saved); select them when saving: kubectl get nodes -l "
                                 "SELECTOR -o json")
    return read_nodes_file(args.nodes_file)


def main(args: argparse.Namespace) -> int:
    from thpcheck.controller.credentials import StartupError

    try:
        nodes = _nodes(args)
    except (PreflightError, StartupError) as exc:
        print(f"thpcheck preflight: {exc}", file=sys.stderr)
        return int(exc.exit)
    predictions = predict_nodes(nodes)
    if args.json:
        now = format_time(dt.datetime.now(dt.UTC))
        print(json.dumps(to_document(predictions, now, args.selector), indent=2))
    else:
        print(render_table(predictions))
    if not predictions:
        if args.nodes_file is not None:
            where = f" in --nodes-file {'stdin' if args.nodes_file == '-' else args.nodes_file}"
        else:
            where = f" match --selector {args.selector!r}" if args.selector else " exist"
        print(f"thpcheck preflight: no nodes{where}; nothing was predicted", file=sys.stderr)
    return preflight_exit_code(predictions)
