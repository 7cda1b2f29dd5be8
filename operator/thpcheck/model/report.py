"""The check report: one JSON document per run, a compact form for termination messages, and
the human table. Pure: built from facts, predictions and reproducer results.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from thpcheck import __version__
from thpcheck.model.facts import NodeFacts, PathFacts
from thpcheck.model.mounts import Skipped
from thpcheck.model.predict import ConfigKnowledge, Prediction
from thpcheck.model.repro import ReproResult
from thpcheck.model.result import AgentResult, PathOutcome, SkippedMount
from thpcheck.model.text import clip
from thpcheck.model.verdict import PathVerdict, Verdict, worst

SCHEMA = "thpcheck.io/report/v1"
TERMINATION_LIMIT = 4096
REASON_LIMIT = 240
SNAPSHOT_LINE = ("snapshot: read from saved files; filesystem types come from the saved "
                 "mountinfo (not checked on the paths themselves), nothing was run")


@dataclass
class PathReport:
    """Everything known about one scratch path."""

    path: str
    facts: PathFacts | None
    prediction: Prediction | None
    repro: ReproResult | None
    verdict: PathVerdict


@dataclass
class CheckReport:
    """A whole ``thpcheck check`` run on one node."""

    facts: NodeFacts
    config: ConfigKnowledge
    node_prediction: Prediction
    paths: list[PathReport] = field(default_factory=list)
    checked_at: str = ""
    madv_collapse: bool | None = None
    skipped: list[Skipped] = field(default_factory=list)  # mounts --discover did not test

    @property
    def verdict(self) -> Verdict:
        return worst(p.verdict.verdict for p in self.paths)

    @property
    def mitigated(self) -> bool:
        return self.facts.thp.khugepaged_stopped

    @property
    def disagreements(self) -> list[str]:
        return [f"{p.path}: {p.verdict.disagreement}" for p in self.paths
                if p.verdict.disagreement]


def _prediction_dict(prediction: Prediction | None) -> dict[str, Any] | None:
    return prediction.to_dict() if prediction is not None else None


def _path_dict(entry: PathReport) -> dict[str, Any]:
    facts = entry.facts
    resolved = facts.resolved if facts else None
    return {
        "path": entry.path,
        "fstype": facts.fstype if facts else None,
        "mount_point": resolved.backing.mount_point if resolved else None,
        "mount_options": ",".join(resolved.backing.mount_options) if resolved else None,
        "super_options": ",".join(resolved.backing.super_options) if resolved else None,
        "via_overlay": resolved.via_overlay if resolved else False,
        "verdict": entry.verdict.verdict.value,
        "reason": entry.verdict.reason,
        "rule": entry.verdict.rule,
        "disagreement": entry.verdict.disagreement,
        "prediction": _prediction_dict(entry.prediction),
        "repro": entry.repro.to_dict() if entry.repro else {"outcome": "skipped"},
    }


def to_document(report: CheckReport) -> dict[str, Any]:
    """The full JSON document of ``thpcheck check --json``."""
    facts = report.facts
    kernel = facts.kernel
    thp = facts.thp
    return {
        "schema": SCHEMA,
        "agent_version": __version__,
        "checked_at": report.checked_at,
        "hostname": facts.hostname,
        "verdict": report.verdict.value,
        "mitigated": report.mitigated,
        "disagreements": report.disagreements,
        "kernel": {
            "release": kernel.release,
            "version": str(kernel.version) if kernel.version else None,
            "read_only_thp_for_fs": report.config.read_only_thp,
            "btrfs_experimental": report.config.btrfs_experimental,
            "config_source": report.config.source,
            "config_confidence": report.config.confidence,
            "config_error": kernel.config_error,
            "boot_id": kernel.boot_id,
            "madv_collapse": report.madv_collapse,
            "machine": facts.machine,
            "page_size": kernel.hugepages.page_size,
            "pmd_size": kernel.hugepages.pmd_size,
            "pmd_size_source": kernel.hugepages.source,
        },
        "node_prediction": _prediction_dict(report.node_prediction),
        "thp": {
            "enabled": thp.enabled,
            "defrag": thp.defrag,
            "shmem_enabled": thp.shmem_enabled,
            "khugepaged": dict(thp.khugepaged),
        },
        "writeback": dict(facts.writeback),
        "evidence": dict(facts.evidence),
        "os": {
            "id": facts.os_release.id,
            "version_id": facts.os_release.version_id,
            "pretty_name": facts.os_release.pretty_name,
        } if facts.os_release else None,
        "mountinfo_source": facts.mountinfo_source,
        "snapshot": facts.snapshot,
        "paths": [_path_dict(p) for p in report.paths],
        "skipped_mounts": [{"mount_point": m.mount_point, "fstype": m.fstype,
                            "reason": m.reason} for m in report.skipped],
    }


def agent_result(document: Mapping[str, Any]) -> AgentResult:
    """The agent's result (``model.result``) of a ``to_document`` document: the one place the
    report's names (``repro.bad_bytes``, ``repro.duration_s``...) meet the result's."""
    kernel = document.get("kernel", {})
    return AgentResult(
        agent_version=document.get("agent_version"),
        checked_at=document.get("checked_at"),
        verdict=Verdict(document["verdict"]),
        mitigated=bool(document.get("mitigated")),
        kernel_release=kernel.get("release"),
        boot_id=kernel.get("boot_id"),
        read_only_thp_for_fs=kernel.get("read_only_thp_for_fs"),
        config_source=kernel.get("config_source"),
        paths=tuple(PathOutcome(
            path=p.get("path"), fstype=p.get("fstype"), verdict=Verdict(p.get("verdict")),
            rule=p.get("rule"), reason=p.get("reason"),
            repro=p.get("repro", {}).get("outcome"),
            iteration=p.get("repro", {}).get("iteration"),
            bad_bytes=p.get("repro", {}).get("bad_bytes"),
            duration_seconds=p.get("repro", {}).get("duration_s"),
            disagreement=p.get("disagreement"),
        ) for p in document.get("paths", [])),
        skipped_mounts=tuple(SkippedMount(mount_point=m.get("mount_point"),
                                          reason=m.get("reason"))
                             for m in document.get("skipped_mounts") or []),
    )


def _clipped(text: str | None, limit: int) -> str | None:
    return None if text is None or not limit else clip(text, limit)


def compact(document: dict[str, Any], limit: int = TERMINATION_LIMIT) -> str:
    """The result the operator reads from a pod's termination message, within ``limit`` bytes.

    Shortens reasons first, then drops per-path detail beyond the verdict, and finally keeps
    only the node verdict and counts; the output is always valid JSON.
    """
    result = agent_result(document).to_message()
    paths: list[dict[str, Any]] = result["paths"]
    for entry in paths:
        entry["reason"] = _clipped(entry["reason"], REASON_LIMIT)
        entry["disagreement"] = _clipped(entry["disagreement"], REASON_LIMIT)
    skipped = result.get("skippedMounts", [])
    for mount in skipped:
        mount["reason"] = _clipped(mount["reason"], 60)
    text = json.dumps(result, separators=(",", ":"))
    if len(text.encode()) > limit and skipped:  # the first detail to go: a count is kept
        result["skippedMounts"] = len(skipped)
        text = json.dumps(result, separators=(",", ":"))
    for shrink in (60, 0):
        if len(text.encode()) <= limit:
            return text
        for entry in paths:
            entry["reason"] = _clipped(entry["reason"], shrink)
            entry["disagreement"] = _clipped(entry["disagreement"], shrink)
        text = json.dumps(result, separators=(",", ":"))
    while len(text.encode()) > limit and paths:
        paths.pop()
        result["truncated"] = True
        text = json.dumps(result, separators=(",", ":"))
    return text


def render_table(report: CheckReport) -> str:
    """The human-readable summary ``thpcheck check`` prints by default."""
    kernel = report.facts.kernel
    lines = [
        f"kernel {kernel.release or '?'}  CONFIG_READ_ONLY_THP_FOR_FS="
        f"{ {True: 'y', False: 'n', None: '?'}[report.config.read_only_thp] }"
        f" ({report.config.source or 'no config'}, {report.config.confidence})  "
        f"{report.facts.machine or '?'}: {kernel.hugepages.describe()}",
        f"THP enabled={report.facts.thp.enabled or '?'}  khugepaged scan_sleep_millisecs="
        f"{report.facts.thp.scan_sleep_millisecs}  mitigated={'yes' if report.mitigated else 'no'}",
        *([SNAPSHOT_LINE] if report.facts.snapshot else []),
        "",
    ]
    rows = [("PATH", "FS", "VERDICT", "RULE", "REPRO", "REASON")]
    for entry in report.paths:
        repro = entry.repro.outcome.value if entry.repro else "skipped"
        rows.append((entry.path, (entry.facts.fstype if entry.facts else None) or "?",
                     entry.verdict.verdict.value, entry.verdict.rule or "-", repro,
                     entry.verdict.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5]))
                     + "  " + row[5])
    lines.append("")
    lines.append(f"node verdict: {report.verdict.value}"
                 + ("  (mitigated: khugepaged stopped; MADV_COLLAPSE still works)"
                    if report.mitigated else ""))
    lines.extend(f"DISAGREEMENT {text}" for text in report.disagreements)
    if report.skipped:
        lines.append("")
        lines.append(f"not tested ({len(report.skipped)} mounts):")
        lines.extend(f"  {m.mount_point} ({m.fstype}): {m.reason}" for m in report.skipped)
    return "\n".join(lines)
