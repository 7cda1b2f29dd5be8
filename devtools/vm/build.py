"""Build everything the kernel matrix needs, idempotently: `python -m devtools.vm.build`.

Resolves the current Debian packages per suite, downloads them (in the
background while the first kernel builds), builds the kernels, unpacks the
no-RO_THP Debian kernel, builds the guest base archive and disk images, and
writes `<cache>/matrix.json`, which the tests read. Rerunning reuses
everything already in the cache.

`--arch arm64` builds the arm64 tier instead: the same Debian sources cross-compiled (4K pages
unfixed and fixed, 16K and 64K pages unfixed), an arm64 guest base from Debian's arm64 packages, and
`<cache>/matrix-arm64.json`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devtools.vm import kernels, rootfs
from devtools.vm.guest import cache_dir
from devtools.vm.matrix import MATRIX_FILES
from devtools.vm.sources import PrivateApt, SourceError, system_mirrors


def resolve(apt: PrivateApt, spec: kernels.KernelSpec) -> tuple[str, str]:
    """(package, version) for a matrix kernel; fail loudly when it is not in its suite."""
    if spec.kind == "debian-image":
        # The newest ABI *in this suite*: other suites of the private lists (security, the
        # next release) carry other ABIs under the same name pattern.
        names = sorted(apt.names(spec.package), reverse=True,
                       key=lambda n: int(re.fullmatch(spec.package, n)[1]))  # type: ignore[index]
        for package in names:
            version = apt.candidate(package, spec.suite)
            if version is not None:
                return package, version
        raise SourceError(f"{spec.name}: no package matching {spec.package} in {spec.suite}; "
                          "the matrix cannot be built without it")
    version = apt.candidate(spec.package, spec.suite)
    if version is None:
        raise SourceError(f"{spec.name}: {spec.package} not found in {spec.suite}; "
                          "the matrix cannot be built without it")
    return spec.package, version


def build(cache: Path, only: set[str] | None, jobs: int, keep_tree: bool,
          tier: str = "x86_64") -> dict[str, Any]:
    """Fetch, build and record one tier's matrix; returns its matrix.json document."""
    t0 = time.monotonic()
    apt = PrivateApt(cache / "apt", system_mirrors())
    apt.update()
    specs = [s for s in kernels.TIERS[tier] if only is None or s.name in only]
    resolved = {s.name: resolve(apt, s) for s in specs}
    # One download and one extracted tree per source package version, whatever the arch.
    groups: dict[tuple[str, str], list[kernels.KernelSpec]] = {}
    for spec in specs:
        groups.setdefault(resolved[spec.name], []).append(spec)
    downloads = cache / "downloads"
    timings: dict[str, float] = {}

    def fetch(pkg: str, ver: str) -> Path:
        t = time.monotonic()
        path = apt.download(pkg, ver, downloads)
        timings[f"download {pkg} {ver}"] = round(time.monotonic() - t, 1)
        return path

    metas: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures: dict[tuple[str, str], Future[Path]] = {
            key: pool.submit(fetch, *key) for key in groups}
        for (package, version), group in groups.items():
            deb = futures[(package, version)].result()
            for spec in group:
                print(f"[build] {spec.name}: {package} {version} ({spec.suite}, {spec.arch}, "
                      f"{spec.page_size} pages)", flush=True)
            if group[0].kind == "source":
                metas.update(kernels.build_source_kernels(group, deb, version, cache, jobs,
                                                          keep_tree))
            else:
                for spec in group:
                    metas[spec.name] = kernels.unpack_debian_image(spec, deb, version, package,
                                                                   cache)
            for spec in group:
                _check_expectation(spec, metas[spec.name])
    kernels.wait_cleanups()
    t = time.monotonic()
    extra: dict[str, Any] = {}
    if tier == "arm64":
        base = rootfs.build_base_arm64(cache, _arm64_debs(cache, timings))
        large = rootfs.build_disks(cache, rootfs.LARGE_DISK_SIZE, rootfs.LARGE_DISK_FILESYSTEMS)
        extra["large_disks"] = {k: str(v) for k, v in large.items()}
    else:
        base = rootfs.build_base(cache)
    disks = rootfs.build_disks(cache)
    timings["guest base + disks"] = round(time.monotonic() - t, 1)
    doc = {**_matrix_doc(cache, metas, base, disks, timings, time.monotonic() - t0),
           **extra, "arch": tier}
    path = cache / MATRIX_FILES[tier]
    old = json.loads(path.read_text()) if path.exists() else {}
    if only is not None:  # partial build: keep the other kernels already recorded
        doc["kernels"] = {**old.get("kernels", {}), **doc["kernels"]}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def _arm64_debs(cache: Path, timings: dict[str, float]) -> list[Path]:
    """Debian's arm64 packages of the arm64 guest (rootfs.ARM64_PACKAGES), downloaded."""
    t = time.monotonic()
    suite = rootfs.ARM64_SUITE
    apt = PrivateApt(cache / "apt-arm64", system_mirrors(), arch="arm64", suites=(suite,),
                     security_suites=(f"{suite}-security",))
    apt.update()
    debs = []
    for package in rootfs.ARM64_PACKAGES:
        version = apt.candidate(package, suite)
        if version is None:
            raise SourceError(f"{package} (arm64) not found in {suite}")
        debs.append(apt.download(package, version, cache / "downloads-arm64"))
    timings["arm64 guest packages"] = round(time.monotonic() - t, 1)
    return debs


