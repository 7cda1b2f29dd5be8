"""Shared pytest configuration: fixture plugins, and CI's guard against proving nothing.

When a tier is required (``THPCHECK_REQUIRE_<TIER>=1``, set by ``scripts/test``), the session
fails unless at least one test of that tier passed: a run that skipped or deselected a whole
tier, or collected nothing, must never look green.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.cluster.fixtures"]

TIERS = ("host", "vm", "vm_arm64", "cluster", "images", "realnode")
_tier_of: dict[str, set[str]] = {}
_passed: set[str] = set()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _tier_of[item.nodeid] = {m.name for m in item.iter_markers() if m.name in TIERS}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        _passed.add(report.nodeid)


def _required() -> list[str]:
    return [t for t in TIERS if os.environ.get(f"THPCHECK_REQUIRE_{t.upper()}") == "1"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``THPCHECK_TIER_GUARD=1`` (the full run of ``scripts/test``), every required tier
    must have a passing test."""
    if os.environ.get("THPCHECK_TIER_GUARD") != "1" or exitstatus != 0:
        return
    missing = [t for t in _required() if not any(t in _tier_of.get(n, set()) for n in _passed)]
    if _passed and not missing:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(f"THPCHECK TIER GUARD: required tiers with no passing test: "
                            f"{', '.join(missing) or 'all'} ({len(_passed)} tests passed)",
                            red=True, bold=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
