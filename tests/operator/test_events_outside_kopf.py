"""Events from work the operator starts itself (the orphan sweep, started once the nodes are
listed, outside any kopf handler): kopf's poster queue is absent there, so they go through
the API with the fields kopf's poster writes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from thpcheck.contract import names
from thpcheck.contract.views import NodeView
from thpcheck.controller import events


@pytest.fixture(autouse=True)
def no_poster() -> Iterator[None]:
    events._outside_kopf.clear()
    yield
    events._outside_kopf.clear()


def test_outside_kopf_an_event_is_posted_through_the_api() -> None:
    posted: list[dict[str, Any]] = []

    async def post(body: dict[str, Any]) -> None:
        posted.append(body)

    async def scenario() -> None:
        events.post_outside_kopf_with(post)
        events.on_node(NodeView("n1", uid="u-1"), reason="Uncordoned",
                       message="uncordon: ThpCheck gone no longer exists " + "x" * 2000)
        await asyncio.sleep(0)  # the posting task runs
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert len(posted) == 1
    event = posted[0]
    assert event["reason"] == "Uncordoned" and event["type"] == "Normal"
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "n1",
                                       "uid": "u-1", "namespace": "default"}
    assert event["metadata"] == {"namespace": "default", "generateName": "thpcheck-"}
    assert event["source"] == {"component": names.MANAGER}
    assert len(event["message"]) == events.MESSAGE_LIMIT


def test_without_a_poster_outside_kopf_the_error_is_not_hidden() -> None:
    with pytest.raises(LookupError):
        events.on_node(NodeView("n1"), reason="Uncordoned", message="m")


def test_the_event_body_carries_kopfs_fields() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    body = events.event_body({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": "p", "uid": "u", "namespace": "ns"}},
                             type_="Warning", reason="R", message="m", now=now)
    assert body["metadata"]["namespace"] == "ns"
    assert body["involvedObject"]["namespace"] == "ns"
    assert body["firstTimestamp"] == body["lastTimestamp"] == now.isoformat()
