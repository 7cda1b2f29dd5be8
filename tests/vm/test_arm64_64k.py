"""The 64K-page arm64 kernel: a 512 MiB PMD, and why no file THP (so no loss) can exist there.

A kernel built with CONFIG_ARM64_64K_PAGES (RHEL's kernel-64k, Ubuntu's -64k, Oracle UEK8
aarch64) has a 512 MiB PMD. The unfixed 6.12.95 sources, cross-compiled with 64K pages, booted
once with qemu-system-aarch64 (TCG), 3 GiB of memory and a 1 GiB ext4 disk:

- the agent with its default 64 MiB base says, per path, that the base is smaller than one PMD
  (``skipped: ...``) instead of reporting a refused collapse;
- with a base of one PMD (512 MiB) the kernel refuses to collapse the file (EINVAL at step 2,
  repro7 and the agent alike), while the same kernel collapses 512 MiB of anonymous memory into
  one THP: neither memory nor emulation time is what stops it. 6.12 caps page-cache folios at
  MAX_PAGECACHE_ORDER (11) and PMD order 13 is above it ('mm/huge_memory: avoid PMD-size page
  cache if needed', 6.11): no read-only file THP, nothing for the write-open purge to drop;
- the model says so (G19, naming the 64K pages) and agrees with the reproducer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devtools.vm.guest import BootResult, Mount, Run, Step
from devtools.vm.matrix import AGENT, FACTS, REPRO_EXIT, parse_repro, record_summary
from tests.vm.conftest import GuestRunner

pytestmark = [pytest.mark.vm, pytest.mark.vm_arm64]

KERNEL = "arm64-64k-unfixed-6.12"
PAGE, PMD = 64 << 10, 512 << 20
BASE = "512M"
APPEND = "16K"
ITERATIONS = os.environ.get("THPCHECK_VM_64K_ITERATIONS", "3")
# Guest memory: the page cache of the 512 MiB base plus the 512 MiB folio a collapse would
# allocate, the anonymous probe's PMD, python and the initramfs.
MEM_MB = int(os.environ.get("THPCHECK_VM_64K_MEM_MB", "3072"))
SKIP_TEXT = "skipped: base 64 MiB < PMD 512 MiB on this kernel; pass --base-size >= 512MiB"
STATE = ("sh", "-c", "grep -E '^(MemTotal|MemFree|MemAvailable|AnonHugePages|FileHugePages|"
         "FilePmdMapped)' /proc/meminfo; grep -E '^(thp_file|thp_collapse|nr_file_hugepages)' "
         "/proc/vmstat")
PAGE_FACTS = ("cat /sys/kernel/mm/transparent_hugepage/hpage_pmd_size; "
              "python3 -c 'import os; print(os.sysconf(\"SC_PAGE_SIZE\"))'")
# The agent's own syscalls: one PMD of anonymous memory, one page touched, MADV_COLLAPSE, then
# the kernel's count of anonymous THP memory while it is mapped.
ANON_PMD = ("from thpcheck.host import mm\n"
            f"m = mm.map_anonymous({PMD}, {PMD})\n"
            "m.fill(0x5A, mm.PAGE_SIZE)\n"
            "print('madvise', mm.madvise(m.addr, m.length, mm.MADV_COLLAPSE))\n"
            "print(next(l for l in open('/proc/meminfo') if l.startswith('AnonHugePages')), "
            "end='')\n")
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "out"


def steps() -> list[Step]:
    mount = Mount("ext4")
    sized = ("--base-size", BASE, "--append-size", APPEND, "--iterations", ITERATIONS)
    return [
        Run("facts", ("sh", "-c", f"{FACTS}; {PAGE_FACTS}"), 60),
        mount,
        # The default base (64 MiB): smaller than one PMD here.
        Run("check-default:ext4", (*AGENT, "check", "--json", mount.path), 600),
        Run("repro-default:ext4", (*AGENT, "repro", mount.path), 600),
        Run("state:before", STATE, 30),
        Run("anon-pmd", ("python3", "-c", ANON_PMD), 600),
        Run("repro7:ext4", ("repro7", mount.path, *sized), 1800),
        Run("check:ext4", (*AGENT, "check", "--json", *sized, mount.path), 1800),
        Run("state:after", STATE, 30),
    ]


@pytest.fixture(scope="module")
def booted(run_guest: GuestRunner) -> BootResult:
    kernel = run_guest.kernel(KERNEL)
    large = run_guest.artifacts("arm64").large_disks
    result = run_guest(kernel, steps(), mem_mb=MEM_MB, disks={"ext4": large["ext4"]},
                       timeout_s=3600)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"vm-matrix-{KERNEL}.json").write_text(json.dumps({
        "kernel": KERNEL, "release": kernel.release, "wall_s": round(result.wall_s, 1),
        "booted_at_s": result.booted_at_s, "mem_mb": MEM_MB,
        "records": {n: {"rc": r.rc, "duration_s": r.duration_s, "stdout": r.stdout,
                        "stderr": r.stderr} for n, r in result.records.items()}},
        indent=2) + "\n")
    return result


def test_boot_is_the_64k_kernel(booted: BootResult) -> None:
    assert booted.done and not booted.errors, (booted.errors, booted.console[-3000:])
    assert booted.kernel.page_size == "64K" and not booted.kernel.fix_present
    facts = booted["facts"].stdout.splitlines()
    assert facts[0] == booted.kernel.release
    assert "CONFIG_READ_ONLY_THP_FOR_FS=y" in facts
    assert facts[-2:] == [str(PMD), str(PAGE)], facts  # hpage_pmd_size, the page size


def test_default_base_is_skipped_per_path(booted: BootResult) -> None:
    """64 MiB < one PMD: the path says so (no refused collapse reported); the model's reason
    names the 64K pages."""
    rec = booted["check-default:ext4"]
    doc = rec.json()
    assert (doc["kernel"]["page_size"], doc["kernel"]["pmd_size"]) == (PAGE, PMD)
    assert doc["kernel"]["pmd_size_source"] == "sysfs"
    (path,) = doc["paths"]
    assert path["repro"]["outcome"] == "skipped", record_summary(rec)
    assert path["repro"]["message"] == SKIP_TEXT
    assert (path["verdict"], path["rule"]) == ("not-affected", "G19"), record_summary(rec)
    assert "64K pages" in path["reason"] and rec.rc == 0
    repro = booted["repro-default:ext4"]
    assert repro.rc == 2 and repro.stdout == "", record_summary(repro)
    assert repro.stderr.strip() == f"thpcheck repro: {SKIP_TEXT}"


def test_the_kernel_makes_a_512mib_anonymous_thp(booted: BootResult) -> None:
    """Memory and emulation are not the limit: the same collapse on anonymous memory gives
    one 512 MiB THP (AnonHugePages: 524288 kB) in a few seconds."""
    rec = booted["anon-pmd"]
    assert rec.rc == 0, record_summary(rec)
    assert rec.stdout.split() == ["madvise", "0", "AnonHugePages:", str(PMD >> 10), "kB"], \
        record_summary(rec)


def test_a_512mib_base_is_refused_file_collapse(booted: BootResult) -> None:
    """With a base of one PMD both reproducers get EINVAL at step 2: no file THP, no loss."""
    rec = booted["repro7:ext4"]
    got = parse_repro(rec.stdout)
    assert (got.outcome, rec.rc, got.fields) == (
        "collapse_unsupported", REPRO_EXIT["collapse_unsupported"], {"step": 2}), \
        record_summary(rec)
    state = booted["state:after"].stdout
    assert "FileHugePages:         0 kB" in state and "nr_file_hugepages 0" in state, state


def test_agent_agrees_with_the_model(booted: BootResult) -> None:
    rec = booted["check:ext4"]
    doc = rec.json()
    (path,) = doc["paths"]
    repro = path["repro"]
    assert (repro["outcome"], repro["step"], repro["errno"]) == (
        "collapse_unsupported", 2, "EINVAL"), record_summary(rec)
    assert repro["madv_collapse_known"] is True  # anonymous collapse worked, files refused
    assert (path["verdict"], path["rule"], path["disagreement"]) == ("not-affected", "G19",
                                                                     None), record_summary(rec)
    assert rec.rc == 0
