"""``thpcheck check``: per-path and node verdicts on this machine (or the host in a pod)."""

from __future__ import annotations

import argparse
import json
import sys

from thpcheck.cli.args import (
    add_common_options,
    add_headroom_options,
    add_host_root_option,
    add_repro_options,
    headroom_of,
)
from thpcheck.host.check import CheckOptions, check
from thpcheck.host.repro import ReproConfig
from thpcheck.host.scratch import BadInput
from thpcheck.model.report import compact, render_table, to_document
from thpcheck.model.verdict import CheckExit, exit_code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check", help="predict and prove, per filesystem, whether this node loses written data",
        description="For each PATH (a scratch directory; default: the system temp dir) read "
        "the kernel, its config, the THP knobs and the filesystem, predict from the model, "
        "run the reproducer and print a verdict. Exit 0 nothing affected or susceptible, "
        "1 some affected or susceptible, 2 bad input, 3 unknown or error.")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="host paths of scratch directories, one per filesystem to test")
    add_host_root_option(parser)
    parser.add_argument("--no-repro", action="store_true",
                        help="predict only; do not write anything")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--discover", action="store_true",
                        help="also test <mountpoint>/.thpcheck on every local writable "
                        "filesystem in the host's mountinfo (created and removed by the run)")
    parser.add_argument("--result-file", metavar="FILE",
                        help="also write the compact result (<= 4 KiB) here, e.g. "
                        "/dev/termination-log")
    parser.add_argument("--exit-zero", action="store_true",
                        help="pod mode: bad paths become error verdicts and the exit code is 0 "
                        "once a result exists (no crash loops)")
    add_repro_options(parser)
    add_headroom_options(parser)
    add_common_options(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.paths or args.discover:
        paths = list(args.paths)
    else:
        import tempfile  # only here: it imports shutil and random

        paths = [tempfile.gettempdir()]
    options = CheckOptions(
        paths=paths,
        host_root=args.host_root,
        run_repro=not args.no_repro,
        repro=ReproConfig(base_size=args.base_size, append_size=args.append_size,
                          iterations=args.iterations, keep_going=args.keep_going),
        bad_paths_are_errors=args.exit_zero,
        discover=args.discover,
        headroom=headroom_of(args),
    )
    try:
        report = check(options)
    except BadInput as exc:
        print(f"thpcheck check: {exc}", file=sys.stderr)
        return CheckExit.BAD_INPUT
    document = to_document(report)
    if args.result_file:
        with open(args.result_file, "w", encoding="utf-8") as handle:
            handle.write(compact(document))
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=False))
    else:
        print(render_table(report))
    if args.exit_zero:
        return 0
    return exit_code(p.verdict.verdict for p in report.paths)
