"""kopf's start-up barrier without its quadratic wake-ups.

With index handlers, kopf holds every object's worker at a barrier (a ``ToggleSet(all)``)
until every watched object is indexed. Each object adds a toggle and drops it once indexed,
and kopf notifies *every* waiting worker on each add and each drop, though the barrier's
state (``is_on()``) only flips once. With N objects that is about N^2 wake-ups: at 5,000
nodes the operator burnt 150 CPU seconds and 196 s before it handled anything.

The fix notifies only when the set's overall state changes. Nothing waits on a ToggleSet
for anything but that state (``wait_for(state)``), and waiters on one toggle are woken by
``Toggle.turn_to`` as before, so no waiter can miss its change. The patch is applied only
to a kopf whose ToggleSet has the shape it was written against (kopf 1.45); on any other
it stays off and the operator runs with kopf's own code.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import structlog

log = structlog.get_logger("thpcheck.operator")

_PATCHED = "_thpcheck_coalesced_wakeups"


def _shape_matches(toggle_set: type[Any]) -> bool:
    """The internals this patch relies on, checked rather than assumed."""
    try:
        probe = toggle_set(all)
    except TypeError:
        return False
    if not all(hasattr(probe, attr) for attr in ("_condition", "_toggles", "_fn")):
        return False
    if not isinstance(probe._toggles, set):
        return False
    for method in ("make_toggle", "drop_toggle", "drop_toggles", "wait_for", "is_on"):
        if not callable(getattr(toggle_set, method, None)):
            return False
    params = list(inspect.signature(toggle_set.make_toggle).parameters)
    return len(params) == 3 and params[1].endswith("__val") and params[2] == "name"


def coalesce_barrier_wakeups() -> bool:
    """Patch kopf's ToggleSet once; True when the patch is in effect."""
    from kopf._cogs.aiokits import aiotoggles

    toggle_set: type[Any] = aiotoggles.ToggleSet
    if getattr(toggle_set, _PATCHED, False):
        return True
    if not _shape_matches(toggle_set):
        log.warning("kopf's ToggleSet changed shape: start-up wake-ups left as kopf does them")
        return False

    async def make_toggle(self: Any, __val: bool = False, *,
                          name: str | None = None) -> Any:
        toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            if self.is_on() != before:
                self._condition.notify_all()
        return toggle

    async def drop_toggle(self: Any, toggle: Any) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.discard(toggle)
            if self.is_on() != before:
                self._condition.notify_all()

    async def drop_toggles(self: Any, toggles: Iterable[Any]) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.difference_update(toggles)
            if self.is_on() != before:
                self._condition.notify_all()

    toggle_set.make_toggle = make_toggle
    toggle_set.drop_toggle = drop_toggle
    toggle_set.drop_toggles = drop_toggles
    setattr(toggle_set, _PATCHED, True)
    return True
