"""The susceptibility model as data: gate rules with ids, reasons and sources.

Encodes ``kernel-susceptibility.md`` §3 (gate table G1-G18), §1.1 (purge lifetime), §2
(large folios per filesystem) and §7 (fixed stable releases). Rules are evaluated top-down and
the first match wins, exactly as the table is read. Every row keeps its evidence level: facts
marked inferred in the notes stay ``INFERRED`` here and are reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from thpcheck.model.kernel import KernelVersion


class Outcome(StrEnum):
    """What the static model predicts for one path."""

    NOT_AFFECTED = "not-affected"
    AT_RISK = "at-risk"
    UNKNOWN = "unknown"


class Evidence(StrEnum):
    """How a fact was established (the notes' [V], [V2], [I] markers)."""

    VERIFIED = "verified"  # primary source: code, commit, shipped config
    SECONDARY = "secondary"  # maintainer statement, news, stable log
    INFERRED = "inferred"  # reasoning; a lead, not a proof


SOURCES: dict[str, str] = {
    "S1": "Song Liu series, v5.4-rc1: 99cb0dbd47a1 'mm,thp: add read-only THP support for "
    "(non-shmem) FS' and 09d91cda0e82 'mm,thp: avoid writes to file with THP in pagecache'",
    "S2": "eb6ecbed0aa2 (v5.14, VM_EXEC eligibility); 55fc0d917467 + 8468e937df1f (v5.16 purge "
    "body: unmap_mapping_range + truncate_inode_pages)",
    "S3": "include/linux/fs.h filemap_nr_thps{,_inc,_dec}: 0 without CONFIG_READ_ONLY_THP_FOR_FS;"
    " no-op for mappings with large-folio support",
    "S4": "include/linux/huge_mm.h file_thp_enabled(); 7fbb5e188248 (v6.8, VM_EXEC dropped)",
    "S5": "mm/khugepaged.c collapse_file(): is_shmem skips nr_thps; only the target range must be"
    " clean",
    "S6": "7d8faaf15545 + 34488399fa08 (v6.1): MADV_COLLAPSE, file support needs "
    "CONFIG_READ_ONLY_THP_FOR_FS=y",
    "S7": "mm/khugepaged.c madvise_collapse(): EINVAL when the VMA is not eligible",
    "S9": "Zi Yan, 'Remove CONFIG_READ_ONLY_THP_FOR_FS and enable file THP for writable files', "
    "044925f9b565 et al., merged for 7.2",
    "S11": "LKML 2026-06-30 '[BUG/RFC] write-open file THP cache purge can discard dirty page "
    "cache' (Leventhal, Hagberg); reproduced on 6.12 ext4 and btrfs, not XFS",
    "S12": "'[PATCH stable] mm/khugepaged: write all dirty file folios when collapsing' (Falcato);"
    " 6.12.y 9108ee3d5f70 in 6.12.96; queued 6.18.y 3f977f0d48cb, 7.1.y 71fed4705712",
    "S13": "6795801366da 'xfs: Support large folios' (5.17)",
    "S14": "7ac67301e82f 'ext4: enable large folio for regular file' (6.16 window); "
    "ext4_should_enable_large_folio() exclusions",
    "S15": "cc38d178ff33 'btrfs: enable large data folio support under "
    "CONFIG_BTRFS_EXPERIMENTAL' (6.17); default-on in 7.2",
    "S16": "bcachefs/erofs/nfs/smb/afs mapping_set_large_folios() callers; f2fs immutable only",
    "S17": "'mm/huge_memory: avoid PMD-size page cache if needed' (Gavin Shan, CVE-2024-42317, "
    "6.11; Cc stable 5.17+): collapse refuses file ranges above MAX_PAGECACHE_ORDER (11), so "
    "arm64 kernels with 64K pages (PMD order 13) make no file THP; read in 6.12.95 "
    "mm/huge_memory.c __thp_vma_allowable_orders() and include/linux/pagemap.h, and refused "
    "(EINVAL) in thp-checker's 64K arm64 guest",
    "RT": "thp-checker runtime evidence: MADV_COLLAPSE refused on a touched PROT_EXEC file "
    "mapping while anonymous collapse works",
}

# §1.1: the do_dentry_open() purge exists from v5.4-rc1 until the 7.2 merge window.
PURGE_INTRODUCED = (5, 4)
PURGE_REMOVED = (7, 2)
MADV_COLLAPSE_SINCE = (6, 1)
PAGECACHE_ORDER_LIMIT_SINCE = (6, 11)  # S17 in mainline (stable backports are not assumed)
PAGECACHE_LIMIT_FROM = (5, 17)  # multi-index page cache: the branches S17 was sent back to


@dataclass(frozen=True)
class FixedStable:
    """A stable branch and the first release carrying the stable fix (§7)."""

    branch: tuple[int, int]
    first_fixed: int
    commit: str
    evidence: Evidence


FIXED_STABLE: tuple[FixedStable, ...] = (
    FixedStable((6, 12), 96, "9108ee3d5f70", Evidence.VERIFIED),
    FixedStable((6, 18), 39, "3f977f0d48cb", Evidence.INFERRED),
    FixedStable((7, 1), 4, "71fed4705712", Evidence.INFERRED),
)


def fixed_stable(version: KernelVersion) -> FixedStable | None:
    """The stable fix this kernel carries, judged by version alone (None if unknown/unfixed)."""
    for fixed in FIXED_STABLE:
        if (
            version.branch == fixed.branch
            and version.sublevel is not None
            and version.sublevel >= fixed.first_fixed
        ):
            return fixed
    return None


# Filesystem families: mountinfo names mapped to the driver that decides large folios.
FS_FAMILIES: dict[str, str] = {
    "ext4": "ext4",
    "ext3": "ext4",  # driven by the ext4 driver (CONFIG_EXT4_USE_FOR_EXT2)
    "ext2": "ext4",
    "xfs": "xfs",
    "btrfs": "btrfs",
    "f2fs": "f2fs",
    "bcachefs": "bcachefs",
    "tmpfs": "shmem",
    "shm": "shmem",
    "devtmpfs": "shmem",
    "ramfs": "never",  # its pages stay dirty: collapse_file() refuses dirty file pages
    "erofs": "never",
    "hugetlbfs": "never",
    "squashfs": "never",
    "iso9660": "never",
    "nfs": "netfs",
    "nfs4": "netfs",
    "cifs": "netfs",
    "smb3": "netfs",
    "afs": "netfs",
}


def fs_family(fstype: str | None) -> str:
    """The family a mountinfo fstype belongs to; ``other`` when the model has no row."""
    if fstype is None:
        return "unknown"
    return FS_FAMILIES.get(fstype, "fuse" if fstype.startswith("fuse") else "other")


@dataclass(frozen=True)
class LargeFolios:
    """First mainline version where a filesystem gives regular files large folios (§2)."""

    family: str
    since: tuple[int, int]
    evidence: Evidence
    note: str


LARGE_FOLIOS: tuple[LargeFolios, ...] = (
    LargeFolios("xfs", (5, 17), Evidence.SECONDARY, "6795801366da"),
    LargeFolios("ext4", (6, 16), Evidence.SECONDARY, "7ac67301e82f; not data=journal/verity/"
                "encrypt inodes"),
    LargeFolios("btrfs", (6, 17), Evidence.INFERRED, "cc38d178ff33, only with "
                "CONFIG_BTRFS_EXPERIMENTAL=y before 7.2"),
    LargeFolios("bcachefs", (6, 7), Evidence.INFERRED, "every inode; bcachefs left mainline in "
                "6.18"),
)


class Condition(StrEnum):
    """Named extra conditions a rule can require (beyond kernel range and filesystem)."""

    NONE = "none"
    CONFIG_OFF = "config-off"
    CONFIG_ON = "config-on"
    KERNEL_UNKNOWN = "kernel-unknown"
    FIXED_STABLE = "fixed-stable"
    READ_ONLY_MOUNT = "read-only-mount"
    EXT4_JOURNALLED = "ext4-data-journal"
    BTRFS_EXPERIMENTAL = "btrfs-experimental"
    PMD_ABOVE_PAGECACHE = "pmd-above-pagecache"


@dataclass(frozen=True)
class Rule:
    """One row of the gate table; ``None`` fields match anything."""

    id: str
    outcome: Outcome
    reason: str
    evidence: Evidence
    sources: tuple[str, ...]
    families: frozenset[str] | None = None
    kernel_min: tuple[int, int] | None = None  # inclusive
    kernel_below: tuple[int, int] | None = None  # exclusive
    condition: Condition = Condition.NONE
    node_level: bool = False  # decided by the kernel alone, for every path


def _fam(*names: str) -> frozenset[str]:
    return frozenset(names)


V, V2, INF = Evidence.VERIFIED, Evidence.SECONDARY, Evidence.INFERRED
NA, RISK, UNK = Outcome.NOT_AFFECTED, Outcome.AT_RISK, Outcome.UNKNOWN

# Order matters: first match wins (§3.1 "evaluate top-down").
RULES: tuple[Rule, ...] = (
    Rule("G1", NA, "CONFIG_READ_ONLY_THP_FOR_FS is not set: filemap_nr_thps() is always 0, the "
         "write-open purge never runs and regular-file collapse is refused", V,
         ("S3", "S4", "S7"), condition=Condition.CONFIG_OFF, node_level=True),
    Rule("G0", UNK, "the kernel release could not be read or parsed", INF, (),
         condition=Condition.KERNEL_UNKNOWN, node_level=True),
    Rule("G2b", UNK, "kernel older than 5.4 but CONFIG_READ_ONLY_THP_FOR_FS=y: a vendor backport "
         "whose contents are unknown", INF, ("S1",), kernel_below=PURGE_INTRODUCED,
         condition=Condition.CONFIG_ON, node_level=True),
    Rule("G2", NA, "kernel older than 5.4: read-only file THPs and the write-open purge do not "
         "exist", V, ("S1",), kernel_below=PURGE_INTRODUCED, node_level=True),
    # The removal commits are read [V]; that the v7.2 release contains them is inferred [I].
    Rule("G3", NA, "kernel 7.2 or newer: CONFIG_READ_ONLY_THP_FOR_FS, nr_thps and the purge were "
         "removed", INF, ("S9", "S11"), kernel_min=PURGE_REMOVED, node_level=True),
    Rule("G4", NA, "fixed stable release: collapse writes back all dirty folios first "
         "(mm/khugepaged: write all dirty file folios when collapsing)", V, ("S12",),
         condition=Condition.FIXED_STABLE, node_level=True),
    Rule("G19", NA, "the PMD is larger than the largest page-cache folio (64K pages: PMD order "
         "13 > MAX_PAGECACHE_ORDER 11): since 6.11 collapse refuses file ranges, so no read-only "
         "file THP can arm the purge", V, ("S17",), kernel_min=PAGECACHE_ORDER_LIMIT_SINCE,
         condition=Condition.PMD_ABOVE_PAGECACHE, node_level=True),
    Rule("G5", NA, "tmpfs/shmem, ramfs, erofs, hugetlbfs and read-only filesystems never get a "
         "purge-armed file THP", V, ("S5",), families=_fam("shmem", "never")),
    Rule("G5", NA, "read-only mount: the file cannot be opened for write", INF, ("S5",),
         condition=Condition.READ_ONLY_MOUNT),
    Rule("G6", NA, "XFS gives regular files large folios since 5.17, so nr_thps never rises",
         V2, ("S13", "S3"), families=_fam("xfs"), kernel_min=(5, 17)),
    Rule("G7", RISK, "XFS before 5.17 has no large folios: file THPs arm the purge", V2,
         ("S13",), families=_fam("xfs")),
    Rule("G9", RISK, "ext4 with data=journal keeps small folios even on 6.16+", INF, ("S14",),
         families=_fam("ext4"), kernel_min=(6, 16), condition=Condition.EXT4_JOURNALLED),
    Rule("G8", NA, "ext4 gives regular files large folios since 6.16 (default data modes; "
         "verity/encrypt filesystems and chattr +j inodes excepted)", V, ("S14", "S3"),
         families=_fam("ext4"), kernel_min=(6, 16)),
    Rule("G10", RISK, "ext4 before 6.16 has no large folios: file THPs arm the purge "
         "(reported on 6.12)", V, ("S11", "S14"), families=_fam("ext4")),
    Rule("G11", NA, "btrfs with CONFIG_BTRFS_EXPERIMENTAL=y has large data folios on 6.17+",
         INF, ("S15",), families=_fam("btrfs"), kernel_min=(6, 17),
         condition=Condition.BTRFS_EXPERIMENTAL),
    Rule("G12", RISK, "btrfs has no large folios before 7.2 without CONFIG_BTRFS_EXPERIMENTAL "
         "(reported on 6.12)", V, ("S11", "S15"), families=_fam("btrfs")),
    Rule("G13", RISK, "f2fs gives large folios only to immutable files; writable files are "
         "at risk", INF, ("S16",), families=_fam("f2fs")),
    Rule("G14", NA, "bcachefs sets large folios on every inode", INF, ("S16",),
         families=_fam("bcachefs"), kernel_min=(6, 7)),
    Rule("G16", UNK, "network filesystem: large-folio support depends on the client version, "
         "which the model does not know", INF, ("S16",), families=_fam("netfs")),
    Rule("G17", UNK, "filesystem not in the model (FUSE, vfat, exfat, ntfs3, ...): treat as at "
         "risk if writable and without large folios", INF, ()),
)


def rule_by_id(rule_id: str) -> Rule:
    """The first rule with this id (used in tests and docs)."""
    for rule in RULES:
        if rule.id == rule_id:
            return rule
    raise KeyError(rule_id)


# G18 is not a row of RULES: it wraps an AT_RISK row when the config is unknown (§3.1).
G18_REASON = (
    "CONFIG_READ_ONLY_THP_FOR_FS could not be determined (no readable kernel config and no "
    "verified distro row); {rule} would make this path at risk: {reason}"
)
