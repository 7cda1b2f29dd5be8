"""The khugepaged mitigation: stop khugepaged's scans, verify, and put things back exactly.

``khugepaged/scan_sleep_millisecs`` = 4294967295 (the largest value the kernel accepts)
keeps khugepaged asleep, so it no longer collapses read-only file pages into huge pages.
``MADV_COLLAPSE`` ignores khugepaged, so this mitigates; it does not fix.

The value found before the first change is recorded in a small state file on the host, and
only if no state file exists yet: a restarted (or ``kill -9``-ed) mitigator never mistakes
its own 4294967295 for the original. Restoring writes the recorded value back, reads it
back, and only then removes the state file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from thpcheck.host.hostroot import HostRoot

KNOB = "/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs"
STOPPED = 4294967295
DEFAULT_STATE_FILE = "/var/lib/thpcheck/mitigation.state"
STATE_SCHEMA = "thpcheck.io/mitigation-state/v1"


class MitigationError(RuntimeError):
    """The knob or the state file could not be used; the message says which and why."""


@dataclass(frozen=True)
class RecordedState:
    """What the state file holds: the original value and when it was recorded."""

    original: int
    recorded_at: str


@dataclass(frozen=True)
class Applied:
    original: int
    recorded_now: bool  # False: an earlier run's record was kept


class Mitigator:
    """Applies, verifies and restores the mitigation through an injectable host root."""

    def __init__(self, host: HostRoot, state_file: str) -> None:
        self.host = host
        self.knob = host.path(KNOB)
        self.state_file = state_file

    def read(self) -> int:
        try:
            with open(self.knob, encoding="ascii") as handle:
                return int(handle.read().strip())
        except (OSError, ValueError) as exc:
            raise MitigationError(f"cannot read {self.knob}: {exc}") from exc

    def _write(self, value: int) -> None:
        try:
            with open(self.knob, "w", encoding="ascii") as handle:
                handle.write(f"{value}\n")
        except OSError as exc:
            raise MitigationError(f"cannot write {value} to {self.knob}: {exc}") from exc
        seen = self.read()
        if seen != value:
            raise MitigationError(f"wrote {value} to {self.knob} but read back {seen}")

    def recorded(self) -> RecordedState | None:
        """The state file's record, None if there is none; a damaged file is an error."""
        try:
            with open(self.state_file, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise MitigationError(f"state file {self.state_file} is unreadable ({exc}); "
                                  "restore the knob by hand and remove it") from exc
        original = data.get("original") if isinstance(data, dict) else None
        if not isinstance(original, int) or isinstance(original, bool) or original < 0:
            raise MitigationError(f"state file {self.state_file} has no valid original value; "
                                  "restore the knob by hand and remove it")
        return RecordedState(original, str(data.get("recordedAt", "")))

    def _record(self, original: int) -> None:
        """Write the state file atomically and durably (temp file, fsync, rename)."""
        directory = os.path.dirname(self.state_file) or "."
        os.makedirs(directory, exist_ok=True)
        document = {"schema": STATE_SCHEMA, "knob": KNOB, "original": original,
                    "recordedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        temporary = f"{self.state_file}.tmp.{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(document, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.state_file)
        self._sync_directory(directory)

    @staticmethod
    def _sync_directory(directory: str) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def apply(self) -> Applied:
        """Record the current value (once), stop khugepaged, verify."""
        state = self.recorded()
        recorded_now = state is None
        if state is None:
            original = self.read()
            self._record(original)
        else:
            original = state.original
        self._write(STOPPED)
        return Applied(original, recorded_now)

    def verify(self) -> bool:
        """True while khugepaged is stopped (the readiness probe)."""
        return self.read() == STOPPED

    def restore(self) -> int | None:
        """Write the recorded value back and remove the record; None if nothing recorded."""
        state = self.recorded()
        if state is None:
            return None
        self._write(state.original)
        os.unlink(self.state_file)
        self._sync_directory(os.path.dirname(self.state_file) or ".")
        return state.original
