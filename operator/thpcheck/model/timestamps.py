"""RFC 3339 timestamps as Kubernetes writes them (``2026-01-02T03:04:05Z``): the one format
and parser of the operator, the CLI and the agent.

``datetime`` is imported inside the functions: the agent's ``check`` stamps its result with
``time.strftime(RFC3339, ...)`` and never pays for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

RFC3339 = "%Y-%m-%dT%H:%M:%SZ"  # metav1.Time: whole seconds, UTC


def format_time(moment: datetime) -> str:
    """``moment`` (timezone-aware) as a metav1.Time string in UTC."""
    from datetime import UTC

    return moment.astimezone(UTC).strftime(RFC3339)


def parse_time(text: str) -> datetime | None:
    """A metav1.Time (or any ISO 8601 time) as a datetime; None when empty or malformed."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None
