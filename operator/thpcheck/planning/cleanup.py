"""A deleted ThpCheck's clean-up that never gives up: how long to wait between attempts, and
the status condition that names what still blocks it.

The finalizer stays until every label, annotation, cordon and mitigation label the check made
is gone (``planning.remediation.plan_cleanup``). While a node refuses (an admission policy, a
webhook, RBAC, the API server away), each attempt posts a Warning Event and sets the
``CleanupBlocked`` condition naming the nodes and the API errors; the next attempt follows
after a backoff that doubles up to a cap. There is no last attempt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from thpcheck.planning.status import condition

CLEANUP_BLOCKED = "CleanupBlocked"
FIRST_DELAY = 5.0
NAMED_LIMIT = 5
ERROR_LIMIT = 400


def backoff(retry: int, cap: float) -> float:
    """Seconds before attempt ``retry + 1``: 5, 10, 20, ... up to ``cap``."""
    return min(cap, FIRST_DELAY * float(2 ** min(retry, 16)))


def blocked_message(failures: Mapping[str, str]) -> str:
    """``N nodes still carry marks ...: node (error), ...`` naming up to five nodes."""
    listed = "; ".join(f"{node}: {failures[node][:ERROR_LIMIT]}"
                       for node in sorted(failures)[:NAMED_LIMIT])
    more = len(failures) - NAMED_LIMIT
    return (f"{len(failures)} nodes still carry marks of this ThpCheck and refused their "
            f"removal; retrying with backoff: {listed}"
            + (f" (and {more} more)" if more > 0 else ""))


def blocked_conditions(previous: Sequence[Mapping[str, Any]], failures: Mapping[str, str],
                       now: datetime, generation: int) -> list[dict[str, Any]]:
    """The status conditions with ``CleanupBlocked`` set (the others kept as they are)."""
    kept = [dict(c) for c in previous if c.get("type") != CLEANUP_BLOCKED]
    return [*kept, condition(previous, CLEANUP_BLOCKED, True, "NodePatchRefused",
                             blocked_message(failures), now, generation)]
