"""The termination-message parser: untrusted input always gives a result, never an exception."""

from __future__ import annotations

import json

import pytest

from tests.operator.factories import message, report_document
from thpcheck.contract.termination import MESSAGE_LIMIT, parse_termination
from thpcheck.model.report import TERMINATION_LIMIT, compact
from thpcheck.model.verdict import Verdict


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


# -- hostile input: bounded size and depth, never an exception ------------------------------


@pytest.mark.parametrize("text", [
    "[" * 1000 + "]" * 1000,  # json.loads raises RecursionError on this
    "{\"a\":" * 1000 + "1" + "}" * 1000,
    # a valid result whose path list hides a deep document
    message().replace('"paths":[', '"paths":[' + "[" * 900 + "]" * 900 + ",", 1),
])
def test_deeply_nested_json_is_an_error_result_not_an_exception(text: str) -> None:
    result = parse_termination(text)
    assert result.verdict is Verdict.ERROR
    assert result.problem and "levels deep" in result.problem


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    document = json.loads(message())
    document["paths"][0]["reason"] = "[[[[{{{{" * 100 + '\\"]]]'
    result = parse_termination(json.dumps(document))
    assert result.problem is None and result.verdict is Verdict.NOT_AFFECTED


def test_a_message_longer_than_any_kubelet_writes_is_refused_before_decoding() -> None:
    document = json.loads(message())
    document["paths"][0]["reason"] = "x" * 20_000
    result = parse_termination(json.dumps(document))
    assert result.verdict is Verdict.ERROR
    assert result.problem and "more than a kubelet writes" in result.problem


def test_containers_in_text_fields_are_never_rendered() -> None:
    document = json.loads(message())
    document["kernelRelease"] = [[["x"] * 50] * 50]
    result = parse_termination(json.dumps(document))
    assert result.kernel_release == "<list>"


@pytest.mark.parametrize("text", ['"\\' * 5000, '"' + "a" * 16000, '\\"' * 5000, '["' * 4000])
def test_adversarial_quoting_is_handled_in_one_pass(text: str) -> None:
    assert parse_termination(text).verdict is Verdict.ERROR


def test_a_message_of_the_wrong_type_is_an_error_result() -> None:
    assert parse_termination(12345).verdict is Verdict.ERROR  # type: ignore[arg-type]


SKIPPED = [{"mount_point": "/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~csi/pvc-1/mount",
            "fstype": "ext4", "reason": "a pod volume (another tenant's data)"},
           {"mount_point": "/mnt/nfs", "fstype": "nfs4", "reason": "network filesystem"}]


def test_skipped_mounts_reach_the_result_with_their_reasons() -> None:
    result = parse_termination(message("not-affected", skipped_mounts=SKIPPED))
    assert result.skipped_count == 2
    assert [(m.mount_point, m.reason) for m in result.skipped_mounts] == [
        (SKIPPED[0]["mount_point"], SKIPPED[0]["reason"]), ("/mnt/nfs", "network filesystem")]


def test_skipped_mounts_cut_to_a_count_by_the_agent_keep_the_count() -> None:
    many = [{"mount_point": f"/var/lib/kubelet/pods/{i:04d}/" + "v" * 120, "fstype": "ext4",
             "reason": "a pod volume"} for i in range(60)]
    text = message("not-affected", skipped_mounts=many)
    assert len(text.encode()) <= TERMINATION_LIMIT
    result = parse_termination(text)
    assert result.skipped_count == 60
    assert result.skipped_mounts == ()


def test_hostile_skipped_mounts_are_bounded_and_never_fatal() -> None:
    document = json.loads(message())
    document["skippedMounts"] = [{"mountPoint": "/m" * 1500, "reason": "r" * 1000}] * 2 + [
        7, {"mountPoint": 3}, {"reason": "no mount point"}] + [
        {"mountPoint": "/m", "reason": "r"}] * 100
    assert len(json.dumps(document)) < MESSAGE_LIMIT  # decoded, not refused as too long
    result = parse_termination(json.dumps(document))
    assert result.verdict is Verdict.NOT_AFFECTED
    assert result.skipped_count == 105
    assert len(result.skipped_mounts) == 61  # the first 64 entries, 3 of them unusable
    assert all(len(m.mount_point) <= 1024 and len(m.reason or "") <= 256
               for m in result.skipped_mounts)
    for garbage in (-1, "12", {"a": 1}, True):
        document["skippedMounts"] = garbage
        assert parse_termination(json.dumps(document)).skipped_count is None
