"""The operator's own recent writes, laid over the indexes until the watches catch up.

At thousands of nodes the watch stream can trail the operator's writes by seconds. Planning
from the stale index would repeat a node patch (and its Event) or a result write on the
next reconcile. Each write's response is kept with the resourceVersion the object had
*before* the write: while the index still shows that old version, the response is the truth;
as soon as the index shows anything else (our write, or a newer change by someone else), the
index wins again. resourceVersions are only compared for equality, as the API asks.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from thpcheck.contract.views import NodeView, ResultView

TTL = 60.0  # never trust a remembered write longer than this
V = TypeVar("V", NodeView, ResultView)


@dataclass
class _Entry(Generic[V]):
    view: V
    before: str  # resourceVersion before our write ("" when we created it)
    at: float


@dataclass
class RecentWrites:
    nodes: dict[str, _Entry[NodeView]] = field(default_factory=dict)
    results: dict[str, _Entry[ResultView]] = field(default_factory=dict)

    def wrote_node(self, view: NodeView, before: str) -> None:
        self.nodes[view.name] = _Entry(view, before, time.monotonic())

    def wrote_result(self, view: ResultView, before: str) -> None:
        self.results[view.name] = _Entry(view, before, time.monotonic())

    def forget_result(self, name: str) -> None:
        self.results.pop(name, None)

    def overlay_nodes(self, indexed: Iterable[NodeView]) -> list[NodeView]:
        return _overlay(self.nodes, indexed)

    def overlay_results(self, indexed: Iterable[ResultView], check: str) -> list[ResultView]:
        """The check's results, with its fresh creations the index has not seen yet."""
        views = _overlay(self.results, indexed)
        seen = {v.name for v in views}
        now = time.monotonic()
        for name, entry in list(self.results.items()):
            if entry.view.check == check and name not in seen and not entry.before:
                if now - entry.at < TTL:
                    views.append(entry.view)
                else:
                    del self.results[name]
        return views


def _overlay(entries: dict[str, _Entry[V]], indexed: Iterable[V]) -> list[V]:
    now = time.monotonic()
    views: list[V] = []
    for view in indexed:
        entry = entries.get(view.name)
        if entry is None:
            views.append(view)
        elif view.resource_version == entry.before and now - entry.at < TTL:
            views.append(entry.view)  # the index has not caught up with our write
        else:
            del entries[view.name]  # caught up, or overtaken by someone else's change
            views.append(view)
    return views
