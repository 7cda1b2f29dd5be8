"""``status.proof`` of a ThpNodeResult: the wire form of a proven ``affected`` kernel
(the rules about when it stands are in ``planning.proof``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from thpcheck.model.verdict import Verdict


@dataclass(frozen=True)
class Proof:
    """``affected`` proven at ``proven_at`` on ``kernel_release`` booted as ``boot_id``."""

    proven_at: str
    kernel_release: str
    boot_id: str
    verdict: Verdict = Verdict.AFFECTED

    def to_status(self) -> dict[str, str]:
        record = {"verdict": self.verdict.value, "provenAt": self.proven_at,
                  "kernelRelease": self.kernel_release, "bootID": self.boot_id}
        return {k: v for k, v in record.items() if v}


def parse_proof(raw: Any) -> Proof | None:
    """``status.proof`` of a ThpNodeResult, None when absent or not an affected proof."""
    if not isinstance(raw, Mapping) or raw.get("verdict") != Verdict.AFFECTED.value:
        return None
    return Proof(proven_at=str(raw.get("provenAt") or ""),
                 kernel_release=str(raw.get("kernelRelease") or ""),
                 boot_id=str(raw.get("bootID") or ""))
