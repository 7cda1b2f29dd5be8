"""``thpcheck preflight`` against the real control plane, with kwok nodes carrying real nodeInfo.

Every case of the unit corpus (``tests/unit/test_preflight.py``) becomes a kwok node whose
``status.nodeInfo`` holds that case's kernelVersion, osImage and architecture. kwok's
node-initialize stage keeps nodeInfo fields that are already set and its heartbeat does not
touch them; the fixture checks that anyway, patches ``/status`` back if kwok changed a field,
and every test re-reads the values after running the command, so a prediction is never
compared with values that changed underneath it. The fleet (``tests/preflight/fleet.py``) is
made once for the session and shared with the operator's ``mode: preflight`` tests.

The command runs as users run it: ``python -m thpcheck preflight`` in a child process with the
cluster's kubeconfig (or a token kubeconfig for a ServiceAccount that may only list nodes).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from devtools.cluster.accounts import token_kubeconfig
from devtools.cluster.harness import Cluster, wait_until
from tests.preflight.fleet import (
    EXPECT_LABEL,
    POOL_LABEL,
    Fleet,
    assert_node_info_unchanged,
    preflight,
    preflight_json,
)
from tests.unit.test_preflight import CORPUS
from thpcheck.controller.credentials import StartupExit
from thpcheck.model.preflight import predict_nodes, render_table
from thpcheck.model.verdict import CheckExit

pytestmark = pytest.mark.cluster


def test_json_predictions_match_the_corpus(cluster: Cluster, kubeconfig: Path,
                                           fleet: Fleet) -> None:
    result = preflight(kubeconfig, "--selector", fleet.selector, "--json")
    assert_node_info_unchanged(cluster, fleet)
    assert result.returncode == CheckExit.AT_RISK, result.stderr
    document = preflight_json(result)
    assert document["schema"] == "thpcheck.io/preflight/v1"
    assert document["selector"] == fleet.selector
    nodes = {n["node"]: n for n in document["nodes"]}
    assert set(nodes) == set(fleet.nodes)
    for name, case in fleet.nodes.items():
        node = nodes[name]
        assert (node["os_image"], node["kernel_version"], node["architecture"]) == \
            (case.os_image, case.kernel, case.arch)
        got = (node["verdict"], node["rule"], node["confidence"],
               node["distro"]["id"] if node["distro"] else None)
        assert got == (case.verdict, case.rule, case.confidence, case.row), (name, node["reason"])
        assert [f["filesystem"] for f in node["filesystems"]["at_risk"]] == list(case.at_risk)
        assert node["grade"] == case.grade
        assert node["predicted"] is True
    verdicts = {v: sum(c.verdict == v for c in CORPUS)
                for v in ("susceptible", "not-affected", "unknown")}
    confidence = {c: sum(k.confidence == c for k in CORPUS)
                  for c in ("config-known", "inferred", "unknown")}
    assert document["summary"] == {"nodes": len(CORPUS), "verdicts": verdicts,
                                   "confidence": confidence}


def test_table_prints_the_expected_rows(cluster: Cluster, kubeconfig: Path,
                                        fleet: Fleet) -> None:
    result = preflight(kubeconfig, "--selector", fleet.selector)
    assert_node_info_unchanged(cluster, fleet)
    assert result.returncode == CheckExit.AT_RISK, result.stderr
    # Byte for byte what the model renders from the values the nodes were given: the API
    # round trip loses nothing.
    assert result.stdout == render_table(predict_nodes(fleet.infos())) + "\n"
    lines = result.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["NODE", "OS IMAGE", "KERNEL", "PREDICTED",
                                             "REASON", "CONFIDENCE"]
    starts = [lines[0].index(h) for h in ("OS IMAGE", "KERNEL", "PREDICTED", "REASON",
                                          "CONFIDENCE")]
    rows = lines[1:1 + len(fleet.nodes)]
    assert [r.split(" ", 1)[0] for r in rows] == sorted(fleet.nodes)
    for row in rows:
        name = row.split(" ", 1)[0]
        case = fleet.nodes[name]
        cells = [row[:starts[0]], *(row[a:b] for a, b in itertools.pairwise(starts)),
                 row[starts[-1]:]]
        assert [c.strip() for c in cells[:4]] == [name, case.os_image or "-", case.kernel,
                                                  case.verdict]
        assert cells[5].strip() == case.confidence
        if case.verdict == "susceptible":
            assert cells[4].startswith(f"at risk on {', '.join(case.at_risk)}")
    counts = {v: sum(c.verdict == v for c in CORPUS) for v in ("susceptible", "not-affected",
                                                              "unknown")}
    assert lines[-1].startswith(
        f"summary: {len(CORPUS)} nodes: {counts['susceptible']} susceptible, "
        f"{counts['not-affected']} not-affected, {counts['unknown']} unknown; confidence: ")


def test_saved_kubectl_output_gives_the_live_table(cluster: Cluster, kubeconfig: Path,
                                                  fleet: Fleet, tmp_path: Path) -> None:
    """`kubectl get nodes -o json` from this cluster piped into `--nodes-file -` (no cluster
    access at all) prints what the live command prints, with the same exit code; so do its
    YAML, the API's own NodeList JSON, and a single `kubectl get node NAME -o yaml`."""
    live = preflight(kubeconfig, "--selector", fleet.selector)
    assert live.returncode == CheckExit.AT_RISK, live.stderr
    saved = cluster.kubectl("get", "nodes", "-l", fleet.selector, "-o", "json").stdout
    assert json.loads(saved)["kind"] == "List"
    piped = preflight(None, "--nodes-file", "-", stdin=saved)
    assert (piped.returncode, piped.stderr) == (live.returncode, "")
    assert piped.stdout == live.stdout

    as_yaml = tmp_path / "nodes.yaml"
    as_yaml.write_text(cluster.kubectl("get", "nodes", "-l", fleet.selector, "-o", "yaml").stdout)
    from_yaml = preflight(None, "--nodes-file", str(as_yaml))
    assert (from_yaml.returncode, from_yaml.stdout) == (live.returncode, live.stdout)

    api_list = tmp_path / "nodelist.json"
    api_list.write_text(json.dumps(cluster.api("GET",
                                               f"/api/v1/nodes?labelSelector={fleet.selector}")))
    assert json.loads(api_list.read_text())["kind"] == "NodeList"
    from_api = preflight(None, "--nodes-file", str(api_list), "--json")
    assert from_api.returncode == live.returncode
    assert preflight_json(from_api)["nodes"] == \
        preflight_json(preflight(kubeconfig, "--selector", fleet.selector, "--json"))["nodes"]

    name = next(n for n, c in fleet.nodes.items() if c.verdict == "not-affected")
    one = preflight(None, "--nodes-file", "-",
                    stdin=cluster.kubectl("get", "node", name, "-o", "yaml").stdout)
    assert one.returncode == CheckExit.CLEAN, one.stderr
    assert one.stdout == render_table(predict_nodes(fleet.infos({name}))) + "\n"
    assert_node_info_unchanged(cluster, fleet)


