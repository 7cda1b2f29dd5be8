"""Build the matrix kernels from Debian sources, or unpack a Debian binary kernel.

Each kernel lands in `<cache>/kernels/<key>/` with its image (`bzImage`, or arm64's `Image`)
and `meta.json`; `meta.json` is written last, so its presence means the kernel is complete.
Whether a source carries the 6.12.96 fix is decided by reading
`mm/khugepaged.c` itself (the archive moves; version strings alone can lie).

x86-64 kernels are built natively; arm64 ones are cross-compiled (`gcc-aarch64-linux-gnu`) from
the same Debian `linux-source` packages, with 4K or 64K pages. Every kernel of one source
package is built from one extracted tree (one `O=` directory per kernel).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

VM_DIR = Path(__file__).resolve().parent
FRAGMENT = VM_DIR / "kernel.fragment"
ARM64_FRAGMENT = VM_DIR / "kernel-arm64.fragment"
# Modules the no-RO_THP Debian kernel needs for the disks it is given.
DEBIAN_MODULES = ("virtio_pci", "virtio_blk", "ext4", "btrfs", "xfs")


class KernelBuildError(RuntimeError):
    """A kernel could not be built as the matrix needs it."""


@dataclass(frozen=True)
class Arch:
    """How a kernel of one architecture is configured, built and found afterwards."""

    name: str  # "x86_64", "arm64": also the matrix's tier name
    make_arch: str | None  # ARCH=, None for a native build
    cross_compile: str | None  # CROSS_COMPILE=, None for a native build
    boot_dir: str  # the image is arch/<boot_dir>/boot/<target>
    target: str  # the make target and the image's file name
    fragments: tuple[Path, ...]  # merged over tinyconfig, in order
    page_sizes: dict[str, str]  # page size -> its config line (empty: the arch default only)


ARCHES: dict[str, Arch] = {
    "x86_64": Arch("x86_64", None, None, "x86", "bzImage", (FRAGMENT,), {}),
    # The x86 fragment's filesystems, THP and virtio-pci options are shared; the arm64 one adds
    # the virt board's UART and PCI host and fixes the page table geometry.
    "arm64": Arch("arm64", "arm64", "aarch64-linux-gnu-", "arm64", "Image",
                  (FRAGMENT, ARM64_FRAGMENT),
                  {"4K": "CONFIG_ARM64_4K_PAGES=y", "16K": "CONFIG_ARM64_16K_PAGES=y",
                   "64K": "CONFIG_ARM64_64K_PAGES=y"}),
}


@dataclass(frozen=True)
class KernelSpec:
    """One matrix kernel: where its source comes from and what it must show."""

    name: str
    package: str  # linux-source-6.12, or a regex for a linux-image package name
    suite: str
    kind: Literal["source", "debian-image"]
    # "unfixed" kernels must not carry the fix (fail loudly otherwise);
    # "fixed" ones should; None: no requirement (no-RO_THP kernel).
    require_fix: bool | None
    arch: str = "x86_64"
    page_size: str = "4K"


MATRIX: tuple[KernelSpec, ...] = (
    KernelSpec("unfixed-6.12", "linux-source-6.12", "bookworm-backports", "source", False),
    KernelSpec("unfixed-6.1", "linux-source-6.1", "bookworm", "source", False),
    KernelSpec("fixed-6.12", "linux-source-6.12", "trixie", "source", True),
    # Debian's binary 6.1 kernel (option off). Its 6.12 kernel (6.12.95+deb12-cloud, the same
    # upstream release as the unfixed source) was tried: under this qemu 7.2 TCG about half of
    # its boots oops in kmem_cache_alloc during the virtio-pci probe (any CPU model, 1 or 2
    # vCPUs, nokaslr too; with acpi=off still about 1 boot in 25), which would make the matrix
    # flaky.
    KernelSpec("no-rothp", r"linux-image-6\.1\.0-(\d+)-cloud-amd64", "bookworm",
               "debian-image", None),
)

# The arm64 tier: the same Debian sources, cross-compiled, booted with qemu-system-aarch64.
ARM64_MATRIX: tuple[KernelSpec, ...] = (
    KernelSpec("arm64-unfixed-6.12", "linux-source-6.12", "bookworm-backports", "source", False,
               arch="arm64"),
    KernelSpec("arm64-fixed-6.12", "linux-source-6.12", "trixie", "source", True, arch="arm64"),
    # 16K pages: a 32 MiB PMD, the loss with the agent's default 64 MiB base.
    KernelSpec("arm64-16k-unfixed-6.12", "linux-source-6.12", "bookworm-backports", "source",
               False, arch="arm64", page_size="16K"),
    # 64K pages: a 512 MiB PMD, as RHEL's kernel-64k, Ubuntu's -64k and Oracle UEK8 aarch64.
    KernelSpec("arm64-64k-unfixed-6.12", "linux-source-6.12", "bookworm-backports", "source",
               False, arch="arm64", page_size="64K"),
)
TIERS: dict[str, tuple[KernelSpec, ...]] = {"x86_64": MATRIX, "arm64": ARM64_MATRIX}
# Which tier a kernel slot belongs to (its cache record, its qemu, its guest base).
TIER_OF: dict[str, str] = {spec.name: tier for tier, specs in TIERS.items() for spec in specs}


def fragment_lines(path: Path = FRAGMENT) -> list[str]:
    """Config lines of a fragment (comments other than `is not set` dropped)."""
    out = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("CONFIG_") or re.fullmatch(r"# CONFIG_\w+ is not set", line):
            out.append(line)
    return out


def fragment_hash(path: Path = FRAGMENT) -> str:
    """Short hash of the fragment, part of every source kernel's cache key."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def config_lines(spec: KernelSpec) -> list[str]:
    """What goes over tinyconfig for this kernel: its arch's fragments, then its page size."""
    arch = ARCHES[spec.arch]
    lines = [line for path in arch.fragments for line in fragment_lines(path)]
    if arch.page_sizes:
        lines.append(arch.page_sizes[spec.page_size])
    elif spec.page_size != "4K":
        raise KernelBuildError(f"{spec.name}: {spec.arch} kernels have 4K pages here")
    return lines


