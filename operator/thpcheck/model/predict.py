"""Static prediction: apply the gate table to a kernel, a config and a path's filesystem."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thpcheck.model import kconfig
from thpcheck.model.distro import DistroMatch
from thpcheck.model.facts import ThpKnobs
from thpcheck.model.hugepage import HugePages, susceptible_sizes
from thpcheck.model.kernel import KernelVersion
from thpcheck.model.mounts import Mount
from thpcheck.model.rules import (
    G18_REASON,
    MADV_COLLAPSE_SINCE,
    PAGECACHE_LIMIT_FROM,
    PAGECACHE_ORDER_LIMIT_SINCE,
    RULES,
    Condition,
    Evidence,
    Outcome,
    Rule,
    fixed_stable,
    fs_family,
)


@dataclass(frozen=True)
class ConfigKnowledge:
    """What is known about the relevant config options, and how it is known."""

    read_only_thp: bool | None
    btrfs_experimental: bool | None = None
    source: str | None = None  # "proc/config.gz", "boot/config-6.1.0", "distro:fedora"
    evidence: Evidence | None = None

    @property
    def confidence(self) -> str:
        """``config-known`` (read, or a verified distro row), ``inferred`` or ``unknown``."""
        if self.read_only_thp is None:
            return "unknown"
        return "config-known" if self.evidence is Evidence.VERIFIED else "inferred"


def knowledge_from_config(config: kconfig.KernelConfig) -> ConfigKnowledge:
    """Knowledge read from the kernel's own config file: verified (unknown for a stub)."""
    if config.partial:
        return ConfigKnowledge(read_only_thp=None,
                               source=f"{config.source} (partial: no THP options)")
    return ConfigKnowledge(
        read_only_thp=config.enabled(kconfig.READ_ONLY_THP_FOR_FS),
        btrfs_experimental=config.enabled(kconfig.BTRFS_EXPERIMENTAL),
        source=config.source,
        evidence=Evidence.VERIFIED,
    )


def knowledge_from_distro(match: DistroMatch | None) -> ConfigKnowledge:
    """Knowledge from the distro table: as good as the row's evidence."""
    if match is None or match.row.ro_thp is None:
        source = f"distro:{match.row.id}" if match else None
        return ConfigKnowledge(read_only_thp=None, source=source)
    return ConfigKnowledge(
        read_only_thp=match.row.ro_thp,
        btrfs_experimental=False,  # unset in every distro config checked (§2)
        source=f"distro:{match.row.id}",
        evidence=match.row.evidence,
    )


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one path (or the whole node for kernel-level rules)."""

    outcome: Outcome
    rule: str
    reason: str
    evidence: Evidence
    sources: tuple[str, ...]
    grade: str | None = None
    # At risk only if this kernel lacks a stable backport that refuses PMD-sized file THPs
    # (64K pages before 6.11): a refused file collapse then settles it (verdict.combine).
    backport_may_refuse: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The prediction's object in the agent's report and in ``thpcheck preflight --json``
        (``backport_may_refuse`` is the verdict's business, not written)."""
        return {
            "verdict": self.outcome.value,
            "rule": self.rule,
            "reason": self.reason,
            "evidence": self.evidence.value,
            "sources": list(self.sources),
            "grade": self.grade,
        }


def _condition_holds(
    condition: Condition,
    kernel: KernelVersion | None,
    config: ConfigKnowledge,
    mount: Mount | None,
    hugepages: HugePages | None,
) -> bool:
    match condition:
        case Condition.NONE:
            return True
        case Condition.KERNEL_UNKNOWN:
            return kernel is None
        case Condition.CONFIG_OFF:
            return config.read_only_thp is False
        case Condition.CONFIG_ON:
            return config.read_only_thp is True
        case Condition.FIXED_STABLE:
            return kernel is not None and fixed_stable(kernel) is not None
        case Condition.READ_ONLY_MOUNT:
            return mount is not None and mount.read_only
        case Condition.EXT4_JOURNALLED:
            return mount is not None and mount.super_option("data") == "journal"
        case Condition.BTRFS_EXPERIMENTAL:
            return config.btrfs_experimental is True
        case Condition.PMD_ABOVE_PAGECACHE:
            return hugepages is not None and hugepages.above_pagecache


