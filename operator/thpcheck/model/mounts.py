"""``/proc/<pid>/mountinfo`` parsing and path-to-filesystem resolution.

The filesystem that matters for a path is the one whose mount point is the longest prefix of
the path (the last such mount wins: later mounts stack on top). An overlay mount is judged by
the filesystem that holds its upper layer, because writes and their page cache live there.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from thpcheck.model.paths import IMAGE_DIRS, KUBELET_DIRS, matching_rule, under_any

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
DISCOVERY_DIR = ".thpcheck"
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p",
                        "afs", "lustre", "gpfs", "beegfs", "ocfs2", "gfs2", "davfs", "sshfs",
                        "virtiofs", "orangefs", "pvfs2"})
MEMORY_FS = frozenset({"tmpfs", "ramfs", "shm", "devtmpfs"})
# Kernel interfaces, not filesystems anyone stores data on: skipped without a mention.
PSEUDO_FS = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs",
                       "tracefs", "securityfs", "pstore", "bpf", "configfs", "fusectl",
                       "hugetlbfs", "binfmt_misc", "autofs", "nsfs", "efivarfs", "rpc_pipefs",
                       "selinuxfs", "nfsd"})
# Volume mounts the kubelet makes wherever its root dir is (CSI staging and publish, every
# other volume plugin): recognised by shape, so a custom --root-dir is covered too.
TENANT_VOLUME = re.compile(r"/(plugins/kubernetes\.io/csi|plugins/kubernetes\.io~csi"
                           r"|volumes/kubernetes\.io~[^/]+|volumeDevices)(/|$)")


def memory_backed(fstype: str | None) -> bool:
    """tmpfs and friends: page cache that is RAM, and no disk for the bug to lose data on."""
    return fstype in MEMORY_FS


@dataclass(frozen=True)
class Skipped:
    """A mount ``discover`` did not test, and why."""

    mount_point: str
    fstype: str
    reason: str


@dataclass(frozen=True)
class Discovery:
    paths: list[str]  # one scratch path per filesystem to test
    skipped: list[Skipped]


def _overlay_layers(mounts: list[Mount]) -> list[str]:
    """Every overlay's lower, upper and work directories (never written behind its back)."""
    layers: list[str] = []
    for mount in mounts:
        if mount.fstype != "overlay":
            continue
        for key in ("lowerdir", "upperdir", "workdir"):
            value = mount.super_option(key)
            if value:
                layers.extend(d for d in re.split(r"(?<!\\):", value) if d.startswith("/"))
    return layers


def _kubelet_roots(mounts: list[Mount]) -> tuple[str, ...]:
    """The standard kubelet root dirs, and any other one its volume mounts reveal (a custom
    ``--root-dir``: ``<root>/pods/<uid>/volumes/...``, ``<root>/plugins/kubernetes.io/csi``)."""
    roots = set(KUBELET_DIRS)
    for mount in mounts:
        match = TENANT_VOLUME.search(mount.mount_point)
        if match is None:
            continue
        head = mount.mount_point[:match.start()]
        if match.group(1).startswith("plugins/"):
            roots.add(head or "/")
        elif "/pods/" in head:
            roots.add(head[:head.rindex("/pods/")] or "/")
    roots.discard("/")
    return tuple(sorted(roots))


def _skip_reason(mount: Mount, layers: list[str], kubelet_roots: tuple[str, ...]
                 ) -> str | None:
    """Why ``mount`` is not a filesystem to test (None: test it)."""
    point = mount.mount_point
    if TENANT_VOLUME.search(point) or under_any(point, kubelet_roots):
        return "a pod volume or CSI mount under the kubelet's directory (another tenant's data)"
    if under_any(point, IMAGE_DIRS):
        return "a container runtime's state (images, snapshots)"
    rule = matching_rule(posixpath.join(point, DISCOVERY_DIR))
    if rule is not None and rule.id == "kubelet":
        return "the kubelet's or a container runtime's state directory"
    if rule is not None:
        return f"under {rule.what}"
    if mount.fstype in NETWORK_FS:
        return "a network filesystem"
    if mount.fstype.startswith("fuse") or mount.fstype == "fuseblk":
        return "a FUSE filesystem"
    if mount.read_only:
        return "a read-only mount"
    if any(_is_under(point, layer) for layer in layers):
        return "an overlay's lower, upper or work layer (written only through the overlay)"
    if mount.fstype in MEMORY_FS:
        return "memory-backed (the bug needs a disk filesystem)"
    if mount.fstype not in DISCOVERABLE:
        return f"{mount.fstype} is not a local disk filesystem the discovery tests"
    return None


