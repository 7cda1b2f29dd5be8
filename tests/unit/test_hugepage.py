"""The kernel's PMD size and the reproducer's window arithmetic over it (2 MiB, 32 MiB, 512 MiB).

A 4K-page kernel has a 2 MiB PMD, arm64's 16K pages 32 MiB, its 64K pages 512 MiB: the collapse
window, its alignment, the head probe and the smallest usable base all follow from that value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.hosttree import HostTree
from thpcheck.host.check import CheckOptions, check
from thpcheck.host.facts import collect
from thpcheck.host.hostroot import HostRoot
from thpcheck.host.repro import PATTERN_BLOCK, ReproConfig, pmd_or_skip
from thpcheck.model.hugepage import (
    UNKNOWN,
    HugePages,
    align_up,
    base_too_small,
    head_size,
    kernel_hugepages,
    page_size_from_config,
    pmd_for_page_size,
    reservation,
    size_text,
    trims,
)
from thpcheck.model.kconfig import parse_config
from thpcheck.model.kernel import parse_release
from thpcheck.model.predict import ConfigKnowledge, predict
from thpcheck.model.report import render_table, to_document
from thpcheck.model.repro import ReproOutcome, ReproResult
from thpcheck.model.rules import Evidence, Outcome
from thpcheck.model.verdict import Verdict, combine

KiB, MiB = 1 << 10, 1 << 20
# (page size, PMD size, the config option that selects the page size on arm64)
SIZES = [(4 * KiB, 2 * MiB, "CONFIG_ARM64_4K_PAGES"),
         (16 * KiB, 32 * MiB, "CONFIG_ARM64_16K_PAGES"),
         (64 * KiB, 512 * MiB, "CONFIG_ARM64_64K_PAGES")]
IDS = ["pmd-2MiB", "pmd-32MiB", "pmd-512MiB"]
# Where mmap may put a reservation: page aligned, sometimes already on a PMD boundary.
BASES = [0x7F00_0000_0000, 0x7F12_3456_0000, 0x7FFF_F7A0_1000, 0xFFFF_8000_0000 + 0x10000]


@pytest.mark.parametrize(("page", "pmd", "option"), SIZES, ids=IDS)
def test_pmd_follows_from_the_page_size(page: int, pmd: int, option: str) -> None:
    assert pmd_for_page_size("aarch64", page) == pmd
    config = parse_config(f"{option}=y\n", "proc/config.gz")
    assert page_size_from_config(config) == page
    # No hpage_pmd_size (THP off, old kernel): the config's page size decides.
    fallback = kernel_hugepages(None, "aarch64", 4 * KiB, config)
    assert (fallback.page_size, fallback.pmd_size, fallback.source) == (page, pmd, "page size")
    # The kernel's own value wins over any formula.
    assert kernel_hugepages(f"{pmd}\n", "ppc64le", page, None) == HugePages(page, pmd, "sysfs")


@pytest.mark.parametrize(("page", "pmd", "option"), SIZES, ids=IDS)
def test_window_arithmetic(page: int, pmd: int, option: str) -> None:
    """The one-PMD collapse window: reserved with room to align, aligned, trimmed exactly."""
    span = reservation(pmd, pmd)
    assert span == 2 * pmd
    for address in BASES:
        base = address - address % page  # mmap returns whole pages of this kernel
        aligned = align_up(base, pmd)
        assert aligned % pmd == 0 and base <= aligned < base + pmd
        assert aligned + pmd <= base + span  # the whole window fits in the reservation
        cut = trims(base, span, aligned, pmd)
        assert sum(size for _, size in cut) == span - pmd
        assert all(start + size <= aligned or start >= aligned + pmd for start, size in cut)
        assert all(size % page == 0 for _, size in cut)  # munmap takes whole pages
    assert align_up(BASES[0], pmd) == BASES[0]  # already aligned: no head trim
    assert len(trims(BASES[0], span, BASES[0], pmd)) == 1


@pytest.mark.parametrize(("page", "pmd", "option"), SIZES, ids=IDS)
def test_head_probe_and_minimum_base(page: int, pmd: int, option: str) -> None:
    hugepages = HugePages(page, pmd, "sysfs")
    default = ReproConfig().base_size  # 64 MiB
    assert head_size(default, pmd) == min(default, pmd)
    assert head_size(pmd, pmd) == pmd and head_size(3 * pmd, pmd) == pmd
    assert head_size(pmd, pmd) % PATTERN_BLOCK == 0  # the base pattern continues after it
    assert base_too_small(pmd, hugepages) is None
    assert pmd_or_skip(ReproConfig(base_size=pmd), hugepages) == pmd
    assert base_too_small(pmd - page, hugepages) is not None
    skipped = pmd_or_skip(ReproConfig(base_size=pmd // 2), hugepages)
    assert isinstance(skipped, ReproResult) and skipped.outcome is ReproOutcome.SKIPPED


def test_skip_message_names_both_sizes_and_the_fix() -> None:
    hugepages = HugePages(64 * KiB, 512 * MiB, "sysfs")
    assert base_too_small(64 * MiB, hugepages) == (
        "skipped: base 64 MiB < PMD 512 MiB on this kernel; pass --base-size >= 512MiB")
    assert base_too_small(64 * MiB, HugePages(4 * KiB, 2 * MiB, "sysfs")) is None
    assert "unknown" in (base_too_small(64 * MiB, UNKNOWN) or "")
    assert kernel_hugepages(None, "ppc64le", 64 * KiB, None).pmd_size is None
    assert [size_text(s) for s in (2 * MiB, 512 * MiB, 64 * KiB, 1 << 30, 1000)] == [
        "2 MiB", "512 MiB", "64 KiB", "1 GiB", "1000 bytes"]


AT_RISK_CONFIG = ConfigKnowledge(True, False, "proc/config.gz", Evidence.VERIFIED)


@pytest.mark.parametrize(("page", "pmd", "named", "release"), [
    (4 * KiB, 2 * MiB, None, "6.12.95"), (16 * KiB, 32 * MiB, "16K pages", "6.12.95"),
    (64 * KiB, 512 * MiB, "64K pages", "6.6.50"),
], ids=IDS)
def test_at_risk_reason_names_the_page_size(page: int, pmd: int, named: str | None,
                                            release: str) -> None:
    """16K pages: at risk for files of 32 MiB and more. 64K pages before 6.11: at risk for
    files of 512 MiB and more, unless a stable backport refuses PMD-sized page cache."""
    kernel = parse_release(release)
    hugepages = HugePages(page, pmd, "sysfs")
    for prediction in (predict(kernel, AT_RISK_CONFIG, "ext4", hugepages=hugepages),
                       predict(kernel, AT_RISK_CONFIG, node_only=True, hugepages=hugepages)):
        assert prediction.outcome is Outcome.AT_RISK
        if named is None:
            assert "pages" not in prediction.reason, prediction.reason
        else:
            assert named in prediction.reason and f"files of {size_text(pmd)} and more" in \
                prediction.reason, prediction.reason
    ruled_out = predict(kernel, AT_RISK_CONFIG, "xfs", hugepages=hugepages)
    assert ruled_out.outcome is Outcome.NOT_AFFECTED and "pages" not in ruled_out.reason


@pytest.mark.parametrize(("page", "pmd", "release", "rule"), [
    (64 * KiB, 512 * MiB, "6.12.95", "G19"), (64 * KiB, 512 * MiB, "7.1.1", "G19"),
    (64 * KiB, 512 * MiB, "6.10.14", "G10"), (16 * KiB, 32 * MiB, "6.12.95", "G10"),
    (4 * KiB, 2 * MiB, "6.12.95", "G10"),
])
def test_a_pmd_above_the_page_cache_limit_rules_file_thps_out(page: int, pmd: int,
                                                              release: str, rule: str) -> None:
    """64K pages since 6.11: PMD order 13 > MAX_PAGECACHE_ORDER 11, collapse refuses file
    ranges (seen in the 64K arm64 guest): not affected, whatever the filesystem."""
    hugepages = HugePages(page, pmd, "sysfs")
    prediction = predict(parse_release(release), AT_RISK_CONFIG, "ext4", hugepages=hugepages)
    assert prediction.rule == rule, prediction.reason
    assert hugepages.above_pagecache is (page == 64 * KiB)
    if rule == "G19":
        assert prediction.outcome is Outcome.NOT_AFFECTED and "64K pages" in prediction.reason
        assert predict(parse_release(release), AT_RISK_CONFIG, node_only=True,
                       hugepages=hugepages).rule == "G19"


def test_skipped_reproducer_keeps_the_prediction_and_says_why() -> None:
    kernel = parse_release("6.6.50")
    hugepages = HugePages(64 * KiB, 512 * MiB, "sysfs")
    skipped = pmd_or_skip(ReproConfig(), hugepages)
    assert isinstance(skipped, ReproResult)
    verdict = combine(predict(kernel, AT_RISK_CONFIG, "ext4", hugepages=hugepages), skipped)
    assert verdict.verdict is Verdict.SUSCEPTIBLE and verdict.disagreement is None
    assert "64K pages" in verdict.reason and "pass --base-size >= 512MiB" in verdict.reason


ARM64_64K = {"release": "6.6.50", "pmd_size": 512 * MiB,
             "config": "CONFIG_READ_ONLY_THP_FOR_FS=y\nCONFIG_ARM64_64K_PAGES=y\n"}


def test_facts_report_the_pmd_size(tmp_path: Path) -> None:
    facts = collect(HostRoot(str(HostTree(**ARM64_64K).write(tmp_path))))  # type: ignore[arg-type]
    assert facts.kernel.hugepages.pmd_size == 512 * MiB
    assert facts.kernel.hugepages.source == "sysfs"
    no_sysfs = collect(HostRoot(str(HostTree(**{**ARM64_64K, "pmd_size": None}).write(  # type: ignore[arg-type]
        tmp_path / "b"))))
    assert no_sysfs.kernel.hugepages.page_size == 64 * KiB  # from the config
    if no_sysfs.machine in ("x86_64", "aarch64"):
        assert no_sysfs.kernel.hugepages.pmd_size == 512 * MiB
        assert no_sysfs.kernel.hugepages.source == "page size"
    # A saved snapshot of an arm64 host: its arch file and config, not this machine's.
    saved = collect(HostRoot(str(HostTree(**{**ARM64_64K, "pmd_size": None,  # type: ignore[arg-type]
                                             "arch": "aarch64"}).write(tmp_path / "c"))),
                    snapshot=True)
    assert (saved.machine, saved.kernel.hugepages) == (
        "aarch64", HugePages(64 * KiB, 512 * MiB, "page size"))


def test_check_skips_a_base_below_one_pmd_per_path(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``check`` on a 64K-page kernel with the default 64 MiB base: the path says skipped and
    why, nothing is written, and the prediction stands (susceptible, page size named)."""
    root = HostTree(**ARM64_64K).write(tmp_path / "host")  # type: ignore[arg-type]
    # The tree stands for a live host (its proc/ is a plain directory, which check() would
    # take for a saved snapshot, where the reproducer cannot run at all).
    monkeypatch.setattr("thpcheck.host.facts.is_snapshot", lambda root: False)
    scratch = root / "scratch"
    scratch.mkdir()
    report = check(CheckOptions(paths=["/scratch"], host_root=str(root)))
    (path,) = report.paths
    assert path.repro is not None and path.repro.outcome is ReproOutcome.SKIPPED
    assert path.repro.message == ("skipped: base 64 MiB < PMD 512 MiB on this kernel; "
                                  "pass --base-size >= 512MiB")
    assert path.verdict.verdict is Verdict.SUSCEPTIBLE
    assert "64K pages" in path.verdict.reason and path.repro.message in path.verdict.reason
    assert list(scratch.iterdir()) == []
    document = to_document(report)
    assert (document["kernel"]["page_size"], document["kernel"]["pmd_size"]) == (
        64 * KiB, 512 * MiB)
    assert document["paths"][0]["repro"]["outcome"] == "skipped"
    assert "64K pages, PMD 512 MiB" in render_table(report)


