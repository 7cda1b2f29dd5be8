"""Polling for tests against live systems (API servers, kubelets, guests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from devtools.proc import WaitTimeout, wait_for


def eventually(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25,
               what: str = "condition", diagnose: Callable[[], str] | None = None,
               tolerate: tuple[type[Exception], ...] = ()) -> Any:
    """Return check()'s first truthy result, or fail the test with the last falsy one (and, if
    given, what ``diagnose()`` says, e.g. pod logs): `devtools.proc.wait_for`, whose timeout
    becomes a test failure without a traceback."""
    try:
        return wait_for(check, timeout, what, interval=interval, diagnose=diagnose,
                        tolerate=tolerate)
    except WaitTimeout as exc:
        pytest.fail(str(exc), pytrace=False)
