"""Disk headroom: may a run write ``need`` bytes on a filesystem without pushing the node into
DiskPressure? Pure: the numbers come from ``statvfs`` and the reservation registry.

The kubelet evicts pods when a filesystem's available space falls below its hard threshold
(defaults ``nodefs.available<10%``, ``imagefs.available<15%``, ``nodefs.inodesFree<5%``;
kubelet's ``eviction_defaults``). A run must leave at least that threshold plus a margin,
and never less than an absolute floor, *after* its own bytes and the bytes other live runs
on the same filesystem have reserved. A filesystem that holds neither the kubelet's nor a
runtime's state gets the nodefs threshold: the kubelet does not watch it, but its owner's
workloads want the same room.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from thpcheck.model.mounts import Mount, resolve
from thpcheck.model.paths import IMAGE_DIRS, KUBELET_DIRS

MiB = 1 << 20


class FsRole(StrEnum):
    """What the kubelet calls a filesystem (by the state directories it holds)."""

    NODEFS = "nodefs"  # holds the kubelet's root dir
    IMAGEFS = "imagefs"  # holds a container runtime's images
    OTHER = "other"  # neither: judged as nodefs


@dataclass(frozen=True)
class Headroom:
    """The thresholds (``spec.diskHeadroom`` of a ThpCheck, ``--nodefs-threshold`` etc.)."""

    nodefs_percent: int = 10  # kubelet: evictionHard nodefs.available 10%
    imagefs_percent: int = 15  # kubelet: evictionHard imagefs.available 15%
    margin_percent: int = 5
    min_free_bytes: int = 256 * MiB
    inodes_percent: int = 5  # kubelet: evictionHard nodefs.inodesFree 5%


@dataclass(frozen=True)
class FsSpace:
    """``statvfs`` of a filesystem, in bytes and inodes (as the kubelet reads it)."""

    capacity: int  # f_blocks * f_frsize
    available: int  # f_bavail * f_frsize
    files: int = 0  # f_files (0: the filesystem does not count inodes, e.g. btrfs)
    files_available: int = 0  # f_favail


@dataclass(frozen=True)
class Decision:
    ok: bool
    need: int  # bytes this run writes (with its margin)
    reserved: int  # bytes other live runs on this filesystem have reserved
    keep: int  # bytes that must stay available after the run
    threshold_percent: int  # eviction threshold + margin that ``keep`` came from
    role: FsRole
    detail: str  # the refusal (or the numbers, when ok)


def human(size: int) -> str:
    """``67108864`` -> ``64.0 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def fs_role(path: str, mounts: list[Mount], kubelet_dirs: tuple[str, ...] = KUBELET_DIRS,
            image_dirs: tuple[str, ...] = IMAGE_DIRS) -> FsRole:
    """Whether the filesystem holding ``path`` also holds a runtime's images (imagefs) or the
    kubelet's root dir (nodefs). Pass the directories present on the node when known; the
    default (all candidates) errs on the strict side."""
    here = resolve(path, mounts)
    if here is None:
        return FsRole.OTHER
    device = here.backing.device

    def holds(dirs: tuple[str, ...]) -> bool:
        return any((r := resolve(d, mounts)) is not None and r.backing.device == device
                   for d in dirs)

    if holds(image_dirs):
        return FsRole.IMAGEFS
    return FsRole.NODEFS if holds(kubelet_dirs) else FsRole.OTHER


def eviction_percent(role: FsRole, headroom: Headroom) -> int:
    return headroom.imagefs_percent if role is FsRole.IMAGEFS else headroom.nodefs_percent


def decide(space: FsSpace, need: int, reserved: int, role: FsRole,
           headroom: Headroom, new_files: int = 3) -> Decision:
    """Whether ``need`` more bytes (and ``new_files`` inodes) fit with the headroom kept."""
    eviction = eviction_percent(role, headroom)
    percent = eviction + headroom.margin_percent
    keep = max(math.ceil(space.capacity * percent / 100), headroom.min_free_bytes)
    left = space.available - reserved - need
    numbers = (f"{human(space.available)} available of {human(space.capacity)}"
               f"{f', {human(reserved)} reserved by other running checks' if reserved else ''}"
               f"; the run needs {human(need)} and must leave {human(keep)} (the kubelet's "
               f"{role.value if role is not FsRole.OTHER else 'nodefs'}.available eviction "
               f"threshold {eviction}% + margin {headroom.margin_percent}% of the capacity, at "
               f"least {human(headroom.min_free_bytes)})")
    if left < keep:
        return Decision(False, need, reserved, keep, percent, role,
                        f"not enough headroom: {numbers}, it would leave {human(max(left, 0))}")
    if space.files > 0:
        floor = math.ceil(space.files * headroom.inodes_percent / 100)
        if space.files_available - new_files < floor:
            return Decision(False, need, reserved, keep, percent, role,
                            f"not enough free inodes: {space.files_available} of {space.files} "
                            f"free, the kubelet evicts below {headroom.inodes_percent}%")
    return Decision(True, need, reserved, keep, percent, role, numbers)