def config_hash(spec: KernelSpec) -> str:
    """The configuration part of a source kernel's cache key.

    x86-64 keeps the plain hash of kernel.fragment (the keys of kernels already built stay
    valid); other arches hash every line they merge, page size included."""
    if spec.arch == "x86_64":
        return fragment_hash()
    text = "\n".join([spec.arch, *config_lines(spec)])
    return f"{spec.arch}-{spec.page_size}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def kernel_key(spec: KernelSpec, version: str) -> str:
    """The kernel's directory name under <cache>/kernels."""
    return f"{spec.package}_{version}-{config_hash(spec)}"


def missing_fragment_lines(config_text: str, lines: list[str]) -> list[str]:
    """Fragment lines that did not land in .config (Kconfig drops unmet ones silently)."""
    have: dict[str, str] = {}
    for line in config_text.splitlines():
        m = re.fullmatch(r"(CONFIG_\w+)=(.*)", line) or re.fullmatch(
            r"# (CONFIG_\w+) is not set", line)
        if m:
            have[m.group(1)] = m.group(2) if m.re.groups == 2 else "n"
    missing = []
    for line in lines:
        m = re.fullmatch(r"(CONFIG_\w+)=(.*)", line)
        if m and have.get(m.group(1)) != m.group(2):
            missing.append(f"{line} (got {have.get(m.group(1), 'absent')})")
        n = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if n and have.get(n.group(1), "n") != "n":
            missing.append(f"{line} (got {have[n.group(1)]})")
    return missing


def config_value(config_text: str, option: str) -> str:
    """`y`/`m`/value of CONFIG_<option>, or `n` when unset or absent."""
    m = re.search(rf"^CONFIG_{option}=(.*)$", config_text, re.M)
    return m.group(1) if m else "n"


