"""The ThpCheck spec as typed, frozen values, with the CRD's defaults.

The API server applies the same defaults; repeating them here keeps the operator correct
for objects read before a default existed and lets unit tests build specs from sparse dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from thpcheck.contract.quantities import IntOrPercent, parse_duration
from thpcheck.model.headroom import Headroom
from thpcheck.model.repro import DEFAULT_APPEND_SIZE, DEFAULT_BASE_SIZE, DEFAULT_ITERATIONS

DEFAULT_PATHS = ("/var/lib/thpcheck",)
TOLERATE_EVERYTHING: tuple[Mapping[str, Any], ...] = ({"operator": "Exists"},)


class Mode(StrEnum):
    FULL = "full"
    PREFLIGHT = "preflight"


@dataclass(frozen=True)
class Reproducer:
    enabled: bool = True
    iterations: int = DEFAULT_ITERATIONS
    base_size_bytes: int = DEFAULT_BASE_SIZE
    append_size_bytes: int = DEFAULT_APPEND_SIZE


@dataclass(frozen=True)
class Remediation:
    label: bool = True
    cordon: bool = False
    mitigate: bool = False
    dry_run: bool = False
    max_cordoned: IntOrPercent = 1
    taint: str = ""  # "" (none), NoSchedule or PreferNoSchedule (names.TAINT_EFFECTS)
    condition: bool = False  # the node condition names.NODE_CONDITION


@dataclass(frozen=True)
class CheckSpec:
    """``ThpCheck.spec``: what to check, where, how often and what to do about it."""

    mode: Mode = Mode.FULL
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = TOLERATE_EVERYTHING
    paths: tuple[str, ...] = DEFAULT_PATHS
    discover_filesystems: bool = False
    reproducer: Reproducer = field(default_factory=Reproducer)
    disk_headroom: Headroom = field(default_factory=Headroom)
    interval: timedelta | None = None
    max_concurrent: IntOrPercent = "10%"
    remediation: Remediation = field(default_factory=Remediation)
    paused: bool = False
    run_deadline: timedelta | None = None  # None: derived from the reproducer (planning.runs)


def _int_or_percent(value: Any, default: IntOrPercent) -> IntOrPercent:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return int(value) if value.isdigit() else value
    return default


def parse_spec(raw: Mapping[str, Any] | None) -> CheckSpec:
    """A ``CheckSpec`` from the CR's ``spec`` dict; absent fields take the CRD defaults."""
    spec = raw or {}
    repro = spec.get("reproducer") or {}
    remedy = spec.get("remediation") or {}
    interval = (spec.get("schedule") or {}).get("interval")
    deadline = spec.get("runDeadline")
    tolerations = spec.get("tolerations")
    defaults = Reproducer()
    room = spec.get("diskHeadroom") or {}
    room_defaults = Headroom()
    return CheckSpec(
        mode=Mode(spec.get("mode") or Mode.FULL),
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=(TOLERATE_EVERYTHING if tolerations is None
                     else tuple(dict(t) for t in tolerations)),
        paths=tuple(spec.get("paths") or DEFAULT_PATHS),
        discover_filesystems=bool(spec.get("discoverFilesystems", False)),
        reproducer=Reproducer(
            enabled=bool(repro.get("enabled", True)),
            iterations=int(repro.get("iterations", defaults.iterations)),
            base_size_bytes=int(repro.get("baseSizeBytes", defaults.base_size_bytes)),
            append_size_bytes=int(repro.get("appendSizeBytes", defaults.append_size_bytes)),
        ),
        disk_headroom=Headroom(
            nodefs_percent=int(room.get("nodefsAvailablePercent", room_defaults.nodefs_percent)),
            imagefs_percent=int(room.get("imagefsAvailablePercent",
                                         room_defaults.imagefs_percent)),
            margin_percent=int(room.get("marginPercent", room_defaults.margin_percent)),
            min_free_bytes=int(room.get("minFreeBytes", room_defaults.min_free_bytes)),
        ),
        interval=parse_duration(interval) if interval else None,
        max_concurrent=_int_or_percent(spec.get("maxConcurrent"), "10%"),
        remediation=Remediation(
            label=bool(remedy.get("label", True)),
            cordon=bool(remedy.get("cordon", False)),
            mitigate=bool(remedy.get("mitigate", False)),
            dry_run=bool(remedy.get("dryRun", False)),
            max_cordoned=_int_or_percent(remedy.get("maxCordoned"), 1),
            taint=str(remedy.get("taint") or ""),
            condition=bool(remedy.get("condition", False)),
        ),
        paused=bool(spec.get("paused", False)),
        run_deadline=parse_duration(deadline) if deadline else None,
    )
