"""The one RFC 3339 format and parser (thpcheck.model.timestamps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from thpcheck.model.timestamps import format_time, parse_time


def test_format_is_metav1_time_in_utc() -> None:
    moment = datetime(2026, 1, 2, 5, 4, 5, 999, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2026-01-02T03:04:05Z"


def test_parse_round_trips_and_rejects_bad_text() -> None:
    assert parse_time("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_time(format_time(datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC))) == datetime(
        2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert parse_time("") is None and parse_time("yesterday") is None
