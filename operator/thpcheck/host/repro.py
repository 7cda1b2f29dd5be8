"""The reproducer: the report's seven steps, run for real against a scratch directory.

1. create a regular file with non-zero data (base size) and make it clean (fsync);
2. map a PMD-aligned range of one PMD read-only (fd ``O_RDONLY``, no writer open), touch it,
   ``madvise(MADV_COLLAPSE)``;
3. open for write and append non-zero data at the end (``write(2)``, no fsync): dirty pages;
4. close the write fd;
5. re-collapse a read-only PMD range away from the dirty tail;
6. open for write again: on an affected kernel this runs the purge and cancels the dirty tail;
7. read the appended bytes back with ``read(2)`` on a fresh fd and compare.

Steps 2-7 repeat per iteration with a new append; the run stops at the first loss unless
``keep_going``. Before step 1, ``MADV_COLLAPSE`` is probed on anonymous memory: EINVAL there
means the kernel does not know the advice (< 6.1), which is not the same as refusing file
collapse. Kernels 5.14-6.7 collapse only executable file mappings, so a ``PROT_READ`` mapping
that gets EINVAL is retried as ``PROT_READ|PROT_EXEC`` before concluding anything.

The PMD is the kernel's (``model.hugepage``): 2 MiB with 4K pages, 32 MiB with 16K pages,
512 MiB with arm64's 64K pages. A base smaller than one PMD cannot hold a file THP; the callers
skip the run then (``base_too_small``) instead of reporting a refused collapse.
"""

from __future__ import annotations

import errno
import os
import time

# The C generator behind random.Random: the same bytes for the same seed, without importing
# random.py (which imports hashlib, math and bisect) at every agent start.
from _random import Random
from collections.abc import Callable
from dataclasses import dataclass

from thpcheck.host import mm
from thpcheck.host.scratch import Scratch
from thpcheck.logs import get_logger
from thpcheck.model.hugepage import HugePages, base_too_small, head_size
from thpcheck.model.repro import (
    DEFAULT_APPEND_SIZE,
    DEFAULT_BASE_SIZE,
    DEFAULT_ITERATIONS,
    Loss,
    ReproOutcome,
    ReproResult,
)

log = get_logger("thpcheck.repro")

MiB = 1024 * 1024
COLLAPSE_OFFSET = 0  # the head of the file: always away from the appended tail
PATTERN_BLOCK = 1 * MiB  # base data per write(2), a random unit repeated
PATTERN_UNIT = 64 * 1024
APPEND_SHIFTS = 4096  # distinct appends: windows of one stream, shifted a byte per iteration
DATA_FILE = "data"
HEAD_BYTES = 64

# Errnos after which a collapse is worth retrying: page locks, LRU isolation, writeback in
# flight, allocation; btrfs on 6.1 also returned transient EINVAL at step 5.
_TRANSIENT = {errno.EAGAIN, errno.EBUSY, errno.ENOMEM}
_NO_ZERO = bytes(range(256)).replace(b"\x00", b"\xa5", 1)


@dataclass(frozen=True)
class ReproConfig:
    base_size: int = DEFAULT_BASE_SIZE
    append_size: int = DEFAULT_APPEND_SIZE
    iterations: int = DEFAULT_ITERATIONS
    keep_going: bool = False
    seed: int = 0x7C0FFEE
    collapse_retries: int = 5
    retry_delay_s: float = 0.01