def test_selector_filters_the_nodes(cluster: Cluster, kubeconfig: Path, fleet: Fleet) -> None:
    pool_b = {n for n, p in fleet.pools.items() if p == "b"}
    result = preflight(kubeconfig, "--selector", f"{fleet.selector},{POOL_LABEL}=b", "--json")
    assert {n["node"] for n in preflight_json(result)["nodes"]} == pool_b

    set_based = preflight(kubeconfig, "--selector",
                          f"{fleet.selector},{POOL_LABEL} in (a),{POOL_LABEL} notin (b)")
    names = {line.split(" ", 1)[0] for line in set_based.stdout.splitlines()[1:]
             if line.startswith("pf-")}
    assert names == set(fleet.nodes) - pool_b
    assert set_based.stdout.splitlines()[-1].startswith(
        f"summary: {len(fleet.nodes) - len(pool_b)} nodes: ")


@pytest.mark.parametrize(("expect", "code"), [
    ("susceptible", CheckExit.AT_RISK),
    ("not-affected", CheckExit.CLEAN),
    ("unknown", CheckExit.INCONCLUSIVE),
    ("not-affected,unknown", CheckExit.INCONCLUSIVE),
    ("not-affected,susceptible,unknown", CheckExit.AT_RISK),
])
def test_exit_codes_follow_the_worst_prediction(kubeconfig: Path, fleet: Fleet, expect: str,
                                               code: CheckExit) -> None:
    result = preflight(kubeconfig, "--selector", f"{fleet.selector},{EXPECT_LABEL} in ({expect})",
                       "--json")
    assert result.returncode == code, result.stderr
    wanted = set(expect.split(","))
    verdicts = {n["verdict"] for n in preflight_json(result)["nodes"]}
    assert verdicts == wanted


