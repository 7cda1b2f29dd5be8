"""kopf's start-up barrier with coalesced wake-ups: same semantics, linear work."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from kopf._cogs.aiokits import aiotoggles

from thpcheck.controller import kopf_startup

WORKERS = 400


class CountingAll:
    """``all`` that counts its calls: one per predicate check of a woken waiter."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, states: Iterable[bool]) -> bool:
        self.calls += 1
        return all(states)


async def _start_up_like_kopf(toggles: aiotoggles.ToggleSet) -> list[bool]:
    """What kopf's watcher and workers do: a toggle per object, index, drop it, wait."""
    blocker = await toggles.make_toggle(name="orchestration blocker")
    released: list[bool] = []

    async def worker(toggle: aiotoggles.Toggle) -> None:
        await toggles.drop_toggle(toggle)  # indexed
        await toggles.wait_for(True)  # every other object too
        released.append(True)

    tasks = []
    for number in range(WORKERS):
        toggle = await toggles.make_toggle(name=f"object {number}")
        tasks.append(asyncio.create_task(worker(toggle)))
        await asyncio.sleep(0)  # the next object arrives later: this worker waits meanwhile
    for _ in range(5):
        await asyncio.sleep(0)
    assert released == [], "a worker passed the barrier while it was closed"
    await toggles.drop_toggle(blocker)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    return released


def test_patch_applies_once_and_reports_it() -> None:
    assert kopf_startup.coalesce_barrier_wakeups() is True
    assert kopf_startup.coalesce_barrier_wakeups() is True
    assert aiotoggles.ToggleSet._thpcheck_coalesced_wakeups is True


@pytest.mark.asyncio
async def test_barrier_releases_everyone_with_linear_wakeups() -> None:
    kopf_startup.coalesce_barrier_wakeups()
    counter = CountingAll()
    released = await _start_up_like_kopf(aiotoggles.ToggleSet(counter))
    assert len(released) == WORKERS
    # kopf's own code checks the predicate about WORKERS^2 / 2 times (81,000 here).
    assert counter.calls < 10 * WORKERS, counter.calls


@pytest.mark.asyncio
async def test_any_set_still_wakes_on_state_change_and_single_toggle_flips() -> None:
    kopf_startup.coalesce_barrier_wakeups()
    paused = aiotoggles.ToggleSet(any)
    waiter = asyncio.create_task(paused.wait_for(True))
    await asyncio.sleep(0)
    off = await paused.make_toggle(False, name="peer a")
    await asyncio.sleep(0)
    assert not waiter.done()
    await off.turn_to(True)  # a toggle flipping notifies, as in kopf
    await asyncio.wait_for(waiter, timeout=1)
    unpause = asyncio.create_task(paused.wait_for(False))
    await asyncio.sleep(0)
    await paused.drop_toggles([off])
    await asyncio.wait_for(unpause, timeout=1)
    assert paused.is_off()


def test_unknown_shape_is_left_alone() -> None:
    class Other:
        def __init__(self, fn: object) -> None:
            self._fn = fn

    assert kopf_startup._shape_matches(Other) is False
