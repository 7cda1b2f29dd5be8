"""The folders show the architecture: pure logic never imports I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "thpcheck"
PURE = ("model", "contract", "planning")
FORBIDDEN = ("thpcheck.host", "thpcheck.controller", "thpcheck.cli", "ctypes", "subprocess",
             "socket", "kopf", "kubernetes", "os", "fcntl", "signal")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(p for d in PURE for p in (PACKAGE / d).glob("*.py")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_import_no_io(module: Path) -> None:
    bad = {name for name in _imports(module)
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"{module.name} imports {sorted(bad)}"


# Which of the package's folders each folder may import: the layers, bottom up. The contract
# (names, views, builders) knows nothing of planning; planners read the contract and never
# the controller that applies their plans; the agent's host code needs no Kubernetes at all.
LAYERS: dict[str, set[str]] = {
    "model": {"model"},
    "contract": {"model", "contract"},
    "planning": {"model", "contract", "planning"},
    "host": {"model", "host", "logs"},
    "controller": {"model", "contract", "planning", "controller", "logs"},
    "cli": {"model", "contract", "planning", "host", "controller", "cli", "logs"},
}


def test_every_folder_has_a_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(LAYERS), "add the new folder to LAYERS (and to docs/architecture.md)"


@pytest.mark.parametrize("module", sorted(p for d in LAYERS for p in (PACKAGE / d).rglob("*.py")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_modules_import_only_their_layer_and_below(module: Path) -> None:
    layer = module.relative_to(PACKAGE).parts[0]
    folders = {name.split(".")[1] for name in _imports(module) if name.startswith("thpcheck.")}
    above = sorted(folders - LAYERS[layer])
    assert not above, f"{layer}/{module.name} imports {above}"


def test_there_is_no_package_named_operator() -> None:
    assert not (PACKAGE.parent / "operator").exists()
    assert not (PACKAGE.parent / "__init__.py").exists()


REPO = PACKAGE.parents[1]


def _importers(folder: Path, prefixes: tuple[str, ...]) -> dict[str, list[str]]:
    """Per module of ``folder`` (recursively), what it imports under one of ``prefixes``."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        bad = sorted(n for n in _imports(path)
                     if any(n == p or n.startswith(p + ".") for p in prefixes))
        if bad:
            found[str(path.relative_to(REPO))] = bad
    return found


def test_tools_and_benchmarks_import_no_tests() -> None:
    """Tests hold tests: the development tools (cluster, VMs, images, loop mounts) and the
    benchmarks are built on devtools/ and thpcheck, never on a test module."""
    assert _importers(REPO / "devtools", ("tests",)) == {}
    assert _importers(REPO / "benchmarks", ("tests",)) == {}


def test_the_package_imports_no_devtools() -> None:
    """What ships (the thpcheck package, in the image) never depends on development tools."""
    assert _importers(PACKAGE, ("devtools", "tests", "benchmarks")) == {}


# The official client's ways to load credentials and to build a client from them.
CREDENTIAL_LOADERS = {"load_kube_config", "load_incluster_config", "load_config",
                      "load_kube_config_from_dict", "new_client_from_config",
                      "new_client_from_config_dict"}
CHART = REPO / "charts" / "thp-checker"


def _called(path: Path) -> set[str]:
    """The names called in ``path`` (``a.b.f()`` and ``f()`` both give ``f``)."""
    called: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):
                called.add(node.func.attr)
            elif isinstance(node.func, ast.Name):
                called.add(node.func.id)
    return called


def test_one_module_loads_credentials_and_one_builds_the_client() -> None:
    """Every command talks to Kubernetes through controller/api.py's Kube, whose credentials
    come from controller/credentials.py in the one documented order; the chart runs a
    thpcheck subcommand, no program of its own."""
    modules = {str(p.relative_to(PACKAGE)): _called(p) for p in PACKAGE.rglob("*.py")}
    assert sorted(m for m, called in modules.items() if called & CREDENTIAL_LOADERS) == [
        "controller/credentials.py"]
    assert sorted(m for m, called in modules.items() if "ApiClient" in called) == [
        "controller/api.py"]
    assert not sorted(CHART.rglob("*.py"))
