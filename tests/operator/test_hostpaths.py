"""A path missing on a node: the kubelet's FailedMount Event becomes the node's error result
(pure planners, and the reconciler's listing against a scripted API; tests/realnode shows the
real kubelet doing it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from thpcheck.contract.agent import CHECK, STANDBY
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import NodeView, agent_pod_view
from thpcheck.controller.api import Kube
from thpcheck.controller.context import OperatorContext
from thpcheck.controller.indexes import Indexes
from thpcheck.controller.metrics import Metrics
from thpcheck.controller.reconciler import CheckReconciler
from thpcheck.controller.settings import Settings
from thpcheck.model.verdict import Verdict
from thpcheck.planning.hostpaths import (
    EVENTS_REREAD,
    FAILED_MOUNT,
    FAILED_MOUNT_SELECTOR,
    events_due,
    missing_by_pod,
    missing_paths,
    mount_failures,
    stuck_pods,
    with_mount_failures,
)
from thpcheck.planning.results import plan_results
from thpcheck.planning.runs import plan_runs

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


# -- one listing of a namespace's Events, matched to the stuck pods by uid --------------------


def event(uid: str, message: str = MESSAGE, reason: str = FAILED_MOUNT,
          kind: str = "Pod") -> dict[str, Any]:
    return {"metadata": {"name": f"{uid}.1", "namespace": "thp-checker"}, "reason": reason,
            "message": message, "involvedObject": {"kind": kind, "uid": uid,
                                                   "namespace": "thp-checker"}}


def stuck_pod(uid: str, created: str = CREATED) -> Any:
    return replace(agent_pod_view(pod_body(created=created)), uid=uid, name=f"pod-{uid}")


def test_a_listing_is_matched_to_the_pods_by_uid() -> None:
    other = 'MountVolume.SetUp failed for volume "x" : mount failed: exit status 32'
    missing = missing_by_pod([
        event("u1"), event("u1", MESSAGE.replace("/srv/missing", "/srv/gone")),
        event("u2", other),  # no missing path: not a failure
        event("u3", reason="FailedScheduling"), event("u4", kind="Node"),
        event("u5")])
    assert missing == {"u1": ["/srv/missing", "/srv/gone"], "u5": ["/srv/missing"]}
    # u5 (an older pod, or another check's) is not among the stuck pods asked about.
    pods = [stuck_pod("u1"), stuck_pod("u2"), stuck_pod("u6")]
    assert mount_failures(missing, pods) == {"u1": ["/srv/missing", "/srv/gone"]}
    assert mount_failures({}, pods) == {}


def test_the_events_are_listed_again_for_a_newly_stuck_pod_or_after_the_reread() -> None:
    old = stuck_pod("u1")  # created 2 min before NOW: stuck since 100 s
    assert not events_due(None, [], NOW)
    assert events_due(None, [old], NOW)
    read = NOW - timedelta(seconds=10)
    assert not events_due(read, [old], NOW)
    assert events_due(NOW - EVENTS_REREAD, [old], NOW)
    # Stuck 20 s after its creation, 5 s after the listing: not covered by it yet.
    new = stuck_pod("u2", (read - timedelta(seconds=15)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert stuck_pods([new], NOW) == [new]
    assert events_due(read, [old, new], NOW)


class ScriptedEvents(Kube):
    """The API's Events list as the API server answers it (field selector applied), with
    every request recorded; nothing else is served."""

    def __init__(self, events: list[dict[str, Any]]) -> None:  # no client, no thread pool
        self.events = events
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    async def request(self, verb: str, path: str, body: Any = None, content_type: str = "",
                      query: Mapping[str, str] | None = None, resource: str = "") -> Any:
        self.requests.append((verb, path, dict(query or {})))
        assert verb == "GET" and path == "/api/v1/namespaces/thp-checker/events", path
        wanted = dict(term.split("=", 1)
                      for term in (query or {}).get("fieldSelector", "").split(",") if term)

        def field(item: Mapping[str, Any], dotted: str) -> str:
            value: Any = item
            for part in dotted.split("."):
                value = (value or {}).get(part)
            return str(value or "")

        return {"metadata": {}, "items": [e for e in self.events
                                          if all(field(e, k) == v for k, v in wanted.items())]}


@pytest.mark.asyncio
async def test_one_list_of_events_serves_every_stuck_pod() -> None:
    """Five stuck check pods, three of them on a missing path: one list of the namespace's
    Events (not one per pod) finds the three; the next reconciles within the reread interval
    list nothing, a newly stuck pod or the interval's end lists once more."""
    kube = ScriptedEvents([event("u1"), event("u3"), event("u5"), event("u9", kind="Node"),
                           event("u2", reason="Scheduled")])
    ctx = OperatorContext(settings=Settings(namespace="thp-checker"),
                          kube=kube, metrics=Metrics())
    check = {"metadata": {"name": "c", "uid": "cu"}, "spec": {"paths": ["/srv/missing"]}}

    async def reconcile(pods: list[Any], now: datetime) -> list[Any]:
        reconciler = CheckReconciler(ctx, cast(Any, check), cast(Indexes, None), now)
        return await reconciler._mount_failures(pods)

    pods = [stuck_pod(f"u{i}") for i in range(1, 6)]
    seen = await reconcile(pods, NOW)
    assert len(kube.requests) == 1, kube.requests
    (_, _, query), = kube.requests
    assert query["fieldSelector"] == FAILED_MOUNT_SELECTOR
    troubled = {p.uid for p in seen if p.trouble is not None}
    assert troubled == {"u1", "u3", "u5"}
    assert all(p.trouble.reason == FAILED_MOUNT for p in seen if p.trouble is not None)

    seen = await reconcile(pods, NOW + timedelta(seconds=5))
    assert len(kube.requests) == 1  # the listing still stands, and still applies
    assert {p.uid for p in seen if p.trouble is not None} == troubled

    late = stuck_pod("u6", (NOW - timedelta(seconds=15)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    kube.events.append(event("u6"))
    seen = await reconcile([*pods, late], NOW + timedelta(seconds=10))
    assert len(kube.requests) == 2
    assert {p.uid for p in seen if p.trouble is not None} == {*troubled, "u6"}

    await reconcile([*pods, late], NOW + timedelta(seconds=10) + EVENTS_REREAD)
    assert len(kube.requests) == 3
