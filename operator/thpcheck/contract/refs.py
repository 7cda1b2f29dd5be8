"""Which ThpCheck an object belongs to, and the stable digest its objects carry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from thpcheck.contract import names


@dataclass(frozen=True)
class CheckRef:
    """The ThpCheck an object belongs to (for names, labels and ownerReferences)."""

    name: str
    uid: str

    def owner_reference(self, controller: bool = True) -> dict[str, Any]:
        return {"apiVersion": names.API_VERSION, "kind": names.CHECK_KIND, "name": self.name,
                "uid": self.uid, "controller": controller, "blockOwnerDeletion": False}


def hash_of(obj: Any) -> str:
    """A stable digest of a JSON-able object (dict key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return names.digest(text, length=16)
