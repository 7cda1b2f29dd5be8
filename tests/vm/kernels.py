"""Build the matrix kernels from Debian sources, or unpack a Debian binary kernel.

Each kernel lands in `<cache>/kernels/<key>/` with `bzImage` and `meta.json`;
`meta.json` is written last, so its presence means the kernel is complete.
Whether a source carries the 6.12.96 fix is decided by reading
`mm/khugepaged.c` itself (the archive moves; version strings alone can lie).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

VM_DIR = Path(__file__).resolve().parent
FRAGMENT = VM_DIR / "kernel.fragment"
# Modules the no-RO_THP Debian kernel needs for the disks it is given.
DEBIAN_MODULES = ("virtio_pci", "virtio_blk", "ext4", "btrfs", "xfs")


class KernelBuildError(RuntimeError):
    """A kernel could not be built as the matrix needs it."""


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


def fragment_lines(path: Path = FRAGMENT) -> list[str]:
    """Config lines of the fragment (comments other than `is not set` dropped)."""
    out = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("CONFIG_") or re.fullmatch(r"# CONFIG_\w+ is not set", line):
            out.append(line)
    return out


def fragment_hash(path: Path = FRAGMENT) -> str:
    """Short hash of the fragment, part of every source kernel's cache key."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


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


def configure(tree: Path, out: Path, log: Path) -> str:
    """tinyconfig + the fragment; fail loudly if any fragment line did not land."""
    make = ["make", "-C", str(tree), f"O={out}", "-s"]
    _run([*make, "tinyconfig"], log)
    config = out / ".config"
    with config.open("a") as fh:
        fh.write("\n" + "\n".join(fragment_lines()) + "\n")
    _run([*make, "olddefconfig"], log)
    text = config.read_text()
    missing = missing_fragment_lines(text, fragment_lines())
    if missing:
        raise KernelBuildError(f"fragment lines missing from {config}:\n  " +
                               "\n  ".join(missing))
    return text


def build_source_kernel(spec: KernelSpec, deb: Path, version: str, cache: Path,
                        jobs: int = 2, keep_tree: bool = False) -> dict[str, Any]:
    """Extract, check the fix, configure, build; returns the metadata written."""
    frag_hash = fragment_hash()
    key = f"{spec.package}_{version}-{frag_hash}"
    dest = cache / "kernels" / key
    if (dest / "meta.json").exists():
        return dict(json.loads((dest / "meta.json").read_text()))
    work = cache / "build" / key
    for stale in (work, work.with_name(work.name + ".deleting")):
        shutil.rmtree(stale, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    t0 = time.monotonic()
    tree = extract_source(deb, work, log)
    t_extract = time.monotonic() - t0
    fix = fix_evidence((tree / "mm" / "khugepaged.c").read_text())
    fix["changelog"] = changelog_evidence(deb)
    if spec.require_fix is False and fix["present"]:
        raise KernelBuildError(
            f"{spec.name}: {spec.package} {version} ({spec.suite}) already carries the fix; "
            "no unfixed source can be had from this suite: the positive case cannot be "
            f"proven. Evidence: {fix['evidence']}")
    if not fix["function_found"]:
        raise KernelBuildError(f"{spec.name}: collapse_file() not found in {tree}")
    out = work / "out"
    t1, cpu1 = time.monotonic(), _children_cpu()
    config = configure(tree, out, log)
    _run(["make", "-C", str(tree), f"O={out}", f"-j{jobs}", "bzImage"], log)
    t_build, cpu_build = time.monotonic() - t1, _children_cpu() - cpu1
    release = subprocess.run(["make", "-s", "-C", str(tree), f"O={out}", "kernelrelease"],
                             check=True, capture_output=True, text=True).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(out / "arch" / "x86" / "boot" / "bzImage", dest / "bzImage")
    (dest / "config").write_text(config)
    meta = {
        "name": spec.name, "kind": spec.kind, "package": spec.package, "version": version,
        "suite": spec.suite, "kernel_release": release, "fragment_sha256": frag_hash,
        "read_only_thp_for_fs": config_value(config, "READ_ONLY_THP_FOR_FS") == "y",
        "fix": fix, "extract_seconds": round(t_extract, 1), "build_seconds": round(t_build, 1),
        "build_cpu_seconds": round(cpu_build, 1), "load_avg_at_end": os.getloadavg()[0],
        "jobs": jobs, "bzimage": "bzImage", "initrd_overlay": None,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_meta(dest, meta)
    if not keep_tree:
        remove_in_background(work)
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
    openers = {".xz": lzma.open, ".gz": gzip.open}
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
    from tests.vm.rootfs import write_cpio  # local import: rootfs imports this module too

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
