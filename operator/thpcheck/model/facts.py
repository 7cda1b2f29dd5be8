"""What the agent reads from a node, as plain immutable values (collected by ``host.facts``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from thpcheck.model.hugepage import UNKNOWN, HugePages
from thpcheck.model.kconfig import KernelConfig
from thpcheck.model.kernel import KernelVersion
from thpcheck.model.mounts import Mount, ResolvedMount

# khugepaged sleeps "forever" at this value: the reporters' mitigation.
SCAN_SLEEP_DISABLED = 4294967295


@dataclass(frozen=True)
class KernelFacts:
    """Kernel identity and build configuration."""

    release: str | None
    version: KernelVersion | None
    proc_version: str | None = None
    config: KernelConfig | None = None
    config_error: str | None = None
    boot_id: str | None = None
    cmdline: str | None = None
    hugepages: HugePages = UNKNOWN  # page and PMD (file THP) size


@dataclass(frozen=True)
class ThpKnobs:
    """``/sys/kernel/mm/transparent_hugepage`` policy knobs (bracketed values resolved)."""

    enabled: str | None = None
    defrag: str | None = None
    shmem_enabled: str | None = None
    khugepaged: Mapping[str, str] = field(default_factory=dict)

    @property
    def scan_sleep_millisecs(self) -> int | None:
        raw = self.khugepaged.get("scan_sleep_millisecs")
        return int(raw) if raw is not None and raw.isdigit() else None

    @property
    def khugepaged_stopped(self) -> bool:
        """khugepaged makes no new file THPs: the mitigation (it does not stop MADV_COLLAPSE)."""
        sleep = self.scan_sleep_millisecs
        return self.enabled == "never" or (sleep is not None and sleep >= SCAN_SLEEP_DISABLED)


@dataclass(frozen=True)
class OsRelease:
    """The host's ``/etc/os-release`` fields that identify a distribution."""

    id: str = ""
    version_id: str = ""
    pretty_name: str = ""
    id_like: str = ""


@dataclass(frozen=True)
class PathFacts:
    """A scratch path (a host path) and the filesystem that stores it."""

    path: str
    resolved: ResolvedMount | None = None
    statfs_type: str | None = None
    error: str | None = None

    @property
    def fstype(self) -> str | None:
        """The filesystem that holds the data (an overlay's upper layer)."""
        return self.resolved.backing.fstype if self.resolved else self.statfs_type


@dataclass(frozen=True)
class NodeFacts:
    """Everything the static model needs about one node."""

    kernel: KernelFacts
    thp: ThpKnobs = field(default_factory=ThpKnobs)
    os_release: OsRelease | None = None
    writeback: Mapping[str, int] = field(default_factory=dict)
    evidence: Mapping[str, int] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    mountinfo_source: str | None = None
    mountinfo_error: str | None = None
    hostname: str | None = None
    machine: str | None = None  # uname -m (a snapshot: its proc/sys/kernel/arch, if saved)
    # Read from a saved copy of a host (support bundle), not a live one: filesystem types come
    # from the saved mountinfo alone and nothing can be run there.
    snapshot: bool = False
