"""The qemu kernel matrix: prove the bug model cell by cell on real kernels.

Each kernel boots once for this module; its boot runs every filesystem's cells
(repro7, and the agent's `check --json` and `repro` once the agent exists),
then the keep-going and mitigation extras on kernels that must lose data.
Expected outcomes derive from the evidence recorded at build time.

The arm64 kernels (cross-compiled from the same sources, booted with
qemu-system-aarch64) run the same cells: 4K pages unfixed and fixed, and 16K pages
unfixed (a 32 MiB PMD, so the agent's window, head probe and keep-going base are
32 MiB there). They are marked `vm_arm64`, the tier THPCHECK_REQUIRE_VM_ARM64
requires. The 64K-page kernel has its own module (test_arm64_64k.py): its PMD is
512 MiB, larger than the page cache allows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from devtools.vm.guest import FILESYSTEMS, BootResult
from devtools.vm.matrix import (
    REPRO_EXIT,
    SCAN_SLEEP_KNOB,
    SCAN_SLEEP_OFF,
    Artifacts,
    Plan,
    cell_steps,
    expected_outcome,
    expected_reason,
    expected_verdict,
    parse_repro,
    record_summary,
)
from tests.vm.conftest import GuestRunner, require_vm

pytestmark = pytest.mark.vm

X86_KERNELS = ("unfixed-6.12", "unfixed-6.1", "fixed-6.12", "no-rothp")
ARM64_KERNELS = ("arm64-unfixed-6.12", "arm64-fixed-6.12", "arm64-16k-unfixed-6.12")
ARM64_PAGES = {"arm64-unfixed-6.12": "4K", "arm64-fixed-6.12": "4K",
               "arm64-16k-unfixed-6.12": "16K"}
KERNELS = (*X86_KERNELS,
           *(pytest.param(name, marks=pytest.mark.vm_arm64, id=name) for name in ARM64_KERNELS))
PLAN = Plan()
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "out"


@pytest.fixture(scope="module", params=KERNELS)
def booted(request: pytest.FixtureRequest, run_guest: GuestRunner) -> BootResult:
    """One boot of one kernel running all of its cells."""
    kernel = run_guest.kernel(request.param)
    result = run_guest(kernel, cell_steps(kernel, PLAN, run_guest.app.has_agent))
    _save(result)
    return result


def _save(result: BootResult) -> None:
    """Keep per-cell durations for the benchmarks (benchmarks/out is git-ignored)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {"kernel": result.kernel.name, "release": result.kernel.release,
           "wall_s": round(result.wall_s, 1), "booted_at_s": result.booted_at_s,
           "plan": PLAN.args(),
           "records": {n: {"rc": r.rc, "duration_s": r.duration_s, "stdout": r.stdout,
                           "stderr": r.stderr}
                       for n, r in result.records.items()}}
    (RESULTS_DIR / f"vm-matrix-{result.kernel.name}.json").write_text(
        json.dumps(doc, indent=2) + "\n")


def _need_agent(run_guest: GuestRunner) -> None:
    """Agent cells skip until operator/thpcheck exists (fail in CI)."""
    if not run_guest.app.has_agent:
        msg = "operator/thpcheck/__main__.py not found: agent cells cannot run"
        if require_vm():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def test_matrix_covers_both_sides(artifacts: Artifacts) -> None:
    """The matrix proves nothing unless some kernel must lose data and others must not."""
    ks = artifacts.kernels
    assert set(X86_KERNELS) <= set(ks), f"kernels built: {sorted(ks)}"
    assert any(expected_outcome(k, "ext4") == "reproduced" for k in ks.values()), \
        "no unfixed RO_THP kernel: the positive case is unproven"
    assert ks["fixed-6.12"].fix_present, ks["fixed-6.12"].meta["fix"]
    assert not ks["unfixed-6.12"].fix_present and not ks["unfixed-6.1"].fix_present
    assert not ks["no-rothp"].read_only_thp


@pytest.mark.vm_arm64
def test_arm64_matrix_covers_both_sides(arm64_artifacts: Artifacts) -> None:
    """arm64: an unfixed and a fixed kernel of the same sources as x86 (4K pages), and the
    unfixed one with 16K pages; RO_THP on."""
    ks = arm64_artifacts.kernels
    assert set(ARM64_KERNELS) <= set(ks), f"kernels built: {sorted(ks)}"
    assert ks["arm64-fixed-6.12"].fix_present, ks["arm64-fixed-6.12"].meta["fix"]
    assert not ks["arm64-unfixed-6.12"].fix_present
    assert not ks["arm64-16k-unfixed-6.12"].fix_present
    for name, pages in ARM64_PAGES.items():
        kernel = ks[name]
        assert (kernel.arch, kernel.page_size, kernel.read_only_thp) == ("arm64", pages, True)
        assert f"CONFIG_ARM64_{pages}_PAGES=y" in (kernel.dir / "config").read_text()