def test_no_matching_node_is_inconclusive(kubeconfig: Path, fleet: Fleet) -> None:
    result = preflight(kubeconfig, "--selector", f"{fleet.selector},{POOL_LABEL}=nowhere")
    assert result.returncode == CheckExit.INCONCLUSIVE
    assert result.stdout.splitlines()[-1] == ("summary: 0 nodes: 0 susceptible, 0 not-affected, "
                                              "0 unknown; confidence: 0 config-known, 0 "
                                              "inferred, 0 unknown")
    assert result.stderr.strip() == (f"thpcheck preflight: no nodes match --selector "
                                     f"'{fleet.selector},{POOL_LABEL}=nowhere'; nothing was "
                                     "predicted")


def test_without_a_selector_every_node_is_predicted(cluster: Cluster, kubeconfig: Path,
                                                    fleet: Fleet) -> None:
    document = preflight_json(preflight(kubeconfig, "--json"))
    everything = {n["metadata"]["name"] for n in cluster.api("GET", "/api/v1/nodes")["items"]}
    assert {n["node"] for n in document["nodes"]} == everything
    assert set(fleet.nodes) <= everything
    # The harness's generic kwok nodes report kwok's own version as their kernel.
    for node in document["nodes"]:
        if node["node"].startswith("kwok-node-"):
            assert (node["verdict"], node["rule"]) == ("unknown", "G0")


@pytest.mark.parametrize("selector", ["pool in (a", "=b", "a==b==c", "!!x"])
def test_bad_selector_is_bad_input(kubeconfig: Path, selector: str) -> None:
    result = preflight(kubeconfig, "--selector", selector)
    assert result.returncode == CheckExit.BAD_INPUT
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"thpcheck preflight: --selector {selector!r}: ")


def _token_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    cluster.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}})
    return token_kubeconfig(cluster, namespace, account, path, seconds=600)


def test_list_nodes_is_the_only_permission_needed(cluster: Cluster, namespace: str,
                                                  fleet: Fleet, tmp_path: Path) -> None:
    role = f"thpcheck-preflight-{namespace}"
    cluster.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": role},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]})
    try:
        cluster.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "preflight",
                          "namespace": namespace}]})
        allowed = _token_kubeconfig(cluster, namespace, "preflight", tmp_path / "allowed")
        denied = _token_kubeconfig(cluster, namespace, "nobody", tmp_path / "denied")

        def listed() -> bool:
            result = preflight(allowed, "--selector", fleet.selector, "--json")
            return result.returncode == CheckExit.AT_RISK and \
                {n["node"] for n in preflight_json(result)["nodes"]} == set(fleet.nodes)

        wait_until(listed, 30, "the RBAC binding to take effect")  # the authorizer's cache

        refused = preflight(denied, "--selector", fleet.selector)
        assert refused.returncode == StartupExit.FORBIDDEN
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"thpcheck preflight: the API server at "
                                   f"{cluster.server_url} refused to list nodes (HTTP 403): ")
        assert "cannot list resource \"nodes\"" in lines[0]
    finally:
        for kind in ("clusterrolebindings", "clusterroles"):
            cluster.api("DELETE", f"/apis/rbac.authorization.k8s.io/v1/{kind}/{role}")
