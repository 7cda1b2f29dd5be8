"""Int-or-percent values and durations, read the way the CRD schema validates them.

The API server already rejects malformed values; these parsers still refuse them with a
``ValueError`` naming the value, so a schema/parser drift shows up as a clear error.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

IntOrPercent = int | str

_PERCENT = re.compile(r"^(\d{1,3})%$")
_DURATION = re.compile(r"^(?:\d+[hms])+$")
_DURATION_PART = re.compile(r"(\d+)([hms])")
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}


def resolve(value: IntOrPercent, total: int, *, round_up: bool) -> int:
    """An int as is, or ``NN%`` of ``total`` rounded up (concurrency) or down (budgets)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer or a percentage")
    if isinstance(value, int):
        return value
    match = _PERCENT.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not an integer or a percentage such as 10%")
    share = int(match[1]) * total / 100
    return math.ceil(share) if round_up else math.floor(share)


def concurrency(value: IntOrPercent, total: int) -> int:
    """How many nodes may run the check at once: at least 1, like a DaemonSet rollout."""
    return max(1, resolve(value, total, round_up=True))


def budget(value: IntOrPercent, total: int) -> int:
    """How many nodes may be cordoned at once: rounded down, never negative."""
    return max(0, resolve(value, total, round_up=False))


def parse_duration(text: str) -> timedelta:
    """``24h``, ``90m``, ``1h30m``, ``45s`` -> timedelta (the schema's duration format)."""
    compact = text.strip()
    if not _DURATION.match(compact):
        raise ValueError(f"{text!r} is not a duration such as 24h, 90m or 1h30m")
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(compact))
    return timedelta(seconds=seconds)
