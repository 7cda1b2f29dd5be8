"""From agent pods to results (what to write), and the ThpCheck status (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.operator.factories import agent_pod, message, node, result
from thpcheck.contract import names
from thpcheck.contract.proof import Proof
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import agent_pod_view, result_view
from thpcheck.model.verdict import Verdict
from thpcheck.planning.results import ResultPlan, plan_results
from thpcheck.planning.states import NodeState
from thpcheck.planning.status import StatusInputs, build_status, counts, progress_only

CHECK = CheckRef("weekly", "uid-check")
NOW = datetime(2026, 11, 28, 16, 1, tzinfo=UTC)
GRACE = timedelta(seconds=30)


def plan(nodes: list, pods: list, results: list = (),
         mitigation: dict | None = None) -> ResultPlan:
    return plan_results(CHECK, nodes, pods, results, mitigation or {}, NOW, GRACE)


def test_a_finished_pod_gives_a_result_owned_by_check_and_node() -> None:
    n1 = node("n1")
    p = plan([n1], [agent_pod("weekly", "n1", message("affected"))])
    (write,) = p.writes
    assert write.create and write.verdict is Verdict.AFFECTED and write.previous_verdict is None
    body = write.body
    assert body["metadata"]["name"] == "weekly.n1"
    assert body["metadata"]["labels"][names.VERDICT_LABEL] == "affected"
    assert body["metadata"]["labels"][names.NODE_LABEL] == "n1"
    owners = {o["kind"]: o for o in body["metadata"]["ownerReferences"]}
    assert owners["ThpCheck"]["controller"] is True and owners["ThpCheck"]["uid"] == "uid-check"
    assert owners["Node"]["uid"] == "uid-n1" and not owners["Node"].get("controller")
    status = body["status"]
    assert (status["node"], status["verdict"], status["kernelRelease"], status["stale"]) == (
        "n1", "affected", "6.12.90", False)
    assert status["paths"][0]["badBytes"] == 16384
    assert len(status["message"].encode()) <= 1024
    proof = Proof("2026-11-28T16:00:00Z", "6.12.90", "boot-1")
    assert status["proof"] == {"verdict": "affected", "provenAt": "2026-11-28T16:00:00Z",
                               "kernelRelease": "6.12.90", "bootID": "boot-1"}
    assert p.states["n1"] == NodeState("n1", Verdict.AFFECTED, False, False, proof=proof,
                                        filesystems=("ext4",))


def test_an_unchanged_result_is_not_written_again() -> None:
    n1 = node("n1")
    first = plan([n1], [agent_pod("weekly", "n1", message())]).writes[0]
    digest = first.body["metadata"]["annotations"][names.CONTENT_HASH_ANNOTATION]
    again = plan([n1], [agent_pod("weekly", "n1", message())],
                 [result("weekly", "n1", content_hash=digest)])
    assert not again.writes and not again.patches and not again.deletes


def test_mitigation_readiness_overrides_the_agent_and_only_patches() -> None:
    n1 = node("n1")
    first = plan([n1], [agent_pod("weekly", "n1", message("affected"))]).writes[0]
    digest = first.body["metadata"]["annotations"][names.CONTENT_HASH_ANNOTATION]
    stored = result_view(first.body)
    assert stored.content_hash == digest and stored.proof is not None
    p = plan([n1], [agent_pod("weekly", "n1", message("affected"))], [stored], {"n1": True})
    assert not p.writes
    assert p.patches[0].patch == {"status": {"mitigated": True, "stale": False}}
    assert p.states["n1"].mitigated and p.states["n1"].verdict is Verdict.AFFECTED


def test_a_reboot_or_new_kernel_marks_the_result_stale() -> None:
    rebooted = node("n1", boot_id="boot-2")
    p = plan([rebooted], [], [result("weekly", "n1")])
    assert p.patches[0].patch == {"status": {"mitigated": False, "stale": True}}
    assert p.states["n1"].stale
    upgraded = node("n1", kernel="6.12.96")
    assert plan([upgraded], [], [result("weekly", "n1")]).states["n1"].stale
    unknown = node("n1", boot_id="", kernel="")
    assert not plan([unknown], [], [result("weekly", "n1")]).states["n1"].stale


def test_the_latest_check_pod_wins_and_standby_pods_check_nothing() -> None:
    n1 = node("n1")
    old = agent_pod("weekly", "n1", message("susceptible"), finished_at="2026-11-28T15:00:00Z")
    new = agent_pod("weekly", "n1", message("affected"), finished_at="2026-11-28T16:00:00Z")
    standby = agent_pod("weekly", "n1", message("error"), template="standby",
                        finished_at="2026-11-28T17:00:00Z")
    assert plan([n1], [new, standby, old]).writes[0].verdict is Verdict.AFFECTED
    assert not plan([n1], [standby]).writes


def test_an_empty_message_waits_for_the_grace_period_then_is_an_error() -> None:
    n1 = node("n1")
    fresh = agent_pod("weekly", "n1", "", finished_at="2026-11-28T16:00:50Z")
    waiting = plan([n1], [fresh])
    assert not waiting.writes and waiting.pending == ["n1"]
    assert waiting.states["n1"].verdict is None
    old = agent_pod("weekly", "n1", "", finished_at="2026-11-28T16:00:00Z")
    assert plan([n1], [old]).writes[0].verdict is Verdict.ERROR
    crashed = agent_pod("weekly", "n1", "", exit_code=1)
    assert plan([n1], [crashed]).writes[0].verdict is Verdict.ERROR


def test_results_of_unselected_or_deleted_nodes_are_deleted() -> None:
    # The garbage collector would wait for the ThpCheck to go too (it needs all owners gone).
    n1 = node("n1")
    p = plan([n1], [], [result("weekly", "n1"), result("weekly", "unselected"),
                        result("weekly", "gone")])
    assert p.deletes == ["weekly.unselected", "weekly.gone"]


def test_pod_view_parsing_matches_the_kubelet_shape() -> None:
    from tests.operator.factories import pod_body

    view = agent_pod_view(pod_body("weekly", "n1", message("affected")))
    assert view.check == "weekly" and view.node == "n1" and view.template == "check"
    assert view.run is not None and view.run.result is not None
    assert view.run.result.verdict is Verdict.AFFECTED
    assert agent_pod_view(pod_body("weekly", "n1", None)).run is not None
    assert agent_pod_view(pod_body("weekly", "n1", None)).run.result is None  # type: ignore[union-attr]


def states(**verdicts: str | None) -> dict[str, NodeState]:
    return {n: NodeState(n, Verdict(v) if v else None) for n, v in verdicts.items()}


def test_counts_cover_selected_nodes_only() -> None:
    numbers = counts(["a", "b", "c", "d"], {
        **states(a="affected", b="not-affected", c=None, x="affected"),
        "d": NodeState("d", Verdict.SUSCEPTIBLE, mitigated=True, stale=True)})
    assert numbers == {"nodes": 4, "checked": 2, "stale": 1, "mitigated": 1, "affected": 1,
                       "susceptible": 1, "notAffected": 1, "unknown": 0, "errors": 0}


def status(selected: list[str], node_states: dict[str, NodeState], **kw: object) -> dict:
    return build_status(StatusInputs(generation=3, selected=selected, states=node_states,
                                     now=NOW, **kw))  # type: ignore[arg-type]


def test_phases() -> None:
    assert status([], {})["phase"] == "Pending"
    assert status(["a", "b"], states(a=None, b=None))["phase"] == "Pending"
    assert status(["a", "b"], states(a="affected", b=None))["phase"] == "Running"
    assert status(["a", "b"], states(a="affected", b="not-affected"))["phase"] == "Completed"
    assert status(["a", "b"], states(a="error", b="not-affected"))["phase"] == "Degraded"
    assert status(["a"], states(a="unknown"), unschedulable=1)["phase"] == "Degraded"


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    done = status(["a"], states(a="affected"))
    ready = next(c for c in done["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 3
    earlier = [{**c, "lastTransitionTime": "2026-01-01T00:00:00Z"} for c in done["conditions"]]
    again = status(["a"], states(a="affected"), previous_conditions=earlier)
    assert all(c["lastTransitionTime"] == "2026-01-01T00:00:00Z" for c in again["conditions"])
    flipped = status(["a", "b"], states(a="affected", b=None), previous_conditions=earlier)
    ready = next(c for c in flipped["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["lastTransitionTime"] != "2026-01-01T00:00:00Z"
    assert {c["type"] for c in done["conditions"]} == {"Ready", "Progressing", "Degraded",
                                                      "RemediationBlocked", "UntrustedResults"}


def test_status_lists_cordons_and_blocked_remediation() -> None:
    s = status(["a", "b", "c"], states(a="affected", b="affected", c="affected"),
               cordoned_nodes=["b", "a"], blocked_cordons=1)
    assert s["cordoned"] == 2 and s["cordonedNodes"] == ["a", "b"]
    blocked = next(c for c in s["conditions"] if c["type"] == "RemediationBlocked")
    assert (blocked["status"], blocked["reason"]) == ("True", "BudgetExhausted")


def test_progress_only_changes_are_the_counts_and_their_messages() -> None:
    three = ["a", "b", "c"]
    one = status(three, states(a="not-affected", b=None, c=None))
    two = status(three, states(a="not-affected", b="affected", c=None),
                 previous_conditions=one["conditions"])
    assert progress_only(one, two)  # Running both times: only counts and messages moved
    done = status(three, states(a="not-affected", b="affected", c="affected"),
                  previous_conditions=two["conditions"])
    assert not progress_only(two, done)  # Completed, Ready flipped: written at once
    error = status(three, states(a="error", b="affected", c=None),
                   previous_conditions=two["conditions"])
    assert not progress_only(two, error)  # Degraded
    cordoned = status(three, states(a="not-affected", b="affected", c=None),
                      previous_conditions=one["conditions"], cordoned_nodes=["b"])
    assert not progress_only(one, cordoned)
    assert not progress_only({}, one)  # nothing stored yet


def test_skipped_mounts_are_recorded_in_the_result() -> None:
    skipped = [{"mount_point": "/mnt/nfs", "fstype": "nfs4", "reason": "network filesystem"}]
    p = plan([node("n1")], [agent_pod("weekly", "n1", message("not-affected",
                                                               skipped_mounts=skipped))])
    (write,) = p.writes
    status = write.body["status"]
    assert status["skippedMounts"] == [{"mountPoint": "/mnt/nfs",
                                        "reason": "network filesystem"}]
    assert status["skippedMountCount"] == 1
    (plain,) = plan([node("n1")], [agent_pod("weekly", "n1", message("affected"))]).writes
    assert "skippedMounts" not in plain.body["status"]
    assert "skippedMountCount" not in plain.body["status"]


def _undeclared(value: object, schema: dict, where: str) -> list[str]:
    """Fields of ``value`` the CRD schema does not declare (the API server would prune them
    silently), or whose JSON type differs."""
    kinds = {"string": str, "integer": int, "boolean": bool, "number": (int, float),
             "array": list, "object": dict}
    expected = schema.get("type")
    if expected and not isinstance(value, kinds[expected]):
        return [f"{where}: {type(value).__name__}, the CRD says {expected}"]
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        properties = schema.get("properties", {})
        return [problem for key, item in value.items()
                for problem in ([f"{where}.{key}: not in the CRD"] if key not in properties
                                else _undeclared(item, properties[key], f"{where}.{key}"))]
    if isinstance(value, list):
        return [problem for i, item in enumerate(value)
                for problem in _undeclared(item, schema.get("items", {}), f"{where}[{i}]")]
    return []


def test_every_field_a_result_carries_is_declared_in_the_crd() -> None:
    import yaml

    from devtools.cluster.operator import CRD_DIR

    crd = yaml.safe_load((CRD_DIR / "thpnoderesults.thpcheck.io.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    skipped = [{"mount_point": "/mnt/nfs", "fstype": "nfs4", "reason": "network filesystem"}]
    for text in (message("affected", mitigated=True),
                 message("not-affected", skipped_mounts=skipped)):
        (write,) = plan([node("n1")], [agent_pod("weekly", "n1", text)]).writes
        body = {k: v for k, v in write.body.items() if k in ("status", "spec")}
        assert _undeclared(body, schema, "") == []
