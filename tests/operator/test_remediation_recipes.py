"""The recipes in docs/remediation.md are valid: each sample manifest is sent, as a dry run
with strict field validation, to the real kube-apiserver serving the published CRD schema of
its project (the minimal schema files in tests/operator/recipes/ name their source)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.cluster.harness import Cluster, ClusterError
from thpcheck.contract import names

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "remediation.md"
SCHEMAS = Path(__file__).with_name("recipes")
PATHS = {"NodeHealthCheck": "/apis/remediation.medik8s.io/v1alpha1/nodehealthchecks",
         "MachineHealthCheck": "/apis/cluster.x-k8s.io/v1beta1/namespaces/{ns}/"
                               "machinehealthchecks"}


def recipes() -> dict[str, dict[str, Any]]:
    """The doc's YAML blocks that start with ``# recipe: <name>``."""
    blocks = re.findall(r"```yaml\n(# recipe: (\S+)\n.*?)```", DOC.read_text(), re.S)
    return {name: yaml.safe_load(text) for text, name in blocks}


def create(cluster: Cluster, manifest: dict[str, Any]) -> Any:
    path = PATHS[manifest["kind"]].format(ns=manifest["metadata"].get("namespace", "default"))
    return cluster.api("POST", f"{path}?dryRun=All&fieldValidation=Strict", manifest)


@pytest.fixture(scope="module")
def schemas(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SCHEMAS))
    for crd in ("nodehealthchecks.remediation.medik8s.io",
                "machinehealthchecks.cluster.x-k8s.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    return cluster


def test_the_docs_have_both_recipes_on_our_condition() -> None:
    found = recipes()
    assert sorted(m["kind"] for m in found.values()) == ["MachineHealthCheck",
                                                          "NodeHealthCheck"]
    for manifest in found.values():
        conditions = manifest["spec"]["unhealthyConditions"]
        assert {"type": names.NODE_CONDITION, "status": "True"}.items() <= conditions[0].items()
        # Unknown means "not proven": a recipe must never replace a machine for it.
        assert not [c for c in conditions
                    if c["type"] == names.NODE_CONDITION and c["status"] != "True"]


def test_the_recipes_validate_against_the_published_schemas(schemas: Cluster) -> None:
    for name, manifest in recipes().items():
        stored = create(schemas, manifest)
        assert stored["spec"]["unhealthyConditions"][0]["type"] == names.NODE_CONDITION, name


def test_the_schemas_do_refuse_a_broken_recipe(schemas: Cluster) -> None:
    """The validation is real: a misspelt field and a bad duration are refused."""
    for manifest in recipes().values():
        broken = json.loads(json.dumps(manifest))
        broken["spec"]["unhealthyCondition"] = broken["spec"].pop("unhealthyConditions")
        with pytest.raises(ClusterError, match="unhealthyCondition"):
            create(schemas, broken)
    nhc = recipes()["nodehealthcheck"]
    nhc["spec"]["unhealthyConditions"][0]["duration"] = "ten minutes"
    with pytest.raises(ClusterError, match="duration"):
        create(schemas, nhc)
