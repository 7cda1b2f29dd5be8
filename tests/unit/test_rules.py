"""Every gate-table row, exercised through host-root fixture trees (kernel x config x fs x knobs).

Each case writes a fake host (``proc``, ``sys``, ``boot``, ``etc``), collects facts from it the
way the agent does on a node, and checks the rule and outcome the model picks for a path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.unit.hosttree import HostTree
from thpcheck.host.check import config_knowledge
from thpcheck.host.facts import collect
from thpcheck.host.hostroot import HostRoot
from thpcheck.model.mounts import resolve
from thpcheck.model.predict import Prediction, predict
from thpcheck.model.rules import RULES, Outcome

RO_THP_Y = "CONFIG_READ_ONLY_THP_FOR_FS=y\n"
RO_THP_N = "# CONFIG_READ_ONLY_THP_FOR_FS is not set\n"
NA, RISK, UNK = Outcome.NOT_AFFECTED, Outcome.AT_RISK, Outcome.UNKNOWN
UNKNOWN_OS = 'ID=plan9\nPRETTY_NAME="Plan 9"\n'


@dataclass
class Case:
    name: str
    rule: str
    outcome: Outcome
    tree: dict[str, Any] = field(default_factory=dict)
    path: str = "/var/lib/thpcheck"


def _fs(fstype: str, opts: str = "rw") -> dict[str, Any]:
    return {"mounts": [("/", "ext4", "rw"), ("/var/lib/thpcheck", fstype, opts)]}


CASES = [
    Case("config off in proc/config.gz", "G1", NA, {"config": RO_THP_N}),
    Case("config off in boot/config-R", "G1", NA, {"config": RO_THP_N, "config_location": "boot"}),
    Case("config off in lib/modules/R/config", "G1", NA,
         {"config": RO_THP_N, "config_location": "modules"}),
    Case("option absent from the config", "G1", NA, {"config": "CONFIG_EXT4_FS=y\n"}),
    Case("release unreadable", "G0", UNK, {"release": "not-a-kernel", "config": RO_THP_Y}),
    Case("4.19 vendor backport with RO_THP=y", "G2b", UNK,
         {"release": "4.19.91-27.7.al7.x86_64", "config": RO_THP_Y}),
    Case("4.19 without a config", "G2", NA,
         {"release": "4.19.0", "config": None, "os_release": UNKNOWN_OS}),
    Case("7.2 removed the purge", "G3", NA, {"release": "7.2.1", "config": RO_THP_Y}),
    Case("6.12.96 fixed stable", "G4", NA, {"release": "6.12.96", "config": RO_THP_Y}),
    Case("64K pages, 6.12: PMD above the page-cache limit", "G19", NA,
         {"release": "6.12.95", "pmd_size": 512 << 20,
          "config": RO_THP_Y + "CONFIG_ARM64_64K_PAGES=y\n"}),
    Case("6.18.39 fixed stable (inferred)", "G4", NA, {"release": "6.18.39", "config": RO_THP_Y}),
    Case("7.1.4 fixed stable (inferred)", "G4", NA, {"release": "7.1.4-arch1-1",
                                                     "config": RO_THP_Y}),
    Case("Debian 6.12 ABI string with fixed sublevel in /proc/version", "G4", NA,
         {"release": "6.12.0-1-amd64", "config": RO_THP_Y,
          "proc_version": "Linux version 6.12.0-1-amd64 (Debian 6.12.118-1) #1 SMP"}),
    Case("tmpfs", "G5", NA, _fs("tmpfs")),
    Case("read-only mount", "G5", NA, _fs("ext4", "ro")),
    Case("xfs on 6.12", "G6", NA, _fs("xfs")),
    Case("xfs on 5.15 (no large folios yet)", "G7", RISK, {"release": "5.15.0", **_fs("xfs")}),
    Case("ext4 on 6.16", "G8", NA, {"release": "6.16.3", **_fs("ext4")}),
    Case("ext4 data=journal on 6.16", "G9", RISK,
         {"release": "6.16.3", **_fs("ext4", "rw,data=journal")}),
    Case("ext4 on 6.12.95", "G10", RISK, _fs("ext4")),
    Case("ext3 driven by ext4 on 6.1", "G10", RISK, {"release": "6.1.0", **_fs("ext3")}),
    Case("btrfs 6.17 with BTRFS_EXPERIMENTAL", "G11", NA,
         {"release": "6.17.1", "config": RO_THP_Y + "CONFIG_BTRFS_EXPERIMENTAL=y\n",
          **_fs("btrfs")}),
    Case("btrfs on 6.12.95", "G12", RISK, _fs("btrfs")),
    Case("f2fs", "G13", RISK, _fs("f2fs")),
    Case("bcachefs on 6.9", "G14", NA, {"release": "6.9.2", **_fs("bcachefs")}),
    Case("overlay judged by its ext4 upper layer", "G10", RISK,
         {"mounts": [("/", "ext4", "rw"),
                     ("/var/lib/thpcheck", "overlay",
                      "rw,lowerdir=/l1:/l2,upperdir=/upper/diff,workdir=/upper/work")]}),
    Case("overlay judged by its xfs upper layer", "G6", NA,
         {"mounts": [("/", "ext4", "rw"), ("/upper", "xfs", "rw"),
                     ("/var/lib/thpcheck", "overlay",
                      "rw,lowerdir=/l1,upperdir=/upper/diff,workdir=/upper/work")]}),
    Case("nfs4", "G16", UNK, _fs("nfs4", "rw,vers=4.2")),
    Case("vfat", "G17", UNK, _fs("vfat")),
    Case("no config, unknown distro, ext4 would be at risk", "G18", UNK,
         {"config": None, "os_release": UNKNOWN_OS}),
    Case("no config, Ubuntu row says not set", "G1", NA, {"config": None,
         "os_release": 'ID=ubuntu\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\n',
         "release": "6.8.0-45-generic"}),
    Case("no config, Fedora 6.8+ row says set; btrfs", "G12", RISK,
         {"config": None, "release": "6.8.5-301.fc40.x86_64",
          "os_release": 'ID=fedora\nPRETTY_NAME="Fedora Linux 40 (Workstation Edition)"\n',
          **_fs("btrfs")}),
    Case("a stub /proc/config.gz without THP options (OrbStack) is unknown", "G18", UNK,
         {"config": "CONFIG_HAVE_ARCH_TRANSPARENT_HUGEPAGE=y\nCONFIG_MEMCG=y\n",
          "release": "6.14.10-orbstack-00291-g1b252bd3edea",
          "os_release": 'PRETTY_NAME="OrbStack"\n'}),
    Case("a config without THP on an architecture without it is off", "G1", NA,
         {"config": "CONFIG_MMU=y\n"}),
    Case("no config, SLES 15 SP5 row is unknown", "G18", UNK,
         {"config": None, "release": "5.14.21-150500.55.39-default",
          "os_release": 'ID=sles\nPRETTY_NAME="SUSE Linux Enterprise Server 15 SP5"\n'}),
]


def _predict(tmp_path: Path, case: Case) -> Prediction:
    root = HostRoot(str(HostTree(**case.tree).write(tmp_path)))
    facts = collect(root)
    resolved = resolve(case.path, list(facts.mounts))
    assert resolved is not None
    return predict(facts.kernel.version, config_knowledge(facts), resolved.backing.fstype,
                   resolved.backing, facts.thp, hugepages=facts.kernel.hugepages)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rule_row(tmp_path: Path, case: Case) -> None:
    prediction = _predict(tmp_path, case)
    assert (prediction.rule, prediction.outcome) == (case.rule, case.outcome), prediction.reason


def test_every_rule_row_has_a_case() -> None:
    covered = {case.rule for case in CASES}
    assert {rule.id for rule in RULES} | {"G18"} <= covered


def test_reasons_and_sources_are_attached(tmp_path: Path) -> None:
    prediction = _predict(tmp_path, Case("btrfs", "G12", RISK, _fs("btrfs")))
    assert "btrfs" in prediction.reason
    assert prediction.sources == ("S11", "S15")


@pytest.mark.parametrize(
    ("release", "enabled", "scan_sleep", "grade"),
    [
        ("6.12.95", "[always] madvise never", 10000, "high"),
        ("6.12.95", "always [madvise] never", 10000, "low-medium"),
        ("6.12.95", "always [madvise] never", 4294967295, "low (MADV_COLLAPSE callers only)"),
        ("6.1.0", "[always] madvise never", 10000, "medium"),
        ("6.1.0", "always madvise [never]", 10000, "low (MADV_COLLAPSE callers only)"),
        ("5.15.0", "always madvise [never]", 10000, "minimal (no new collapses)"),
        ("5.10.0", "[always] madvise never", 10000, "low"),
    ],
)
def test_knob_grading(tmp_path: Path, release: str, enabled: str, scan_sleep: int,
                      grade: str) -> None:
    tree = {"release": release, "enabled": enabled, "scan_sleep": scan_sleep, **_fs("ext4")}
    prediction = _predict(tmp_path, Case("grade", "G10", RISK, tree))
    assert prediction.outcome is RISK
    assert prediction.grade == grade


def test_mitigation_is_read_from_the_knobs(tmp_path: Path) -> None:
    stopped = collect(HostRoot(str(HostTree(scan_sleep=4294967295).write(tmp_path / "a"))))
    running = collect(HostRoot(str(HostTree().write(tmp_path / "b"))))
    never = collect(HostRoot(str(HostTree(enabled="always madvise [never]").write(tmp_path / "c"))))
    assert stopped.thp.khugepaged_stopped
    assert never.thp.khugepaged_stopped
    assert not running.thp.khugepaged_stopped
