"""The preflight corpus as kwok nodes on the real control plane, and the CLI as users run it.

Every case of the unit corpus (``tests/unit/test_preflight.py``) becomes a kwok node whose
``status.nodeInfo`` holds that case's kernelVersion, osImage and architecture. kwok's
node-initialize stage keeps nodeInfo fields that are already set and its heartbeat does not
touch them; ``make_fleet`` checks that anyway and patches ``/status`` back if kwok changed a
field. Shared by the ``thpcheck preflight`` tests and the operator's ``mode: preflight`` tests
(one fleet per session: ``tests/preflight/conftest.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.cluster.harness import Cluster, ClusterError, wait_until
from tests.unit.test_preflight import CORPUS, Case
from thpcheck.model.preflight import NodeInfo

REPO = Path(__file__).resolve().parents[2]
RUN_LABEL = "thpcheck.io/preflight-run"
POOL_LABEL = "thpcheck.io/preflight-pool"
EXPECT_LABEL = "thpcheck.io/preflight-expect"


@dataclass(frozen=True)
class Fleet:
    """The kwok nodes made from the corpus: node name -> case, and the run's selector."""

    run: str
    nodes: dict[str, Case]
    pools: dict[str, str]

    @property
    def selector(self) -> str:
        return f"{RUN_LABEL}={self.run}"

    def infos(self, names: set[str] | None = None) -> list[NodeInfo]:
        return [NodeInfo(name, case.kernel, case.os_image, case.arch)
                for name, case in self.nodes.items() if names is None or name in names]


def node_name(index: int, case: Case) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", case.id.lower()).strip("-")[:40].strip("-")
    return f"pf-{index:02d}-{slug}"


def node_info(case: Case) -> dict[str, str]:
    return {"kernelVersion": case.kernel, "osImage": case.os_image, "architecture": case.arch}


def keep_node_info(cluster: Cluster, name: str, want: Mapping[str, str]) -> None:
    """Make sure the node reports exactly `want` (patching /status if kwok changed it)."""
    got = cluster.api("GET", f"/api/v1/nodes/{name}")["status"]["nodeInfo"]
    if any(got.get(k) != v for k, v in want.items()):
        cluster.api("PATCH", f"/api/v1/nodes/{name}/status",
                    {"status": {"nodeInfo": dict(want)}}, "application/merge-patch+json")
        got = cluster.api("GET", f"/api/v1/nodes/{name}")["status"]["nodeInfo"]
    assert {k: got.get(k) for k in want} == dict(want), name


def current_node_infos(cluster: Cluster, fleet: Fleet) -> dict[str, dict[str, str]]:
    items = cluster.api("GET", f"/api/v1/nodes?labelSelector={fleet.selector}")["items"]
    return {n["metadata"]["name"]: {k: n["status"]["nodeInfo"].get(k) for k in
                                    ("kernelVersion", "osImage", "architecture")}
            for n in items}


def assert_node_info_unchanged(cluster: Cluster, fleet: Fleet) -> None:
    assert current_node_infos(cluster, fleet) == {
        name: node_info(case) for name, case in fleet.nodes.items()}


@contextlib.contextmanager
def make_fleet(cluster: Cluster) -> Iterator[Fleet]:
    """One kwok node per corpus case, deleted (and waited for) afterwards."""
    run = uuid.uuid4().hex[:8]
    nodes = {node_name(i, case): case for i, case in enumerate(CORPUS)}
    pools = {name: "a" if i % 2 == 0 else "b" for i, name in enumerate(nodes)}
    try:
        for name, case in nodes.items():
            cluster.add_node(name, wait=False, node_info=node_info(case), labels={
                RUN_LABEL: run, POOL_LABEL: pools[name], EXPECT_LABEL: case.verdict,
                "kubernetes.io/arch": case.arch})
        cluster.wait_nodes_ready(sorted(nodes), timeout=180)
        for name, case in nodes.items():
            keep_node_info(cluster, name, node_info(case))
        yield Fleet(run, nodes, pools)
    finally:
        for name in nodes:
            with contextlib.suppress(ClusterError):  # never created, or already gone
                cluster.api("DELETE", f"/api/v1/nodes/{name}")
        wait_until(lambda: not cluster.api(
            "GET", f"/api/v1/nodes?labelSelector={RUN_LABEL}={run}")["items"],
            120, "the preflight test nodes to go away", cluster.servers)


def preflight(kubeconfig: Path | None, *args: str,
              stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m thpcheck preflight --kubeconfig FILE`` in a child process, as a user runs
    it locally: the flag alone (no KUBECONFIG) and a HOME with no ~/.kube/config. Without a
    kubeconfig (a saved --nodes-file) no flag is passed at all."""
    flags = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
    with tempfile.TemporaryDirectory(prefix="empty-home-") as home:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
               "PYTHONPATH": str(REPO / "operator")}
        return subprocess.run([sys.executable, "-m", "thpcheck", "preflight", *flags, *args],
                              input=stdin, capture_output=True, text=True, timeout=120,
                              env=env, cwd=REPO, check=False)


def preflight_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.stdout, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document
