"""The PMD (file THP) size of a kernel, and the reproducer's window arithmetic over it.

A read-only file THP is one PMD: 2 MiB with 4K pages (x86-64, most arm64 kernels), 32 MiB with
arm64's 16K pages, 512 MiB with its 64K pages (Oracle UEK8 aarch64, RHEL ``kernel-64k``, Ubuntu
``-64k``). The kernel says which in ``/sys/kernel/mm/transparent_hugepage/hpage_pmd_size``;
without that file (THP not built, or an old kernel) it follows from the architecture and the page
size: one page of 8-byte entries maps ``page_size / 8`` pages.

MADV_COLLAPSE works on whole PMDs only, so everything the reproducer aligns, maps or sizes is a
multiple of this value, and a base file smaller than one PMD can never hold a file THP.
"""

from __future__ import annotations

from dataclasses import dataclass

from thpcheck.model.kconfig import KernelConfig

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
# The largest page-cache folio: MAX_PAGECACHE_ORDER = min(MAX_XAS_ORDER, PMD order), where
# MAX_XAS_ORDER = 2 * XA_CHUNK_SHIFT - 1 = 11 (64-slot xarray nodes; 7 only with
# CONFIG_BASE_SMALL, which no distribution sets). Since "mm/huge_memory: avoid PMD-size page
# cache if needed" (6.11) collapse refuses file ranges above it: 64K pages (PMD order 13).
MAX_PAGECACHE_ORDER = 11

# Architectures whose PMD is one page of 8-byte entries over base pages (4K: 2 MiB, 16K:
# 32 MiB, 64K: 512 MiB). ppc64's hash MMU and s390 differ: no fallback there.
PAGE_TABLE_ARCHES = frozenset({"x86_64", "amd64", "aarch64", "arm64", "riscv64", "loongarch64"})

# Page-size options of the kernel config, the generic ones (6.9+) first.
PAGE_SIZE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("CONFIG_PAGE_SIZE_4KB", 4 * KiB),
    ("CONFIG_PAGE_SIZE_16KB", 16 * KiB),
    ("CONFIG_PAGE_SIZE_64KB", 64 * KiB),
    ("CONFIG_ARM64_4K_PAGES", 4 * KiB),
    ("CONFIG_ARM64_16K_PAGES", 16 * KiB),
    ("CONFIG_ARM64_64K_PAGES", 64 * KiB),
    ("CONFIG_PPC_4K_PAGES", 4 * KiB),
    ("CONFIG_PPC_64K_PAGES", 64 * KiB),
)


