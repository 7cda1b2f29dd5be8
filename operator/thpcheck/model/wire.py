"""How the typed documents in ``model/`` become JSON, and are read back: one key mapping.

Python fields are snake_case; the agent's termination message and the CRDs' status are
camelCase. ``wire_key`` is the only place that converts, so a new field is named once, in its
dataclass. A field's ``metadata`` says how it is read from untrusted JSON (``decode``: text
capped to ``cap`` characters, int, number, bool) and where it is written (``forms``, and
``omit_empty``: left out when empty or false rather than written as such).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, Field, field, fields, is_dataclass
from enum import Enum
from typing import Any

from thpcheck.model.text import clip_value

MESSAGE = "message"  # the agent's compact result in its termination message (nulls kept)
STATUS = "status"  # a CR's status (no nulls: the CRD has none)
FORMS = frozenset({MESSAGE, STATUS})

# Initialisms and the message's shorter names, where plain camelCase is not the wire name.
_SPELLED = {"boot_id": "bootID"}
_IN_MESSAGE = {"duration_seconds": "durationS"}  # the 4 KiB message saves the bytes


def wire_key(name: str, form: str = STATUS) -> str:
    """A field's JSON key: ``bad_bytes`` -> ``badBytes``, ``boot_id`` -> ``bootID``."""
    if form == MESSAGE and name in _IN_MESSAGE:
        return _IN_MESSAGE[name]
    if name in _SPELLED:
        return _SPELLED[name]
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def wired(default: Any = None, *, decode: str | None = None, cap: int = 0,
          forms: frozenset[str] = FORMS, omit_empty: bool = False,
          required: bool = False) -> Any:
    """A dataclass field with its wire metadata (see the module docstring)."""
    metadata = {"decode": decode, "cap": cap, "forms": forms, "omit_empty": omit_empty}
    return field(default=MISSING if required else default, metadata=metadata)


def text(cap: int, **kw: Any) -> Any:
    """An optional text field, capped to ``cap`` characters when read."""
    return wired(decode="text", cap=cap, **kw)


def _value(value: Any, form: str) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_wire(item, form) if is_dataclass(item) else item for item in value]
    return value


def to_wire(obj: Any, form: str) -> dict[str, Any]:
    """A typed document as the JSON object of ``form``, in field order."""
    out: dict[str, Any] = {}
    for item in fields(obj):
        if form not in item.metadata.get("forms", FORMS):
            continue
        value = _value(getattr(obj, item.name), form)
        if (value is None and form == STATUS) or (item.metadata.get("omit_empty") and not value):
            continue
        out[wire_key(item.name, form)] = value
    return out


def _decoded(item: Field[Any], value: Any) -> Any:
    kind = item.metadata.get("decode")
    if kind == "text":
        return clip_value(value, item.metadata["cap"])
    if kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None
    if kind == "bool":
        return value if isinstance(value, bool) else None
    raise ValueError(f"field {item.name}: no decoder {kind!r}")


def from_wire(cls: Any, mapping: Mapping[str, Any], form: str) -> dict[str, Any]:
    """The decodable fields of ``cls`` read from untrusted ``mapping`` (keyword arguments for
    ``cls``; fields without a ``decode`` are the caller's to read)."""
    return {item.name: _decoded(item, mapping.get(wire_key(item.name, form)))
            for item in fields(cls) if item.metadata.get("decode")}
