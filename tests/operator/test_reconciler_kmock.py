"""The reconciler as an applier, in-process against a mock API server (kmock): the
create-or-replace fallbacks and the conflict policy of each write. Each test scripts the
answers of the writes it is about; the other writes succeed, echoing what was sent."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kmock
import pytest
import pytest_asyncio

from tests.operator.factories import agent_pod, message, node
from thpcheck.contract import names
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import ResultView, result_view
from thpcheck.controller import events
from thpcheck.controller.api import Kube
from thpcheck.controller.context import OperatorContext
from thpcheck.controller.indexes import Indexes
from thpcheck.controller.metrics import Metrics
from thpcheck.controller.reconciler import CheckReconciler
from thpcheck.controller.settings import Settings
from thpcheck.planning.results import plan_results

pytestmark = [pytest.mark.asyncio, pytest.mark.kmock(cls=kmock.RawHandler)]

NOW = datetime(2026, 11, 28, 16, 1, tzinfo=UTC)
API = f"/apis/{names.GROUP}/{names.VERSION}"
RESULTS = f"{API}/{names.RESULT_PLURAL}"
STATUS = f"{API}/{names.CHECK_PLURAL}/weekly/status"
DAEMONSETS = "/apis/apps/v1/namespaces/thp-checker/daemonsets"
NODES = re.compile("/api/v1/nodes/.*")
CONFLICT = {"kind": "Status", "code": 409, "message": "the object has been modified"}
Posted = list[tuple[str, str, str]]  # (where, reason, message)


def echo(version: str = "101") -> Callable[[Any], Any]:
    """Answer a write with its own body (a merge patch's too), at ``version``."""
    def answer(request: Any) -> Any:
        data = request.data if isinstance(request.data, dict) else {}
        return {**data, "metadata": {**data.get("metadata", {}), "resourceVersion": version}}
    return answer


def replaced(request: Any) -> Any:
    """Answer a result's JSON patch (replace) with the result it makes."""
    ops = {op["path"]: op["value"] for op in request.data}
    name = str(request.url).rsplit("/", 1)[1]
    return {"metadata": {"name": name, "resourceVersion": "102",
                         "labels": ops["/metadata/labels"],
                         "annotations": ops["/metadata/annotations"],
                         "ownerReferences": ops["/metadata/ownerReferences"]},
            "status": ops["/status"]}


@pytest_asyncio.fixture
async def ctx(kmock: kmock.RawHandler, tmp_path: Path) -> AsyncIterator[OperatorContext]:
    """The operator's context with its real client, connected as the operator connects (a
    kubeconfig naming the mock server)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}]}))
    metrics = Metrics()
    context = OperatorContext(settings=Settings(namespace="thp-checker"),
                              kube=Kube.connect(str(kubeconfig), metrics, workers=4),
                              metrics=metrics)
    yield context
    context.kube.close()


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> Posted:
    """The Events the reconciler posts (kopf's poster is not running here)."""
    found: Posted = []
    monkeypatch.setattr(events, "on_check", lambda body, *, reason, message, warning=False:
                        found.append(("check", reason, message)))
    monkeypatch.setattr(events, "on_node", lambda node, *, reason, message, warning=False:
                        found.append((node.name, reason, message)))
    return found


def body(spec: dict[str, Any], status: dict[str, Any] | None = None) -> Any:
    return {"apiVersion": names.API_VERSION, "kind": names.CHECK_KIND,
            "metadata": {"name": "weekly", "uid": "uid-check", "generation": 1,
                         "resourceVersion": "100"},
            "spec": {"maxConcurrent": 10, **spec}, "status": status or {}}


def indexes(pods: Any = (), results: list[ResultView] | None = None) -> Indexes:
    return Indexes(nodes={n: node(n) for n in ("n1", "n2")},
                   agent_pods={"weekly": list(pods)}, mitigation_pods={},
                   results={"weekly": results or []}, daemonsets={}, checks={})


def requests(mock: kmock.RawHandler, method: str, path: str | re.Pattern[str]) -> list[Any]:
    return [r for r in mock if r.method.value == method.upper()
            and (re.fullmatch(path, r.url.path) if isinstance(path, re.Pattern)
                 else r.url.path == path)]


def answer_the_rest(mock: kmock.RawHandler) -> None:
    """Every write the test does not script succeeds (scripted reactions come first)."""
    mock["post", kmock.path(DAEMONSETS)] << 201 << echo()
    mock["post", kmock.path(RESULTS)] << 201 << echo()
    mock["patch", kmock.path(re.compile(f"{RESULTS}/.*"))] << replaced
    mock["patch", kmock.path(STATUS)] << (lambda r: {"metadata": {"resourceVersion": "105"},
                                                     "status": r.data["status"]})
    mock["patch", kmock.path(NODES)] << echo()
    mock.fallback << 500 << {"kind": "Status", "message": "not scripted"}


AFFECTED = [agent_pod("weekly", "n1", message("affected")),
            agent_pod("weekly", "n2", message("not-affected"))]


async def reconcile(ctx: OperatorContext, check: Any, idx: Indexes) -> None:
    await CheckReconciler(ctx, check, idx, NOW).run()


async def test_a_result_that_exists_already_is_replaced(
        kmock: kmock.RawHandler, ctx: OperatorContext, posted: Posted) -> None:
    kmock["post", kmock.path(RESULTS)] << 409 << CONFLICT
    answer_the_rest(kmock)
    await reconcile(ctx, body({}), indexes(AFFECTED))
    assert len(requests(kmock, "post", RESULTS)) == 2  # both creates: 409
    patched = requests(kmock, "patch", re.compile(f"{RESULTS}/.*"))
    assert sorted(r.url.path.rsplit("/", 1)[1] for r in patched) == ["weekly.n1", "weekly.n2"]
    assert all(r.headers["Content-Type"] == "application/json-patch+json" for r in patched)
    # Written (by the fallback): the verdict Event follows (n2's first, clean verdict is
    # routine: no Event).
    assert [(w, r) for w, r, _ in posted if w != "check"] == [("n1", "VerdictChanged")]


async def test_a_result_that_vanished_is_created_again(
        kmock: kmock.RawHandler, ctx: OperatorContext, posted: Posted) -> None:
    earlier = plan_results(CheckRef("weekly", "uid-check"), [node("n1"), node("n2")],
                           [agent_pod("weekly", n, message(), finished_at="2026-11-28T15:00:05Z")
                            for n in ("n1", "n2")], [], {}, NOW, timedelta(seconds=30))
    stale = [result_view({**w.body, "metadata": {**w.body["metadata"], "resourceVersion": "9"}})
             for w in earlier.writes]
    kmock["patch", kmock.path(re.compile(f"{RESULTS}/.*"))] << 404 << {"kind": "Status"}
    answer_the_rest(kmock)
    await reconcile(ctx, body({}), indexes(AFFECTED, stale))
    assert len(requests(kmock, "patch", re.compile(f"{RESULTS}/.*"))) == 2
    created = requests(kmock, "post", RESULTS)
    assert sorted(r.data["metadata"]["name"] for r in created) == ["weekly.n1", "weekly.n2"]
    assert ("n1", "VerdictChanged") in [(w, r) for w, r, _ in posted]


async def test_a_daemonset_conflict_is_left_to_the_next_reconcile(
        kmock: kmock.RawHandler, ctx: OperatorContext, posted: Posted) -> None:
    kmock["post", kmock.path(DAEMONSETS)] << 409 << CONFLICT
    answer_the_rest(kmock)
    await reconcile(ctx, body({}), indexes())
    assert len(requests(kmock, "post", DAEMONSETS)) == 1
    assert not requests(kmock, "patch", re.compile(f"{DAEMONSETS}/.*"))  # no replace
    assert "RunStarted" not in [r for _, r, _ in posted]
    (status,) = requests(kmock, "patch", STATUS)
    assert "lastRunAt" not in status.data["status"]
    assert ctx.memory("weekly").rejection is None


async def test_a_rejected_daemonset_is_not_sent_again_for_the_same_spec(
        kmock: kmock.RawHandler, ctx: OperatorContext, posted: Posted) -> None:
    kmock["post", kmock.path(DAEMONSETS)] << 422 << {"kind": "Status",
                                                     "message": "denied by policy"}
    answer_the_rest(kmock)
    await reconcile(ctx, body({}), indexes())
    await reconcile(ctx, body({}), indexes())
    assert len(requests(kmock, "post", DAEMONSETS)) == 1
    first = requests(kmock, "patch", STATUS)[0].data["status"]
    assert first["phase"] == "Degraded"
    degraded = next(c for c in first["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "DaemonSetRejected"
    assert "denied by policy" in degraded["message"]
    memory = ctx.memory("weekly")
    assert memory.rejection is not None and memory.rejection.message == "denied by policy"
    await reconcile(ctx, {**body({}), "metadata": {**body({})["metadata"], "generation": 2}},
                    indexes())
    assert len(requests(kmock, "post", DAEMONSETS)) == 2  # a new spec is sent


async def test_a_conflicting_cordon_budget_changes_no_node_and_replans(
        kmock: kmock.RawHandler, ctx: OperatorContext, posted: Posted) -> None:
    budget = kmock["patch", kmock.path(STATUS),
                   kmock.data({"metadata": {"resourceVersion": "100"}})]
    budget << 409 << CONFLICT
    answer_the_rest(kmock)
    await reconcile(ctx, body({"remediation": {"cordon": True, "maxCordoned": 5}}),
                    indexes(AFFECTED))
    assert len(list(budget)) == 1
    assert not requests(kmock, "patch", NODES)
    assert ctx.triggers.flag("weekly").is_set()
    statuses = [r.data for r in requests(kmock, "patch", STATUS)]
    assert statuses[-1]["status"]["cordonedNodes"] == []  # as stored: nothing was cordoned
    assert "metadata" not in statuses[-1]  # the status itself is written unconditionally
    assert "Cordoned" not in [r for _, r, _ in posted]


async def test_a_persisted_budget_precedes_the_cordon(
        kmock: kmock.RawHandler, ctx: OperatorContext, posted: Posted) -> None:
    answer_the_rest(kmock)
    await reconcile(ctx, body({"remediation": {"cordon": True, "maxCordoned": 5}}),
                    indexes(AFFECTED))
    budget, final = (r.data for r in requests(kmock, "patch", STATUS))
    assert budget == {"status": {"cordonedNodes": ["n1"], "cordoned": 1},
                      "metadata": {"resourceVersion": "100"}}
    assert final["status"]["cordonedNodes"] == ["n1"]
    (cordon,) = [r.data for r in requests(kmock, "patch", NODES)
                 if r.data.get("spec", {}).get("unschedulable")]
    assert cordon["metadata"]["annotations"][names.CORDONED_BY_ANNOTATION] == "weekly"
    assert ("n1", "Cordoned") in [(w, r) for w, r, _ in posted]
    assert ctx.memory("weekly").cordon_claims == {"n1"}
    memory = ctx.memory("weekly")
    assert (memory.version_before, memory.version_after) == ("100", "105")


async def test_a_conflicting_node_is_retried_without_its_event(
        kmock: kmock.RawHandler, ctx: OperatorContext, posted: Posted) -> None:
    kmock["patch", kmock.path("/api/v1/nodes/n1")] << 409 << CONFLICT
    answer_the_rest(kmock)
    await reconcile(ctx, body({}), indexes(AFFECTED))
    assert ctx.triggers.flag("weekly").is_set()
    messages = {w: (r, m) for w, r, m in posted if w != "check"}
    assert {w: r for w, (r, _) in messages.items()} == {"n1": "VerdictChanged"}
    assert "label:" not in messages["n1"][1]  # its label was not written
    labelled = [r.url.path for r in requests(kmock, "patch", NODES)]
    assert "/api/v1/nodes/n2" in labelled  # n2's was: a routine first verdict, no Event


async def test_a_refused_node_condition_is_reported_once(
        kmock: kmock.RawHandler, ctx: OperatorContext, posted: Posted) -> None:
    kmock["patch", kmock.path(re.compile("/api/v1/nodes/.*/status"))] << 403 << {
        "kind": "Status", "message": "nodes/status is forbidden"}
    answer_the_rest(kmock)
    check = body({"remediation": {"condition": True, "label": False}})
    await reconcile(ctx, check, indexes(AFFECTED))
    await reconcile(ctx, check, indexes(AFFECTED))
    forbidden = [m for _, r, m in posted if r == "NodeConditionForbidden"]
    assert len(forbidden) == 1 and "(nodes/status is forbidden)" in forbidden[0]


async def test_a_failed_status_write_is_not_remembered_and_is_written_again(
        kmock: kmock.RawHandler, ctx: OperatorContext, posted: Posted) -> None:
    refused = kmock["patch", kmock.path(STATUS)][:1] << 409 << CONFLICT
    answer_the_rest(kmock)
    idx = indexes(AFFECTED)
    await reconcile(ctx, body({}), idx)
    assert len(list(refused)) == 1
    memory = ctx.memory("weekly")
    assert memory.written_status is None and memory.status_written_at < 0
    # The next reconcile (same observed state) writes it again; then it is remembered, and
    # a third reconcile writes nothing.
    await reconcile(ctx, body({}), idx)
    assert len(requests(kmock, "patch", STATUS)) == 2
    assert memory.written_status is not None and memory.written_status["phase"] == "Completed"
    await reconcile(ctx, body({}), idx)
    assert len(requests(kmock, "patch", STATUS)) == 2

