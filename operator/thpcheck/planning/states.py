"""A selected node's effective state after a reconcile: what status counts, remediation
and Events are planned from."""

from __future__ import annotations

from dataclasses import dataclass

from thpcheck.contract.proof import Proof
from thpcheck.model.verdict import Verdict


@dataclass(frozen=True)
class NodeState:
    """A selected node's effective state after this reconcile's writes."""

    node: str
    verdict: Verdict | None  # None: no result yet; affected while a proof stands
    mitigated: bool = False
    stale: bool = False
    latest: Verdict | None = None  # the latest run's verdict, when the proof overrides it
    proof: Proof | None = None  # the standing proof (planning.proof)
    filesystems: tuple[str, ...] = ()  # of the latest result (views.filesystems_of)
