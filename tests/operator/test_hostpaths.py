"""A path missing on a node: the kubelet's FailedMount Event becomes the node's error result
(pure planners; tests/realnode shows the real kubelet doing it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from thpcheck.model.verdict import Verdict
from thpcheck.specs.agent import CHECK, STANDBY, CheckRef
from thpcheck.specs.hostpaths import FAILED_MOUNT, missing_paths, stuck_pods, with_mount_failures
from thpcheck.specs.results import plan_results
from thpcheck.specs.runs import plan_runs
from thpcheck.specs.views import NodeView, agent_pod_view

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
CREATED = (NOW - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
# What kubelet v1.36 posts (reason FailedMount), verbatim apart from the names.
MESSAGE = ('MountVolume.SetUp failed for volume "scratch-1" : hostPath type check failed: '
           "/srv/missing is not a directory")


def pod_body(phase: str = "Pending", created: str = CREATED, node: str = "n1",
             template: str = CHECK) -> dict[str, object]:
    return {
        "metadata": {"name": "thpcheck-c-abcde", "namespace": "thp-checker", "uid": "u1",
                     "creationTimestamp": created,
                     "labels": {"thpcheck.io/template": template},
                     "annotations": {"thpcheck.io/check-name": "c"}},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "initContainerStatuses": [
            {"name": "check", "state": {"waiting": {"reason": "PodInitializing"}}}]},
    }


def test_only_pods_bound_and_pending_for_a_while_are_looked_at() -> None:
    stuck = agent_pod_view(pod_body())
    assert stuck.pending and stuck_pods([stuck], NOW) == [stuck]
    young = agent_pod_view(pod_body(created=NOW.strftime("%Y-%m-%dT%H:%M:%SZ")))
    running = agent_pod_view(pod_body(phase="Running"))
    unbound = agent_pod_view(pod_body(node=""))
    standby = agent_pod_view(pod_body(template=STANDBY))
    assert stuck_pods([young, running, unbound, standby], NOW) == []


def test_the_kubelets_message_names_the_missing_path() -> None:
    other = 'MountVolume.SetUp failed for volume "x" : mount failed: exit status 32'
    assert missing_paths([MESSAGE, other, MESSAGE]) == ["/srv/missing"]
    assert missing_paths([other]) == []


def test_a_missing_path_is_an_error_result_and_frees_its_rollout_slot() -> None:
    node = NodeView("n1")
    pods = with_mount_failures([agent_pod_view(pod_body())], {"u1": ["/srv/missing"]})
    (pod,) = pods
    assert pod.trouble is not None and pod.trouble.reason == FAILED_MOUNT
    runs = plan_runs([node], pods, None, NOW, timedelta(minutes=15))
    assert set(runs.failures) == {"n1"}
    plan = plan_results(CheckRef("c", "cu"), [node], pods, [], {}, NOW,
                        timedelta(seconds=30), runs.failures)
    (write,) = plan.writes
    status = write.body["status"]
    assert write.verdict is Verdict.ERROR and status["verdict"] == "error"
    assert ("FailedMount: the kubelet cannot mount /srv/missing: does not exist on this node"
            in status["message"])
    assert "nothing was created" in status["message"]
    # Without the Event the same pod is only waiting: no result before its deadline.
    waiting = plan_runs([node], [agent_pod_view(pod_body())], None, NOW,
                        timedelta(minutes=15))
    assert not waiting.failures


def test_a_pod_that_ran_keeps_its_own_result() -> None:
    """The directory appeared and the kubelet started the pod: its run wins."""
    body = pod_body(phase="Running")
    body["status"] = {"phase": "Running", "initContainerStatuses": [{"name": "check", "state": {
        "terminated": {"exitCode": 0, "finishedAt": "2026-12-05T11:59:00Z",
                       "message": '{"schema":"thpcheck.io/result/v1","verdict":"not-affected",'
                                  '"paths":[]}'}}}]}
    ran = agent_pod_view(body)
    (kept,) = with_mount_failures([ran], {"u1": ["/srv/missing"]})
    assert kept.trouble is None and kept.run is not None and kept.run.result is not None
    assert kept.run.result.verdict is Verdict.NOT_AFFECTED
