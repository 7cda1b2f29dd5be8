"""The preflight prediction in the operator (pure): what is recorded, when the agent
disagrees with it, and the results of ``mode: preflight``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.operator.factories import agent_pod, message, result
from thpcheck.contract import names
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import NodeView, node_view, result_view
from thpcheck.contract.views import ResultView as View
from thpcheck.controller.indexes import index_check
from thpcheck.controller.metrics import Metrics
from thpcheck.model.preflight import NodeInfo, predict_node
from thpcheck.model.result import AgentResult, PathOutcome
from thpcheck.model.verdict import Verdict, worst
from thpcheck.planning.prediction import disagreement, predict_view, prediction_record
from thpcheck.planning.results import plan_predicted_results, plan_results
from thpcheck.planning.states import NodeState
from thpcheck.planning.status import StatusInputs, build_status

CHECK = CheckRef("fleet", "uid-check")
NOW = datetime(2026, 11, 28, 16, 1, tzinfo=UTC)
GRACE = timedelta(seconds=30)

# Real nodeInfo strings from the preflight corpus (tests/unit/test_preflight.py).
UBUNTU = ("Ubuntu 22.04.4 LTS", "5.15.0-176-generic")  # not-affected G1, config-known
UEK8 = ("Oracle Linux Server 9.6", "6.12.0-105.51.5.el9uek.x86_64")  # susceptible G10; xfs G6
UEK7 = ("Oracle Linux Server 9.4", "5.15.0-208.159.3.2.el9uek.x86_64")  # susceptible, xfs too
UNKNOWN = ("Some Linux 1", "6.12.30-custom")  # unknown G18


def node(name: str, image: tuple[str, str], **info: str) -> NodeView:
    os_image, kernel = image
    return node_view({
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "7"},
        "status": {"nodeInfo": {"kernelVersion": kernel, "osImage": os_image,
                                "architecture": "amd64", "bootID": "boot-1", **info}},
    })


def agent(kernel: str, *paths: tuple[str, str, str | None], config: bool | None = True,
          source: str = "proc/config.gz") -> AgentResult:
    """An agent result: (fstype, verdict, rule) per path."""
    outcomes = tuple(PathOutcome(path=f"/scratch/{fs}", fstype=fs, verdict=Verdict(v), rule=rule)
                     for fs, v, rule in paths)
    return AgentResult(verdict=worst(o.verdict for o in outcomes), kernel_release=kernel,
                       read_only_thp_for_fs=config, config_source=source, paths=outcomes)


def why(image: tuple[str, str], result: AgentResult) -> str | None:
    return disagreement(predict_view(node("n", image)), result, image[1])


# -- what a disagreement is ---------------------------------------------------------------------


def test_the_prediction_is_the_preflight_commands() -> None:
    n = node("n", UEK8)
    prediction = predict_view(n)
    expected = predict_node(NodeInfo("n", UEK8[1], UEK8[0], "amd64"))
    assert (prediction.verdict, prediction.rule, prediction.reason, prediction.confidence) == (
        expected.verdict, expected.rule, expected.reason, expected.confidence)
    assert predict_view(node("other", UEK8)) is prediction  # one model run per triple
    record = prediction_record(prediction)
    assert record["verdict"] == "susceptible" and record["rule"] == "G10"
    assert record["confidence"] == "config-known" and record["distro"] == "oracle-uek"
    assert record["atRisk"] == ["ext4", "btrfs", "f2fs"] and record["notAtRisk"] == ["xfs"]
    assert (record["kernelVersion"], record["osImage"]) == (UEK8[1], UEK8[0])
    assert "disagreement" not in record


def test_agreement_is_silent() -> None:
    # Predicted not-affected (Ubuntu does not set the option) and the agent agrees.
    assert why(UBUNTU, agent(UBUNTU[1], ("ext4", "not-affected", "G1"), config=False)) is None
    # Predicted susceptible: at risk on ext4, proven, or ruled out where the prediction said
    # so (xfs on 6.12) or where nodeInfo cannot see (tmpfs, read-only mounts, bcachefs).
    for paths in ([("ext4", "susceptible", "G10")], [("ext4", "affected", "G10")],
                  [("xfs", "not-affected", "G6")], [("tmpfs", "not-affected", "G5")],
                  [("bcachefs", "not-affected", "G14")],
                  # an arm64 node with 64K pages: nodeInfo does not give the page size
                  [("ext4", "not-affected", "G19")], [("ext4", "not-affected", "RT2")]):
        assert why(UEK8, agent(UEK8[1], *paths)) is None, paths
    # No evidence: unknown or error paths.
    assert why(UBUNTU, agent(UBUNTU[1], ("fuseblk", "unknown", "G17"), config=False)) is None
    assert why(UEK8, agent(UEK8[1], ("ext4", "error", None))) is None
    # A prediction of unknown claims nothing about the verdict.
    assert why(UNKNOWN, agent(UNKNOWN[1], ("ext4", "affected", "G10"))) is None


def test_at_risk_on_a_node_predicted_not_affected() -> None:
    text = why(UBUNTU, agent(UBUNTU[1], ("ext4", "affected", "G10"), config=False))
    assert text == ("predicted not-affected (G1) but the agent found /scratch/ext4 (ext4) "
                    "affected by G10")


def test_the_distro_tables_config_contradicted_by_the_nodes_own() -> None:
    text = why(UBUNTU, agent(UBUNTU[1], ("xfs", "not-affected", "G6"), config=True))
    assert text == ("the distro table (ubuntu) says CONFIG_READ_ONLY_THP_FOR_FS not set but the "
                    "node's proc/config.gz says y")
    # The agent fell back to the distro table itself: no independent evidence.
    assert why(UBUNTU, agent(UBUNTU[1], ("xfs", "not-affected", "G6"), config=True,
                             source="distro:ubuntu")) is None
    both = why(UEK8, agent(UEK8[1], ("ext4", "not-affected", "G1"), config=False))
    assert both is not None
    assert both.startswith("the distro table (oracle-uek) says CONFIG_READ_ONLY_THP_FOR_FS y")
    assert "predicted susceptible (G10) but the agent proved /scratch/ext4 (ext4) " \
           "not-affected by G1" in both


@pytest.mark.parametrize(("fstype", "rule"), [
    ("ext4", "G4"),  # a fixed stable release the vendor string hid
    ("ext4", "RT1"),  # the kernel refused file collapse at run time
    ("btrfs", "G11"),  # btrfs large folios: the table says BTRFS_EXPERIMENTAL is off
    ("xfs", "G6"),  # xfs on 5.15 (UEK7) is at risk in the model
])
def test_ruled_out_by_a_rule_the_prediction_did_not_expect(fstype: str, rule: str) -> None:
    text = why(UEK7, agent(UEK7[1], (fstype, "not-affected", rule)))
    assert text == (f"predicted susceptible (G10) but the agent proved /scratch/{fstype} "
                    f"({fstype}) not-affected by {rule}")


def test_data_lost_where_the_prediction_said_safe() -> None:
    text = why(UEK8, agent(UEK8[1], ("xfs", "affected", "G6")))
    assert text == ("predicted susceptible (G10) with xfs safe by G6, but data was lost on "
                    "/scratch/xfs")
    # Lost where the agent's own model (not the prediction) said safe: the prediction was right.
    assert why(UEK8, agent(UEK8[1], ("ext4", "affected", "G1"), config=True)) is None
    assert why(UNKNOWN, agent(UNKNOWN[1], ("xfs", "affected", "G6"))) is None


def test_another_kernel_is_no_evidence_about_this_prediction() -> None:
    # The node booted a new kernel since the agent ran: the result is stale, not contrary.
    assert why(UBUNTU, agent("5.15.0-170-generic", ("ext4", "affected", "G10"))) is None
    assert why(UBUNTU, agent("", ("ext4", "affected", "G10"))) is None


def test_no_config_comparison_where_the_option_no_longer_exists() -> None:
    fedora = ("Fedora Linux 45 (Cloud Edition)", "7.2.3-200.fc45.x86_64")
    assert why(fedora, agent(fedora[1], ("ext4", "not-affected", "G3"), config=False)) is None


# -- full mode: recorded beside the agent's result -----------------------------------------------


def test_full_mode_records_the_prediction_and_the_disagreement() -> None:
    n1 = node("n1", UBUNTU)
    text = message("affected", kernel=UBUNTU[1])
    plan = plan_results(CHECK, [n1], [agent_pod("fleet", "n1", text)], [], {}, NOW, GRACE)
    (write,) = plan.writes
    status = write.body["status"]
    assert status["predicted"] is False and status["verdict"] == "affected"
    prediction = status["prediction"]
    assert (prediction["verdict"], prediction["rule"]) == ("not-affected", "G1")
    assert prediction["disagreement"] == write.disagreement == plan.disagreements["n1"]
    assert "predicted not-affected (G1) but the agent found" in write.disagreement
    assert write.previous_disagreement == "" and write.new_run

    # Stored: the next reconcile writes nothing and keeps counting the disagreement.
    stored = result_view({**write.body, "metadata": {**write.body["metadata"],
                                                     "resourceVersion": "9"}})
    assert stored.disagreement == write.disagreement and not stored.predicted
    again = plan_results(CHECK, [n1], [agent_pod("fleet", "n1", text)], [stored], {}, NOW,
                         GRACE)
    assert not again.writes and not again.patches
    assert again.disagreements == {"n1": write.disagreement}


def test_a_new_kernel_rewrites_the_prediction_without_a_disagreement() -> None:
    text = message("not-affected", kernel=UBUNTU[1])
    pod = agent_pod("fleet", "n1", text)
    first = plan_results(CHECK, [node("n1", UBUNTU)], [pod], [], {}, NOW, GRACE).writes[0]
    stored = result_view(first.body)
    upgraded = node("n1", UEK8)
    plan = plan_results(CHECK, [upgraded], [pod], [stored], {}, NOW, GRACE)
    (write,) = plan.writes  # one write, as the stale patch alone would have been
    assert write.body["status"]["stale"] is True
    assert write.body["status"]["prediction"]["kernelVersion"] == UEK8[1]
    assert not write.new_run  # the same agent run: its duration is not observed again
    assert not plan.disagreements


def test_a_result_left_by_preflight_mode_counts_as_stale_until_the_agent_replaces_it() -> None:
    n1 = node("n1", UEK8)
    predicted = plan_predicted_results(CHECK, [n1], [], {}, NOW).writes[0]
    stored = result_view(predicted.body)
    assert stored.predicted
    kept = plan_results(CHECK, [n1], [], [stored], {}, NOW, GRACE)
    assert not kept.writes and not kept.patches  # the object is left as it is
    assert kept.states["n1"] == NodeState("n1", Verdict.SUSCEPTIBLE, False, True)
    replaced = plan_results(CHECK, [n1], [agent_pod("fleet", "n1", message(
        "susceptible", kernel=UEK8[1]))], [stored], {}, NOW, GRACE).writes[0]
    assert replaced.previous_verdict is None  # the first agent verdict: "was unchecked"
    assert replaced.body["status"]["predicted"] is False


# -- preflight mode: the prediction is the result ----------------------------------------------


def test_preflight_mode_writes_the_prediction_as_the_result() -> None:
    nodes = [node("a", UEK8), node("b", UBUNTU), node("c", UNKNOWN)]
    plan = plan_predicted_results(CHECK, nodes, [], {}, NOW)
    bodies = {w.node: w.body for w in plan.writes}
    assert {n: w.verdict.value for n, w in ((w.node, w) for w in plan.writes)} == {
        "a": "susceptible", "b": "not-affected", "c": "unknown"}
    status = bodies["a"]["status"]
    assert status["predicted"] is True and status["stale"] is False
    assert status["kernelRelease"] == UEK8[1] and status["osImage"] == UEK8[0]
    assert status["readOnlyThpForFs"] is True and status["configSource"] == "distro:oracle-uek"
    assert status["checkedAt"] == "2026-11-28T16:01:00Z"
    assert status["prediction"]["confidence"] == "config-known"
    assert status["message"].startswith("predicted from kernel and OS image (config-known): "
                                        "at risk on ext4, btrfs, f2fs; safe on xfs")
    assert "paths" not in status and "pod" not in status
    assert bodies["a"]["metadata"]["labels"][names.VERDICT_LABEL] == "susceptible"
    assert {w.create for w in plan.writes} == {True}
    assert plan.states["a"] == NodeState("a", Verdict.SUSCEPTIBLE, False, False)
    assert not plan.disagreements


def test_preflight_mode_rewrites_only_when_kernel_or_os_image_change() -> None:
    n1 = node("n1", UBUNTU)
    stored = result_view(plan_predicted_results(CHECK, [n1], [], {}, NOW).writes[0].body)
    later = NOW + timedelta(hours=5)
    quiet = plan_predicted_results(CHECK, [n1], [stored], {}, later)
    assert not quiet.writes and not quiet.patches and not quiet.deletes
    # A heartbeat or reboot (new boot ID) changes nothing predicted.
    rebooted = node("n1", UBUNTU, bootID="boot-2")
    assert not plan_predicted_results(CHECK, [rebooted], [stored], {}, later).writes
    for changed in (node("n1", UEK8), node("n1", (UBUNTU[0], "6.8.0-86-generic")),
                    node("n1", ("Debian GNU/Linux 12 (bookworm)", UBUNTU[1]))):
        (write,) = plan_predicted_results(CHECK, [changed], [stored], {}, later).writes
        assert not write.create and write.before == stored.resource_version
        assert write.body["status"]["checkedAt"] == "2026-11-28T21:01:00Z"
        assert write.body["status"]["prediction"]["kernelVersion"] == changed.kernel_version


def test_preflight_mode_patches_mitigated_and_deletes_unselected() -> None:
    n1 = node("n1", UEK8)
    stored = result_view(plan_predicted_results(CHECK, [n1], [], {}, NOW).writes[0].body)
    patched = plan_predicted_results(CHECK, [n1], [stored], {"n1": True}, NOW)
    assert not patched.writes
    assert patched.patches[0].patch == {"status": {"mitigated": True, "stale": False}}
    gone = plan_predicted_results(CHECK, [], [stored, result("fleet", "x")], {}, NOW)
    assert gone.deletes == [stored.name, names.result_name("fleet", "x")]


def test_switching_a_full_result_to_preflight_rewrites_it() -> None:
    old = View(name="fleet.n1", check="fleet", node="n1", content_hash="agent", verdict="affected",
               mitigated=False, stale=True, kernel_release="x", boot_id="y", run="p/t",
               owner_uid="uid-check")
    (write,) = plan_predicted_results(CHECK, [node("n1", UEK8)], [old], {}, NOW).writes
    assert write.previous_verdict == "affected" and write.verdict is Verdict.SUSCEPTIBLE
    assert write.body["status"]["stale"] is False


# -- status, index and metrics ------------------------------------------------------------------


def test_status_counts_disagreements_and_says_predicted() -> None:
    states = {"a": NodeState("a", Verdict.SUSCEPTIBLE), "b": NodeState("b", Verdict.UNKNOWN)}
    status = build_status(StatusInputs(generation=1, selected=["a", "b"], states=states, now=NOW,
                                       predicted=True))
    assert status["disagreements"] == 0 and status["phase"] == "Completed"
    assert status["message"] == ("Completed: 2/2 nodes predicted from kernel and OS image: "
                                 "0 affected, 1 susceptible, 0 not affected, 1 unknown, 0 errors")
    full = build_status(StatusInputs(generation=1, selected=["a"], states=states, now=NOW,
                                     disagreements=1))
    assert full["disagreements"] == 1 and "1/1 nodes checked" in full["message"]


@pytest.mark.parametrize(("mode", "mitigates"), [("full", True), ("preflight", False)])
def test_a_preflight_check_never_asks_for_the_mitigation_daemonset(
        mode: str, mitigates: bool) -> None:
    body: Any = {"metadata": {"name": "c"},
                 "spec": {"mode": mode, "remediation": {"mitigate": True}}}
    assert asyncio.run(index_check(body))["c"].mitigate is mitigates


def test_metrics_for_the_alerts() -> None:
    metrics = Metrics()
    metrics.record_check("c", {"affected": 3}, unchecked=0, mitigated=1, cordoned=0,
                         unverified=0, oldest_age=10.0, affected_unmitigated=2,
                         disagreements=1, interval=86400.0)
    value = metrics.registry.get_sample_value
    assert value("thpcheck_affected_nodes_unmitigated", {"check": "c"}) == 2
    assert value("thpcheck_prediction_disagreements", {"check": "c"}) == 1
    assert value("thpcheck_schedule_interval_seconds", {"check": "c"}) == 86400
    metrics.record_check("c", {}, unchecked=0, mitigated=0, cordoned=0, unverified=0,
                         oldest_age=None)
    assert value("thpcheck_schedule_interval_seconds", {"check": "c"}) is None
    metrics.reconcile_errors.labels(check="c").inc()
    metrics.forget_check("c")
    assert value("thpcheck_prediction_disagreements", {"check": "c"}) is None
    assert value("thpcheck_reconcile_errors_total", {"check": "c"}) is None