class ReproFailure(Exception):
    """A step failed for a reason other than data loss; carries the step and errno."""

    def __init__(self, step: int, code: int, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.code = code


def pattern(seed: int, size: int) -> bytes:
    """Deterministic non-zero bytes: a lost page reads back as zeros, never as data."""
    # = random.Random(seed).randbytes(size): an int seed seeds the C generator directly, and
    # randbytes is getrandbits(8 * size) as little-endian bytes.
    return Random(seed).getrandbits(size * 8).to_bytes(size, "little").translate(_NO_ZERO)


class AppendData:
    """Each iteration's append: a window of one pattern stream, shifted by the iteration.

    Different bytes every iteration (for ``APPEND_SHIFTS`` iterations, then the cycle
    repeats at other offsets), non-zero, deterministic, and cut from one stream rather than
    generated per iteration, which cost more than the iteration's syscalls in an emulated
    guest.
    """

    def __init__(self, seed: int, size: int) -> None:
        self.size = size
        self.stream = pattern(seed, size + APPEND_SHIFTS)

    def data(self, iteration: int) -> bytes:
        shift = iteration % APPEND_SHIFTS
        return self.stream[shift : shift + self.size]


def _write_all(fd: int, data: bytes | memoryview) -> int:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    return len(data)


def _read_exact(fd: int, size: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def probe_anonymous_collapse(pmd: int) -> int:
    """errno of MADV_COLLAPSE on touched anonymous memory (0: the kernel knows the advice).

    One page is touched: MADV_COLLAPSE ignores khugepaged's max_ptes_none, and filling a whole
    512 MiB PMD (64K pages) would cost that much memory before the collapse doubles it."""
    mapping = mm.map_anonymous(pmd, pmd)
    try:
        mapping.fill(0x5A, mm.PAGE_SIZE)
        return mm.madvise(mapping.addr, mapping.length, mm.MADV_COLLAPSE)
    finally:
        mapping.unmap()


class Collapser:
    """Collapses the head of the data file, remembering which mapping the kernel accepts."""

    def __init__(self, scratch: Scratch, config: ReproConfig, pmd: int) -> None:
        self.scratch = scratch
        self.config = config
        self.pmd = pmd
        self.mapping_kind: str | None = None  # "read" or "read-exec" once one worked
        self.noexec = False
        self._window: mm.Window | None = None

    def _attempt(self, prot: int, name: str) -> int:
        if self._window is None or self._window.closed:
            self._window = mm.Window(self.pmd)
        window = self._window
        fd = self.scratch.open(name, os.O_RDONLY)
        try:
            window.map_file(fd, COLLAPSE_OFFSET, prot)
        finally:
            os.close(fd)  # the mapping keeps the file; no writer is ever open here
        try:
            window.touch()
            return mm.madvise(window.addr, window.length, mm.MADV_COLLAPSE)
        finally:
            window.release()

    def close(self) -> None:
        if self._window is not None:
            self._window.close()

    def _try_kind(self, kind: str, name: str) -> int:
        prot = mm.PROT_READ | (mm.PROT_EXEC if kind == "read-exec" else 0)
        try:
            return self._attempt(prot, name)
        except PermissionError:
            if kind == "read-exec":
                self.noexec = True  # a noexec mount refuses PROT_EXEC file mappings
                return errno.EPERM
            raise

    def collapse(self, attempts: int, name: str = DATA_FILE) -> int:
        """0 when the file's head collapsed, else the last errno after ``attempts`` tries."""
        kinds = [self.mapping_kind] if self.mapping_kind else ["read", "read-exec"]
        result = errno.EINVAL
        for attempt in range(attempts):
            for kind in kinds:
                result = self._try_kind(kind, name)
                if result == 0:
                    self.mapping_kind = kind
                    return 0
                if result != errno.EINVAL:
                    break  # EINVAL means "try the exec mapping"; anything else is not that
            retryable = result in _TRANSIENT or (result == errno.EINVAL and not self.noexec)
            if not retryable or attempt + 1 == attempts:
                return result
            time.sleep(self.config.retry_delay_s * (attempt + 1))
        return result


def _compare(got: bytes, want: bytes, iteration: int, append_off: int) -> Loss | None:
    if got == want:
        return None
    got = got.ljust(len(want), b"\x00")  # a short read (truncated file) counts as zeros
    diff = (int.from_bytes(got, "big") ^ int.from_bytes(want, "big")).to_bytes(len(want), "big")
    return Loss(
        iteration=iteration,
        bad_bytes=len(diff) - diff.count(0),
        first_bad=len(diff) - len(diff.lstrip(b"\x00")),
        zero_count=got.count(0),
        append_off=append_off,
        got_head=got[:HEAD_BYTES],
        want_head=want[:HEAD_BYTES],
    )


def _write_pattern(fd: int, block: bytes, size: int) -> int:
    """Write ``size`` bytes of ``block`` repeated (each write starts a new copy of it)."""
    remaining = size
    while remaining:
        remaining -= _write_all(fd, memoryview(block)[: min(len(block), remaining)])
    return size


def _create_base(scratch: Scratch, collapser: Collapser, config: ReproConfig,
                 result: ReproResult) -> None:
    """Step 1, with step 2's first collapse tried on the file's head before the rest exists.

    The first PMD is written and fsynced, and collapsed: the kernel's eligibility checks
    see what step 2 will see (a clean, PMD-aligned range of a regular file nobody has open
    for write), so a kernel that refuses file collapse answers after one PMD instead of the
    whole base. Then the rest is appended and the file fsynced again, so every collapse target is
    clean. (Opening the file for write again drops the head's huge page on a RO_THP kernel:
    harmless, nothing in it is dirty.) The file's content is the same as writing it in one go.
    """
    unit = pattern(config.seed, PATTERN_UNIT)
    block = (unit * (PATTERN_BLOCK // PATTERN_UNIT))[: min(PATTERN_BLOCK, config.base_size)]
    head = head_size(config.base_size, collapser.pmd)
    fd = scratch.create(DATA_FILE)
    try:
        result.bytes_written += _write_pattern(fd, block, head)
        os.fsync(fd)
    finally:
        os.close(fd)
    code = collapser.collapse(2)
    if code:
        raise ReproFailure(2, code, f"MADV_COLLAPSE failed: {mm.errno_name(code)}")
    if config.base_size > head:
        fd = scratch.open(DATA_FILE, os.O_WRONLY | os.O_APPEND)
        try:
            # The head is a whole number of blocks (a PMD, 1 MiB blocks), so the pattern
            # continues exactly where it stopped.
            result.bytes_written += _write_pattern(fd, block, config.base_size - head)
            os.fsync(fd)
        finally:
            os.close(fd)


def _iteration(scratch: Scratch, collapser: Collapser, config: ReproConfig, iteration: int,
               appends: AppendData, result: ReproResult) -> tuple[Loss | None, bool]:
    """Steps 2-7 once: (the loss if any, whether the iteration could test at all)."""
    # Step 2. On the first iteration a refusal is the answer for a config-off kernel, so it is
    # retried once only (cheap); later, EINVAL is treated as transient (btrfs on 6.1).
    code = collapser.collapse(2 if iteration == 0 else config.collapse_retries)
    if code:
        if iteration == 0:
            raise ReproFailure(2, code, f"MADV_COLLAPSE failed: {mm.errno_name(code)}")
        log.debug("step2_collapse_failed", iteration=iteration, errno=mm.errno_name(code))
    want = appends.data(iteration)
    fd = scratch.open(DATA_FILE, os.O_WRONLY | os.O_APPEND)  # step 3
    try:
        append_off = os.fstat(fd).st_size
        result.bytes_written += _write_all(fd, want)
    finally:
        os.close(fd)  # step 4
    recollapsed = collapser.collapse(config.collapse_retries)  # step 5
    fd = scratch.open(DATA_FILE, os.O_WRONLY)  # step 6: the purge runs here
    os.close(fd)
    fd = scratch.open(DATA_FILE, os.O_RDONLY)  # step 7
    try:
        got = _read_exact(fd, config.append_size, append_off)
    finally:
        os.close(fd)
    loss = _compare(got, want, iteration, append_off)
    if loss is None and recollapsed:
        log.debug("step5_collapse_failed", iteration=iteration,
                  errno=mm.errno_name(recollapsed))
        return None, False  # no THP at step 6: this iteration proves nothing
    return loss, True


def pmd_or_skip(config: ReproConfig, hugepages: HugePages) -> int | ReproResult:
    """The PMD size to run with, or the SKIPPED result that says why the run cannot prove
    anything here (a base smaller than one PMD, an unknown PMD); decided before any write."""
    reason = base_too_small(config.base_size, hugepages)
    if reason is None and hugepages.pmd_size is not None:
        return hugepages.pmd_size
    return ReproResult(outcome=ReproOutcome.SKIPPED, message=reason)


def run(scratch: Scratch, config: ReproConfig, pmd: int,
        on_loss: Callable[[Loss], None] | None = None) -> ReproResult:
    """Run the reproducer in ``scratch`` with the kernel's PMD size (a base of at least one PMD:
    see ``base_too_small``); never raises for kernel behaviour, only for bugs."""
    started = time.monotonic()
    result = ReproResult(outcome=ReproOutcome.NOT_REPRODUCED)
    if mm.thp_disabled_for_process() and not mm.enable_thp_for_process():
        result.outcome, result.message = ReproOutcome.ERROR, "THP is disabled for this process"
        return result
    collapser = Collapser(scratch, config, pmd)
    try:
        code = probe_anonymous_collapse(pmd)
        result.madv_collapse_known = code != errno.EINVAL
        if code == errno.EINVAL:
            result.outcome, result.errno, result.step = (
                ReproOutcome.COLLAPSE_UNSUPPORTED, "EINVAL", 0)
            result.message = ("MADV_COLLAPSE is unknown to this kernel (< 6.1, or THP off): only "
                              "khugepaged can make file THPs here")
            return result
        _create_base(scratch, collapser, config, result)
        appends = AppendData(config.seed + 1, config.append_size)
        for iteration in range(config.iterations):
            loss, usable = _iteration(scratch, collapser, config, iteration, appends, result)
            result.iterations_run += 1
            result.mapping = collapser.mapping_kind
            if not usable:
                result.skipped_iterations += 1
            elif loss is not None:
                result.losses.append(loss)
                result.outcome = ReproOutcome.REPRODUCED
                if on_loss:
                    on_loss(loss)
                if not config.keep_going:
                    break
        if result.outcome is ReproOutcome.NOT_REPRODUCED and (
            result.skipped_iterations == result.iterations_run
        ):
            result.outcome = ReproOutcome.ERROR
            result.step, result.errno = 5, "EINVAL"
            result.message = "the step-5 collapse never succeeded, so no iteration could test"
    except ReproFailure as failure:
        _record_failure(result, failure, collapser.noexec)
    except OSError as exc:
        result.outcome = ReproOutcome.ERROR
        result.errno = mm.errno_name(exc.errno or 0)
        result.message = f"{exc.strerror or exc}"
    finally:
        collapser.close()
        result.duration_s = time.monotonic() - started
    return result


def _record_failure(result: ReproResult, failure: ReproFailure, noexec: bool) -> None:
    result.step = failure.step
    result.errno = mm.errno_name(failure.code)
    if failure.code == errno.EINVAL and not noexec:
        result.outcome = ReproOutcome.COLLAPSE_UNSUPPORTED
        result.message = ("MADV_COLLAPSE refused a touched read-only file mapping (PROT_READ and "
                          "PROT_READ|PROT_EXEC): file THPs are not available here")
    elif noexec:
        result.outcome = ReproOutcome.ERROR
        result.message = ("PROT_READ collapse got EINVAL and the mount refuses PROT_EXEC "
                          "mappings (noexec); kernels 5.14-6.7 collapse only executable file "
                          "mappings: use a scratch dir on a mount without noexec")
    else:
        result.outcome = ReproOutcome.ERROR
        result.message = f"step {failure.step}: {failure}"