@dataclass(frozen=True)
class HugePages:
    """A kernel's page and PMD sizes, and how the PMD size was found."""

    page_size: int | None
    pmd_size: int | None
    source: str  # "sysfs", "page size", or "unknown"

    @property
    def large(self) -> bool:
        """The PMD is larger than 2 MiB: a 16K or 64K page kernel."""
        return self.pmd_size is not None and self.pmd_size > 2 * MiB

    @property
    def pmd_order(self) -> int | None:
        """log2(PMD / page): 9 with 4K pages, 11 with 16K, 13 with 64K."""
        if not self.pmd_size or not self.page_size or self.pmd_size % self.page_size:
            return None
        return (self.pmd_size // self.page_size).bit_length() - 1

    @property
    def above_pagecache(self) -> bool:
        """A PMD-sized folio is larger than the page cache can hold (64K pages)."""
        order = self.pmd_order
        return order is not None and order > MAX_PAGECACHE_ORDER

    def describe(self) -> str:
        """``64K pages, PMD 512 MiB``, for reports and reasons."""
        pages = f"{page_label(self.page_size)} pages" if self.page_size else "page size unknown"
        pmd = f"PMD {size_text(self.pmd_size)}" if self.pmd_size else "PMD size unknown"
        return f"{pages}, {pmd}"

    def to_dict(self) -> dict[str, object]:
        return {"page_size": self.page_size, "pmd_size": self.pmd_size, "source": self.source}


UNKNOWN = HugePages(None, None, "unknown")


def size_text(size: int) -> str:
    """``512 MiB``, ``2 MiB``, ``64 KiB``, ``1 GiB``; bytes when not a whole unit."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


def page_label(page_size: int) -> str:
    """``4K``, ``16K``, ``64K``: how kernels and vendors name a page size."""
    return f"{page_size // KiB}K" if page_size % KiB == 0 else f"{page_size}B"


def page_size_from_config(config: KernelConfig | None) -> int | None:
    """The page size the kernel was built with, when its config says."""
    if config is None:
        return None
    for option, size in PAGE_SIZE_OPTIONS:
        if config.raw(option) == "y":
            return size
    return None


def pmd_for_page_size(machine: str | None, page_size: int | None) -> int | None:
    """The PMD size that follows from the page size on this architecture (None: unknown)."""
    if machine not in PAGE_TABLE_ARCHES or not page_size:
        return None
    return page_size * (page_size // 8)


def kernel_hugepages(sysfs: str | None, machine: str | None, running_page_size: int | None,
            config: KernelConfig | None) -> HugePages:
    """The kernel's own ``hpage_pmd_size`` when readable, else the per-architecture formula
    over the page size (the config's, else the running kernel's)."""
    page_size = page_size_from_config(config) or running_page_size
    text = (sysfs or "").strip()
    if text.isdigit() and int(text) > 0:
        return HugePages(page_size, int(text), "sysfs")
    pmd = pmd_for_page_size(machine, page_size)
    return HugePages(page_size, pmd, "page size" if pmd else "unknown")


# ---- the reproducer's window arithmetic ---------------------------------------------------

def reservation(length: int, pmd: int) -> int:
    """Bytes to reserve so that a PMD-aligned range of ``length`` fits inside."""
    return length + pmd


def align_up(address: int, pmd: int) -> int:
    """The first PMD boundary at or after ``address``."""
    return (address + pmd - 1) & ~(pmd - 1)


def trims(base: int, span: int, aligned: int, length: int) -> tuple[tuple[int, int], ...]:
    """The (address, length) ranges of a reservation around an aligned mapping, to unmap."""
    after = aligned + length
    return tuple((start, size) for start, size in ((base, aligned - base),
                                                   (after, base + span - after)) if size)


def head_size(base_size: int, pmd: int) -> int:
    """Step 1's head: the part of the base written, fsynced and collapsed before the rest."""
    return min(pmd, base_size)


def base_too_small(base_size: int, hugepages: HugePages) -> str | None:
    """Why the reproducer cannot run with this base size here (None: it can)."""
    pmd = hugepages.pmd_size
    if pmd is None:
        return ("skipped: the PMD size of this kernel is unknown (no hpage_pmd_size in sysfs, "
                "no page-table fallback for this architecture)")
    if base_size < pmd:
        return (f"skipped: base {size_text(base_size)} < PMD {size_text(pmd)} on this kernel; "
                f"pass --base-size >= {size_text(pmd).replace(' ', '')}")
    return None


def susceptible_sizes(hugepages: HugePages | None) -> str | None:
    """For a kernel whose PMD is larger than 2 MiB: which files can lose data at all."""
    if hugepages is None or not hugepages.large or hugepages.pmd_size is None:
        return None
    pages = f"{page_label(hugepages.page_size)} pages" if hugepages.page_size else "large pages"
    pmd = size_text(hugepages.pmd_size)
    text = (f"{pages}: a file THP is {pmd} here, so only files of {pmd} and more can get one "
            "and lose data")
    if hugepages.above_pagecache:
        text += ("; a 5.17+ stable kernel with 'mm/huge_memory: avoid PMD-size page cache if "
                 "needed' refuses them (the reproducer's EINVAL tells)")
    return text
