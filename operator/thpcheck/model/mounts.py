"""``/proc/<pid>/mountinfo`` parsing and path-to-filesystem resolution.

The filesystem that matters for a path is the one whose mount point is the longest prefix of
the path (the last such mount wins: later mounts stack on top). An overlay mount is judged by
the filesystem that holds its upper layer, because writes and their page cache live there.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


@dataclass(frozen=True)
class Mount:
    """One mountinfo line, with the fields the model needs."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: str
    mount_options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        """Per-mount ``ro`` or superblock ``ro``."""
        return "ro" in self.mount_options or "ro" in self.super_options

    @property
    def noexec(self) -> bool:
        return "noexec" in self.mount_options

    def super_option(self, name: str) -> str | None:
        """Value of ``name=value`` in the superblock options (e.g. ``data=journal``)."""
        prefix = name + "="
        for option in self.super_options:
            if option.startswith(prefix):
                return option[len(prefix) :]
        return None


class MountinfoError(ValueError):
    """The mountinfo text is not in the kernel's format."""


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text (see proc(5)); raises MountinfoError on malformed lines."""
    mounts: list[Mount] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            mounts.append(
                Mount(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=fields[2],
                    root=_unescape(fields[3]),
                    mount_point=_unescape(fields[4]),
                    mount_options=tuple(fields[5].split(",")),
                    fstype=fields[separator + 1],
                    source=_unescape(fields[separator + 2]),
                    super_options=tuple(_unescape(o) for o in fields[separator + 3].split(","))
                    if len(fields) > separator + 3
                    else (),
                )
            )
        except (ValueError, IndexError) as exc:
            raise MountinfoError(f"mountinfo line {number} is malformed: {line!r}") from exc
    return mounts


def _is_under(path: str, mount_point: str) -> bool:
    if mount_point == "/":
        return True
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def mount_for(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding ``path``: longest mount-point prefix, the last one on ties."""
    path = posixpath.normpath(path)
    best: Mount | None = None
    for mount in mounts:
        if _is_under(path, mount.mount_point) and (
            best is None or len(mount.mount_point) >= len(best.mount_point)
        ):
            best = mount
    return best


@dataclass(frozen=True)
class ResolvedMount:
    """The mount a path is on, and the mount that really stores its data (overlay upper)."""

    mount: Mount
    backing: Mount

    @property
    def via_overlay(self) -> bool:
        return self.mount is not self.backing


def resolve(path: str, mounts: list[Mount]) -> ResolvedMount | None:
    """Resolve ``path`` to its mount; overlays resolve to their upper layer's filesystem."""
    mount = mount_for(path, mounts)
    if mount is None:
        return None
    backing = mount
    seen = {mount.mount_id}
    while backing.fstype == "overlay":
        upper = backing.super_option("upperdir")
        if upper is None:
            break  # read-only overlay (lower layers only): judged as overlay itself
        nxt = mount_for(upper, mounts)
        if nxt is None or nxt.mount_id in seen:
            break
        seen.add(nxt.mount_id)
        backing = nxt
    return ResolvedMount(mount, backing)


# Local, block-backed filesystems worth a scratch dir each when discovering (`--discover`).
DISCOVERABLE = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "bcachefs"})
DISCOVERY_SKIP = ("/proc", "/sys", "/dev", "/run", "/var/lib/kubelet/pods")
DISCOVERY_DIR = ".thpcheck"


def discover(mounts: list[Mount]) -> list[str]:
    """One scratch path (``<mountpoint>/.thpcheck``) per local writable filesystem.

    Bind mounts and btrfs subvolumes of one device are tested once, at the shortest mount
    point; pod volumes and pseudo filesystems are skipped.
    """
    chosen: dict[str, Mount] = {}
    for mount in mounts:
        if mount.fstype not in DISCOVERABLE or mount.read_only:
            continue
        if any(_is_under(mount.mount_point, skip) for skip in DISCOVERY_SKIP):
            continue
        key = mount.source if mount.fstype == "btrfs" else mount.device
        best = chosen.get(key)
        if best is None or len(mount.mount_point) < len(best.mount_point):
            chosen[key] = mount
    return sorted(posixpath.join(m.mount_point, DISCOVERY_DIR) for m in chosen.values())