def fix_evidence(khugepaged_c: str) -> dict[str, Any]:
    """Does collapse_file() write back dirty folios before arming the purge?

    The stable fix ("mm/khugepaged: write all dirty file folios when collapsing",
    6.12.96) calls filemap_write_and_wait(mapping) next to filemap_nr_thps_inc()
    under `!mapping_large_folio_support(mapping)`. Unfixed trees have neither.
    """
    lines = khugepaged_c.splitlines()
    start = next((i for i, t in enumerate(lines)
                  if re.match(r"static int collapse_file\(", t)), None)
    if start is None:
        return {"present": False, "function_found": False, "evidence": []}
    end = next((i for i in range(start + 1, len(lines)) if lines[i] == "}"), len(lines))
    body = range(start, end)
    keys = ("filemap_write_and_wait(", "mapping_large_folio_support(", "filemap_nr_thps_inc(")
    evidence = [f"mm/khugepaged.c:{i + 1}: {lines[i].strip()}" for i in body
                if any(k in lines[i] for k in keys)]
    has_wb = any("filemap_write_and_wait(mapping)" in lines[i] for i in body)
    has_lf = any("!mapping_large_folio_support(mapping)" in lines[i] for i in body)
    return {"present": has_wb and has_lf, "function_found": True,
            "function_lines": [start + 1, end + 1], "evidence": evidence}


FIX_TITLE = "mm/khugepaged: write all dirty file folios when collapsing"


def changelog_evidence(deb: Path) -> dict[str, Any]:
    """Secondary evidence: does Debian's changelog list the fix, and under which upload?"""
    script = ("set -euo pipefail; dpkg-deb --fsys-tarfile \"$1\" "
              "| tar -xO --wildcards '*/usr/share/doc/linux-source-*/changelog.Debian.gz' | zcat")
    text = subprocess.run(["bash", "-c", script, "changelog", str(deb)], check=True,
                          capture_output=True, text=True).stdout
    upload = None
    for line in text.splitlines():
        if line.startswith("linux "):
            upload = line.strip()
        elif FIX_TITLE in line:
            return {"mentions_fix": True, "upload": upload, "line": line.strip()}
    return {"mentions_fix": False, "upload": None, "line": None}


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    """Run a build step, appending output to a log; on failure show its tail."""
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise KernelBuildError(f"{' '.join(cmd)} failed (exit {rc}); log {log}:\n{tail}")


def extract_source(deb: Path, work: Path, log: Path) -> Path:
    """Unpack the linux-source tarball out of the .deb into work/; returns the tree."""
    work.mkdir(parents=True, exist_ok=True)
    script = ("set -euo pipefail; dpkg-deb --fsys-tarfile \"$1\" "
              "| tar -xO --wildcards '*/usr/src/linux-source-*.tar.xz' | tar -xJ -C \"$2\"")
    _run(["bash", "-c", script, "extract", str(deb), str(work)], log)
    trees = [p for p in work.iterdir() if p.is_dir() and p.name.startswith("linux-source")]
    if len(trees) != 1:
        raise KernelBuildError(f"expected one source tree in {work}, found {trees}")
    return trees[0]


def make_command(spec: KernelSpec, tree: Path, out: Path) -> list[str]:
    """`make` for this kernel's architecture (cross-compiling when it is not the host's)."""
    arch = ARCHES[spec.arch]
    cmd = ["make", "-C", str(tree), f"O={out}"]
    if arch.make_arch:
        cmd.append(f"ARCH={arch.make_arch}")
    if arch.cross_compile:
        cmd.append(f"CROSS_COMPILE={arch.cross_compile}")
    return cmd


def configure(spec: KernelSpec, tree: Path, out: Path, log: Path) -> str:
    """tinyconfig + the fragments; fail loudly if any fragment line did not land."""
    make = [*make_command(spec, tree, out), "-s"]
    lines = config_lines(spec)
    _run([*make, "tinyconfig"], log)
    config = out / ".config"
    with config.open("a") as fh:
        fh.write("\n" + "\n".join(lines) + "\n")
    _run([*make, "olddefconfig"], log)
    text = config.read_text()
    missing = missing_fragment_lines(text, lines)
    if missing:
        raise KernelBuildError(f"fragment lines missing from {config}:\n  " +
                               "\n  ".join(missing))
    return text


