"""Bad input: one clear line naming the path and the fix, exit 2, and nothing written."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.host.loopfs import loop_mount
from tests.host.agent import listing, thpcheck

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def special_mounts(tmp_path_factory: pytest.TempPathFactory,
                   loopfs: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """A read-only ext4 mount, and an ext4 too small for the default 64 MiB base file."""
    workdir = tmp_path_factory.mktemp("special")
    with contextlib.ExitStack() as stack:
        small = stack.enter_context(loop_mount(workdir / "small", "ext4", size_mib=32))
        readonly = stack.enter_context(loop_mount(workdir / "ro", "ext4", options="ro"))
        yield {"small": small, "readonly": readonly}


def _cases(tmp: Path, mounts: dict[str, Path]) -> dict[str, tuple[Path, Path, str]]:
    """name -> (path to pass, directory to watch, words the error must contain)."""
    (tmp / "a-file").write_text("x")
    (tmp / "real").mkdir()
    (tmp / "link").symlink_to(tmp / "real")
    (tmp / "real" / "sub").mkdir()
    return {
        "missing": (tmp / "missing", tmp, "does not exist; create the directory first"),
        "not-a-dir": (tmp / "a-file", tmp, "is not a directory"),
        "symlink": (tmp / "link", tmp / "real", "is a symlink; pass the directory it points to"),
        "symlinked-parent": (tmp / "link" / "sub", tmp / "real",
                             f"goes through the symlink {tmp}/link and resolves to "
                             f"{tmp}/real/sub"),
        "proc": (Path("/proc/self"), tmp, "is under a host system directory"),
        "proc-spelling": (Path("//proc/./self/"), tmp, "is under a host system directory"),
        "kubelet": (Path("/var/lib/kubelet/pods"), tmp,
                    "is under the kubelet's or a container runtime's state directory"),
        "read-only": (mounts["readonly"], mounts["readonly"], "is on a read-only mount"),
        "no-space": (mounts["small"], mounts["small"],
                     "refusing to write: not enough headroom"),
    }


CASE_NAMES = ["missing", "not-a-dir", "symlink", "symlinked-parent", "proc", "proc-spelling",
              "kubelet", "read-only", "no-space"]


@pytest.mark.parametrize("command", ["check", "repro"])
@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input(tmp_path: Path, special_mounts: dict[str, Path], command: str,
                   case: str) -> None:
    path, watched, words = _cases(tmp_path, special_mounts)[case]
    before = listing(watched)
    result = thpcheck(command, str(path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and words in lines[0]
    assert result.stdout == ""
    assert listing(watched) == before


def test_size_arguments_are_checked(tmp_path: Path) -> None:
    pmd = int(Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size").read_text())
    small, need = f"{pmd // 2 >> 10}KiB", f"pass --base-size >= {pmd >> 20}MiB"
    result = thpcheck("repro", str(tmp_path), "--base-size", small)
    assert result.returncode == 2 and need in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # check: a base below one PMD skips that path's reproducer, saying why; nothing is written
    result = thpcheck("check", "--json", str(tmp_path), "--base-size", small)
    repro = json.loads(result.stdout)["paths"][0]["repro"]
    assert repro["outcome"] == "skipped" and need in repro["message"], repro
    result = thpcheck("check", str(tmp_path), "--append-size", "lots")
    assert result.returncode == 2 and "is not a size" in result.stderr
    assert os.listdir(tmp_path) == []


def test_pod_mode_turns_bad_paths_into_error_verdicts(tmp_path: Path) -> None:
    result = thpcheck("check", "--json", "--exit-zero", "--no-repro", str(tmp_path / "nope"),
                      str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert '"verdict": "error"' in result.stdout and "does not exist" in result.stdout
