"""Read the agent's compact result (``thpcheck.io/result/v1``) from a termination message.

The message comes from a node, so it is untrusted input: it may be truncated, be a log tail
(``FallbackToLogsOnError``), be valid JSON of the wrong shape, or be hostile (huge, or nested
deep enough to exhaust the interpreter's recursion limit). Every input gives an
``AgentResult``; anything unusable gives verdict ``error`` with the cause, never an
exception. Size and nesting are checked before decoding, so the work per message is bounded.
Strings are capped to the CRD's limits so a result can always be stored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thpcheck.model.report import COMPACT_SCHEMA
from thpcheck.model.verdict import SEVERITY, Verdict, worst

SNIPPET = 160  # characters of a bad message quoted in the error
# The kubelet keeps 4096 bytes of a termination message; anything longer was not written by a
# kubelet, and is refused before it is decoded.
MESSAGE_LIMIT = 16384
# A compact result nests four levels deep; deeper input is refused before it is decoded (a
# 1000-deep document makes json.loads raise RecursionError).
DEPTH_LIMIT = 16
MAX_SKIPPED_MOUNTS = 64  # the CRD's maxItems for status.skippedMounts
_VERDICTS = {v.value: v for v in Verdict}
_TOKENS = re.compile(r'\\.|["\[\]{}]')  # escapes, quotes and brackets: all that nests


@dataclass(frozen=True)
class PathOutcome:
    """One scratch path as the agent reported it."""

    path: str
    verdict: Verdict
    fstype: str | None = None
    rule: str | None = None
    reason: str | None = None
    repro: str | None = None
    iteration: int | None = None
    bad_bytes: int | None = None
    duration_seconds: float | None = None
    disagreement: str | None = None


@dataclass(frozen=True)
class SkippedMount:
    """A filesystem ``discoverFilesystems`` did not test, and why (another tenant's volume,
    network, read-only...)."""

    mount_point: str
    reason: str | None = None


@dataclass(frozen=True)
class AgentResult:
    """The node's result, or an ``error`` verdict with ``problem`` saying why."""

    verdict: Verdict
    mitigated: bool = False
    kernel_release: str | None = None
    boot_id: str | None = None
    agent_version: str | None = None
    checked_at: str | None = None
    read_only_thp_for_fs: bool | None = None
    config_source: str | None = None
    paths: tuple[PathOutcome, ...] = ()
    truncated: bool = False
    problem: str | None = None  # set when the message could not be used as is
    # Mounts discovery skipped: each with its reason, or only how many when the agent cut
    # them to fit its termination message (``skipped_count`` is set either way).
    skipped_mounts: tuple[SkippedMount, ...] = ()
    skipped_count: int | None = None


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = str(value)
    else:  # never str() a container: it may be huge or deeply nested
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _snippet(message: str) -> str:
    flat = " ".join(message.split())
    return flat if len(flat) <= SNIPPET else flat[: SNIPPET - 1] + "\u2026"


def error_result(problem: str) -> AgentResult:
    return AgentResult(verdict=Verdict.ERROR, problem=_text(problem, 1000))


def _path(entry: Any) -> PathOutcome | None:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
        return None
    verdict = _VERDICTS.get(str(entry.get("verdict")), Verdict.ERROR)
    return PathOutcome(
        path=_text(entry["path"], 1024) or "",
        verdict=verdict,
        fstype=_text(entry.get("fstype"), 64),
        rule=_text(entry.get("rule"), 32),
        reason=_text(entry.get("reason"), 512),
        repro=_text(entry.get("repro"), 64),
        iteration=_int(entry.get("iteration")),
        bad_bytes=_int(entry.get("badBytes")),
        duration_seconds=_number(entry.get("durationS")),
        disagreement=_text(entry.get("disagreement"), 512),
    )


