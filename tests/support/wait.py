"""Polling for tests against live systems (API servers, kubelets, guests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def eventually(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25,
               what: str = "condition", diagnose: Callable[[], str] | None = None,
               tolerate: tuple[type[Exception], ...] = ()) -> Any:
    """Return check()'s first truthy result, or fail with the last falsy one (and, if given,
    what ``diagnose()`` says, e.g. pod logs). Exceptions of the ``tolerate`` types (a server
    restarting) count as a falsy result and are shown if they were the last."""
    deadline = time.monotonic() + timeout
    result: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except tolerate as exc:
            result = f"error: {exc}"
        else:
            if result:
                return result
        time.sleep(interval)
    extra = f"\n{diagnose()}" if diagnose else ""
    pytest.fail(f"{what} not met within {timeout:.0f}s; last result: {result!r}{extra}",
                pytrace=False)
