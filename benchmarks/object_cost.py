"""What one object of a kind costs the operator: its JSON as served, the same parsed into
Python objects (what kopf holds per object while it indexes, and per event), and the view the
operator's lean watch keeps of it instead (``thpcheck.controller.watched``). Measured with
``tracemalloc`` on real objects read from the benchmark's cluster."""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def retained_kib(make: Callable[[], Any]) -> float:
    """KiB still allocated, once ``make`` has returned, by what it returned (its garbage
    is freed when it returns)."""
    gc.collect()
    tracemalloc.start()
    try:
        kept = make()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del kept
    return current / 1024


def object_cost(bodies: Iterable[Mapping[str, Any]],
                view: Callable[[Mapping[str, Any]], Any]) -> dict[str, float]:
    """Mean KiB per object: as JSON, parsed whole, and as its view (built from the parse).
    All objects are held at once, as a listing holds them; Python's free lists keep a few KiB
    of what a parse freed, shared out over the objects."""
    texts = [json.dumps(body, separators=(",", ":")) for body in bodies]
    if not texts:
        return {}
    count = len(texts)
    return {
        "objects": count,
        "json_kib": round(sum(len(text) for text in texts) / 1024 / count, 2),
        "parsed_kib": round(retained_kib(lambda: [json.loads(t) for t in texts]) / count, 2),
        "view_kib": round(retained_kib(lambda: [view(json.loads(t)) for t in texts]) / count,
                          2),
    }
