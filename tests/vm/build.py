"""Build everything the kernel matrix needs, idempotently: `python -m tests.vm.build`.

Resolves the current Debian packages per suite, downloads them (in the
background while the first kernel builds), builds the kernels, unpacks the
no-RO_THP Debian kernel, builds the guest base archive and disk images, and
writes `<cache>/matrix.json`, which the tests read. Rerunning reuses
everything already in the cache.
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

from tests.vm import kernels, rootfs
from tests.vm.guest import cache_dir
from tests.vm.sources import PrivateApt, SourceError, system_mirrors

MATRIX_FILE = "matrix.json"


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


def build(cache: Path, only: set[str] | None, jobs: int, keep_tree: bool) -> dict[str, Any]:
    """Fetch, build and record the matrix; returns the matrix.json document."""
    t0 = time.monotonic()
    apt = PrivateApt(cache / "apt", system_mirrors())
    apt.update()
    specs = [s for s in kernels.MATRIX if only is None or s.name in only]
    resolved = {s.name: resolve(apt, s) for s in specs}
    downloads = cache / "downloads"
    timings: dict[str, float] = {}

    def fetch(pkg: str, ver: str) -> Path:
        t = time.monotonic()
        path = apt.download(pkg, ver, downloads)
        timings[f"download {pkg} {ver}"] = round(time.monotonic() - t, 1)
        return path

    metas: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures: dict[str, Future[Path]] = {
            s.name: pool.submit(fetch, *resolved[s.name]) for s in specs}
        for spec in specs:
            package, version = resolved[spec.name]
            deb = futures[spec.name].result()
            print(f"[build] {spec.name}: {package} {version} ({spec.suite})", flush=True)
            if spec.kind == "source":
                meta = kernels.build_source_kernel(spec, deb, version, cache, jobs, keep_tree)
            else:
                meta = kernels.unpack_debian_image(spec, deb, version, package, cache)
            _check_expectation(spec, meta)
            metas[spec.name] = meta
    kernels.wait_cleanups()
    t = time.monotonic()
    base = rootfs.build_base(cache)
    disks = rootfs.build_disks(cache)
    timings["guest base + disks"] = round(time.monotonic() - t, 1)
    doc = _matrix_doc(cache, metas, base, disks, timings, time.monotonic() - t0)
    path = cache / MATRIX_FILE
    old = json.loads(path.read_text()) if path.exists() else {}
    if only is not None:  # partial build: keep the other kernels already recorded
        doc["kernels"] = {**old.get("kernels", {}), **doc["kernels"]}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


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
    rows = [f"{'kernel':14} {'package':36} {'version':20} {'release':24} RO_THP fix   "
            "chlog build_s  cpu_s"]
    for name, kdir in sorted(doc["kernels"].items()):
        m = json.loads((Path(kdir) / "meta.json").read_text())
        rows.append(f"{name:14} {m['package']:36} {m['version']:20} {m['kernel_release']:24} "
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
    ap.add_argument("--only", action="append", choices=[s.name for s in kernels.MATRIX],
                    help="build only these kernels (repeatable)")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--keep-tree", action="store_true", help="keep source/build trees")
    args = ap.parse_args(argv)
    try:
        doc = build(args.cache, set(args.only) if args.only else None, args.jobs,
                    args.keep_tree)
    except (SourceError, kernels.KernelBuildError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(summary(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
