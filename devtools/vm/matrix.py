"""The matrix: which kernels exist, what each cell must show, how cells are parsed.

Expected outcomes come from the evidence recorded at build time (the kernel's
config and whether its `mm/khugepaged.c` carries the fix), not from version
strings alone.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from devtools.vm.guest import FILESYSTEMS, Kernel, Knob, Mount, Record, Run, Step, cache_dir

Outcome = Literal["reproduced", "not_reproduced", "collapse_unsupported"]
REPRO_EXIT: dict[Outcome, int] = {"reproduced": 1, "not_reproduced": 0,
                                  "collapse_unsupported": 3}
XFS_LARGE_FOLIOS = (5, 17)
SCAN_SLEEP_OFF = "4294967295"
SCAN_SLEEP_KNOB = "/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs"


# One matrix document per tier: the x86-64 kernels, and the arm64 ones (a tier of its own).
MATRIX_FILES = {"x86_64": "matrix.json", "arm64": "matrix-arm64.json"}


class MatrixMissing(RuntimeError):
    """The kernels or guest artifacts have not been built."""


@dataclass(frozen=True)
class Artifacts:
    """What `python -m devtools.vm.build [--arch arm64]` recorded in the tier's matrix file."""

    kernels: dict[str, Kernel]
    base_cpio: Path
    disks: dict[str, Path]
    large_disks: dict[str, Path]  # 1 GiB disks for a 64K-page kernel's 512 MiB base


def load_artifacts(cache: Path | None = None, tier: str = "x86_64") -> Artifacts:
    """Read the tier's matrix file and check every file it names exists."""
    cache = cache or cache_dir()
    path = cache / MATRIX_FILES[tier]
    if not path.exists():
        raise MatrixMissing(f"{path} does not exist")
    doc = json.loads(path.read_text())
    kernels = {}
    for name, kdir in doc["kernels"].items():
        meta_path = Path(kdir) / "meta.json"
        if not meta_path.exists():
            raise MatrixMissing(f"kernel {name}: {meta_path} missing")
        kernels[name] = Kernel(name, Path(kdir), json.loads(meta_path.read_text()))
        if not kernels[name].bzimage.exists():
            raise MatrixMissing(f"kernel {name}: {kernels[name].bzimage} missing")
    art = Artifacts(kernels, Path(doc["base_cpio"]),
                    {k: Path(v) for k, v in doc["disks"].items()},
                    {k: Path(v) for k, v in doc.get("large_disks", {}).items()})
    missing = [p for p in (art.base_cpio, *art.disks.values(), *art.large_disks.values())
               if not p.exists()]
    if missing:
        raise MatrixMissing(f"guest artifacts missing: {missing}")
    return art


