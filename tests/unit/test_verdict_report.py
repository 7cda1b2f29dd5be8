"""Verdict combination (reproduction beats prediction) and the report's compact form."""

from __future__ import annotations

import json

import pytest

from tests.unit.hosttree import HostTree
from thpcheck.host.facts import collect
from thpcheck.host.hostroot import HostRoot
from thpcheck.model.predict import ConfigKnowledge, Prediction, predict
from thpcheck.model.report import CheckReport, PathReport, compact, render_table, to_document
from thpcheck.model.repro import Loss, ReproOutcome, ReproResult
from thpcheck.model.rules import Evidence, Outcome
from thpcheck.model.verdict import CheckExit, PathVerdict, Verdict, combine, exit_code, worst

AT_RISK = Prediction(Outcome.AT_RISK, "G12", "btrfs", Evidence.VERIFIED, ("S11",), "high")
RULED_OUT = Prediction(Outcome.NOT_AFFECTED, "G1", "config off", Evidence.VERIFIED, ("S3",))
UNKNOWN = Prediction(Outcome.UNKNOWN, "G18", "no config", Evidence.INFERRED, ())
LOSS = Loss(0, 16384, 0, 16384, 67108864, b"\0" * 64, b"\x5c" * 64)


def _repro(outcome: ReproOutcome, **kw: object) -> ReproResult:
    result = ReproResult(outcome=outcome, iterations_run=kw.pop("iterations_run", 1))  # type: ignore[arg-type]
    for key, value in kw.items():
        setattr(result, key, value)
    return result


REPRODUCED = _repro(ReproOutcome.REPRODUCED, losses=[LOSS])
CLEAN = _repro(ReproOutcome.NOT_REPRODUCED, iterations_run=200)
REFUSED = _repro(ReproOutcome.COLLAPSE_UNSUPPORTED, madv_collapse_known=True, iterations_run=0)
NO_ADVICE = _repro(ReproOutcome.COLLAPSE_UNSUPPORTED, madv_collapse_known=False, iterations_run=0)
FAILED = _repro(ReproOutcome.ERROR, message="ENOSPC", iterations_run=0)


@pytest.mark.parametrize(
    ("prediction", "repro", "verdict", "rule", "disagrees"),
    [
        (AT_RISK, REPRODUCED, Verdict.AFFECTED, "G12", False),
        (RULED_OUT, REPRODUCED, Verdict.AFFECTED, "G1", True),
        (UNKNOWN, REPRODUCED, Verdict.AFFECTED, "G18", False),
        (AT_RISK, CLEAN, Verdict.SUSCEPTIBLE, "G12", False),
        (RULED_OUT, CLEAN, Verdict.NOT_AFFECTED, "G1", False),
        (UNKNOWN, CLEAN, Verdict.UNKNOWN, "G18", False),
        (RULED_OUT, REFUSED, Verdict.NOT_AFFECTED, "G1", False),
        (AT_RISK, REFUSED, Verdict.SUSCEPTIBLE, "G12", True),
        (UNKNOWN, REFUSED, Verdict.NOT_AFFECTED, "RT1", False),
        (AT_RISK, NO_ADVICE, Verdict.SUSCEPTIBLE, "G12", False),
        (UNKNOWN, NO_ADVICE, Verdict.UNKNOWN, "G18", False),
        (AT_RISK, None, Verdict.SUSCEPTIBLE, "G12", False),
        (RULED_OUT, None, Verdict.NOT_AFFECTED, "G1", False),
        (AT_RISK, FAILED, Verdict.SUSCEPTIBLE, "G12", False),
        (RULED_OUT, FAILED, Verdict.ERROR, "G1", False),
    ],
)
def test_combine(prediction: Prediction, repro: ReproResult | None, verdict: Verdict, rule: str,
                 disagrees: bool) -> None:
    result = combine(prediction, repro)
    assert (result.verdict, result.rule, result.disagreement is not None) == (
        verdict, rule, disagrees)


