"""kopf's re-list announces the objects deleted while no watch was open (unit level; the
cluster test restarts the real kube-apiserver: tests/operator/test_cluster_watch_relist.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from kopf._cogs.clients import watching
from kopf._core.reactor import queueing

from thpcheck.controller import kopf_relist

LISTED = watching.Bookmark.LISTED


def obj(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": f"uid-{name}", "labels": labels,
                         "annotations": {"big": "x" * 1000}, "resourceVersion": "1"},
            "spec": {"taints": []}, "status": {"nodeInfo": {"kernelVersion": "6.1"}}}


def listed(*names: str) -> list[Any]:
    return [*({"type": None, "object": obj(n)} for n in names), LISTED]


async def _stream(events: Iterable[Any]) -> AsyncIterator[Any]:
    for event in events:
        yield event


def run(events: Iterable[Any]) -> list[Any]:
    async def collect() -> list[Any]:
        return [e async for e in kopf_relist.reconciled(_stream(events), LISTED,
                                                        queueing.get_uid)]

    return asyncio.run(collect())


def deletions(out: list[Any]) -> list[str]:
    """Names of the objects whose deletion the wrapper announced (not the watch's own)."""
    return [e["object"]["metadata"]["name"] for e in out
            if isinstance(e, dict) and e.get("type") == "DELETED"
            and "deletionTimestamp" in e["object"]["metadata"]]


def test_the_first_listing_passes_through_unchanged() -> None:
    events = listed("a", "b")
    assert run(events) == events


def test_a_relist_announces_what_was_deleted_meanwhile_before_it_ends() -> None:
    events = [*listed("a", "b", "c"),
              {"type": "MODIFIED", "object": obj("b")},
              {"type": "ADDED", "object": obj("d")},
              # the watch ended with 410 Gone: kopf lists again; b and d are gone
              *listed("a", "c")]
    out = run(events)
    assert deletions(out) == ["b", "d"]
    second_listed = len(out) - 1
    assert out[second_listed] is LISTED
    assert all(out.index(e) < second_listed for e in out if isinstance(e, dict)
               and e.get("type") == "DELETED")


def test_the_announced_body_is_small_and_says_it_is_going() -> None:
    events = [*listed("a"), *listed()]
    (event,) = [e for e in run(events) if isinstance(e, dict) and e["type"] == "DELETED"]
    body = event["object"]
    assert body["kind"] == "Node" and body["metadata"]["uid"] == "uid-a"
    assert set(body["metadata"]) == {"name", "uid", "labels", "deletionTimestamp"}
    assert "spec" not in body and "status" not in body


def test_deletions_the_watch_saw_are_not_announced_again() -> None:
    events = [*listed("a", "b"), {"type": "DELETED", "object": obj("b")}, *listed("a")]
    assert deletions(run(events)) == []


def test_a_listing_cut_short_and_restarted_is_counted_from_its_restart() -> None:
    events = [*listed("a", "b", "c"),
              {"type": None, "object": obj("a")},  # a re-list that broke off here ...
              {"type": None, "object": obj("a")},  # ... and started again: b is gone
              {"type": None, "object": obj("c")}, LISTED]
    assert deletions(run(events)) == ["b"]


def test_bookmarks_and_errors_pass_through() -> None:
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    events = [*listed("a"), bookmark, *listed("a")]
    assert run(events) == events


def test_the_patch_applies_once_to_kopf_and_wraps_its_stream() -> None:
    assert kopf_relist.announce_relist_deletions() is True
    patched = watching.infinite_watch
    assert kopf_relist.announce_relist_deletions() is True
    assert watching.infinite_watch is patched  # not wrapped twice


def test_a_kopf_of_another_shape_is_left_alone() -> None:
    class Other:
        @staticmethod
        async def infinite_watch(settings: Any, resource: Any) -> AsyncIterator[Any]:
            yield None

        Bookmark = watching.Bookmark

    assert not kopf_relist._shape_matches(Other, queueing)
    assert kopf_relist._shape_matches(
        type("Orig", (), {"infinite_watch": staticmethod(_original_shape),
                          "Bookmark": watching.Bookmark}), queueing)


async def _original_shape(*, settings: Any, resource: Any, namespace: Any,
                          operator_paused: Any = None) -> AsyncIterator[Any]:
    yield None
