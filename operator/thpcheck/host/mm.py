"""Memory-management syscalls through ctypes: mmap at PMD alignment, madvise, prctl.

Python's ``mmap`` module cannot place a mapping at a chosen address, and the collapse needs
the virtual address and the file offset congruent modulo the PMD size. So the agent reserves
an anonymous region, then maps the file over an aligned part of it with ``MAP_FIXED``. The PMD
size is the kernel's (``model.hugepage``: 2 MiB with 4K pages, 512 MiB with arm64's 64K pages);
the arithmetic is there too. Nothing here is compiled at run time.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from thpcheck.host.libc import LIBC
from thpcheck.model.hugepage import align_up, reservation, trims

PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0x0, 0x1, 0x2, 0x4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_NORESERVE = 0x1, 0x2, 0x10, 0x20, 0x4000
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
PR_SET_THP_DISABLE, PR_GET_THP_DISABLE = 41, 42
MAP_FAILED = ctypes.c_void_p(-1).value

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

_libc = LIBC
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int


def errno_name(code: int) -> str:
    """``EINVAL`` for 22, ``E?123`` for codes Python does not name."""
    return errno.errorcode.get(code, f"E?{code}")


def _mmap(addr: int | None, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    result = _libc.mmap(addr, length, prot, flags, fd, offset)
    if result is None or result == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def munmap(addr: int, length: int) -> None:
    if length and _libc.munmap(addr, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def madvise(addr: int, length: int, advice: int) -> int:
    """0 on success, else the errno (the caller decides what each errno means)."""
    if _libc.madvise(addr, length, advice) == 0:
        return 0
    return ctypes.get_errno()


@dataclass
class Mapping:
    """A mapped range we must unmap; ``length`` is the aligned part only."""

    addr: int
    length: int

    def fill(self, value: int, length: int | None = None) -> None:
        """Write the first ``length`` bytes, every byte by default (anonymous memory only)."""
        ctypes.memset(self.addr, value, self.length if length is None else length)

    def unmap(self) -> None:
        if self.length:
            munmap(self.addr, self.length)
            self.length = 0


def _reserve(length: int, pmd: int) -> tuple[int, int, int]:
    """(base, span, aligned): ``length + PMD`` bytes reserved, PROT_NONE, no memory."""
    span = reservation(length, pmd)
    base = _mmap(None, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    return base, span, align_up(base, pmd)


def map_anonymous(length: int, pmd: int) -> Mapping:
    """A PMD-aligned private anonymous read-write mapping."""
    base, span, aligned = _reserve(length, pmd)
    try:
        _mmap(aligned, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
              -1, 0)
    except OSError:
        munmap(base, span)
        raise
    for start, size in trims(base, span, aligned, length):
        munmap(start, size)
    return Mapping(aligned, length)


class Window:
    """A PMD-aligned range of one PMD, reserved for a whole run, where a file range is mapped
    for each collapse and unmapped again by putting the reservation back over it
    (``MAP_FIXED``).

    Two mmap calls per collapse instead of five (reserve, map, trim both ends, unmap), and the
    range stays ours in between, so nothing else is ever mapped where a ``MAP_FIXED`` lands.
    """

    def __init__(self, pmd: int) -> None:
        self._base, self._span, self.addr = _reserve(pmd, pmd)
        self.length = pmd
        self._bytes = (ctypes.c_char * pmd).from_address(self.addr)

    def map_file(self, fd: int, offset: int, prot: int) -> None:
        """Map ``length`` bytes of ``fd`` at ``offset`` (PMD aligned), shared, at ``addr``.

        On failure the window is closed (a failed ``MAP_FIXED`` may have unmapped the range);
        make a new one to go on."""
        if offset % self.length:
            raise ValueError("file offset must be PMD aligned")
        try:
            _mmap(self.addr, self.length, prot, MAP_SHARED | MAP_FIXED, fd, offset)
        except OSError:
            self.close()
            raise

    def touch(self) -> None:
        """Read one byte of every page, so every page is in the page cache and mapped (needed
        on 6.1), as repro7 does. Copying the whole range instead (a PMD per collapse, two
        collapses per iteration) was most of an iteration's time in an emulated guest."""
        self._bytes[::PAGE_SIZE]  # one read per page, into a small bytes object

    def release(self) -> None:
        """Unmap the file: the reservation (PROT_NONE, no memory) goes back over the range."""
        _mmap(self.addr, self.length, PROT_NONE,
              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0)

    @property
    def closed(self) -> bool:
        return self._span == 0

    def close(self) -> None:
        if self._span:
            munmap(self._base, self._span)
            self._span = 0


def thp_disabled_for_process() -> bool:
    """``PR_GET_THP_DISABLE``: a container runtime may have disabled THP for us."""
    return bool(_libc.prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) > 0)


def enable_thp_for_process() -> bool:
    """Clear ``PR_SET_THP_DISABLE`` so a refused collapse means the kernel, not our process."""
    return bool(_libc.prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0) == 0)