def test_node_verdict_and_exit_codes() -> None:
    assert worst([Verdict.NOT_AFFECTED, Verdict.UNKNOWN, Verdict.AFFECTED]) is Verdict.AFFECTED
    assert worst([Verdict.ERROR, Verdict.SUSCEPTIBLE]) is Verdict.SUSCEPTIBLE
    assert worst([]) is Verdict.NOT_AFFECTED
    assert exit_code([Verdict.NOT_AFFECTED]) is CheckExit.CLEAN
    assert exit_code([Verdict.UNKNOWN, Verdict.SUSCEPTIBLE]) is CheckExit.AT_RISK
    assert exit_code([Verdict.ERROR, Verdict.NOT_AFFECTED]) is CheckExit.INCONCLUSIVE


def _report(tmp_path: object, paths: int, reason: str = "r") -> CheckReport:
    facts = collect(HostRoot(str(HostTree().write(tmp_path))))  # type: ignore[arg-type]
    config = ConfigKnowledge(True, False, "proc/config.gz", Evidence.VERIFIED)
    report = CheckReport(facts, config, predict(facts.kernel.version, config, node_only=True),
                         checked_at="2026-11-28T00:00:00Z")
    for i in range(paths):
        report.paths.append(PathReport(f"/scratch/{i:03d}", None, AT_RISK, REPRODUCED,
                                       PathVerdict(Verdict.AFFECTED, reason * 300, "G12")))
    return report


def test_document_has_the_documented_fields(tmp_path: object) -> None:
    document = to_document(_report(tmp_path, 1))
    assert document["verdict"] == "affected" and document["mitigated"] is False
    assert document["kernel"]["release"] == "6.12.95"
    assert document["kernel"]["read_only_thp_for_fs"] is True
    path = document["paths"][0]
    assert {"path", "fstype", "verdict", "reason", "rule"} <= path.keys()
    assert path["repro"]["outcome"] == "reproduced" and path["repro"]["iteration"] == 0
    assert path["repro"]["bad_bytes"] == 16384 and "duration_s" in path["repro"]
    json.dumps(document)


@pytest.mark.parametrize("paths", [1, 16, 200])
def test_compact_fits_the_termination_message(tmp_path: object, paths: int) -> None:
    text = compact(to_document(_report(tmp_path, paths)))
    assert len(text.encode()) <= 4096
    result = json.loads(text)
    assert result["verdict"] == "affected" and result["kernelRelease"] == "6.12.95"
    assert result["paths"], "at least one path survives shortening"
    assert result.get("truncated", False) is (paths == 200)


@pytest.mark.parametrize("mounts", [3, 300])
def test_skipped_mounts_are_reported_and_never_crowd_out_paths(tmp_path: object,
                                                               mounts: int) -> None:
    from thpcheck.model.mounts import Skipped

    report = _report(tmp_path, 4)
    report.skipped = [Skipped(f"/var/lib/kubelet/pods/{i:04d}/volumes/kubernetes.io~csi/p/mount",
                              "ext4", "a pod volume or CSI mount under the kubelet's directory")
                      for i in range(mounts)]
    document = to_document(report)
    assert len(document["skipped_mounts"]) == mounts
    assert document["skipped_mounts"][0]["reason"].startswith("a pod volume or CSI mount")
    text = compact(document)
    result = json.loads(text)
    assert len(text.encode()) <= 4096 and len(result["paths"]) == 4
    if mounts == 3:
        assert [m["mountPoint"] for m in result["skippedMounts"]] == [
            m.mount_point for m in report.skipped]
    else:
        assert result["skippedMounts"] == 300  # only the count fits
    assert "not tested (3 mounts)" in render_table(report) or mounts == 300


def test_table_names_every_path(tmp_path: object) -> None:
    text = render_table(_report(tmp_path, 2, reason="x"))
    assert "/scratch/000" in text and "/scratch/001" in text
    assert "node verdict: affected" in text
