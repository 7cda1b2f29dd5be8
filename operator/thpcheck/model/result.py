"""The agent's result (``thpcheck.io/result/v1``): one typed schema from the agent to the CRD.

The agent builds it from its report (``model.report.compact``) and writes it as its
termination message; the operator reads it back (``from_message``: the message is untrusted,
so every field is capped to the CRD's limits) and records it as a ThpNodeResult's status
(``to_status``). Both JSON forms come from these dataclasses through ``model.wire``'s one key
mapping: a new field is declared here, once (and in the CRD).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thpcheck.model.text import clip_value
from thpcheck.model.verdict import SEVERITY, Verdict, worst
from thpcheck.model.wire import MESSAGE, STATUS, from_wire, text, to_wire, wired

COMPACT_SCHEMA = "thpcheck.io/result/v1"
MAX_SKIPPED_MOUNTS = 64  # the CRD's maxItems for status.skippedMounts
VERDICTS = {v.value: v for v in Verdict}


@dataclass(frozen=True, kw_only=True)
class PathOutcome:
    """One scratch path as the agent reported it."""

    path: str = text(1024, required=True)
    fstype: str | None = text(64)
    verdict: Verdict
    rule: str | None = text(32)
    reason: str | None = text(512)
    repro: str | None = text(64)  # the reproducer's outcome
    iteration: int | None = wired(decode="int")
    bad_bytes: int | None = wired(decode="int")
    duration_seconds: float | None = wired(decode="number")
    disagreement: str | None = text(512)

    @classmethod
    def from_message(cls, entry: Any) -> PathOutcome | None:
        """A path of an untrusted message (None: not a path)."""
        if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
            return None
        return cls(**{**from_wire(cls, entry, MESSAGE),
                      "verdict": VERDICTS.get(str(entry.get("verdict")), Verdict.ERROR)})


@dataclass(frozen=True, kw_only=True)
class SkippedMount:
    """A filesystem ``discoverFilesystems`` did not test, and why (another tenant's volume,
    network, read-only...)."""

    mount_point: str = text(1024, required=True)
    reason: str | None = text(256)

    @classmethod
    def from_message(cls, entry: Any) -> SkippedMount | None:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("mountPoint"), str):
            return None
        return cls(**from_wire(cls, entry, MESSAGE))


# Fields in the message's order; ``mitigated`` is the message's only (the operator records its
# own), ``skipped_mount_count`` the status's only (the message cuts its list to the count).
@dataclass(frozen=True, kw_only=True)
class AgentResult:
    """The node's result, or an ``error`` verdict with ``problem`` saying why."""

    agent_version: str | None = text(64)
    checked_at: str | None = text(64)
    verdict: Verdict
    mitigated: bool = wired(False, forms=frozenset({MESSAGE}))
    kernel_release: str | None = text(256)
    boot_id: str | None = text(64)
    read_only_thp_for_fs: bool | None = wired(decode="bool")
    config_source: str | None = text(256)
    paths: tuple[PathOutcome, ...] = ()
    # Mounts discovery skipped: each with its reason, or only how many when the agent cut
    # them to fit its termination message (``skipped_mount_count`` is set either way).
    skipped_mounts: tuple[SkippedMount, ...] = wired((), omit_empty=True)
    truncated: bool = wired(False, omit_empty=True)  # path detail dropped to fit the message
    skipped_mount_count: int | None = wired(forms=frozenset({STATUS}), omit_empty=True)
    problem: str | None = wired(forms=frozenset())  # set when the message was not used as is

    @property
    def skipped_count(self) -> int | None:
        return self.skipped_mount_count

    def to_message(self) -> dict[str, Any]:
        """The compact result as the agent writes it (before ``model.report.compact`` fits it
        into the termination message)."""
        return {"schema": COMPACT_SCHEMA, **to_wire(self, MESSAGE)}

    def to_status(self) -> dict[str, Any]:
        """The agent's part of a ThpNodeResult's status."""
        return to_wire(self, STATUS)

    @classmethod
    def from_message(cls, document: Mapping[str, Any]) -> AgentResult:
        """A decoded, untrusted compact result (shape errors give ``error``)."""
        if document.get("schema") != COMPACT_SCHEMA:
            return error_result(f"not a {COMPACT_SCHEMA} document (schema "
                                f"{clip_value(document.get('schema'), 64)!r})")
        verdict = VERDICTS.get(str(document.get("verdict")))
        if verdict is None:
            return error_result(f"unknown verdict {clip_value(document.get('verdict'), 64)!r}")
        raw_paths = document.get("paths")
        paths = tuple(p for p in map(PathOutcome.from_message,
                                     raw_paths if isinstance(raw_paths, list) else [])
                      if p is not None)
        truncated = bool(document.get("truncated", False))
        skipped_mounts, skipped_count = _skipped(document.get("skippedMounts"))
        problem = None
        if paths and not truncated and worst(p.verdict for p in paths) != verdict:
            from_paths = worst(p.verdict for p in paths)
            problem = (f"node verdict {verdict.value} disagrees with its paths "
                       f"({from_paths.value}); the worse one is kept")
            verdict = max(verdict, from_paths, key=SEVERITY.__getitem__)
        return cls(**{**from_wire(cls, document, MESSAGE),
                      "verdict": verdict,
                      "mitigated": document.get("mitigated") is True,
                      "paths": paths, "truncated": truncated, "problem": problem,
                      "skipped_mounts": skipped_mounts, "skipped_mount_count": skipped_count})


def _skipped(value: Any) -> tuple[tuple[SkippedMount, ...], int | None]:
    """The message's ``skippedMounts``: a list of {mountPoint, reason}, or a count."""
    if isinstance(value, list):
        mounts = tuple(m for m in map(SkippedMount.from_message, value[:MAX_SKIPPED_MOUNTS])
                       if m is not None)
        return mounts, len(value)
    count = value if isinstance(value, int) and not isinstance(value, bool) else None
    return (), count if count is not None and count >= 0 else None


def error_result(problem: str) -> AgentResult:
    return AgentResult(verdict=Verdict.ERROR, problem=clip_value(problem, 1000))
