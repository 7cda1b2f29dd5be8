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
from thpcheck.model.mounts import Mount, MountinfoError, bind_target, parse_mountinfo
from thpcheck.model.paths import refusal

log = get_logger("thpcheck.scratch")

PREFIX = "thpcheck-scratch."
MARKER = "owner"
# Names the agent may create inside its directory; reaping removes nothing else.
KNOWN_FILES = frozenset({MARKER, "data", "probe"})
MAX_SYMLINKS = 40  # as the kernel's path walk

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BadInput(ValueError):
    """A scratch path the agent refuses, with a message naming the path and the fix."""


def required_bytes(base_size: int, append_size: int, iterations: int) -> int:
    """Free space a run needs: base + every append + a margin for metadata and journals."""
    payload = base_size + iterations * append_size
    return payload + max(16 * 1024 * 1024, payload // 10)


def resolve_in(root: HostRoot, host_path: str) -> str:
    """Where ``host_path`` leads on the host, following its symlinks inside the host root
    (absolute targets are host paths); components that do not exist are kept as written."""
    parts = [p for p in host_path.split("/") if p]
    resolved = "/"
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            resolved = posixpath.dirname(resolved)
            continue
        candidate = posixpath.join(resolved, part)
        try:
            is_link = stat.S_ISLNK(os.lstat(root.path(candidate)).st_mode)
        except OSError:
            is_link = False
        if not is_link or links >= MAX_SYMLINKS:
            resolved = candidate
            continue
        links += 1
        target = os.readlink(root.path(candidate))
        if target.startswith("/"):
            resolved = "/"
        parts = [p for p in target.split("/") if p] + parts
    return resolved


def symlink_on_the_way(root: HostRoot, host_path: str) -> str | None:
    """The first component of ``host_path`` that is a symlink in the host root, or None."""
    current = ""
    for part in (p for p in host_path.split("/") if p):
        current += "/" + part
        try:
            if stat.S_ISLNK(os.lstat(root.path(current)).st_mode):
                return current
        except OSError:
            return None  # missing: said by the caller
    return None


def validate(root: HostRoot, host_path: str, will_write: bool = True) -> str:
    """Check a scratch path; returns where it is visible. Raises BadInput naming the fix.

    With ``will_write=False`` (prediction only) the path just has to be a real directory.
    Free space is checked separately (``host.space``), once the filesystem is known.
    """
    if not host_path.startswith("/"):
        raise BadInput(f"{host_path}: not an absolute host path; pass a path such as "
                       "/var/lib/thpcheck")
    why = refusal(host_path)
    if will_write and why:
        raise BadInput(f"{host_path}: {why}, where the agent never writes; pass a directory "
                       "of its own on a real filesystem, such as /var/lib/thpcheck")
    normal = posixpath.normpath(host_path)
    visible = root.path(normal)
    link = symlink_on_the_way(root, normal)
    if link is not None:
        target = resolve_in(root, normal)
        if link == normal:
            raise BadInput(f"{host_path}: is a symlink; pass the directory it points to "
                           f"({target}) instead")
        raise BadInput(f"{host_path}: goes through the symlink {link} and resolves to "
                       f"{target}; pass {target} instead")
    try:
        info = os.lstat(visible)
    except FileNotFoundError:
        raise BadInput(f"{host_path}: does not exist; create the directory first "
                       f"(mkdir -p {host_path}) or pass an existing one") from None
    except OSError as exc:
        raise BadInput(f"{host_path}: cannot be inspected ({exc.strerror}); check permissions"
                       ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise BadInput(f"{host_path}: is not a directory; pass a directory")
    if will_write and os.statvfs(visible).f_flag & os.ST_RDONLY:
        raise BadInput(f"{host_path}: is on a read-only mount; pass a directory on a writable "
                       "filesystem")
    return visible


def own_mounts() -> list[Mount]:
    """This process's own mounts (in a pod: what the kubelet and the runtime mounted)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            return parse_mountinfo(handle.read())
    except (OSError, MountinfoError):
        return []


def check_bind_source(host_path: str, visible: str, host_mounts: list[Mount],
                      mine: list[Mount]) -> None:
    """In a pod the scratch path is a hostPath bind mount at ``visible``; the kubelet and the
    runtime resolved symlinks before mounting, so the agent never sees them, but mountinfo
    does: the mount's source (device and directory) must be ``host_path`` itself in the
    host's mountinfo. Raises BadInput naming where it really resolves."""
    bound = next((m for m in reversed(mine) if m.mount_point == visible), None)
    if bound is None or not host_mounts:
        return
    target = bind_target(host_path, bound, host_mounts)
    if target is not None:
        raise BadInput(f"{host_path}: resolves to {target} on the host (a symlink on the way, "
                       "which the kubelet followed when it mounted the hostPath); nothing was "
                       f"written; pass {target} itself")


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