def release_tuple(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        raise ValueError(f"unparsable kernel release {release!r}")
    return int(m[1]), int(m[2])


def expected_outcome(kernel: Kernel, fstype: str) -> Outcome:
    """What the reproducer must show on this cell, from the recorded evidence."""
    if not kernel.read_only_thp:
        return "collapse_unsupported"  # file collapse refused: EINVAL at step 2
    if kernel.fix_present:
        return "not_reproduced"  # collapse writes back dirty folios first
    if fstype == "xfs" and release_tuple(kernel.release) >= XFS_LARGE_FOLIOS:
        return "not_reproduced"  # large folios: nr_thps never armed
    return "reproduced"


def expected_reason(kernel: Kernel, fstype: str) -> str | None:
    """A regex the agent's reason must match on a not-affected cell (None: affected)."""
    if not kernel.read_only_thp:
        return r"READ_ONLY_THP_FOR_FS"  # not-affected (config)
    if kernel.fix_present:
        return r"fix"  # not-affected (fixed stable)
    if expected_outcome(kernel, fstype) == "not_reproduced":
        return r"large folio"  # not-affected (xfs large folios)
    return None


def expected_verdict(kernel: Kernel, fstype: str) -> str:
    """The agent's per-path verdict for this cell."""
    return "affected" if expected_outcome(kernel, fstype) == "reproduced" else "not-affected"


@dataclass(frozen=True)
class ReproLine:
    """The reproducer's outcome line, parsed (repro7 and `thpcheck repro` alike)."""

    outcome: Outcome | None
    fields: dict[str, int]
    reproduced_lines: int


def parse_repro(stdout: str) -> ReproLine:
    """Find REPRODUCED / NOT_REPRODUCED / COLLAPSE_UNSUPPORTED in reproducer output."""
    fields: dict[str, int] = {}
    outcome: Outcome | None = None
    reproduced = 0
    for line in stdout.splitlines():
        words = line.split()
        if not words:
            continue
        kv = {k: v for k, _, v in (w.partition("=") for w in words[1:]) if v}
        if words[0] == "REPRODUCED":
            reproduced += 1
            if outcome is None:
                outcome = "reproduced"
                fields = {k: int(v) for k, v in kv.items() if v.isdigit()}
        elif words[0] == "NOT_REPRODUCED" and outcome is None:
            outcome = "not_reproduced"
            fields = {k: int(v) for k, v in kv.items() if v.isdigit()}
        elif words[0] == "COLLAPSE_UNSUPPORTED" and outcome is None:
            outcome = "collapse_unsupported"
            fields = {"step": int(kv.get("step", "-1"))}
        elif words[0] == "SUMMARY":
            fields.update({f"summary_{k}": int(v) for k, v in kv.items() if v.isdigit()})
    return ReproLine(outcome, fields, reproduced)


@dataclass(frozen=True)
class Plan:
    """Reproducer parameters for the matrix (env overridable for long runs)."""

    base_size: str = os.environ.get("THPCHECK_VM_BASE_SIZE", "64M")
    append_size: str = os.environ.get("THPCHECK_VM_APPEND_SIZE", "16K")
    iterations: int = int(os.environ.get("THPCHECK_VM_ITERATIONS", "200"))
    keep_going_base: str = "8M"
    keep_going_iterations: int = int(os.environ.get("THPCHECK_VM_KEEPGOING_ITERATIONS", "50"))

    def args(self) -> tuple[str, ...]:
        return ("--base-size", self.base_size, "--append-size", self.append_size,
                "--iterations", str(self.iterations))

    def keep_going_args(self, kernel: Kernel) -> tuple[str, ...]:
        """The keep-going run: a small base, but at least one PMD of the kernel."""
        base = max(parse_size(self.keep_going_base), kernel.pmd_size)
        return ("--base-size", str(base), "--append-size", self.append_size,
                "--iterations", str(self.keep_going_iterations), "--keep-going")


def parse_size(text: str) -> int:
    """`8M`, `64M`, `16K`, bytes: the sizes the plan and repro7 take."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


AGENT = ("python3", "-m", "thpcheck")


def cell_steps(kernel: Kernel, plan: Plan, with_agent: bool) -> list[Step]:
    """One boot per kernel: every filesystem's cells, then the extras this kernel needs.

    Record names: `repro7:<fs>`, `check:<fs>`, `repro:<fs>`, `keepgoing7:<fs>`,
    `keepgoing:<fs>`, `knob:<path>`, `check-mitigated:<fs>`, `facts`.
    """
    steps: list[Step] = [Run("facts", ("sh", "-c", FACTS), 60)]
    for fs in FILESYSTEMS:
        mnt = Mount(fs)
        steps += [mnt, Run(f"repro7:{fs}", ("repro7", mnt.path, *plan.args()))]
        if with_agent:
            steps += [Run(f"check:{fs}", (*AGENT, "check", "--json", *plan.args(), mnt.path)),
                      Run(f"repro:{fs}", (*AGENT, "repro", mnt.path, *plan.args()))]
    losing = [fs for fs in FILESYSTEMS if expected_outcome(kernel, fs) == "reproduced"]
    for fs in losing:
        keep_going = plan.keep_going_args(kernel)
        steps.append(Run(f"keepgoing7:{fs}", ("repro7", f"/mnt/{fs}", *keep_going)))
        if with_agent:
            steps.append(Run(f"keepgoing:{fs}", (*AGENT, "repro", f"/mnt/{fs}", *keep_going)))
    if losing and with_agent:
        # Stopping khugepaged does not stop MADV_COLLAPSE: still affected, but mitigated.
        steps.append(Knob(SCAN_SLEEP_KNOB, SCAN_SLEEP_OFF))
        steps.append(Run(f"check-mitigated:{losing[0]}",
                         (*AGENT, "check", "--json", *plan.args(), f"/mnt/{losing[0]}")))
    return steps


FACTS = ("uname -r; nproc; cat /proc/cmdline; "
         "cat /sys/kernel/mm/transparent_hugepage/enabled; "
         "cat /sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs; "
         "(zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r)) "
         "| grep -E 'READ_ONLY_THP_FOR_FS|^CONFIG_TRANSPARENT_HUGEPAGE='")


def record_summary(rec: Record) -> str:
    """A short description of a record for assertion messages."""
    return (f"{rec.name}: rc={rec.rc} dur={rec.duration_s}s intact={rec.intact}\n"
            f"stdout:\n{rec.stdout[-2000:]}\nstderr:\n{rec.stderr[-2000:]}")
