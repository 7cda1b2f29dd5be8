"""What `thpcheck check` costs a node, per path, on this machine's kernel (run as root).

Creates loop-mounted ext4, btrfs and xfs filesystems and runs the real command once per path
(``--repeat`` times) through benchmarks/measure.py: wall time (spawn to exit), CPU time, peak
RSS, bytes the filesystem's block device wrote (after ``sync``, so journal and metadata
count), bytes the agent reported writing, the reproducer's own duration (in-process), and
what was left on disk (must be 0). A benchmark, not a test: it prints figures.

    sudo .venv/bin/python -m benchmarks.check_cost [--repeat 10] [--json]
        [--python /usr/bin/python3.11] [--agent-src DIR] [-- extra thpcheck check args]

``--agent-src`` runs another tree's agent (a `git worktree` of an older commit holds its
``operator/``), for before/after figures on the same machine at the same load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from benchmarks.measure import measure
from devtools.host.loopfs import loop_mount

REPO = Path(__file__).resolve().parents[1]
FILESYSTEMS = ("ext4", "btrfs", "xfs")


def _run_child(python: str, path: Path, extra: list[str]) -> dict[str, Any]:
    run = measure(str(path), [python, "-m", "thpcheck", "check", "--json", str(path), *extra])
    entry = json.loads(run["stdout"])["paths"][0]
    return {
        "wall_s": run["wall_s"],
        "cpu_s": run["cpu_s"],
        "peak_rss_mib": run["peak_rss_kib"] / 1024,
        "device_bytes_written": run["device_bytes_written"],
        "agent_bytes_written": entry["repro"].get("bytes_written", 0),
        "repro_s": entry["repro"].get("duration_s"),
        "verdict": entry["verdict"],
        "outcome": entry["repro"]["outcome"],
        "left_on_disk": len(run["left_on_disk"]),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    return {
        "runs": len(runs),
        "wall_s_median": round(med("wall_s"), 3),
        "wall_s_min": round(min(r["wall_s"] for r in runs), 3),
        "wall_s_max": round(max(r["wall_s"] for r in runs), 3),
        "repro_s_median": round(med("repro_s"), 3),
        "cpu_s_median": round(med("cpu_s"), 3),
        "peak_rss_mib_max": round(max(r["peak_rss_mib"] for r in runs), 1),
        "device_bytes_written_median": int(med("device_bytes_written")),
        "agent_bytes_written": runs[-1]["agent_bytes_written"],
        "left_on_disk_max": max(r["left_on_disk"] for r in runs),
        "verdict": runs[-1]["verdict"],
        "outcome": runs[-1]["outcome"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs the agent (default: this one)")
    parser.add_argument("--agent-src", type=Path, default=REPO / "operator",
                        help="directory holding the thpcheck package (default: this tree's)")
    parser.add_argument("agent_args", nargs="*", help="extra `thpcheck check` arguments")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("check_cost: needs root (loop devices)", file=sys.stderr)
        return 2
    os.environ["PYTHONPATH"] = str(args.agent_src.resolve())
    load_before = os.getloadavg()
    results: dict[str, Any] = {"kernel": os.uname().release, "machine": os.uname().machine,
                               "python": args.python, "agent_src": str(args.agent_src),
                               "repeat": args.repeat}
    with TemporaryDirectory(prefix="thpcheck-bench-") as tmp, contextlib.ExitStack() as stack:
        for fs in FILESYSTEMS:
            scratch = stack.enter_context(loop_mount(Path(tmp), fs)) / "bench"
            scratch.mkdir()
            runs = [_run_child(args.python, scratch, args.agent_args)
                    for _ in range(args.repeat)]
            results[fs] = _summary(runs)
    results["load_before"] = [round(x, 2) for x in load_before]
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"kernel {results['kernel']} ({results['machine']}), {args.python}, agent "
          f"{args.agent_src}, {args.repeat} runs per path; load {results['load_before']} -> "
          f"{results['load_after']}")
    print(f"{'fs':6} {'wall med':>9} {'min':>7} {'max':>7} {'repro':>7} {'cpu':>7} "
          f"{'rss MiB':>8} {'dev written':>12} {'agent wrote':>12} {'left':>5}  verdict/outcome")
    for fs in FILESYSTEMS:
        r = results[fs]
        print(f"{fs:6} {r['wall_s_median']:>8.3f}s {r['wall_s_min']:>6.3f}s "
              f"{r['wall_s_max']:>6.3f}s {r['repro_s_median']:>6.3f}s {r['cpu_s_median']:>6.3f}s "
              f"{r['peak_rss_mib_max']:>8.1f} {r['device_bytes_written_median']:>12} "
              f"{r['agent_bytes_written']:>12} {r['left_on_disk_max']:>5}  "
              f"{r['verdict']}/{r['outcome']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
