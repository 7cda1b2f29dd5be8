"""A ThpNodeResult the operator did not write is ignored (pure): never used as a node's
result, never rewritten or deleted, never a reason to remediate; reported instead."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.operator.factories import agent_pod, message, node
from thpcheck.contract import names
from thpcheck.contract.checkspec import parse_spec
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import result_view
from thpcheck.model.verdict import Verdict
from thpcheck.planning.remediation import plan_remediation
from thpcheck.planning.results import plan_predicted_results, plan_results

CHECK = CheckRef("weekly", "uid-check")
NOW = datetime(2026, 11, 28, 16, 1, tzinfo=UTC)
GRACE = timedelta(seconds=30)


def written(verdict: str = "affected", node_name: str = "n1") -> dict[str, Any]:
    """The body the operator writes for ``node_name``, as the API returns it."""
    plan = plan_results(CHECK, [node(node_name)],
                        [agent_pod("weekly", node_name, message(verdict))], [], {}, NOW, GRACE)
    body = copy.deepcopy(plan.writes[0].body)
    body["metadata"]["resourceVersion"] = "11"
    return body


def forged(change: str) -> dict[str, Any]:
    body = written()
    meta = body["metadata"]
    if change == "no owner":
        meta["ownerReferences"] = [o for o in meta["ownerReferences"] if o["kind"] != "ThpCheck"]
    elif change == "other check uid":
        meta["ownerReferences"][0]["uid"] = "uid-of-a-deleted-check"
    elif change == "owner not controller":
        meta["ownerReferences"][0]["controller"] = False
    elif change == "node label":
        meta["labels"][names.NODE_LABEL] = "n2"
    elif change == "check label":
        meta["labels"][names.CHECK_LABEL] = "other"
    elif change == "verdict label":
        meta["labels"][names.VERDICT_LABEL] = "not-affected"
    elif change == "no content hash":
        del meta["annotations"][names.CONTENT_HASH_ANNOTATION]
    elif change == "name":
        meta["name"] = "weekly.n1.copy"
    return body


CHANGES = ["no owner", "other check uid", "owner not controller", "node label", "check label",
           "verdict label", "no content hash", "name"]


def test_a_result_the_operator_wrote_is_trusted() -> None:
    view = result_view(written())
    assert view.owner_uid == "uid-check" and view.mismatch == ""
    plan = plan_results(CHECK, [node("n1")], [], [view], {}, NOW, GRACE)
    assert not plan.untrusted and plan.states["n1"].verdict is Verdict.AFFECTED


@pytest.mark.parametrize("change", CHANGES)
def test_a_forged_result_is_ignored_reported_and_never_remediated(change: str) -> None:
    view = result_view(forged(change))
    plan = plan_results(CHECK, [node("n1")], [], [view], {}, NOW, GRACE)
    assert plan.untrusted.get(view.name)
    assert plan.states["n1"].verdict is None  # the node is unchecked, not affected
    assert not plan.writes and not plan.patches and not plan.deletes
    spec = parse_spec({"remediation": {"cordon": True, "mitigate": True}})
    remedy = plan_remediation("weekly", spec.remediation, paused=False, selected=[node("n1")],
                              all_nodes=[node("n1")], states=plan.states, cordoned=[])
    assert not remedy.changes


def test_a_forged_result_of_an_unselected_node_is_not_deleted() -> None:
    body = forged("no owner")
    view = result_view(body)
    plan = plan_results(CHECK, [node("n2")], [], [view], {}, NOW, GRACE)
    assert not plan.deletes and view.name in plan.untrusted


def test_the_agents_result_replaces_a_forged_one_of_the_same_name() -> None:
    view = result_view(forged("verdict label"))
    plan = plan_results(CHECK, [node("n1")], [agent_pod("weekly", "n1", message())], [view],
                        {}, NOW, GRACE)
    (write,) = plan.writes
    assert write.create and write.verdict is Verdict.NOT_AFFECTED
    assert view.name in plan.untrusted


def test_preflight_mode_ignores_forged_results_too() -> None:
    view = result_view(forged("no owner"))
    plan = plan_predicted_results(CHECK, [node("n1")], [view], {}, NOW)
    assert view.name in plan.untrusted and plan.writes[0].create
