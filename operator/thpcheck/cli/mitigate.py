"""``thpcheck mitigate``: stop khugepaged until told to stop, then restore the original value.

The mitigation DaemonSet's container runs it; its readiness probe runs ``--verify``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import structlog

from thpcheck.cli import signals
from thpcheck.cli.args import add_common_options
from thpcheck.host.hostroot import HostRoot
from thpcheck.host.mitigation import (
    DEFAULT_STATE_FILE,
    KNOB,
    STOPPED,
    MitigationError,
    Mitigator,
)

log = structlog.get_logger("thpcheck.mitigate")
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "mitigate", help="stop khugepaged (scan_sleep_millisecs=4294967295) until SIGTERM",
        description=f"Record the current {KNOB} in a state file (only if none exists), write "
        f"{STOPPED}, read it back, and wait; on SIGTERM write the recorded value back and "
        "remove the state file. --verify exits 0 only while the value is in effect (a "
        "readiness probe); --restore restores and exits.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--verify", action="store_true",
                      help="exit 0 if khugepaged is stopped, else 1")
    mode.add_argument("--restore", action="store_true",
                      help="restore the recorded value (if any) and exit")
    parser.add_argument("--host-root", default="/",
                        help="where the host's / is visible (default /; /host in a pod)")
    parser.add_argument("--state-file",
                        help="the state file as seen by this process (default "
                        f"<host-root>{DEFAULT_STATE_FILE})")
    add_common_options(parser)
    parser.set_defaults(func=main)


def _mitigator(args: argparse.Namespace) -> Mitigator:
    host = HostRoot(args.host_root)
    return Mitigator(host, args.state_file or host.path(DEFAULT_STATE_FILE))


def _restore(mitigator: Mitigator) -> int:
    """Restore with stop signals blocked, so a second SIGTERM cannot cut it short."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        original = mitigator.restore()
    except MitigationError as exc:
        log.error("restore failed", error=str(exc))
        return 1
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    if original is None:
        log.info("nothing recorded; knob left as is", knob=mitigator.knob)
    else:
        log.info("restored", knob=mitigator.knob, value=original)
    return 0


def _run(mitigator: Mitigator) -> int:
    failed = False
    try:
        applied = mitigator.apply()
        log.info("khugepaged stopped", knob=mitigator.knob, value=STOPPED,
                 original=applied.original, recorded_now=applied.recorded_now,
                 state_file=mitigator.state_file, pid=os.getpid())
        while True:
            signal.pause()
    except MitigationError as exc:
        log.error("mitigation failed", error=str(exc))
        failed = True
    except (signals.Terminated, KeyboardInterrupt) as stop:
        log.info("stopping", signal=str(stop) or "SIGINT")
    code = _restore(mitigator)
    return 1 if failed else code


def main(args: argparse.Namespace) -> int:
    mitigator = _mitigator(args)
    if args.verify:
        try:
            in_effect = mitigator.verify()
        except MitigationError as exc:
            print(f"thpcheck mitigate: {exc}", file=sys.stderr)
            return 1
        print("in effect" if in_effect else "not in effect")
        return 0 if in_effect else 1
    if args.restore:
        return _restore(mitigator)
    return _run(mitigator)
