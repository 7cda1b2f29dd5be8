"""The ``thpcheck`` command: subcommand dispatch, logging and signal set-up.

Only the chosen subcommand's module is imported: the agent's ``check`` and ``repro`` must start
fast on a node (and inside a slow emulated guest), so they never pay for kopf or the
Kubernetes client.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from thpcheck import __version__
from thpcheck.cli import signals

COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("thpcheck.cli.check", "predict and prove, per filesystem, whether this node "
              "loses written data"),
    "repro": ("thpcheck.cli.repro", "run the seven-step reproducer in a scratch directory"),
    "facts": ("thpcheck.cli.facts", "print the node facts and the static prediction as JSON"),
    "preflight": ("thpcheck.cli.preflight", "predict every node of a cluster from its kernel "
                  "and OS image, with no privileges"),
    "mitigate": ("thpcheck.cli.mitigate", "stop khugepaged until stopped, then restore it "
                 "(the mitigation DaemonSet)"),
    "operator": ("thpcheck.cli.operator", "run the Kubernetes operator"),
    "uninstall-cleanup": ("thpcheck.cli.uninstall", "delete every ThpCheck and confirm that "
                          "nothing is left on the nodes (the chart's pre-delete hook)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, the other subcommands are listed but not imported."""
    parser = argparse.ArgumentParser(
        prog="thpcheck",
        description="Find and prove the read-only-THP write-open purge data loss, per "
        "filesystem, on this machine or on Kubernetes nodes.")
    parser.add_argument("--version", action="version", version=f"thpcheck {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module, summary) in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).register(subparsers)
        else:
            subparsers.add_parser(name, help=summary)
    return parser


def _chosen(argv: Sequence[str]) -> str | None:
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_chosen(arguments)).parse_args(arguments)
    from thpcheck import logs

    logs.configure(args.log_format, args.log_level)
    signals.install()
    try:
        return int(args.func(args))
    except signals.Terminated as stop:
        print(f"thpcheck: stopped by {stop}; scratch files removed", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("thpcheck: interrupted; scratch files removed", file=sys.stderr)
        return 130
