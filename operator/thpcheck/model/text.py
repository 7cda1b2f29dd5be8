"""Capping text to a limit, the one way: a cut text ends in "…" and stays within the limit.

Used for everything the agent or the operator writes into a bounded place (a termination
message, a CRD field with ``maxLength``, an Event) and for quoting untrusted input.
"""

from __future__ import annotations

from typing import Any

ELLIPSIS = "\u2026"


def clip(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def clip_bytes(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` bytes of UTF-8 (never a broken character)."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + ELLIPSIS


def one_line(text: Any, limit: int) -> str:
    """Untrusted text quoted on one line: whitespace runs become one space, then clipped."""
    return clip(" ".join(str(text).split()), limit)


def clip_value(value: Any, limit: int) -> str | None:
    """A decoded JSON value as capped text (None stays None). A number or a boolean is
    written out; a container is never ``str()``-ed (it may be huge or nested deep) but named
    by its type, e.g. ``<dict>``."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = str(value)
    else:
        text = f"<{type(value).__name__}>"
    return clip(text, limit)
