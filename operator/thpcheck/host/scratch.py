"""Scratch-directory safety: the agent writes only inside its own subdirectory.

Every file operation goes through directory file descriptors with ``O_NOFOLLOW``, so a symlink
planted in the scratch path can never redirect a write or an unlink elsewhere. The owner holds
an ``flock`` on a marker file for the whole run: a later run reaps directories whose lock is
free (their owner was SIGKILLed), which is the only way to clean up after ``kill -9``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import signal
import stat
from collections.abc import Iterator
from types import TracebackType

from thpcheck.host.hostroot import HostRoot
from thpcheck.logs import get_logger

log = get_logger("thpcheck.scratch")

PREFIX = "thpcheck-scratch."
MARKER = "owner"
FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev")
# Names the agent may create inside its directory; reaping removes nothing else.
KNOWN_FILES = frozenset({MARKER, "data", "probe"})

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BadInput(ValueError):
    """A scratch path the agent refuses, with a message naming the path and the fix."""


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def required_bytes(base_size: int, append_size: int, iterations: int) -> int:
    """Free space a run needs: base + every append + a margin for metadata and journals."""
    payload = base_size + iterations * append_size
    return payload + max(16 * 1024 * 1024, payload // 10)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def validate(root: HostRoot, host_path: str, need_bytes: int, will_write: bool = True) -> str:
    """Check a scratch path; returns where it is visible. Raises BadInput naming the fix.

    With ``will_write=False`` (prediction only) the path just has to be a real directory.
    """
    if not host_path.startswith("/"):
        raise BadInput(f"{host_path}: not an absolute host path; pass a path such as "
                       "/var/lib/thpcheck")
    normal = posixpath.normpath(host_path)
    if will_write and (normal == "/" or any(_under(normal, f) for f in FORBIDDEN_ROOTS)):
        raise BadInput(f"{host_path}: refusing to write under /, /proc, /sys or /dev; pass a "
                       "directory on a real filesystem, such as /var/lib/thpcheck")
    visible = root.path(normal)
    try:
        info = os.lstat(visible)
    except FileNotFoundError:
        raise BadInput(f"{host_path}: does not exist; create the directory first "
                       f"(mkdir -p {host_path}) or pass an existing one") from None
    except OSError as exc:
        raise BadInput(f"{host_path}: cannot be inspected ({exc.strerror}); check permissions"
                       ) from None
    if stat.S_ISLNK(info.st_mode):
        raise BadInput(f"{host_path}: is a symlink; pass the directory it points to "
                       f"({os.path.realpath(visible)}) instead")
    if not stat.S_ISDIR(info.st_mode):
        raise BadInput(f"{host_path}: is not a directory; pass a directory")
    if not will_write:
        return visible
    real = os.path.realpath(visible)
    real_host = "/" + posixpath.relpath(real, root.root) if _under(real, root.root) else real
    if any(_under(real_host, forbidden) for forbidden in FORBIDDEN_ROOTS):
        raise BadInput(f"{host_path}: resolves to {real_host} (under /proc, /sys or /dev); pass "
                       "a directory on a real filesystem")
    fs = os.statvfs(visible)
    if fs.f_flag & os.ST_RDONLY:
        raise BadInput(f"{host_path}: is on a read-only mount; pass a directory on a writable "
                       "filesystem")
    free = fs.f_bavail * fs.f_frsize
    if free < need_bytes:
        raise BadInput(f"{host_path}: has {_human(free)} free but the check needs "
                       f"{_human(need_bytes)} (base + iterations x append + margin); free space "
                       "there or lower --base-size / --iterations")
    return visible


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Cleanup must not be interrupted half-way by a second SIGTERM or SIGINT."""
    mask = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _remove_own_dir(parent_fd: int, name: str) -> bool:
    """Remove a scratch dir holding only files the agent creates; False if anything else."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        return False
    try:
        entries = os.listdir(fd)
        if not set(entries) <= KNOWN_FILES:
            return False
        for entry in entries:
            if not stat.S_ISREG(os.lstat(entry, dir_fd=fd).st_mode):
                return False
        for entry in entries:
            os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
    return True


def reap_stale(parent_fd: int) -> list[str]:
    """Remove scratch dirs left by SIGKILLed runs (their marker's flock is free)."""
    reaped: list[str] = []
    for name in os.listdir(parent_fd):
        if not name.startswith(PREFIX):
            continue
        try:
            if not stat.S_ISDIR(os.lstat(name, dir_fd=parent_fd).st_mode):
                continue
            dir_fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError:
            continue
        try:
            marker = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            os.close(dir_fd)
            continue  # not ours, or the owner is still creating it
        try:
            fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The owner writes its pid only after taking the lock: an empty marker may be a
            # run between create and flock, so it is left alone.
            abandoned = os.fstat(marker).st_size > 0
        except BlockingIOError:
            continue  # a live run owns it
        finally:
            os.close(marker)
            os.close(dir_fd)
        if abandoned and _remove_own_dir(parent_fd, name):
            reaped.append(name)
    return reaped


class Scratch:
    """A uniquely named subdirectory of the scratch path, removed on exit whatever happens."""

    def __init__(self, visible_path: str) -> None:
        self.parent = visible_path
        # os.urandom rather than secrets.token_hex: the same 12 hex digits without importing
        # secrets (hashlib, hmac, base64, random), a cost paid at every agent start.
        self.name = PREFIX + os.urandom(6).hex()
        self.path = posixpath.join(visible_path, self.name)
        self.reaped: list[str] = []
        self._parent_fd = -1
        self._fd = -1
        self._marker_fd = -1
        self._created: list[str] = []

    def __enter__(self) -> Scratch:
        self._parent_fd = os.open(self.parent, _DIR_FLAGS)
        try:
            self.reaped = reap_stale(self._parent_fd)
            os.mkdir(self.name, 0o700, dir_fd=self._parent_fd)  # EEXIST: never reuse
            self._fd = os.open(self.name, _DIR_FLAGS, dir_fd=self._parent_fd)
            self._marker_fd = self.create(MARKER)
            fcntl.flock(self._marker_fd, fcntl.LOCK_EX)
            os.write(self._marker_fd, f"pid={os.getpid()}\n".encode())
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    def create(self, name: str) -> int:
        """Create a new file (never an existing one, never through a symlink)."""
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=self._fd)
        self._created.append(name)
        return fd

    def open(self, name: str, flags: int) -> int:
        """Open a file this run created, without following symlinks."""
        if name not in self._created:
            raise PermissionError(f"{name} was not created by this run")
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._fd)

    def remove(self, name: str) -> None:
        """Unlink a file this run created (before the end of the run)."""
        if name not in self._created:
            raise PermissionError(f"{name} was not created by this run")
        os.unlink(name, dir_fd=self._fd)
        self._created.remove(name)

    def cleanup(self) -> None:
        """Remove every file this run created and the directory; safe to call twice."""
        with _signals_blocked():
            if self._fd >= 0:
                for name in reversed(self._created):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=self._fd)
                self._created.clear()
                os.close(self._fd)
                self._fd = -1
                try:
                    os.rmdir(self.name, dir_fd=self._parent_fd)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # something we did not create appeared: leave it
                    log.warning("scratch_not_removed", path=self.path, error=exc.strerror)
            if self._marker_fd >= 0:
                os.close(self._marker_fd)
                self._marker_fd = -1
            if self._parent_fd >= 0:
                os.close(self._parent_fd)
                self._parent_fd = -1
