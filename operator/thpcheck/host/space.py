"""Disk headroom on the node: ``statvfs``, and reservations that concurrent runs respect.

Two ThpChecks, or a ThpCheck and a manual ``thpcheck check``, may write on one filesystem at
the same time; each would pass the headroom check alone and fill it together. So a run
reserves its bytes before writing: under an exclusive ``flock`` on the registry's lock file
it sums the live reservations on the same filesystem, decides (``model.headroom.decide``)
and, if it may go ahead, creates its own reservation file and holds an ``flock`` on it until
the run ends. A reservation whose lock is free belongs to a run that died (``kill -9``) and
is removed by the next scan.

The registry is the host's ``/run/thpcheck`` (tmpfs: emptied at boot; in a pod a hostPath
mounted at ``/host/run/thpcheck``), shared by every run on the node whatever its mount
namespace: ``flock`` locks the inode. Filesystems are keyed by the device of their mountinfo
entry, the same for every bind mount and btrfs subvolume of one filesystem.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from thpcheck.host.hostroot import HostRoot
from thpcheck.logs import get_logger
from thpcheck.model.headroom import Decision, FsRole, FsSpace, Headroom, decide

log = get_logger("thpcheck.space")

REGISTRY_DIR = "/run/thpcheck"  # a host path
LOCK_FILE = "reservations.lock"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def fs_space(visible_path: str) -> FsSpace:
    """What ``statvfs`` says of the filesystem holding ``visible_path`` (raises OSError)."""
    fs = os.statvfs(visible_path)
    return FsSpace(capacity=fs.f_blocks * fs.f_frsize, available=fs.f_bavail * fs.f_frsize,
                   files=fs.f_files, files_available=fs.f_favail)


def device_key(device: str) -> str:
    """``259:1`` -> ``dev-259-1``: a file-name prefix per filesystem."""
    return "dev-" + device.replace(":", "-")


class Reservation:
    """Bytes one run may write on one filesystem; released (file removed) on ``release``."""

    def __init__(self, registry_fd: int, name: str, fd: int, decision: Decision) -> None:
        self._registry_fd = registry_fd
        self.name = name
        self._fd = fd
        self.decision = decision

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.name, dir_fd=self._registry_fd)
        os.close(self._fd)
        self._fd = -1


class Registry:
    """The node's reservation registry, opened once per run (``with Registry(root) as r``)."""

    def __init__(self, root: HostRoot) -> None:
        self.path = root.path(REGISTRY_DIR)
        self._fd = -1
        self.problem: str | None = None

    def __enter__(self) -> Registry:
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            self._fd = os.open(self.path, _DIR_FLAGS)
        except OSError as exc:  # not root on a plain machine: headroom alone still applies
            self.problem = f"{self.path}: {exc.strerror}"
            log.warning("reservations_unavailable", path=self.path, error=exc.strerror)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | _FILE_FLAGS, 0o600,
                       dir_fd=self._fd)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)  # closing the last descriptor drops the lock

    def _reserved(self, key: str) -> int:
        """Bytes live runs hold on ``key``; reservations of dead runs are removed."""
        total = 0
        for name in os.listdir(self._fd):
            if not name.startswith(key + "."):
                continue
            try:
                fd = os.open(name, os.O_RDONLY | _FILE_FLAGS, dir_fd=self._fd)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:  # its run holds it: live
                    text = os.read(fd, 64).decode(errors="replace").strip()
                    total += int(text) if text.isdigit() else 0
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self._fd)
                log.info("stale_reservation_removed", name=name)
            finally:
                os.close(fd)
        return total

    def claim(self, device: str | None, space_of: FsSpace, need: int, role: FsRole,
              headroom: Headroom) -> tuple[Decision, Reservation | None]:
        """Decide with every live reservation on ``device`` counted; on success, reserve."""
        if self._fd < 0 or device is None:
            return decide(space_of, need, 0, role, headroom), None
        key = device_key(device)
        with self._locked():
            decision = decide(space_of, need, self._reserved(key), role, headroom)
            if not decision.ok:
                return decision, None
            name = f"{key}.{os.getpid()}.{os.urandom(4).hex()}"
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _FILE_FLAGS, 0o600,
                         dir_fd=self._fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{need}\n".encode())
            return decision, Reservation(self._fd, name, fd, decision)
