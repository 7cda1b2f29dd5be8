"""The full run's guard (tests/conftest.py): a required tier with no passing test fails the run.

``scripts/test`` requires the arm64 kernel tier when its cache exists
(``THPCHECK_REQUIRE_VM_ARM64=1``); a run that then passes no arm64 test (deselected, filtered,
collected nothing) must not exit 0. Each case is a nested pytest over one quick unit test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ONE_TEST = "tests/unit/test_hugepage.py"


def _nested(tmp_path: Path, env_extra: dict[str, str],
            *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("THPCHECK_REQUIRE_") and k != "THPCHECK_TIER_GUARD"}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "pytest", ONE_TEST, "-q", "-p", "no:cacheprovider",
         f"--basetemp={tmp_path / 'nested'}", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_required_arm64_tier_with_no_passing_test_fails_the_run(tmp_path: Path) -> None:
    result = _nested(tmp_path, {"THPCHECK_TIER_GUARD": "1", "THPCHECK_REQUIRE_VM_ARM64": "1"})
    assert result.returncode == 1, result.stdout
    assert "required tiers with no passing test: vm_arm64" in result.stdout


def test_arm64_tier_not_required_when_its_cache_is_absent(tmp_path: Path) -> None:
    """The same tests pass when scripts/test found no arm64 cache (the variable is 0)."""
    result = _nested(tmp_path, {"THPCHECK_TIER_GUARD": "1", "THPCHECK_REQUIRE_VM_ARM64": "0"})
    assert result.returncode == 0, result.stdout
    assert "passed" in result.stdout


def test_a_full_run_that_passes_nothing_fails(tmp_path: Path) -> None:
    result = _nested(tmp_path, {"THPCHECK_TIER_GUARD": "1"}, "-k", "no_such_test_name")
    assert result.returncode != 0, result.stdout
