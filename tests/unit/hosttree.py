"""Build fake host-root trees (``proc``, ``sys``, ``boot``, ``etc``) for unit tests."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

MOUNT_LINE = "{id} 1 {dev} / {point} rw,relatime shared:1 - {fstype} {source} {opts}"


@dataclass
class HostTree:
    """A host as files: kernel release/config, THP knobs, mounts and os-release."""

    release: str = "6.12.95"
    proc_version: str = "Linux version 6.12.95 (builder@host) #1 SMP"
    config: str | None = "CONFIG_READ_ONLY_THP_FOR_FS=y\n"
    config_location: str = "proc"  # proc | boot | modules
    enabled: str = "always [madvise] never"
    scan_sleep: int = 10000
    pmd_size: int | None = 2 << 20  # hpage_pmd_size; None: the file is missing
    mounts: list[tuple[str, str, str]] = field(
        default_factory=lambda: [("/", "ext4", "rw,errors=remount-ro")])
    os_release: str | None = 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\n'
    arch: str | None = None  # proc/sys/kernel/arch, as a saved snapshot may hold it

    def write(self, root: Path) -> Path:
        def put(rel: str, data: str | bytes) -> None:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data if isinstance(data, bytes) else data.encode())

        put("proc/sys/kernel/osrelease", self.release + "\n")
        put("proc/version", self.proc_version + "\n")
        put("proc/sys/kernel/random/boot_id", "00000000-1111-2222-3333-444444444444\n")
        put("proc/sys/kernel/hostname", "fixture-node\n")
        put("proc/sys/vm/dirty_expire_centisecs", "3000\n")
        put("proc/meminfo", "MemTotal: 1000 kB\nFileHugePages:  4096 kB\nDirty: 12 kB\n")
        put("proc/vmstat", "nr_file_hugepages 2\nthp_file_mapped 1\n")
        if self.config is not None:
            if self.config_location == "proc":
                put("proc/config.gz", gzip.compress(self.config.encode()))
            elif self.config_location == "boot":
                put(f"boot/config-{self.release}", self.config)
            else:
                put(f"lib/modules/{self.release}/config", self.config)
        thp = "sys/kernel/mm/transparent_hugepage"
        put(f"{thp}/enabled", self.enabled + "\n")
        put(f"{thp}/defrag", "always defer defer+madvise [madvise] never\n")
        put(f"{thp}/khugepaged/scan_sleep_millisecs", f"{self.scan_sleep}\n")
        put(f"{thp}/khugepaged/pages_to_scan", "4096\n")
        if self.pmd_size is not None:
            put(f"{thp}/hpage_pmd_size", f"{self.pmd_size}\n")
        lines = [
            MOUNT_LINE.format(id=20 + i, dev=f"8:{i}", point=point, fstype=fstype,
                              source=f"/dev/fix{i}", opts=opts)
            for i, (point, fstype, opts) in enumerate(self.mounts)
        ]
        put("proc/1/mountinfo", "\n".join(lines) + "\n")
        if self.os_release is not None:
            put("etc/os-release", self.os_release)
        if self.arch is not None:
            put("proc/sys/kernel/arch", self.arch + "\n")
        return root
