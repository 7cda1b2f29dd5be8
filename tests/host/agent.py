"""Run the real ``thpcheck`` command in a subprocess, as users and pods do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def thpcheck(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m thpcheck ARGS`` with the repo's package on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    return subprocess.run([sys.executable, "-m", "thpcheck", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def check_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = thpcheck("check", "--json", *args)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def listing(path: Path) -> list[tuple[str, int]]:
    """What a directory holds, recursively: names and sizes (to compare before/after)."""
    return sorted((str(p.relative_to(path)), p.lstat().st_size) for p in path.rglob("*"))
