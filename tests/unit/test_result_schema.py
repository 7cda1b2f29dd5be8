"""The agent's result as one typed schema: its key mapping, its round trip, and text capping."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from thpcheck.model.result import AgentResult, PathOutcome, SkippedMount
from thpcheck.model.text import clip, clip_bytes, clip_value, one_line
from thpcheck.model.verdict import Verdict
from thpcheck.model.wire import MESSAGE, STATUS, wire_key

FULL = AgentResult(
    agent_version="0.9.1", checked_at="2026-11-28T16:00:00Z", verdict=Verdict.AFFECTED,
    mitigated=True, kernel_release="6.12.90", boot_id="boot-1", read_only_thp_for_fs=False,
    config_source="proc/config.gz",
    paths=(PathOutcome(path="/var/lib/thpcheck", fstype="ext4", verdict=Verdict.AFFECTED,
                       rule="G10", reason="lost", repro="reproduced", iteration=0,
                       bad_bytes=16384, duration_seconds=0.8, disagreement="predicted safe"),
           PathOutcome(path="/scratch", verdict=Verdict.NOT_AFFECTED)),
    skipped_mounts=(SkippedMount(mount_point="/mnt/nfs", reason="network filesystem"),),
    truncated=True, skipped_mount_count=1)


@pytest.mark.parametrize(("name", "form", "key"), [
    ("bad_bytes", STATUS, "badBytes"), ("bad_bytes", MESSAGE, "badBytes"),
    ("boot_id", MESSAGE, "bootID"), ("read_only_thp_for_fs", STATUS, "readOnlyThpForFs"),
    ("duration_seconds", STATUS, "durationSeconds"), ("duration_seconds", MESSAGE, "durationS"),
    ("skipped_mount_count", STATUS, "skippedMountCount"), ("verdict", STATUS, "verdict"),
])
def test_one_key_mapping(name: str, form: str, key: str) -> None:
    assert wire_key(name, form) == key


def test_the_message_reads_back_as_the_result_it_was_written_from() -> None:
    text = json.dumps(FULL.to_message())
    assert AgentResult.from_message(json.loads(text)) == FULL


def test_the_status_holds_every_field_but_the_messages_own_and_no_nulls() -> None:
    status = FULL.to_status()
    assert "mitigated" not in status and "problem" not in status
    assert status["paths"][1] == {"path": "/scratch", "verdict": "not-affected"}
    assert status["paths"][0]["durationSeconds"] == 0.8
    assert status["skippedMountCount"] == 1 and status["readOnlyThpForFs"] is False
    message = FULL.to_message()
    assert message["paths"][1]["badBytes"] is None and "skippedMountCount" not in message
    written = {f.name for f in fields(AgentResult)} - {"mitigated", "problem",
                                                       "skipped_mount_count"}
    assert {wire_key(name) for name in written} <= status.keys()


def test_untrusted_fields_are_capped_and_typed() -> None:
    entry = {"path": "/p" * 600, "verdict": "bogus", "rule": ["x"], "iteration": True,
             "badBytes": 2.5, "durationS": 1e400, "reason": 7}
    path = PathOutcome.from_message(entry)
    assert path is not None and len(path.path) == 1024 and path.path.endswith("\u2026")
    assert (path.verdict, path.rule, path.iteration, path.bad_bytes, path.duration_seconds,
            path.reason) == (Verdict.ERROR, "<list>", None, None, None, "7")
    assert PathOutcome.from_message({"path": 3}) is None


def test_capping_helpers() -> None:
    assert clip("abc", 3) == "abc" and clip("abcd", 3) == "ab\u2026"
    capped = clip_bytes("é" * 100, 11)
    assert len(capped.encode()) <= 11 and capped == "éééé\u2026"
    assert clip_value({"deep": [1]}, 10) == "<dict>" and clip_value(None, 5) is None
    assert clip_value(1.5, 10) == "1.5"
    assert one_line("a\n  b\tc" + "d" * 10, 8) == "a b cdd\u2026"
