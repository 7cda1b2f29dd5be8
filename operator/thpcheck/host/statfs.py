"""``statfs(2)`` filesystem magic numbers, to cross-check mountinfo against the real path.

In a pod, a missing hostPath mount would silently put the scratch dir on the container's own
overlay; comparing the statfs magic of the path with the host mountinfo's fstype catches that.
"""

from __future__ import annotations

import ctypes
import os

from thpcheck.host.libc import LIBC

# include/uapi/linux/magic.h
MAGIC_NAMES: dict[int, str] = {
    0xEF53: "ext4",  # ext2/ext3/ext4 share the magic
    0x9123683E: "btrfs",
    0x58465342: "xfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlay",
    0x6969: "nfs",
    0xF2F52010: "f2fs",
    0xCA451A4E: "bcachefs",
    0x65735546: "fuse",
    0xE0F5E1E2: "erofs",
    0x73717368: "squashfs",
    0x858458F6: "ramfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb3",
    0x2FC12FC1: "zfs",
    0x4D44: "vfat",
    0x2011BAB0: "exfat",
    0x7366746E: "ntfs3",
    0x958458F6: "hugetlbfs",
    0x9FA0: "proc",
    0x62656572: "sysfs",
}

PROC_NAME = MAGIC_NAMES[0x9FA0]
_EXT_FAMILY = {"ext2", "ext3", "ext4"}


class _Statfs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type is the first word; the rest is padding for us.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


_libc = LIBC
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]
_libc.statfs.restype = ctypes.c_int


def fs_magic(path: str) -> int:
    """The filesystem magic of ``path``; raises OSError."""
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(buf.f_type) & 0xFFFFFFFF


def fs_name(path: str) -> str:
    """A name for the filesystem of ``path`` (``magic:0x...`` when unknown)."""
    magic = fs_magic(path)
    return MAGIC_NAMES.get(magic, f"magic:{magic:#x}")


def same_filesystem(statfs_name: str, mountinfo_fstype: str) -> bool:
    """True when the statfs name is consistent with the mountinfo fstype."""
    if statfs_name == mountinfo_fstype:
        return True
    if statfs_name == "ext4" and mountinfo_fstype in _EXT_FAMILY:
        return True
    if statfs_name == "fuse" and mountinfo_fstype.startswith("fuse"):
        return True
    return statfs_name == "nfs" and mountinfo_fstype.startswith("nfs")