def _skipped(value: Any) -> tuple[tuple[SkippedMount, ...], int | None]:
    """The compact ``skippedMounts``: a list of {mountPoint, reason}, or a count."""
    if isinstance(value, list):
        mounts = tuple(SkippedMount(_text(m["mountPoint"], 1024) or "",
                                    _text(m.get("reason"), 256))
                       for m in value[:MAX_SKIPPED_MOUNTS]
                       if isinstance(m, Mapping) and isinstance(m.get("mountPoint"), str))
        return mounts, len(value)
    count = _int(value)
    return (), count if count is not None and count >= 0 else None


def parse_result(document: Mapping[str, Any]) -> AgentResult:
    """A decoded compact result -> ``AgentResult`` (shape errors give ``error``)."""
    if document.get("schema") != COMPACT_SCHEMA:
        return error_result(f"not a {COMPACT_SCHEMA} document (schema "
                            f"{_text(document.get('schema'), 64)!r})")
    verdict = _VERDICTS.get(str(document.get("verdict")))
    if verdict is None:
        return error_result(f"unknown verdict {_text(document.get('verdict'), 64)!r}")
    raw_paths = document.get("paths")
    paths = tuple(p for p in map(_path, raw_paths if isinstance(raw_paths, list) else [])
                  if p is not None)
    truncated = bool(document.get("truncated", False))
    skipped_mounts, skipped_count = _skipped(document.get("skippedMounts"))
    problem = None
    if paths and not truncated and worst(p.verdict for p in paths) != verdict:
        from_paths = worst(p.verdict for p in paths)
        problem = (f"node verdict {verdict.value} disagrees with its paths "
                   f"({from_paths.value}); the worse one is kept")
        verdict = max(verdict, from_paths, key=SEVERITY.__getitem__)
    return AgentResult(
        verdict=verdict,
        mitigated=bool(_bool(document.get("mitigated"))),
        kernel_release=_text(document.get("kernelRelease"), 256),
        boot_id=_text(document.get("bootID"), 64),
        agent_version=_text(document.get("agentVersion"), 64),
        checked_at=_text(document.get("checkedAt"), 64),
        read_only_thp_for_fs=_bool(document.get("readOnlyThpForFs")),
        config_source=_text(document.get("configSource"), 256),
        paths=paths,
        truncated=truncated,
        problem=problem,
        skipped_mounts=skipped_mounts,
        skipped_count=skipped_count,
    )


def nesting_depth(text: str) -> int:
    """How deep the brackets of a JSON text nest (strings skipped), without decoding it: one
    pass over its quotes, escapes and brackets."""
    depth = deepest = 0
    in_string = False
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token == '"':
            in_string = not in_string
        elif in_string or len(token) > 1:
            continue
        elif token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_termination(message: str | None, exit_code: int | None = 0,
                      reason: str | None = None) -> AgentResult:
    """The kubelet's ``state.terminated`` of the check container -> ``AgentResult``."""
    try:
        return _parse_termination(message, exit_code, reason)
    except Exception as exc:
        return error_result(f"the termination message could not be read "
                            f"({type(exc).__name__}): {_snippet(str(message or '')[:SNIPPET])}")


def _parse_termination(message: str | None, exit_code: int | None,
                       reason: str | None) -> AgentResult:
    text = (message if isinstance(message, str) else "").strip()
    if not text:
        return error_result(f"the check container exited {exit_code} ({reason or 'no reason'}) "
                            "without a result")
    if len(text) > MESSAGE_LIMIT:
        return error_result(f"the termination message is {len(text)} characters long, more than "
                            f"a kubelet writes ({MESSAGE_LIMIT}): {_snippet(text[:SNIPPET])}")
    depth = nesting_depth(text)
    if depth > DEPTH_LIMIT:
        return error_result(f"the termination message nests {depth} levels deep (a thpcheck "
                            f"result nests at most {DEPTH_LIMIT}): {_snippet(text[:SNIPPET])}")
    try:
        document = json.loads(text)
    except ValueError:
        cut = "truncated " if text.startswith("{") else ""
        return error_result(f"the termination message is {cut}not a thpcheck result "
                            f"(exit {exit_code}): {_snippet(text)}")
    if not isinstance(document, Mapping):
        return error_result(f"the termination message is not a JSON object: {_snippet(text)}")
    return parse_result(document)