def test_a_refused_collapse_settles_a_64k_kernel_before_6_11() -> None:
    """5.17-6.10 with 64K pages: at risk unless a stable backport refuses PMD-sized file THPs;
    the reproducer's EINVAL on the file (anonymous collapse working) is that backport: not
    affected, no disagreement. A 4K kernel that refuses stays a loud disagreement."""
    refused = ReproResult(ReproOutcome.COLLAPSE_UNSUPPORTED, madv_collapse_known=True,
                          errno="EINVAL", step=2)
    large = HugePages(64 * KiB, 512 * MiB, "sysfs")
    prediction = predict(parse_release("6.6.50"), AT_RISK_CONFIG, "ext4", hugepages=large)
    assert prediction.outcome is Outcome.AT_RISK and prediction.backport_may_refuse
    verdict = combine(prediction, refused)
    assert (verdict.verdict, verdict.rule, verdict.disagreement) == (
        Verdict.NOT_AFFECTED, "RT2", None)
    assert "avoid PMD-size page cache" in verdict.reason
    old = predict(parse_release("5.15.160"), AT_RISK_CONFIG, "ext4", hugepages=large)
    assert not old.backport_may_refuse  # no multi-index page cache, nothing to backport
    small = predict(parse_release("6.6.50"), AT_RISK_CONFIG, "ext4",
                    hugepages=HugePages(4 * KiB, 2 * MiB, "sysfs"))
    assert combine(small, refused).disagreement is not None