def discover(mounts: list[Mount]) -> Discovery:
    """One scratch path (``<mountpoint>/.thpcheck``) per local writable filesystem, and every
    other mount with the reason it was skipped (kernel interfaces such as proc and cgroup are
    left out of that list).

    Bind mounts and btrfs subvolumes of one device are tested once, at the shortest mount
    point; pod volumes, CSI mounts, the kubelet's and runtimes' directories (standard, k3s,
    k0s, MicroK8s), network and FUSE filesystems, read-only mounts and overlay layers are
    never touched.
    """
    layers = _overlay_layers(mounts)
    kubelet_roots = _kubelet_roots(mounts)
    chosen: dict[str, Mount] = {}
    skipped: list[Skipped] = []
    for mount in mounts:
        if mount.fstype in PSEUDO_FS:
            continue
        reason = _skip_reason(mount, layers, kubelet_roots)
        if reason is not None:
            skipped.append(Skipped(mount.mount_point, mount.fstype, reason))
            continue
        key = mount.source if mount.fstype == "btrfs" else mount.device
        best = chosen.get(key)
        if best is None or len(mount.mount_point) < len(best.mount_point):
            if best is not None:
                skipped.append(_duplicate(best, mount))
            chosen[key] = mount
        else:
            skipped.append(_duplicate(mount, best))
    return Discovery(sorted(posixpath.join(m.mount_point, DISCOVERY_DIR) for m in chosen.values()),
                     skipped)


def _duplicate(mount: Mount, kept: Mount) -> Skipped:
    return Skipped(mount.mount_point, mount.fstype,
                   f"another mount of the filesystem tested at {kept.mount_point}")


# -- what a filesystem is to the kubelet, and what the kubelet really mounted ----------------


def _join(root: str, relative: str) -> str:
    return posixpath.normpath(root.rstrip("/") + "/" + relative.lstrip("/"))


def fs_location(path: str, mounts: list[Mount]) -> tuple[str, str] | None:
    """``(device, path inside that filesystem)`` of a host path, by mount points alone (no
    symlink is followed: mountinfo holds none)."""
    mount = mount_for(path, mounts)
    if mount is None:
        return None
    normal = posixpath.normpath(path)
    relative = normal if mount.mount_point == "/" else normal[len(mount.mount_point):]
    return mount.device, _join(mount.root, relative)


def host_path_of(device: str, fs_path: str, mounts: list[Mount]) -> str | None:
    """Where ``fs_path`` of the filesystem ``device`` is visible on the host (None: nowhere)."""
    best: Mount | None = None
    for mount in mounts:
        if mount.device != device or not _is_under(fs_path, mount.root):
            continue
        if best is None or len(mount.root) > len(best.root) or (
                len(mount.root) == len(best.root)
                and len(mount.mount_point) < len(best.mount_point)):
            best = mount
    if best is None:
        return None
    relative = fs_path if best.root == "/" else fs_path[len(best.root.rstrip("/")):]
    return _join(best.mount_point, relative)


def bind_target(host_path: str, bound: Mount, host_mounts: list[Mount]) -> str | None:
    """Where the bind mount ``bound`` (what the kubelet mounted for ``host_path``) comes from on
    the host, when that is not ``host_path`` itself: the kubelet and the runtime follow
    symlinks, so a symlink on the way shows up here as another source. None when it is the
    path itself."""
    expected = fs_location(host_path, host_mounts)
    if expected == (bound.device, posixpath.normpath(bound.root)):
        return None
    found = host_path_of(bound.device, posixpath.normpath(bound.root), host_mounts)
    return found or f"{bound.root} on device {bound.device}"
