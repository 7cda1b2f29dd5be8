"""The operator's Event poster: every Event goes through the operator's own client, a few at
once from one bounded backlog (kopf's poster posted about ``worker_limit`` a second when each
Event is on another node: one idle second per worker; docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from thpcheck.contract import names
from thpcheck.contract.views import NodeView
from thpcheck.controller import events
from thpcheck.controller.settings import Settings

WORKERS = events.workers_for(Settings(namespace="ns").api_workers)  # the default: 4


@pytest.fixture(autouse=True)
def no_poster() -> Iterator[None]:
    events.install(None)
    yield
    events.install(None)


class Gated:
    """A fake ``create_event``: records bodies, and holds each call until ``gate`` opens."""

    def __init__(self, *, open_: bool = False, fail: set[str] | None = None) -> None:
        self.gate = asyncio.Event()
        if open_:
            self.gate.set()
        self.started: list[str] = []
        self.posted: list[dict[str, Any]] = []
        self.at_once = self.most_at_once = 0
        self.fail = fail or set()

    async def __call__(self, body: dict[str, Any]) -> None:
        self.started.append(body["involvedObject"]["name"])
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        try:
            await self.gate.wait()
            if body["involvedObject"]["name"] in self.fail:
                raise OSError("connection refused")
            self.posted.append(body)
        finally:
            self.at_once -= 1


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_an_event_is_posted_through_the_operators_client_with_kopfs_fields() -> None:
    async def scenario() -> Gated:
        post = Gated(open_=True)
        events.install(events.EventPoster(post, workers=WORKERS))
        events.on_node(NodeView("n1", uid="u-1"), reason="Uncordoned",
                       message="uncordon: ThpCheck gone no longer exists " + "x" * 2000)
        assert await events.installed().flush(5)  # type: ignore[union-attr]
        return post

    posted = asyncio.run(scenario()).posted
    assert len(posted) == 1
    event = posted[0]
    assert event["reason"] == "Uncordoned" and event["type"] == "Normal"
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "n1",
                                       "uid": "u-1", "namespace": "default"}
    assert event["metadata"] == {"namespace": "default", "generateName": "thpcheck-"}
    assert event["source"] == {"component": names.MANAGER}
    assert len(event["message"]) == events.MESSAGE_LIMIT


def test_events_of_many_nodes_are_posted_several_at_once_not_one_object_at_a_time() -> None:
    """Thousands of nodes each get one Event in a run: WORKERS are in flight together, and
    each next Event starts as soon as one lands (no per-object idle wait)."""
    async def scenario() -> tuple[Gated, events.EventPoster]:
        post = Gated()
        poster = events.EventPoster(post, workers=WORKERS)
        events.install(poster)
        for i in range(40):
            events.on_node(NodeView(f"n{i}"), reason="VerdictChanged", message="m")
        await _settle()
        assert post.started == [f"n{i}" for i in range(WORKERS)]
        assert poster.pending == 40
        post.gate.set()
        assert await poster.flush(5)
        await poster.close()
        return post, poster

    post, poster = asyncio.run(scenario())
    assert post.most_at_once == WORKERS
    # several in flight: landing order is not submission order (the timestamps keep it)
    assert sorted(e["involvedObject"]["name"] for e in post.posted) == sorted(
        f"n{i}" for i in range(40))
    assert poster.pending == 0 and poster.dropped == 0


def test_a_full_backlog_drops_the_oldest_and_counts_it() -> None:
    """While the API stalls, the backlog stays bounded: the newest Events are kept."""
    drops: list[int] = []

    async def scenario() -> tuple[Gated, events.EventPoster]:
        post = Gated()
        poster = events.EventPoster(post, workers=2, backlog=3,
                                    dropped=lambda: drops.append(1))
        for i in range(12):
            poster.submit(events.event_body({"kind": "Node", "metadata": {"name": f"n{i}"}},
                                            type_="Normal", reason="R", message="m",
                                            now=datetime.now(UTC)))
            await _settle()  # the two workers take n0 and n1 and hold them
        assert poster.pending == 2 + 3
        post.gate.set()
        assert await poster.flush(5)
        await poster.close()
        return post, poster

    post, poster = asyncio.run(scenario())
    assert sorted(e["involvedObject"]["name"] for e in post.posted) == ["n0", "n1", "n10",
                                                                        "n11", "n9"]
    assert poster.dropped == 7 and len(drops) == 7


def test_a_failed_post_is_logged_and_the_next_events_still_go() -> None:
    async def scenario() -> Gated:
        post = Gated(open_=True, fail={"n0"})
        poster = events.EventPoster(post, workers=1)
        events.install(poster)
        for name in ("n0", "n1"):
            events.on_node(NodeView(name), reason="VerdictChanged", message="m")
        assert await poster.flush(5)
        await poster.close()
        return post

    post = asyncio.run(scenario())
    assert [e["involvedObject"]["name"] for e in post.posted] == ["n1"]


def test_flush_says_when_events_are_still_pending() -> None:
    async def scenario() -> bool:
        poster = events.EventPoster(Gated(), workers=WORKERS)
        poster.submit(events.event_body({"kind": "Node", "metadata": {"name": "n"}},
                                        type_="Normal", reason="R", message="m",
                                        now=datetime.now(UTC)))
        flushed = await poster.flush(0.05)
        await poster.close()
        return flushed

    assert asyncio.run(scenario()) is False


def test_without_a_poster_the_error_is_not_hidden() -> None:
    with pytest.raises(LookupError, match="no Event poster"):
        events.on_node(NodeView("n1"), reason="Uncordoned", message="m")


def test_the_event_body_carries_kopfs_fields() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    body = events.event_body({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": "p", "uid": "u", "namespace": "ns"}},
                             type_="Warning", reason="R", message="m", now=now)
    assert body["metadata"]["namespace"] == "ns"
    assert body["involvedObject"]["namespace"] == "ns"
    assert body["firstTimestamp"] == body["lastTimestamp"] == now.isoformat()
