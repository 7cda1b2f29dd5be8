"""The agent's peak memory for a default run, as its pod's memory cgroup counts it (run as
root, cgroup v1 or v2): what the agent DaemonSet's memory request and limit are sized from
(``thpcheck.contract.agent.agent_memory_bytes``).

Per filesystem (loop-mounted ext4, btrfs, xfs) one ``thpcheck check --json PATH`` with the
default reproducer (64 MiB base, 200 x 16 KiB appends) in a fresh memory cgroup:

- ``peak_rss_mib``: the process's own peak RSS (``wait4``);
- ``cgroup_peak_mib``: the cgroup's peak usage (``memory.max_usage_in_bytes`` on v1,
  ``memory.peak`` on v2): RSS plus the page cache of the files the run writes, which the
  kernel charges to the pod.

This machine's kernel refuses file collapse, so a plain run stops after 2 MiB (``--mode
plain``). ``--mode full`` (the default) makes every ``madvise`` succeed through strace's
syscall injection, so the run writes its whole base and all 200 appends, as on a kernel
that collapses (strace itself stays outside the cgroup).

    sudo .venv/bin/python -m benchmarks.agent_memory [--mode full|plain] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from benchmarks.measure import measure
from devtools.host.loopfs import loop_mount

REPO = Path(__file__).resolve().parents[1]
FILESYSTEMS = ("ext4", "btrfs", "xfs")
V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


@contextlib.contextmanager
def memory_cgroup() -> Iterator[tuple[Path, str]]:
    """A fresh memory cgroup: (its directory, the file holding its peak usage)."""
    name = f"thpcheck-measure-{uuid.uuid4().hex[:8]}"
    if (V1 / "memory.max_usage_in_bytes").exists():
        path, peak = V1 / name, "memory.max_usage_in_bytes"
    elif (V2 / "cgroup.controllers").exists():
        path, peak = V2 / name, "memory.peak"
    else:
        raise SystemExit("no memory cgroup hierarchy under /sys/fs/cgroup")
    path.mkdir()
    try:
        yield path, peak
    finally:
        path.rmdir()


def run_once(path: Path, mode: str) -> dict[str, Any]:
    with memory_cgroup() as (cgroup, peak_file):
        join = f'echo $$ > {cgroup}/cgroup.procs && exec "$@"'
        agent = [sys.executable, "-m", "thpcheck", "check", "--json", str(path)]
        argv = ["/bin/sh", "-c", join, "sh", *agent]
        if mode == "full":
            argv = ["strace", "-qq", "-f", "-o", "/dev/null", "-e", "trace=madvise",
                    "-e", "inject=madvise:retval=0", *argv]
        run = measure(str(path), argv)
        peak = int((cgroup / peak_file).read_text())
    entry = json.loads(run["stdout"])["paths"][0]
    return {"peak_rss_mib": round(run["peak_rss_kib"] / 1024, 1),
            "cgroup_peak_mib": round(peak / (1 << 20), 1),
            "bytes_written": entry["repro"].get("bytes_written", 0),
            "iterations_run": entry["repro"].get("iterations_run"),
            "outcome": entry["repro"]["outcome"], "wall_s": run["wall_s"],
            "left_on_disk": len(run["left_on_disk"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("full", "plain"), default="full")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (loop devices, cgroups)")
    if args.mode == "full" and shutil.which("strace") is None:
        raise SystemExit("--mode full needs strace (apt-get install strace)")
    os.environ["PYTHONPATH"] = str(REPO / "operator")
    results: dict[str, list[dict[str, Any]]] = {}
    with TemporaryDirectory(prefix="thpcheck-mem-") as tmp:
        for fs in FILESYSTEMS:
            with loop_mount(Path(tmp), fs, size_mib=1024) as mountpoint:
                scratch = mountpoint / "scratch"
                scratch.mkdir()
                results[fs] = [run_once(scratch, args.mode) for _ in range(args.repeat)]
    doc = {"mode": args.mode, "load": os.getloadavg(), "results": results,
           "peak_rss_mib_max": max(r["peak_rss_mib"] for rs in results.values() for r in rs),
           "cgroup_peak_mib_max": max(r["cgroup_peak_mib"] for rs in results.values()
                                      for r in rs)}
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"mode {args.mode}, load {doc['load']}")
    print(f"{'fs':6} {'rss MiB':>8} {'cgroup MiB':>11} {'written':>10} {'iters':>6}  outcome")
    for fs, runs in results.items():
        for r in runs:
            print(f"{fs:6} {r['peak_rss_mib']:>8} {r['cgroup_peak_mib']:>11} "
                  f"{r['bytes_written']:>10} {r['iterations_run']!s:>6}  {r['outcome']}")
    print(f"max: peak RSS {doc['peak_rss_mib_max']} MiB, cgroup peak "
          f"{doc['cgroup_peak_mib_max']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
