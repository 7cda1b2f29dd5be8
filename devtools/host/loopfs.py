"""Loop-mounted ext4, btrfs and xfs filesystems on this machine's own kernel, for the host
tier's tests and the benchmarks.

Every mount is undone in ``finally``: unmount, detach the loop device, delete the image.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
}


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def loop_devices_missing() -> str | None:
    """What keeps loop-mounted filesystems from working here (root, loop devices, a tool), or
    None when nothing does."""
    if os.geteuid() != 0:
        return "loop-mounted filesystems need root"
    if not os.path.exists("/dev/loop-control"):
        return "this machine has no loop devices (/dev/loop-control missing)"
    for tool in ("losetup", "mount", "umount", *(cmd[0] for cmd in MKFS.values())):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install btrfs-progs xfsprogs)"
    return None


@contextlib.contextmanager
def loop_mount(workdir: Path, fstype: str, size_mib: int = 512,
               options: str = "") -> Iterator[Path]:
    """A fresh ``fstype`` filesystem on a sparse image, mounted; removed afterwards."""
    image = workdir / f"{fstype}.img"
    mountpoint = workdir / f"{fstype}-mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as handle:
        handle.truncate(size_mib * 1024 * 1024)
    device = ""
    mounted = False
    try:
        _run(*MKFS[fstype], str(image))
        device = _run("losetup", "--find", "--show", str(image))
        _run("mount", "-t", fstype, *(["-o", options] if options else []), device,
             str(mountpoint))
        mounted = True
        yield mountpoint
    finally:
        if mounted:
            subprocess.run(["umount", str(mountpoint)], check=False)
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
