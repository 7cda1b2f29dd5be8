"""Start-up check: both CRDs installed, established, serving v1alpha1, and new enough.

Helm installs ``crds/`` once and never upgrades it, so an operator upgrade can meet old
CRDs; failing at start with the command that fixes it beats failing later on a field the
API server silently pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from thpcheck.contract import names

FIX = "kubectl apply --server-side -f charts/thp-checker/crds/"


class CrdProblem(RuntimeError):
    """The CRDs are missing or older than this operator needs; the message says the fix."""


def problems(crd_name: str, crd: Mapping[str, Any] | None) -> list[str]:
    """What is wrong with one CRD (empty: it is usable)."""
    if crd is None:
        return [f"CRD {crd_name} is not installed"]
    found: list[str] = []
    annotations = crd.get("metadata", {}).get("annotations") or {}
    raw = annotations.get(names.SCHEMA_VERSION_ANNOTATION)
    try:
        version = int(raw) if raw is not None else 0
    except ValueError:
        version = 0
    if version < names.SCHEMA_VERSION:
        found.append(f"CRD {crd_name} has schema version {raw or 'none'}, this operator needs "
                     f"{names.SCHEMA_VERSION} or newer")
    served = {v.get("name") for v in crd.get("spec", {}).get("versions") or []
              if v.get("served")}
    if names.VERSION not in served:
        found.append(f"CRD {crd_name} does not serve {names.VERSION}")
    conditions = crd.get("status", {}).get("conditions") or []
    if not any(c.get("type") == "Established" and c.get("status") == "True"
               for c in conditions):
        found.append(f"CRD {crd_name} is not established yet")
    return found


def verify(fetch: Callable[[str], Mapping[str, Any] | None]) -> None:
    """Raise ``CrdProblem`` listing every problem, with the command that fixes them."""
    found = [p for name in names.CRD_NAMES for p in problems(name, fetch(name))]
    if found:
        raise CrdProblem("; ".join(found) + f". Install or upgrade the CRDs: {FIX}")
