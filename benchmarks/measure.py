"""Run one command against a scratch directory and print what it cost, as one JSON line.

    python3 measure.py DIR ARGV...

Stdlib only, no imports from the project: the qemu guest runs this file's source through
``python3 -c`` (see benchmarks/vm_cost.py). The command is started with posix_spawn and reaped
with wait4, so CPU time and peak RSS are the command's own, and wall time runs from spawn to
exit (this script's own start-up is not counted). Around the command: ``sync`` and the block
device's sectors-written counter (/sys/block/<dev>/stat field 7, so journal and metadata
count), and the entries under DIR that were not there before (must be none).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def device_of(directory: str) -> str | None:
    """The block device (vdb, loop3) of the mount holding ``directory``, if there is one."""
    best, device = "", None
    real = os.path.realpath(directory)
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            source, mount_point = line.split()[:2]
            inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, device = mount_point, source
    if device is None or not device.startswith("/dev/"):
        return None
    name = os.path.basename(os.path.realpath(device))
    return name if os.path.exists(f"/sys/block/{name}/stat") else None


def sectors_written(device: str | None) -> int:
    if device is None:
        return 0
    with open(f"/sys/block/{device}/stat", encoding="ascii") as stat:
        return int(stat.read().split()[6])


def entries(directory: str) -> set[str]:
    found: set[str] = set()
    for top, dirs, files in os.walk(directory):
        found.update(os.path.join(top, name) for name in (*dirs, *files))
    return found


def measure(directory: str, argv: list[str]) -> dict[str, Any]:
    device = device_of(directory)
    before = entries(directory)
    os.sync()
    sectors = sectors_written(device)
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    pid = os.posix_spawnp(argv[0], argv, dict(os.environ),
                          file_actions=[(os.POSIX_SPAWN_DUP2, write_fd, 1)])
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        stdout = pipe.read()
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - started
    os.sync()
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 4),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 4),
        "user_s": round(usage.ru_utime, 4),
        "sys_s": round(usage.ru_stime, 4),
        "peak_rss_kib": usage.ru_maxrss,
        "device": device,
        "device_bytes_written": (sectors_written(device) - sectors) * 512,
        "left_on_disk": sorted(entries(directory) - before),
        "stdout": stdout.decode("utf-8", "replace"),
    }


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(measure(sys.argv[1], sys.argv[2:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
