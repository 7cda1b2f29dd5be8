"""Boot one matrix kernel in qemu, run a list of steps, return structured results.

A test builds a list of steps (`Mount`, `Knob`, `Run`), calls `boot()`, and
reads `BootResult.records[name]` (exit code, stdout, stderr, duration). The
guest reports on the serial console in checksummed base64 frames (see
init.sh), so kernel messages cannot corrupt a result unnoticed. qemu is always
killed on timeout or error, and its temporary files go with it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thpcheck.model.hugepage import pmd_for_page_size

QEMU = {"x86_64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
FILESYSTEMS = ("ext4", "btrfs", "xfs")
# arm64 under TCG: neoverse-n1 (ARMv8.2: 4K, 16K and 64K granules, no pointer authentication,
# whose emulation makes `-cpu max` several times slower); THPCHECK_VM_ARM64_CPU overrides.
ARM64_CPU = os.environ.get("THPCHECK_VM_ARM64_CPU", "neoverse-n1")
PAGE_BYTES = {"4K": 4 << 10, "16K": 16 << 10, "64K": 64 << 10}
BOOT_MARGIN_S = 120.0
# A boot normally takes 10-60 s; a hung kernel must not hold CI for the sum of
# every step's timeout.
BOOT_TIMEOUT_CAP_S = float(os.environ.get("THPCHECK_VM_BOOT_TIMEOUT", "900"))


def cache_dir() -> Path:
    """Where kernels and guest artifacts live (never inside the repository)."""
    env = os.environ.get("THPCHECK_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "thp-checker"


@dataclass(frozen=True)
class Kernel:
    """A built (or unpacked) kernel and the evidence recorded about it."""

    name: str
    dir: Path
    meta: dict[str, Any]

    @property
    def bzimage(self) -> Path:
        """The kernel image qemu boots (`bzImage`, or arm64's `Image`)."""
        return self.dir / str(self.meta["bzimage"])

    @property
    def arch(self) -> str:
        return str(self.meta.get("arch", "x86_64"))

    @property
    def page_size(self) -> str:
        return str(self.meta.get("page_size", "4K"))

    @property
    def pmd_size(self) -> int:
        """The PMD (file THP) size the kernel's page size gives (2 MiB with 4K pages)."""
        pmd = pmd_for_page_size(self.arch, PAGE_BYTES[self.page_size])
        assert pmd is not None, self.arch
        return pmd

    @property
    def overlay(self) -> Path | None:
        """Extra initramfs archive (modules) for a Debian binary kernel."""
        ov = self.meta.get("initrd_overlay")
        return self.dir / str(ov) if ov else None

    @property
    def release(self) -> str:
        return str(self.meta["kernel_release"])

    @property
    def read_only_thp(self) -> bool:
        return bool(self.meta["read_only_thp_for_fs"])

    @property
    def fix_present(self) -> bool:
        """True only when the source was read and carries the fix."""
        return bool(self.meta["fix"]["present"])


@dataclass(frozen=True)
class Mount:
    """Mount the test disk of `fstype` (label thp-<fstype>) at /mnt/<fstype>."""

    fstype: str

    @property
    def path(self) -> str:
        return f"/mnt/{self.fstype}"


@dataclass(frozen=True)
class Knob:
    """Write `value` to a procfs/sysfs file in the guest (reported as `knob:<path>`)."""

    path: str
    value: str


@dataclass(frozen=True)
class Run:
    """Run argv in the guest; its result is reported under `name`."""

    name: str
    argv: tuple[str, ...]
    timeout_s: int = 300


Step = Mount | Knob | Run


@dataclass
class Record:
    """One command's outcome inside the guest."""

    name: str
    rc: int
    duration_s: float
    stdout: str
    stderr: str
    intact: bool = True  # checksum matched

    def json(self) -> Any:
        """stdout parsed as one JSON document."""
        return json.loads(self.stdout)


@dataclass
class BootResult:
    """Everything one boot produced."""

    kernel: Kernel
    records: dict[str, Record]
    console: str
    wall_s: float
    booted_at_s: float | None  # guest uptime when /init started
    done: bool  # the guest reached the end of its job
    timed_out: bool
    errors: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Record:
        if name not in self.records:
            raise KeyError(f"{self.kernel.name}: no record {name!r} "
                           f"(done={self.done}, timed_out={self.timed_out}, "
                           f"errors={self.errors}); console tail:\n{self.console[-3000:]}")
        return self.records[name]


def job_script(steps: Sequence[Step]) -> str:
    """The shell job init.sh sources: one helper call per step."""
    lines = ["#THPVM-JOB v1"]
    for s in steps:
        if isinstance(s, Mount):
            lines.append(f"vm_mount thp-{s.fstype} {s.fstype} {s.path}")
        elif isinstance(s, Knob):
            lines.append(f"vm_knob {shlex.quote(s.path)} {shlex.quote(s.value)}")
        else:
            if not re.fullmatch(r"[\w:./@+-]+", s.name):
                raise ValueError(f"record name {s.name!r} must be one word")
            lines.append(f"vm_run {s.name} {s.timeout_s} {shlex.join(s.argv)}")
    return "\n".join(lines) + "\n"


def parse_console(text: str) -> tuple[dict[str, Record], float | None, bool, list[str]]:
    """Records, boot time, DONE flag and framing errors from the console log."""
    records: dict[str, Record] = {}
    errors: list[str] = []
    booted: float | None = None
    done = False
    cur: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.strip("\r\x00")
        idx = line.find("@@THPVM ")
        if idx < 0:
            continue
        parts = line[idx:].split(" ")
        tag = parts[1] if len(parts) > 1 else ""
        if tag == "BOOTED" and len(parts) >= 4:
            booted = float(parts[3])
        elif tag == "DONE":
            done = True
        elif tag == "ERROR":
            errors.append(line[idx:])
        elif tag == "BEGIN" and len(parts) == 5:
            cur = {"name": parts[2], "rc": int(parts[3][3:]), "dur": float(parts[4][4:]),
                   "OUT": [], "ERR": []}
        elif tag in ("OUT", "ERR") and cur is not None and len(parts) == 3:
            cur[tag].append(parts[2])
        elif tag == "END" and cur is not None:
            records[cur["name"]] = _record(cur, parts[3][4:] if len(parts) == 4 else "")
            if not records[cur["name"]].intact:
                errors.append(f"record {cur['name']}: checksum mismatch")
            cur = None
    return records, booted, done, errors


def _record(cur: dict[str, Any], md5: str) -> Record:
    """Decode a framed record and check its md5."""
    blob = "".join(cur["OUT"]) + "".join(cur["ERR"])
    intact = hashlib.md5(blob.encode()).hexdigest() == md5
    out = base64.b64decode("".join(cur["OUT"]), validate=False).decode("utf-8", "replace")
    err = base64.b64decode("".join(cur["ERR"]), validate=False).decode("utf-8", "replace")
    return Record(cur["name"], cur["rc"], cur["dur"], out, err, intact)


def qemu_argv(kernel: Kernel, initrd: Path, job_disk: Path, disks: Mapping[str, Path],
              console: Path, *, smp: int, mem_mb: int, accel: str) -> list[str]:
    """The qemu command line: no display, serial to a file, disks copy-on-write."""
    if kernel.arch == "arm64":
        # The virt board: PL011 console, virtio-pci disks behind its generic PCI host.
        machine = ["-machine", "virt", "-cpu", "host" if accel == "kvm" else ARM64_CPU,
                   "-smp", str(smp)]
        tty = "ttyAMA0"
    else:
        # One socket per vCPU: SeaBIOS's MP table lists one CPU per package, and our
        # tinyconfig kernels (no ACPI) would otherwise bring up a single CPU.
        machine = ["-machine", "pc", "-cpu", "host" if accel == "kvm" else "max",
                   "-smp", f"{smp},sockets={smp},cores=1,threads=1"]
        tty = "ttyS0"
    argv = [QEMU[kernel.arch], "-accel", accel, *machine,
            "-m", str(mem_mb), "-nodefaults", "-display", "none", "-monitor", "none",
            "-serial", f"file:{console}", "-no-reboot",
            "-kernel", str(kernel.bzimage), "-initrd", str(initrd),
            "-append", f"console={tty} panic=-1 quiet rdinit=/init",
            "-drive", f"file={job_disk},if=virtio,format=raw,readonly=on"]
    for fs in sorted(disks):
        argv += ["-drive",
                 f"file={disks[fs]},if=virtio,format=raw,snapshot=on,cache=unsafe"]
    return argv


def _write_initrd(parts: Sequence[Path], out: Path) -> None:
    """Concatenate newc archives; the kernel unpacks them in order."""
    with out.open("wb") as fh:
        for p in parts:
            fh.write(p.read_bytes())


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill qemu (its own process group) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def boot(kernel: Kernel, steps: Sequence[Step], *, initrd_parts: Sequence[Path],
         disks: Mapping[str, Path], timeout_s: float | None = None, smp: int = 2,
         mem_mb: int = 1024, accel: str | None = None) -> BootResult:
    """Boot `kernel`, run `steps`, return what the guest reported.

    `initrd_parts`: base archive (+ app archive); the kernel's module overlay is
    added automatically. The disks are attached copy-on-write, so the cached
    images never change. Hard timeout: qemu is killed, never left behind.
    """
    accel = accel or os.environ.get("THPCHECK_VM_ACCEL", "tcg")
    if timeout_s is None:
        timeout_s = min(BOOT_TIMEOUT_CAP_S,
                        BOOT_MARGIN_S + sum(s.timeout_s for s in steps if isinstance(s, Run)))
    with tempfile.TemporaryDirectory(prefix="thpvm-") as tmp:
        work = Path(tmp)
        parts = [initrd_parts[0], *([kernel.overlay] if kernel.overlay else []),
                 *initrd_parts[1:]]
        _write_initrd(parts, work / "initrd.cpio")
        job = job_script(steps).encode()
        (work / "job.img").write_bytes(job + b"\0" * (-len(job) % 4096 or 4096))
        console = work / "console.log"
        argv = qemu_argv(kernel, work / "initrd.cpio", work / "job.img", disks, console,
                         smp=smp, mem_mb=mem_mb, accel=accel)
        t0 = time.monotonic()
        timed_out = False
        # TMPDIR: qemu's snapshot=on overlays live (and die) in our temp dir.
        with (work / "qemu.err").open("wb") as qerr_fh:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=qerr_fh, start_new_session=True,
                                    env={**os.environ, "TMPDIR": tmp})
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)
        wall = time.monotonic() - t0
        text = console.read_text(errors="replace") if console.exists() else ""
        qerr = (work / "qemu.err").read_text(errors="replace")
    records, booted, done, errors = parse_console(text)
    if proc.returncode not in (0, -signal.SIGKILL) or qerr.strip():
        errors.append(f"qemu exit {proc.returncode}: {qerr.strip()[:2000]}")
    if timed_out:
        errors.append(f"timed out after {timeout_s:.0f}s")
    return BootResult(kernel, records, text, wall, booted, done, timed_out, errors)