def _rule_matches(
    rule: Rule,
    kernel: KernelVersion | None,
    config: ConfigKnowledge,
    fstype: str | None,
    mount: Mount | None,
    node_only: bool,
    hugepages: HugePages | None,
) -> bool:
    if node_only and not rule.node_level:
        return False
    if rule.families is not None and fs_family(fstype) not in rule.families:
        return False
    if rule.kernel_min is not None and (kernel is None or kernel.branch < rule.kernel_min):
        return False
    if rule.kernel_below is not None and (kernel is None or kernel.branch >= rule.kernel_below):
        return False
    return _condition_holds(rule.condition, kernel, config, mount, hugepages)


def grade(kernel: KernelVersion | None, thp: ThpKnobs | None) -> str:
    """How likely a real workload creates purge-armed file THPs (§3.2)."""
    if kernel is None:
        return "unknown"
    enabled = thp.enabled if thp else None
    khugepaged_off = thp is not None and thp.khugepaged_stopped
    madv_collapse = kernel.branch >= MADV_COLLAPSE_SINCE
    if khugepaged_off or enabled == "never":
        return "low (MADV_COLLAPSE callers only)" if madv_collapse else "minimal (no new collapses)"
    if kernel.branch >= (6, 8):
        return "high" if enabled == "always" else "low-medium"
    if kernel.branch >= (5, 14):
        return "medium" if enabled == "always" else "low"
    return "low" if enabled == "always" else "very low"


def _backport_may_refuse(kernel: KernelVersion | None, hugepages: HugePages | None) -> bool:
    """5.17-6.10 with a PMD above the page-cache limit: S17's stable backport may be in."""
    return (kernel is not None and hugepages is not None and hugepages.above_pagecache
            and PAGECACHE_LIMIT_FROM <= kernel.branch < PAGECACHE_ORDER_LIMIT_SINCE)


def _sized(reason: str, hugepages: HugePages | None) -> str:
    """An at-risk reason, naming the page size when the PMD is not 2 MiB (only files of one
    PMD and more can get a file THP there)."""
    sizes = susceptible_sizes(hugepages)
    return f"{reason} ({sizes})" if sizes else reason


def predict(
    kernel: KernelVersion | None,
    config: ConfigKnowledge,
    fstype: str | None = None,
    mount: Mount | None = None,
    thp: ThpKnobs | None = None,
    node_only: bool = False,
    hugepages: HugePages | None = None,
) -> Prediction:
    """Evaluate the gate table top-down for one path (or kernel-level rules only)."""
    for rule in RULES:
        if not _rule_matches(rule, kernel, config, fstype, mount, node_only, hugepages):
            continue
        if rule.outcome is Outcome.AT_RISK:
            if config.read_only_thp is None:
                return Prediction(
                    Outcome.UNKNOWN,
                    "G18",
                    G18_REASON.format(rule=rule.id, reason=rule.reason),
                    Evidence.INFERRED,
                    rule.sources,
                )
            return Prediction(rule.outcome, rule.id, _sized(rule.reason, hugepages),
                              rule.evidence, rule.sources, grade(kernel, thp),
                              _backport_may_refuse(kernel, hugepages))
        return Prediction(rule.outcome, rule.id, rule.reason, rule.evidence, rule.sources)
    if node_only:
        if config.read_only_thp is None:
            return Prediction(Outcome.UNKNOWN, "G18", "CONFIG_READ_ONLY_THP_FOR_FS could not be "
                              "determined", Evidence.INFERRED, ())
        return Prediction(Outcome.AT_RISK, "K", _sized(
            "unfixed kernel with CONFIG_READ_ONLY_THP_FOR_FS=y: at risk on filesystems without "
            "large folios", hugepages), Evidence.VERIFIED, ("S1", "S11"), grade(kernel, thp),
            _backport_may_refuse(kernel, hugepages))
    return Prediction(Outcome.UNKNOWN, "G17", "no rule matched", Evidence.INFERRED, ())
