"""``thpcheck mitigate``: stop khugepaged while wanted, and put the original value back.

The mitigation DaemonSet's container runs it (its readiness probe runs ``--verify``); the
restore DaemonSet's container runs ``--restore`` on nodes where no mitigation is wanted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from thpcheck.cli import signals
from thpcheck.cli.args import add_common_options, add_host_root_option
from thpcheck.host.hostroot import HostRoot
from thpcheck.host.mitigation import (
    DEFAULT_STATE_FILE,
    KNOB,
    STOPPED,
    MitigationError,
    Mitigator,
    StepDown,
)

log = structlog.get_logger("thpcheck.mitigate")
T = TypeVar("T")
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
ENFORCE_INTERVAL = 5.0  # how often a running mitigation checks the value is still in effect
EXIT_HELD = 75  # EX_TEMPFAIL: --restore found a running mitigation holding the node


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "mitigate", help="stop khugepaged (scan_sleep_millisecs=4294967295) until SIGTERM",
        description=f"Record the current {KNOB} in a state file (only if none exists), write "
        f"{STOPPED}, read it back, and hold it (written again if something changes it) until "
        "stopped; then, if no other mitigation process holds the node, write the recorded "
        "value back and remove the state file. --verify exits 0 only while the value is in "
        "effect (a readiness probe). --restore restores and exits: 0 when restored or nothing "
        f"was recorded, {EXIT_HELD} when a running mitigation holds the node (nothing "
        "touched), 1 on an error.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--verify", action="store_true",
                      help="exit 0 if khugepaged is stopped, else 1")
    mode.add_argument("--restore", action="store_true",
                      help="restore the recorded value (if any) unless a mitigation runs")
    parser.add_argument("--ready-file",
                        help="a file of this pod's own (not the host's): the mitigation writes it "
                        "once it holds the node and has stopped khugepaged, and removes it when "
                        "it stops; --verify then also requires it, so a new pod is Ready only "
                        "once its own process holds the node, not because an old one keeps "
                        "the value stopped")
    add_host_root_option(parser)
    parser.add_argument("--state-file",
                        help="the state file as seen by this process (default "
                        f"<host-root>{DEFAULT_STATE_FILE}); its directory must be the "
                        "mitigation's own")
    add_common_options(parser)
    parser.set_defaults(func=main)


def _mitigator(args: argparse.Namespace) -> Mitigator:
    host = HostRoot(args.host_root)
    return Mitigator(host, args.state_file or host.path(DEFAULT_STATE_FILE))


def _quietly(action: Callable[[], T]) -> T:
    """Run ``action`` with stop signals blocked, so a second SIGTERM cannot cut a restore
    short (a signal that arrives meanwhile is delivered afterwards)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return action()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _log_outcome(mitigator: Mitigator, outcome: StepDown) -> None:
    if outcome is StepDown.HELD:
        log.info("another mitigation process holds this node; khugepaged stays stopped",
                 knob=mitigator.knob)
    elif outcome is StepDown.RESTORED:
        log.info("restored", knob=mitigator.knob, value=mitigator.read())
    else:
        log.info("nothing recorded; knob left as is", knob=mitigator.knob)


def _restore(mitigator: Mitigator) -> int:
    """Restore unless a mitigation holds the node."""
    try:
        outcome = _quietly(mitigator.restore_unheld)
    except MitigationError as exc:
        log.error("restore failed", error=str(exc))
        return 1
    _log_outcome(mitigator, StepDown.HELD if outcome is None else outcome)
    return EXIT_HELD if outcome is None else 0


def _step_down(mitigator: Mitigator) -> int:
    """Stop holding; the last holder restores."""
    try:
        outcome = _quietly(mitigator.step_down)
    except MitigationError as exc:
        log.error("restore failed", error=str(exc))
        return 1
    _log_outcome(mitigator, outcome)
    return 0


def _mark_ready(ready_file: str | None, ready: bool) -> None:
    """Write (with this process's pid) or remove the pod's readiness file."""
    if ready_file is None:
        return
    if ready:
        with open(ready_file, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ready_file)


def _run(mitigator: Mitigator, ready_file: str | None) -> int:
    failed = False
    try:
        _mark_ready(ready_file, False)  # a restarted container's: this process holds nothing
        applied = mitigator.apply()
        if applied.assumed:
            log.warning("khugepaged was already stopped and nothing was recorded (a mitigation "
                        "of an older version, or by hand): recorded the kernel's default as "
                        "the value to restore", knob=mitigator.knob, value=applied.original)
        log.info("khugepaged stopped", knob=mitigator.knob, value=STOPPED,
                 original=applied.original, recorded_now=applied.recorded_now,
                 state_file=mitigator.state_file, pid=os.getpid())
        _mark_ready(ready_file, True)
        while True:
            time.sleep(ENFORCE_INTERVAL)
            found = mitigator.enforce()
            if found is not None:
                log.warning("the value changed while mitigated; stopped khugepaged again",
                            knob=mitigator.knob, found=found)
    except MitigationError as exc:
        log.error("mitigation failed", error=str(exc))
        failed = True
    except (signals.Terminated, KeyboardInterrupt) as stop:
        log.info("stopping", signal=str(stop) or "SIGINT")
    try:
        _mark_ready(ready_file, False)
    except OSError as exc:
        log.warning("cannot remove the readiness file", error=str(exc))
    code = _step_down(mitigator)
    return 1 if failed else code


def main(args: argparse.Namespace) -> int:
    mitigator = _mitigator(args)
    if args.verify:
        try:
            in_effect = mitigator.verify() and (
                args.ready_file is None or os.path.exists(args.ready_file))
        except MitigationError as exc:
            print(f"thpcheck mitigate: {exc}", file=sys.stderr)
            return 1
        print("in effect" if in_effect else "not in effect")
        return 0 if in_effect else 1
    if args.restore:
        return _restore(mitigator)
    return _run(mitigator, args.ready_file)
