"""Argument types shared by the subcommands, with errors that say what to pass instead."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thpcheck.model.headroom import Headroom

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(text: str) -> int:
    """``64MiB``, ``16K``, ``2097152`` -> bytes (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; use bytes or a binary unit, e.g. 64MiB, 16KiB, 1GiB")
    return int(match[1]) * _UNITS[match[2].upper()]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def add_repro_options(parser: argparse.ArgumentParser) -> None:
    """The reproducer's knobs, shared by ``repro`` and ``check``."""
    from thpcheck.model.repro import DEFAULT_APPEND_SIZE, DEFAULT_BASE_SIZE, DEFAULT_ITERATIONS

    parser.add_argument("--base-size", type=size, default=DEFAULT_BASE_SIZE,
                        help=f"size of the clean base file (default {DEFAULT_BASE_SIZE >> 20}MiB); "
                        "at least one PMD "
                        "(file THP) of the kernel: 2MiB with 4K pages, 32MiB with 16K, "
                        "512MiB with 64K")
    parser.add_argument("--append-size", type=size, default=DEFAULT_APPEND_SIZE,
                        help="bytes appended per iteration "
                        f"(default {DEFAULT_APPEND_SIZE >> 10}KiB)")
    parser.add_argument("--iterations", type=positive_int, default=DEFAULT_ITERATIONS,
                        help="iterations before concluding 'not reproduced' "
                        f"(default {DEFAULT_ITERATIONS})")
    parser.add_argument("--keep-going", action="store_true",
                        help="do not stop at the first loss; count losses over all iterations")


def add_host_root_option(parser: argparse.ArgumentParser, hidden: bool = False) -> None:
    """``--host-root``: where the host's / is visible (the agent pods mount it at /host)."""
    parser.add_argument("--host-root", default="/",
                        help=argparse.SUPPRESS if hidden else
                        "where the host's / is visible (default /; /host in a pod)")


KUBECONFIG_HELP = ("kubeconfig file; without it: $KUBECONFIG, then ~/.kube/config, then the "
                   "in-cluster service account (the order every thpcheck command uses)")


def percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 90:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 0 to 90")
    return value


def add_headroom_options(parser: argparse.ArgumentParser) -> None:
    """How much of the filesystem a run must leave free (kubelet eviction threshold + margin,
    at least an absolute floor)."""
    from thpcheck.model.headroom import Headroom

    default = Headroom()
    group = parser.add_argument_group(
        "disk headroom", "a run refuses (exit 2, nothing written) unless the filesystem keeps "
        "at least the kubelet's eviction threshold plus a margin, and the floor, available "
        "after its writes and those of other running checks")
    group.add_argument("--nodefs-threshold", type=percent, default=default.nodefs_percent,
                       metavar="PCT", help="the kubelet's nodefs.available eviction threshold; "
                       f"also used for other filesystems (default {default.nodefs_percent})")
    group.add_argument("--imagefs-threshold", type=percent, default=default.imagefs_percent,
                       metavar="PCT", help="the kubelet's imagefs.available eviction threshold, "
                       "for a filesystem holding container images (default "
                       f"{default.imagefs_percent})")
    group.add_argument("--headroom-margin", type=percent, default=default.margin_percent,
                       metavar="PCT", help="kept on top of the threshold (default "
                       f"{default.margin_percent})")
    group.add_argument("--min-free", type=size, default=default.min_free_bytes, metavar="SIZE",
                       help="never leave less than this available (default 256MiB)")


def headroom_of(args: argparse.Namespace) -> Headroom:
    from thpcheck.model.headroom import Headroom

    return Headroom(nodefs_percent=args.nodefs_threshold,
                    imagefs_percent=args.imagefs_threshold,
                    margin_percent=args.headroom_margin, min_free_bytes=args.min_free)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    from thpcheck.logs import LEVELS

    parser.add_argument("--log-format", choices=("console", "json"), default="console")
    parser.add_argument("--log-level", choices=LEVELS, default="warning")