def test_boot(booted: BootResult) -> None:
    """The guest ran its whole job, every record intact, on the kernel we built."""
    assert booted.done and not booted.errors, (booted.errors, booted.console[-3000:])
    facts = booted["facts"].stdout.splitlines()
    assert facts[0] == booted.kernel.release
    want = "CONFIG_READ_ONLY_THP_FOR_FS=y" if booted.kernel.read_only_thp else \
        "# CONFIG_READ_ONLY_THP_FOR_FS is not set"
    assert want in facts, facts
    dmesg = booted["dmesg"].stdout
    assert not re.search(r"\b(BUG|WARNING|Oops|Call Trace)\b", dmesg), dmesg[-3000:]


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_repro7(booted: BootResult, fs: str) -> None:
    """The C yardstick reproducer's outcome on this cell."""
    want = expected_outcome(booted.kernel, fs)
    rec = booted[f"repro7:{fs}"]
    got = parse_repro(rec.stdout)
    assert (got.outcome, rec.rc) == (want, REPRO_EXIT[want]), record_summary(rec)
    _check_outcome_fields(want, got.fields, rec.stdout)


def _check_outcome_fields(want: str, fields: dict[str, int], stdout: str) -> None:
    """The details that make each outcome what it claims to be."""
    if want == "reproduced":
        # Lost appended bytes read back as zeros (the purge, not corruption).
        assert fields["bad_bytes"] > 0 and fields["zero_count"] == fields["bad_bytes"], stdout
    elif want == "not_reproduced":
        assert fields["iters"] == PLAN.iterations, stdout
    else:
        assert fields["step"] == 2, stdout  # MADV_COLLAPSE known; file collapse refused


def test_keep_going_counts_losses(booted: BootResult) -> None:
    """--keep-going goes on after a loss and counts every lost iteration."""
    losing = [fs for fs in FILESYSTEMS if expected_outcome(booted.kernel, fs) == "reproduced"]
    if not losing:
        pytest.skip(f"{booted.kernel.name}: no cell is expected to lose data")
    for fs in losing:
        rec = booted[f"keepgoing7:{fs}"]
        got = parse_repro(rec.stdout)
        assert rec.rc == 1 and got.outcome == "reproduced", record_summary(rec)
        lost = got.fields["summary_lost_iterations"]
        assert lost == got.reproduced_lines > 1, record_summary(rec)


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_agent_check(booted: BootResult, run_guest: GuestRunner, fs: str) -> None:
    """`thpcheck check --json` in the guest: verdict, config reading and repro outcome."""
    _need_agent(run_guest)
    rec = booted[f"check:{fs}"]
    doc = rec.json()
    path = doc["paths"][0]
    want = expected_verdict(booted.kernel, fs)
    assert (path["fstype"], path["verdict"]) == (fs, want), record_summary(rec)
    assert path["repro"]["outcome"] == expected_outcome(booted.kernel, fs), record_summary(rec)
    assert doc["kernel"]["read_only_thp_for_fs"] is booted.kernel.read_only_thp
    assert doc["kernel"]["pmd_size"] == booted.kernel.pmd_size  # the kernel's hpage_pmd_size
    if booted.kernel.page_size != "4K" and path["prediction"]["verdict"] == "at-risk":
        # 16K pages: the reason says only files of one PMD (32 MiB) and more are at risk
        assert f"{booted.kernel.page_size} pages" in path["prediction"]["reason"], path
    assert doc["mitigated"] is False
    assert rec.rc == (1 if want == "affected" else 0), record_summary(rec)
    assert path["disagreement"] is None, path  # prediction and reproduction agree
    reason = expected_reason(booted.kernel, fs)
    if reason is not None:
        assert path["rule"] and re.search(reason, path["reason"], re.I), path


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_agent_repro(booted: BootResult, run_guest: GuestRunner, fs: str) -> None:
    """`thpcheck repro` in the guest agrees with the evidence (and with repro7)."""
    _need_agent(run_guest)
    want = expected_outcome(booted.kernel, fs)
    rec = booted[f"repro:{fs}"]
    got = parse_repro(rec.stdout)
    assert (got.outcome, rec.rc) == (want, REPRO_EXIT[want]), record_summary(rec)
    _check_outcome_fields(want, got.fields, rec.stdout)


def test_agent_keep_going(booted: BootResult, run_guest: GuestRunner) -> None:
    """`thpcheck repro --keep-going` counts losses across iterations."""
    _need_agent(run_guest)
    losing = [fs for fs in FILESYSTEMS if expected_outcome(booted.kernel, fs) == "reproduced"]
    if not losing:
        pytest.skip(f"{booted.kernel.name}: no cell is expected to lose data")
    for fs in losing:
        rec = booted[f"keepgoing:{fs}"]
        got = parse_repro(rec.stdout)
        assert rec.rc == 1 and got.reproduced_lines > 1, record_summary(rec)


def test_agent_mitigated_still_affected(booted: BootResult, run_guest: GuestRunner) -> None:
    """khugepaged stopped: MADV_COLLAPSE still loses data, so affected + mitigated."""
    _need_agent(run_guest)
    losing = [fs for fs in FILESYSTEMS if expected_outcome(booted.kernel, fs) == "reproduced"]
    if not losing:
        pytest.skip(f"{booted.kernel.name}: no cell is expected to lose data")
    knob = booted[f"knob:{SCAN_SLEEP_KNOB}"]
    assert knob.rc == 0 and knob.stdout.strip() == SCAN_SLEEP_OFF, record_summary(knob)
    rec = booted[f"check-mitigated:{losing[0]}"]
    doc = rec.json()
    assert (doc["verdict"], doc["mitigated"]) == ("affected", True), record_summary(rec)