def _check_expectation(spec: kernels.KernelSpec, meta: dict[str, Any]) -> None:
    """Warn (fixed) or fail (no-RO_THP) when a kernel is not what its slot needs."""
    if spec.require_fix and not meta["fix"]["present"]:
        print(f"WARNING: {spec.name}: {meta['package']} {meta['version']} does not carry "
              "the fix; its cells will be expected to lose data", file=sys.stderr)
    if spec.kind == "debian-image" and meta["read_only_thp_for_fs"]:
        raise SourceError(f"{spec.name}: {meta['package']} has READ_ONLY_THP_FOR_FS=y; "
                          "it cannot serve as the no-RO_THP kernel")


def _matrix_doc(cache: Path, metas: dict[str, dict[str, Any]], base: Path,
                disks: dict[str, Path], timings: dict[str, float], total: float
                ) -> dict[str, Any]:
    """The summary the tests load: kernel dirs, guest artifacts, timings."""
    kdirs = {}
    for name, meta in metas.items():
        key = (f"{meta['package']}_{meta['version']}-{meta['fragment_sha256']}"
               if meta["kind"] == "source" else f"{meta['package']}_{meta['version']}")
        kdirs[name] = str(cache / "kernels" / key)
    return {"kernels": kdirs, "base_cpio": str(base),
            "disks": {k: str(v) for k, v in disks.items()}, "timings": timings,
            "total_seconds": round(total, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def summary(doc: dict[str, Any]) -> str:
    """A human table of what the matrix will boot."""
    rows = [f"{'kernel':22} {'package':36} {'version':20} {'release':24} RO_THP fix   "
            "chlog build_s  cpu_s"]
    for name, kdir in sorted(doc["kernels"].items()):
        m = json.loads((Path(kdir) / "meta.json").read_text())
        rows.append(f"{name:22} {m['package']:36} {m['version']:20} {m['kernel_release']:24} "
                    f"{m['read_only_thp_for_fs']!s:6} {m['fix']['present']!s:5} "
                    f"{m['fix'].get('changelog', {}).get('mentions_fix')!s:5} "
                    f"{m['build_seconds']:7} {m.get('build_cpu_seconds', '-'):>6}")
    base = Path(doc["base_cpio"])
    rows.append(f"guest base: {base} ({base.stat().st_size / 2**20:.1f} MiB)")
    rows.append(f"disks: {', '.join(sorted(doc['disks']))}; timings: {doc['timings']}; "
                f"total {doc['total_seconds']} s")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--cache", type=Path, default=cache_dir())
    ap.add_argument("--arch", choices=sorted(kernels.TIERS), default="x86_64",
                    help="which tier to build: the x86-64 matrix (default) or the arm64 "
                    "kernels (cross-compiled, booted with qemu-system-aarch64)")
    ap.add_argument("--only", action="append",
                    choices=[s.name for specs in kernels.TIERS.values() for s in specs],
                    help="build only these kernels of the tier (repeatable)")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--keep-tree", action="store_true", help="keep source/build trees")
    args = ap.parse_args(argv)
    try:
        doc = build(args.cache, set(args.only) if args.only else None, args.jobs,
                    args.keep_tree, args.arch)
    except (SourceError, kernels.KernelBuildError, FileNotFoundError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(summary(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
