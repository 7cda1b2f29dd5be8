"""What `thpcheck check` costs a node in the qemu kernel-matrix guests, next to repro7 (C).

Boots each chosen matrix kernel once (the artifacts of `python -m devtools.vm.build`, the working
tree's agent as in tests/vm) and, per filesystem, runs `repro7` (the C yardstick: the same seven
steps), `thpcheck check --json` and `thpcheck repro`, ``--repeat`` times each, interleaved
(C first on even rounds, the agent first on odd ones). Each run goes through
benchmarks/measure.py inside the guest: wall (spawn to exit), CPU, peak RSS, bytes the guest's
block device wrote, files left behind. The reproducer parameters are the matrix's
(THPCHECK_VM_* variables, default 64M base, 16K appends, 200 iterations).

    .venv/bin/python -m benchmarks.vm_cost [--kernels unfixed-6.12,fixed-6.12] [--repeat 5]
        [--fs ext4,btrfs,xfs] [--profile] [--before-src DIR] [--json]

The arm64 kernels (``--kernels arm64-unfixed-6.12,arm64-fixed-6.12``, built by
``devtools/vm/build.sh --arch arm64``) boot in qemu-system-aarch64 with the arm64 guest base: the
agent on Debian's arm64 python3.11 next to a cross-compiled repro7.

``--before-src DIR`` (a directory holding another version's ``thpcheck`` package, e.g.
``git archive <commit> operator | tar -x -C /tmp/before`` then ``/tmp/before/operator``) adds
that agent to the guest as well and runs it too (``check@before``, ``repro@before``),
interleaved with the rest: a before/after comparison within one boot, under the same load.

``--profile`` also records, on the first kernel, interpreter start-up (`python3 -c pass`,
`-S`, `-I -S`), the import of the check command, `-X importtime` and cProfile of one
`thpcheck check`; they are written to benchmarks/out/vm-profile-<kernel>.txt.
Raw results: benchmarks/out/vm-cost-<kernel>.json (git-ignored). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devtools.vm.guest import FILESYSTEMS, BootResult, Kernel, Mount, Run, Step, boot
from devtools.vm.kernels import TIER_OF
from devtools.vm.matrix import FACTS, Artifacts, Plan, load_artifacts, parse_repro
from devtools.vm.rootfs import HOST_PYTHON, build_app, compile_tree, write_cpio

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
MEASURE_SOURCE = (REPO / "benchmarks" / "measure.py").read_text()
DEFAULT_KERNELS = ("unfixed-6.12", "unfixed-6.1", "fixed-6.12", "no-rothp")
COMMANDS = ("repro7", "check", "repro")
AGENT = ("python3", "-m", "thpcheck")
BEFORE_DIR = "/opt/before"  # the --before-src agent in the guest, ahead of /opt/thpcheck
BEFORE = ("env", f"PYTHONPATH={BEFORE_DIR}:/opt/thpcheck", *AGENT)


def measured(name: str, directory: str, argv: Sequence[str], timeout_s: int = 600) -> Run:
    """A guest step that runs ``argv`` under benchmarks/measure.py."""
    return Run(name, ("python3", "-c", MEASURE_SOURCE, directory, *argv), timeout_s)


def command_argv(command: str, mount: str, plan: Plan) -> tuple[str, ...]:
    """``repro7``, ``check``, ``repro``, and ``check@before``/``repro@before``."""
    if command == "repro7":
        return ("repro7", mount, *plan.args())
    name, _, version = command.partition("@")
    agent = BEFORE if version == "before" else AGENT
    if name == "check":
        return (*agent, "check", "--json", *plan.args(), mount)
    return (*agent, "repro", mount, *plan.args())


def build_before(source: Path, out: Path) -> None:
    """before.cpio: another tree's thpcheck package at /opt/before, precompiled."""
    stage = out.parent / "before-stage"
    shutil.rmtree(stage, ignore_errors=True)
    target = stage / BEFORE_DIR.lstrip("/") / "thpcheck"
    shutil.copytree(source / "thpcheck", target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    compile_tree(stage, HOST_PYTHON)
    write_cpio(stage, out)
    shutil.rmtree(stage)


def profile_steps(plan: Plan, mount: str) -> list[Step]:
    """Start-up and profile records (run after the mount of ``mount``)."""
    check = ("-m", "thpcheck", "check", "--json", *plan.args(), mount)
    steps: list[Step] = [
        measured("py:pass", mount, ("python3", "-c", "pass")),
        measured("py:S-pass", mount, ("python3", "-S", "-c", "pass")),
        measured("py:IS-pass", mount, ("python3", "-I", "-S", "-c", "pass")),
        measured("py:import-check", mount, ("python3", "-c", "import thpcheck.cli.check")),
        measured("py:check-no-repro", mount,
                 (*AGENT, "check", "--json", "--no-repro", mount)),
    ]
    steps.append(Run("profile:importtime", ("python3", "-X", "importtime", *check), 600))
    steps.append(Run("profile:cprofile",
                     ("python3", "-m", "cProfile", "-s", "tottime", *check), 600))
    return steps


def cost_steps(plan: Plan, filesystems: Sequence[str], commands: Sequence[str], repeat: int,
               profile: bool) -> list[Step]:
    steps: list[Step] = [Run("facts", ("sh", "-c", FACTS), 60)]
    for index, fs in enumerate(filesystems):
        mount = Mount(fs)
        steps.append(mount)
        if profile and index == 0:
            steps += profile_steps(plan, mount.path)
        for round_ in range(repeat):
            order = list(commands) if round_ % 2 == 0 else list(reversed(commands))
            steps += [measured(f"{cmd}:{fs}:{round_}", mount.path,
                               command_argv(cmd, mount.path, plan)) for cmd in order]
    return steps


def in_process_repro_s(command: str, stdout: str) -> float | None:
    """The reproducer's own duration, as `thpcheck check --json` reports it."""
    if not command.startswith("check"):
        return None
    try:
        return float(json.loads(stdout)["paths"][0]["repro"]["duration_s"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def outcome_of(command: str, stdout: str) -> str:
    if command.startswith("check"):
        try:
            path = json.loads(stdout)["paths"][0]
            return f"{path['verdict']}/{path['repro']['outcome']}"
        except (ValueError, KeyError, IndexError, TypeError):
            return "unparsable"
    return str(parse_repro(stdout).outcome)


def summarise(runs: Sequence[dict[str, Any]], command: str) -> dict[str, Any]:
    """Medians (and extremes) over one command's runs on one filesystem."""
    walls = [r["wall_s"] for r in runs]
    repro = [s for s in (in_process_repro_s(command, r["stdout"]) for r in runs)
             if s is not None]
    return {
        "runs": len(runs),
        "wall_s_median": round(statistics.median(walls), 3),
        "wall_s_min": round(min(walls), 3),
        "wall_s_max": round(max(walls), 3),
        "repro_s_median": round(statistics.median(repro), 3) if repro else None,
        "cpu_s_median": round(statistics.median(r["cpu_s"] for r in runs), 3),
        "peak_rss_mib_max": round(max(r["peak_rss_kib"] for r in runs) / 1024, 1),
        "device_bytes_written_median": int(statistics.median(
            r["device_bytes_written"] for r in runs)),
        "left_on_disk_max": max(len(r["left_on_disk"]) for r in runs),
        "rcs": sorted({r["rc"] for r in runs}),
        "outcomes": sorted({outcome_of(command, r["stdout"]) for r in runs}),
    }


def collect(result: BootResult, filesystems: Sequence[str], commands: Sequence[str],
            repeat: int) -> dict[str, Any]:
    """Parse the measured records of one boot into per-(fs, command) summaries."""
    doc: dict[str, Any] = {"kernel": result.kernel.name, "release": result.kernel.release,
                           "boot_wall_s": round(result.wall_s, 1), "errors": result.errors,
                           "cells": {}, "startup": {}}
    for fs in filesystems:
        for cmd in commands:
            runs = []
            for round_ in range(repeat):
                record = result.records.get(f"{cmd}:{fs}:{round_}")
                if record is not None and record.rc == 0 and record.stdout.strip():
                    runs.append(json.loads(record.stdout))
            if runs:
                doc["cells"][f"{fs}/{cmd}"] = {**summarise(runs, cmd), "raw": runs}
    for name, record in result.records.items():
        if name.startswith("py:") and record.rc == 0 and record.stdout.strip():
            run = json.loads(record.stdout)
            doc["startup"][name[3:]] = {k: run[k] for k in ("wall_s", "cpu_s", "peak_rss_kib")}
    return doc


def write_profile(result: BootResult) -> Path | None:
    parts = []
    for name in ("profile:importtime", "profile:cprofile"):
        record = result.records.get(name)
        if record is not None:
            text = record.stderr if name.endswith("importtime") else record.stdout
            parts.append(f"### {name} (rc={record.rc}, {record.duration_s} s)\n{text}")
    if not parts:
        return None
    path = OUT / f"vm-profile-{result.kernel.name}.txt"
    path.write_text("\n".join(parts))
    return path


def print_table(doc: dict[str, Any], plan: Plan) -> None:
    print(f"\n{doc['kernel']} ({doc['release']}, {doc.get('arch', 'x86_64')}), "
          f"boot {doc['boot_wall_s']} s, "
          f"plan {' '.join(plan.args())}, load {os.getloadavg()[0]:.2f}")
    if doc["errors"]:
        print(f"  ERRORS: {doc['errors']}")
    for name, run in doc["startup"].items():
        print(f"  start-up {name:16} wall {run['wall_s']:.3f}s cpu {run['cpu_s']:.3f}s "
              f"rss {run['peak_rss_kib'] / 1024:.1f} MiB")
    print(f"  {'cell':20} {'wall med':>9} {'min':>7} {'max':>7} {'repro':>7} {'cpu':>7} "
          f"{'rss MiB':>8} {'dev bytes':>10} {'left':>4} {'vs C':>6}  outcome")
    for key, cell in doc["cells"].items():
        fs = key.split("/")[0]
        c_wall = doc["cells"].get(f"{fs}/repro7", {}).get("wall_s_median")
        ratio = f"{cell['wall_s_median'] / c_wall:.2f}x" if c_wall else "-"
        repro = f"{cell['repro_s_median']:.3f}" if cell["repro_s_median"] is not None else "-"
        print(f"  {key:20} {cell['wall_s_median']:>8.3f}s {cell['wall_s_min']:>6.3f}s "
              f"{cell['wall_s_max']:>6.3f}s {repro:>7} {cell['cpu_s_median']:>6.3f}s "
              f"{cell['peak_rss_mib_max']:>8.1f} {cell['device_bytes_written_median']:>10} "
              f"{cell['left_on_disk_max']:>4} {ratio:>6}  {','.join(cell['outcomes'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default=",".join(DEFAULT_KERNELS))
    parser.add_argument("--fs", default=",".join(FILESYSTEMS))
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--before-src", type=Path, default=None,
                        help="also run this directory's thpcheck package (before/after)")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    args = parser.parse_args(argv)
    # SIGTERM (a background job ignores SIGINT) unwinds like an exception, so boot() kills qemu.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tiers: dict[str, Artifacts] = {}
    plan = Plan()
    filesystems = args.fs.split(",")
    commands = args.commands.split(",")
    OUT.mkdir(parents=True, exist_ok=True)
    docs = []
    with tempfile.TemporaryDirectory(prefix="thpcheck-vmcost-") as tmp:
        app = Path(tmp) / "app.cpio"
        if not build_app(app):
            print("vm_cost: operator/thpcheck not found", file=sys.stderr)
            return 2
        extra = []
        if args.before_src:
            build_before(args.before_src, Path(tmp) / "before.cpio")
            extra.append(Path(tmp) / "before.cpio")
            commands += [f"{c}@before" for c in commands if c in ("check", "repro")]
        for index, name in enumerate(args.kernels.split(",")):
            tier = TIER_OF.get(name, "x86_64")
            if tier not in tiers:
                tiers[tier] = load_artifacts(tier=tier)
            artifacts = tiers[tier]
            initrd = [artifacts.base_cpio, app, *extra]
            kernel: Kernel = artifacts.kernels[name]
            steps = cost_steps(plan, filesystems, commands, args.repeat,
                               args.profile and index == 0)
            load_before = os.getloadavg()
            result = boot(kernel, steps, initrd_parts=initrd,
                          disks={fs: artifacts.disks[fs] for fs in FILESYSTEMS},
                          timeout_s=7200)
            doc = collect(result, filesystems, commands, args.repeat)
            doc["arch"] = kernel.arch
            doc["plan"] = plan.args()
            doc["load_before"] = [round(x, 2) for x in load_before]
            doc["load_after"] = [round(x, 2) for x in os.getloadavg()]
            doc["host_nproc"] = os.cpu_count()
            (OUT / f"vm-cost-{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
            profile = write_profile(result)
            docs.append(doc)
            if not args.json:
                print_table(doc, plan)
                print(f"  load before {doc['load_before']} after {doc['load_after']}"
                      + (f"; profile: {profile}" if profile else ""), flush=True)
    if args.json:
        for doc in docs:
            for cell in doc["cells"].values():
                cell.pop("raw", None)
        print(json.dumps(docs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
