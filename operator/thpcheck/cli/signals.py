"""Turn SIGTERM/SIGHUP into an exception, so ``finally`` blocks remove scratch files."""

from __future__ import annotations

import signal
from types import FrameType


class Terminated(BaseException):
    """Raised in the main thread when the process is asked to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def install() -> None:
    """SIGINT already raises KeyboardInterrupt; SIGTERM and SIGHUP get the same treatment."""
    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)
