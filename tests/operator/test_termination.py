"""The termination-message parser: untrusted input always gives a result, never an exception."""

from __future__ import annotations

import json

import pytest

from tests.operator.factories import message, report_document
from thpcheck.model.report import TERMINATION_LIMIT, compact
from thpcheck.model.verdict import Verdict
from thpcheck.specs.termination import parse_termination


def test_a_real_compact_result_round_trips() -> None:
    result = parse_termination(message("affected", mitigated=True))
    assert result.verdict is Verdict.AFFECTED
    assert result.problem is None
    assert result.mitigated is True
    assert result.kernel_release == "6.12.90"
    assert result.boot_id == "boot-1"
    assert result.read_only_thp_for_fs is True
    (path,) = result.paths
    assert (path.path, path.fstype, path.verdict, path.rule) == (
        "/var/lib/thpcheck", "ext4", Verdict.AFFECTED, "G10")
    assert (path.repro, path.iteration, path.bad_bytes, path.duration_seconds) == (
        "reproduced", 0, 16384, 0.8)


def test_every_truncation_of_a_message_gives_an_error_result() -> None:
    text = message("susceptible")
    for cut in range(1, len(text)):
        result = parse_termination(text[:cut])
        assert result.verdict is Verdict.ERROR, cut
        assert result.problem and "not a thpcheck result" in result.problem


@pytest.mark.parametrize("garbage", [
    "Traceback (most recent call last):\n  File \"x\", line 1\nMemoryError",
    "\x00\x01\x02\xff",
    "[1, 2, 3]",
    "null",
    '"just a string"',
    "{\"schema\": 7}",
    "{}",
    "x" * 100_000,
])
def test_garbage_gives_an_error_result_with_a_snippet(garbage: str) -> None:
    result = parse_termination(garbage, 1, "Error")
    assert result.verdict is Verdict.ERROR
    assert result.problem
    assert len(result.problem) <= 1000


def test_empty_message_of_a_failed_container_is_an_error() -> None:
    result = parse_termination("", 137, "OOMKilled")
    assert result.verdict is Verdict.ERROR
    assert result.problem is not None and "137" in result.problem and "OOMKilled" in result.problem


def test_wrong_schema_and_unknown_verdicts_are_errors() -> None:
    document = json.loads(message())
    document["schema"] = "thpcheck.io/result/v9"
    assert parse_termination(json.dumps(document)).verdict is Verdict.ERROR
    document = json.loads(message())
    document["verdict"] = "catastrophic"
    result = parse_termination(json.dumps(document))
    assert result.verdict is Verdict.ERROR and "catastrophic" in (result.problem or "")


def test_wrong_field_types_are_dropped_not_fatal() -> None:
    document = json.loads(message("affected"))
    document["paths"][0].update(iteration="zero", badBytes=True, durationS=float("nan"))
    document["paths"].append({"no": "path"})
    document["mitigated"] = "yes"
    result = parse_termination(json.dumps(document).replace("NaN", "1e999"))
    assert result.verdict is Verdict.AFFECTED
    assert len(result.paths) == 1
    assert result.paths[0].iteration is None and result.paths[0].bad_bytes is None
    assert result.paths[0].duration_seconds is None
    assert result.mitigated is False


def test_a_node_verdict_milder_than_its_paths_is_corrected_and_noted() -> None:
    document = json.loads(message("affected"))
    document["verdict"] = "not-affected"
    result = parse_termination(json.dumps(document))
    assert result.verdict is Verdict.AFFECTED
    assert result.problem and "disagrees" in result.problem


def test_long_strings_are_capped_to_the_crd_limits() -> None:
    document = json.loads(message())
    document["paths"][0]["reason"] = "r" * 5000
    document["kernelRelease"] = "k" * 5000
    result = parse_termination(json.dumps(document))
    assert len(result.paths[0].reason or "") <= 512
    assert len(result.kernel_release or "") <= 256


def test_a_compact_result_the_agent_shortened_is_still_used() -> None:
    paths = [{"path": f"/scratch/{i:03d}/" + "d" * 150, "fstype": "btrfs", "verdict": "affected",
              "rule": "G12", "reason": "x" * 200, "repro": {"outcome": "reproduced"}}
             for i in range(40)]
    text = compact(report_document("affected", paths=paths))
    assert len(text.encode()) <= TERMINATION_LIMIT
    result = parse_termination(text)
    assert result.verdict is Verdict.AFFECTED
    assert result.truncated is True
    assert 0 < len(result.paths) < 40
