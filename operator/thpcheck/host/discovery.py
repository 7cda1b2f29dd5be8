"""Scratch directories for discovered filesystems: ``<mountpoint>/.thpcheck``, made and removed.

Created with ``mkdir`` relative to the mount point's directory descriptor (opened with
``O_NOFOLLOW``), never through a symlink; removed afterwards only if this run created it and
it is empty again.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterator

from thpcheck.host.hostroot import HostRoot
from thpcheck.logs import get_logger

log = get_logger("thpcheck.discovery")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _ensure(root: HostRoot, host_path: str) -> bool:
    """Create ``host_path`` (one level) if missing; True when this call created it."""
    parent, name = posixpath.split(host_path)
    try:
        parent_fd = os.open(root.path(parent), _DIR_FLAGS)
    except OSError as exc:
        log.warning("discovered_mount_unusable", path=parent, error=exc.strerror)
        return False
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        return True
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(name, dir_fd=parent_fd).st_mode):
            log.warning("discovery_dir_not_a_directory", path=host_path)
        return False
    except OSError as exc:
        log.warning("discovery_dir_not_created", path=host_path, error=exc.strerror)
        return False
    finally:
        os.close(parent_fd)


@contextlib.contextmanager
def scratch_roots(root: HostRoot, host_paths: list[str]) -> Iterator[None]:
    """Make every discovered scratch dir for the run; remove the ones we made afterwards."""
    created = [p for p in host_paths if _ensure(root, p)]
    try:
        yield
    finally:
        for host_path in created:
            with contextlib.suppress(OSError):  # not empty: someone else's files now
                os.rmdir(root.path(host_path))
