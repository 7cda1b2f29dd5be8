"""``thpcheck repro PATH``: the report's reproducer, with the report's output lines."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack

from thpcheck.cli.args import (
    add_common_options,
    add_headroom_options,
    add_host_root_option,
    add_repro_options,
    headroom_of,
)
from thpcheck.host.check import CheckOptions, prepare_paths
from thpcheck.host.facts import read_hugepages, read_mounts
from thpcheck.host.hostroot import HostRoot
from thpcheck.host.repro import ReproConfig, pmd_or_skip, run
from thpcheck.host.scratch import BadInput, Scratch
from thpcheck.model.repro import Loss, ReproExit, ReproOutcome, ReproResult


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "repro", help="run the seven-step reproducer in a scratch directory",
        description="Create a file, collapse read-only huge pages into its page cache, append, "
        "re-open for write and read the appended bytes back. Exit 0 not reproduced, "
        "1 reproduced, 2 bad input, 3 collapse unsupported, 4 other error.")
    parser.add_argument("path", help="an existing directory; the agent works in a new "
                        "subdirectory of it and removes it afterwards")
    add_host_root_option(parser, hidden=True)
    add_repro_options(parser)
    add_headroom_options(parser)
    add_common_options(parser)
    parser.set_defaults(func=main)


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def _print_loss(loss: Loss, first: bool) -> None:
    print(f"REPRODUCED iter={loss.iteration} bad_bytes={loss.bad_bytes} "
          f"first_bad={loss.first_bad} zero_count={loss.zero_count} "
          f"append_off={loss.append_off}", flush=True)
    if first:
        print(f"first 64 got: {_hex(loss.got_head)}", flush=True)
        print(f"first 64 want: {_hex(loss.want_head)}", flush=True)


def _print_outcome(result: ReproResult, config: ReproConfig) -> None:
    if result.mapping == "read-exec":
        print("note: collapsed through a PROT_READ|PROT_EXEC mapping (kernel < 6.8)",
              file=sys.stderr)
    if result.outcome is ReproOutcome.REPRODUCED:
        if config.keep_going:
            print(f"SUMMARY lost_iterations={len(result.losses)} iters={result.iterations_run} "
                  f"skipped={result.skipped_iterations}")
    elif result.outcome is ReproOutcome.NOT_REPRODUCED:
        print(f"NOT_REPRODUCED iters={result.iterations_run}")
        if result.skipped_iterations:
            print(f"note: step-5 collapse failed in {result.skipped_iterations} of "
                  f"{result.iterations_run} iterations", file=sys.stderr)
    elif result.outcome is ReproOutcome.COLLAPSE_UNSUPPORTED:
        print(f"COLLAPSE_UNSUPPORTED errno={result.errno} step={result.step}")
        print(f"note: {result.message}", file=sys.stderr)
    else:
        print(f"ERROR errno={result.errno} step={result.step}")
        print(f"thpcheck repro: {result.message}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    config = ReproConfig(base_size=args.base_size, append_size=args.append_size,
                         iterations=args.iterations, keep_going=args.keep_going)
    root = HostRoot(args.host_root)
    pmd = pmd_or_skip(config, read_hugepages(root))
    if isinstance(pmd, ReproResult):  # the base cannot hold one PMD on this kernel
        print(f"thpcheck repro: {pmd.message}", file=sys.stderr)
        return ReproExit.BAD_INPUT
    with ExitStack() as stack:  # the path's disk reservation is held until the run ends
        try:
            visible = _prepare(args, root, config, stack)
        except BadInput as exc:
            print(f"thpcheck repro: {exc}", file=sys.stderr)
            return ReproExit.BAD_INPUT
        return _run(args.path, visible, config, pmd)


def _prepare(args: argparse.Namespace, root: HostRoot, config: ReproConfig,
             stack: ExitStack) -> str:
    """The checks ``check`` makes before writing (raises BadInput); the visible path."""
    mounts, _, _ = read_mounts(root)
    options = CheckOptions(paths=[args.path], host_root=args.host_root, repro=config,
                           headroom=headroom_of(args))
    prepared = prepare_paths(root, options, mounts, stack)[args.path]
    if isinstance(prepared, BadInput):  # pragma: no cover - raised, not returned, here
        raise prepared
    if not prepared.writes:
        raise BadInput(f"{args.path}: is on {prepared.fstype}, which is memory-backed: the "
                       "reproducer needs a disk filesystem; pass a directory on ext4, btrfs, "
                       "xfs or another disk filesystem")
    return prepared.visible


def _run(path: str, visible: str, config: ReproConfig, pmd: int) -> int:
    print(f"path={path} base_size={config.base_size} append_size={config.append_size} "
          f"iters={config.iterations}", flush=True)
    seen: list[Loss] = []

    def on_loss(loss: Loss) -> None:
        _print_loss(loss, first=not seen)
        seen.append(loss)

    with Scratch(visible) as scratch:
        if scratch.reaped:
            print(f"note: removed scratch dirs left by killed runs: {' '.join(scratch.reaped)}",
                  file=sys.stderr)
        result = run(scratch, config, pmd, on_loss)
    _print_outcome(result, config)
    return result.exit_code
