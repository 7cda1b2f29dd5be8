"""RFC 3339 timestamps as Kubernetes writes them (``2026-01-02T03:04:05Z``): the one format
and parser the operator, the CLI and the agent's mitigation use."""

from __future__ import annotations

from datetime import UTC, datetime

RFC3339 = "%Y-%m-%dT%H:%M:%SZ"  # metav1.Time: whole seconds, UTC


def format_time(moment: datetime) -> str:
    """``moment`` (timezone-aware) as a metav1.Time string in UTC."""
    return moment.astimezone(UTC).strftime(RFC3339)


def parse_time(text: str) -> datetime | None:
    """A metav1.Time (or any ISO 8601 time) as a datetime; None when empty or malformed."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None
