"""What `thpcheck check` costs a node, per path, on this machine's kernel (run as root).

Creates loop-mounted ext4, btrfs and xfs filesystems, runs the real command once per path
(``--repeat`` times), and prints wall time, CPU time, peak RSS, bytes the filesystem's block
device wrote (after ``sync``, so journal and metadata count), bytes the agent reported writing,
and what was left on disk (must be 0). A benchmark, not a test: it prints figures.

    sudo .venv/bin/python -m benchmarks.check_cost [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from tests.host.loopfs import loop_mount

REPO = Path(__file__).resolve().parents[1]
FILESYSTEMS = ("ext4", "btrfs", "xfs")


def _device_of(mountpoint: Path) -> str:
    source = subprocess.run(["findmnt", "-no", "SOURCE", str(mountpoint)], check=True,
                            capture_output=True, text=True).stdout.strip()
    return os.path.basename(source)


def _sectors_written(device: str) -> int:
    """Field 7 of /sys/block/<dev>/stat: 512-byte sectors written."""
    return int(Path(f"/sys/block/{device}/stat").read_text().split()[6])


def _leftovers(path: Path) -> int:
    return sum(1 for _ in path.rglob("*"))


def _run_child(path: Path, extra: list[str]) -> dict[str, Any]:
    """Run via os.posix_spawn + wait4 so rusage is the agent's own, not the whole tree's."""
    device = _device_of(path)
    os.sync()
    sectors = _sectors_written(device)
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "thpcheck", "check", "--json",
                                          str(path), *extra], env,
                         file_actions=[(os.POSIX_SPAWN_DUP2, write_fd, 1)])
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        stdout = pipe.read()
    _, _, usage = os.wait4(pid, 0)
    wall = time.monotonic() - started
    os.sync()
    entry = json.loads(stdout)["paths"][0]
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "device_bytes_written": (_sectors_written(device) - sectors) * 512,
        "agent_bytes_written": entry["repro"].get("bytes_written", 0),
        "repro_s": entry["repro"].get("duration_s"),
        "verdict": entry["verdict"],
        "outcome": entry["repro"]["outcome"],
        "left_on_disk": _leftovers(path),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return {
        "runs": len(runs),
        "wall_s_median": round(med("wall_s"), 3),
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
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("agent_args", nargs="*", help="extra `thpcheck check` arguments")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("check_cost: needs root (loop devices)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"kernel": os.uname().release, "machine": os.uname().machine}
    with TemporaryDirectory(prefix="thpcheck-bench-") as tmp, contextlib.ExitStack() as stack:
        for fs in FILESYSTEMS:
            scratch = stack.enter_context(loop_mount(Path(tmp), fs)) / "bench"
            scratch.mkdir()
            runs = [_run_child(scratch, args.agent_args) for _ in range(args.repeat)]
            results[fs] = _summary(runs)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"kernel {results['kernel']} ({results['machine']}), {args.repeat} runs per path")
    print(f"{'fs':6} {'wall med':>9} {'wall max':>9} {'repro':>7} {'cpu':>7} {'rss MiB':>8} "
          f"{'dev written':>12} {'agent wrote':>12} {'left':>5}  verdict/outcome")
    for fs in FILESYSTEMS:
        r = results[fs]
        print(f"{fs:6} {r['wall_s_median']:>8.3f}s {r['wall_s_max']:>8.3f}s "
              f"{r['repro_s_median']:>6.3f}s {r['cpu_s_median']:>6.3f}s "
              f"{r['peak_rss_mib_max']:>8.1f} {r['device_bytes_written_median']:>12} "
              f"{r['agent_bytes_written']:>12} {r['left_on_disk_max']:>5}  "
              f"{r['verdict']}/{r['outcome']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