def build_source_kernels(specs: list[KernelSpec], deb: Path, version: str, cache: Path,
                         jobs: int = 2, keep_tree: bool = False) -> dict[str, dict[str, Any]]:
    """Every kernel of one source package: extract once, check the fix, then configure and
    build each (its own `O=` directory); returns their metadata, by name."""
    metas: dict[str, dict[str, Any]] = {}
    todo = []
    for spec in specs:
        meta_path = cache / "kernels" / kernel_key(spec, version) / "meta.json"
        if meta_path.exists():
            metas[spec.name] = dict(json.loads(meta_path.read_text()))
        else:
            todo.append(spec)
    if not todo:
        return metas
    work = cache / "build" / f"{todo[0].package}_{version}"
    for stale in (work, work.with_name(work.name + ".deleting")):
        shutil.rmtree(stale, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    t0 = time.monotonic()
    tree = extract_source(deb, work, log)
    t_extract = time.monotonic() - t0
    fix = fix_evidence((tree / "mm" / "khugepaged.c").read_text())
    fix["changelog"] = changelog_evidence(deb)
    if not fix["function_found"]:
        raise KernelBuildError(f"collapse_file() not found in {tree}")
    for spec in todo:
        if spec.require_fix is False and fix["present"]:
            raise KernelBuildError(
                f"{spec.name}: {spec.package} {version} ({spec.suite}) already carries the fix; "
                "no unfixed source can be had from this suite: the positive case cannot be "
                f"proven. Evidence: {fix['evidence']}")
    for spec in todo:
        metas[spec.name] = _build_one(spec, tree, work, version, fix, t_extract, jobs, log, cache)
        t_extract = 0.0  # the tree is shared: only the first kernel paid for it
    if not keep_tree:
        remove_in_background(work)
    return metas


def _build_one(spec: KernelSpec, tree: Path, work: Path, version: str, fix: dict[str, Any],
               t_extract: float, jobs: int, log: Path, cache: Path) -> dict[str, Any]:
    """Configure and build one kernel from an extracted tree; write its directory."""
    arch = ARCHES[spec.arch]
    out = work / f"out-{spec.arch}-{spec.page_size}"
    t1, cpu1 = time.monotonic(), _children_cpu()
    config = configure(spec, tree, out, log)
    make = make_command(spec, tree, out)
    _run([*make, f"-j{jobs}", arch.target], log)
    t_build, cpu_build = time.monotonic() - t1, _children_cpu() - cpu1
    release = subprocess.run([*make, "-s", "kernelrelease"], check=True, capture_output=True,
                             text=True).stdout.strip()
    dest = cache / "kernels" / kernel_key(spec, version)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(out / "arch" / arch.boot_dir / "boot" / arch.target, dest / arch.target)
    (dest / "config").write_text(config)
    meta = {
        "name": spec.name, "kind": spec.kind, "package": spec.package, "version": version,
        "suite": spec.suite, "kernel_release": release, "fragment_sha256": config_hash(spec),
        "arch": spec.arch, "page_size": spec.page_size,
        "read_only_thp_for_fs": config_value(config, "READ_ONLY_THP_FOR_FS") == "y",
        "fix": fix, "extract_seconds": round(t_extract, 1), "build_seconds": round(t_build, 1),
        "build_cpu_seconds": round(cpu_build, 1), "load_avg_at_end": os.getloadavg()[0],
        "jobs": jobs, "bzimage": arch.target, "initrd_overlay": None,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_meta(dest, meta)
    return meta


_CLEANUPS: list[subprocess.Popen[bytes]] = []


def remove_in_background(path: Path) -> None:
    """Delete a build tree (~70k files) while the next kernel builds; see wait_cleanups()."""
    doomed = path.with_name(path.name + ".deleting")
    path.rename(doomed)
    _CLEANUPS.append(subprocess.Popen(["rm", "-rf", "--", str(doomed)]))


def wait_cleanups() -> None:
    """Wait for background deletions to finish (called before the build returns)."""
    while _CLEANUPS:
        _CLEANUPS.pop().wait()


def _children_cpu() -> float:
    """User+system CPU seconds of finished children: build cost independent of other load."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _write_meta(dest: Path, meta: dict[str, Any]) -> None:
    """Write meta.json atomically: it is the completeness marker."""
    tmp = dest / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, dest / "meta.json")


def module_load_order(modules_dep: str, wanted: tuple[str, ...]) -> list[str]:
    """Paths of `wanted` modules and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        name = Path(mod).name.split(".ko")[0].replace("-", "_")
        by_name[name] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in deps.get(mod, []):
            visit(dep)
        order.append(mod)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
    return order


def copy_module(source: Path, dest: Path) -> Path:
    """Copy one module for the guest, decompressed (Debian's 6.12+ modules are ``.ko.xz``,
    which busybox insmod cannot load); returns where it landed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    openers: dict[str, Callable[[Path, str], IO[bytes]]] = {
        ".xz": lzma.open, ".gz": gzip.open}  # type: ignore[dict-item]
    opener = openers.get(source.suffix)
    if source.suffix == ".zst":
        raise KernelBuildError(f"{source.name}: zstd-compressed module; no decompressor here")
    if opener is None:
        shutil.copy2(source, dest)
        return dest
    plain = dest.with_suffix("")
    with opener(source, "rb") as packed, plain.open("wb") as out:
        shutil.copyfileobj(packed, out)
    return plain


def unpack_debian_image(spec: KernelSpec, deb: Path, version: str, package: str,
                        cache: Path) -> dict[str, Any]:
    """Unpack a Debian linux-image: vmlinuz, its config, and an initrd overlay of modules."""
    key = f"{package}_{version}"
    dest = cache / "kernels" / key
    if (dest / "meta.json").exists():
        return dict(json.loads((dest / "meta.json").read_text()))
    work = cache / "build" / key
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    root.mkdir(parents=True)
    log = work / "build.log"
    _run(["dpkg-deb", "-x", str(deb), str(root)], log)
    (vmlinuz,) = (root / "boot").glob("vmlinuz-*")
    release = vmlinuz.name.removeprefix("vmlinuz-")
    config = (root / "boot" / f"config-{release}").read_text()
    ro_thp = config_value(config, "READ_ONLY_THP_FOR_FS")
    moddir = root / "lib" / "modules" / release
    # Debian ships no modules.dep: generate it (busybox depmod; kmod may be absent).
    _run(["busybox", "depmod", "-b", str(root), release], log)
    order = module_load_order((moddir / "modules.dep").read_text(), DEBIAN_MODULES)
    overlay = work / "overlay"
    loaded = [copy_module(moddir / rel, overlay / "lib/modules" / release / rel)
              for rel in order]
    (overlay / "etc").mkdir(parents=True)
    (overlay / "etc" / "modules.load").write_text(
        "".join(f"/{path.relative_to(overlay)}\n" for path in loaded))
    (overlay / "boot").mkdir()
    (overlay / "boot" / f"config-{release}").write_text(config)
    dest.mkdir(parents=True, exist_ok=True)
    from devtools.vm.rootfs import write_cpio  # local import: rootfs imports this module too

    write_cpio(overlay, dest / "overlay.cpio")
    shutil.copy2(vmlinuz, dest / "bzImage")
    (dest / "config").write_text(config)
    meta = {
        "name": spec.name, "kind": spec.kind, "package": package, "version": version,
        "suite": spec.suite, "kernel_release": release, "fragment_sha256": None,
        "read_only_thp_for_fs": ro_thp == "y",
        "fix": {"present": None, "function_found": False,
                "evidence": ["binary package: source not examined; "
                             f"CONFIG_READ_ONLY_THP_FOR_FS={ro_thp} in boot/config-{release}"]},
        "modules": order, "build_seconds": 0.0, "bzimage": "bzImage",
        "initrd_overlay": "overlay.cpio",
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_meta(dest, meta)
    shutil.rmtree(work, ignore_errors=True)
    return meta
