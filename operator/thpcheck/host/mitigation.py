"""The khugepaged mitigation: stop khugepaged's scans, verify, and put things back exactly.

``khugepaged/scan_sleep_millisecs`` = 4294967295 (the largest value the kernel accepts)
keeps khugepaged asleep, so it no longer collapses read-only file pages into huge pages.
``MADV_COLLAPSE`` ignores khugepaged, so this mitigates; it does not fix.

The host's state directory is the truth, and only the mitigation writes it:

- ``mitigation.state`` records the value found before the first change, written only if
  absent (a restarted or ``kill -9``-ed mitigator never mistakes its own 4294967295 for the
  original), atomically (a temporary file beside it, fsync, rename);
- ``holders.lock``: every running mitigator holds a shared lock on it for its whole life, so
  "is a mitigation still in force here" is a question the kernel answers (a killed holder's
  lock goes with it);
- ``mutex.lock``: recording, stopping and restoring happen under an exclusive lock, so two
  mitigators (an old and a new pod overlapping in a rolling update) never both record.

Restoring writes the recorded value back, reads it back, and only then removes the record.
A mitigator that stops restores only when it was the last holder (``step_down``); a restorer
(``restore_unheld``) restores only when no holder is left. The directory and every file in it
are opened relative to the directory, with ``O_NOFOLLOW``; the directory must be the
mitigation's own (owned by us, no group or other write, holding nothing else).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from thpcheck.host.hostroot import HostRoot
from thpcheck.model.paths import MITIGATION_STATE_DIR
from thpcheck.model.timestamps import format_time

KNOB = "/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs"
STOPPED = 4294967295
KERNEL_DEFAULT = 10000  # khugepaged's own default (mm/khugepaged.c)
STATE_NAME = "mitigation.state"
DEFAULT_STATE_FILE = f"{MITIGATION_STATE_DIR}/{STATE_NAME}"
STATE_SCHEMA = "thpcheck.io/mitigation-state/v1"
HOLDERS = "holders.lock"
MUTEX = "mutex.lock"
_TEMPORARY = ".tmp."
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class MitigationError(RuntimeError):
    """The knob or the state directory could not be used; the message says which and why."""


@dataclass(frozen=True)
class RecordedState:
    """What the state file holds: the original value and when it was recorded."""

    original: int
    recorded_at: str


@dataclass(frozen=True)
class Applied:
    original: int
    recorded_now: bool  # False: an earlier run's record was kept
    # Found stopped with no record (a mitigator of an older version, or by hand): the kernel's
    # default was recorded as the value to restore.
    assumed: bool = False


class StepDown(StrEnum):
    RESTORED = "restored"  # the last holder: the recorded value is back
    HELD = "held"  # another mitigator still holds it: left stopped
    NOTHING = "nothing"  # the last holder, but nothing was recorded


class Mitigator:
    """Applies, verifies and restores the mitigation through an injectable host root."""

    def __init__(self, host: HostRoot, state_file: str) -> None:
        self.host = host
        self.knob = host.path(KNOB)
        self.state_file = state_file
        self.directory = os.path.dirname(state_file) or "."
        self.state_name = os.path.basename(state_file)
        self._held: int | None = None  # the holders.lock descriptor while holding

    # -- the knob -------------------------------------------------------------------------

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

    def verify(self) -> bool:
        """True while khugepaged is stopped (the readiness probe)."""
        return self.read() == STOPPED

    # -- the state directory --------------------------------------------------------------

    @contextlib.contextmanager
    def _dir(self, *, create: bool = False) -> Iterator[int]:
        """The state directory, opened with O_NOFOLLOW and checked to be ours alone."""
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.directory, 0o700)
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
        except OSError as exc:
            what = ("is a symbolic link" if exc.errno in (errno.ELOOP, errno.ENOTDIR)
                    else exc.strerror)
            raise MitigationError(f"state directory {self.directory} {what}: it must be a "
                                  "directory only the mitigation writes") from exc
        try:
            info = os.fstat(fd)
            if info.st_uid != os.geteuid():
                raise MitigationError(
                    f"state directory {self.directory} belongs to uid {info.st_uid}, not to "
                    "the mitigation: give it a directory of its own")
            if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                os.fchmod(fd, 0o700)  # writable by others: made the mitigation's own
            yield fd
        finally:
            os.close(fd)

    def _foreign(self, fd: int) -> list[str]:
        """Entries of the state directory the mitigation did not make."""
        ours = {self.state_name, HOLDERS, MUTEX}
        return sorted(e for e in os.listdir(fd) if e not in ours
                      and not e.startswith(self.state_name + _TEMPORARY))

    @staticmethod
    def _lock_file(fd: int, name: str) -> int:
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600, dir_fd=fd)
        except OSError as exc:
            raise MitigationError(f"cannot open lock {name}: {exc}") from exc

    @contextlib.contextmanager
    def _mutex(self, fd: int) -> Iterator[None]:
        lock = self._lock_file(fd, MUTEX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)

    def _recorded(self, fd: int) -> RecordedState | None:
        try:
            handle = os.open(self.state_name, os.O_RDONLY | _NOFOLLOW, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MitigationError(f"state file {self.state_file} cannot be opened ({exc}); "
                                  "restore the knob by hand and remove it") from exc
        try:
            with os.fdopen(handle, encoding="utf-8") as stream:
                data = json.load(stream)
        except (OSError, ValueError) as exc:
            raise MitigationError(f"state file {self.state_file} is unreadable ({exc}); "
                                  "restore the knob by hand and remove it") from exc
        original = data.get("original") if isinstance(data, dict) else None
        if not isinstance(original, int) or isinstance(original, bool) or original < 0:
            raise MitigationError(f"state file {self.state_file} has no valid original value; "
                                  "restore the knob by hand and remove it")
        return RecordedState(original, str(data.get("recordedAt", "")))

    def recorded(self) -> RecordedState | None:
        """The state file's record, None if there is none; a damaged file is an error."""
        if not os.path.lexists(self.directory):
            return None
        with self._dir() as fd:
            return self._recorded(fd)

    def _record(self, fd: int, original: int) -> None:
        """Write the state file atomically and durably (temp file, fsync, rename)."""
        document = {"schema": STATE_SCHEMA, "knob": KNOB, "original": original,
                    "recordedAt": format_time(datetime.now(UTC))}
        temporary = f"{self.state_name}{_TEMPORARY}{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=fd)  # left by a killed predecessor with our pid
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW,
                             0o600, dir_fd=fd)
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(document, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.state_name, src_dir_fd=fd, dst_dir_fd=fd)
            os.fsync(fd)
        except OSError as exc:
            raise MitigationError(f"cannot record the original value in {self.state_file}: "
                                  f"{exc}") from exc

    def _restore(self, fd: int) -> int | None:
        """Under the mutex: write the recorded value back, then remove the record."""
        with self._mutex(fd):
            state = self._recorded(fd)
            if state is None:
                return None
            self._write(state.original)
            os.unlink(self.state_name, dir_fd=fd)
            os.fsync(fd)
            return state.original

    # -- what the commands do -------------------------------------------------------------

    def hold(self) -> None:
        """Become a holder (a shared lock for this process's life; waits for a restore)."""
        if self._held is not None:
            return
        with self._dir(create=True) as fd:
            lock = self._lock_file(fd, HOLDERS)
        fcntl.flock(lock, fcntl.LOCK_SH)
        self._held = lock

    def apply(self) -> Applied:
        """Hold, then record the current value (once) and stop khugepaged, verified."""
        self.hold()
        with self._dir() as fd, self._mutex(fd):
            foreign = self._foreign(fd)
            if foreign:
                raise MitigationError(
                    f"state directory {self.directory} holds files the mitigation did not "
                    f"make ({', '.join(foreign[:5])}): it must be a directory only the "
                    "mitigation writes (not an agent scratch path); set "
                    "agent.mitigationStateDir (THPCHECK_MITIGATION_STATE_DIR) to its own")
            state = self._recorded(fd)
            assumed = False
            if state is None:
                original = self.read()
                assumed = original == STOPPED
                if assumed:
                    original = KERNEL_DEFAULT
                self._record(fd, original)
            else:
                original = state.original
            self._write(STOPPED)
        return Applied(original, state is None, assumed)

    def enforce(self) -> int | None:
        """While holding: stop khugepaged again if something changed the value (returns the
        value found, None when it was still stopped)."""
        found = self.read()
        if found == STOPPED:
            return None
        self._write(STOPPED)
        return found

    def step_down(self) -> StepDown:
        """Stop holding; restore only if no other mitigator holds it (the last one out)."""
        if self._held is not None:
            os.close(self._held)
            self._held = None
        outcome = self.restore_unheld()
        return StepDown.HELD if outcome is None else outcome

    def restore_unheld(self) -> StepDown | None:
        """Restore if no mitigator holds it; None when one does (nothing touched)."""
        if not os.path.lexists(self.directory):
            return StepDown.NOTHING
        with self._dir() as fd:
            lock = self._lock_file(fd, HOLDERS)
            try:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None
                restored = self._restore(fd)
            finally:
                os.close(lock)
        return StepDown.NOTHING if restored is None else StepDown.RESTORED

    def restore(self) -> int | None:
        """Write the recorded value back and remove the record, whoever holds it; None if
        nothing was recorded."""
        if not os.path.lexists(self.directory):
            return None
        with self._dir() as fd:
            return self._restore(fd)
