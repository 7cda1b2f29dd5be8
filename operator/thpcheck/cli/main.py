"""The ``thpcheck`` command: subcommand dispatch, logging and signal set-up."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from thpcheck import __version__
from thpcheck.cli import check, facts, mitigate, operator, preflight, repro, signals


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thpcheck",
        description="Find and prove the read-only-THP write-open purge data loss, per "
        "filesystem, on this machine or on Kubernetes nodes.")
    parser.add_argument("--version", action="version", version=f"thpcheck {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (check, repro, facts, preflight, mitigate, operator):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
