"""The CRD files (documented, defaults matching the operator), the start-up CRD check,
the operator's settings and its kopf wiring."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from thpcheck.contract import names
from thpcheck.contract.checkspec import CheckSpec, parse_spec
from thpcheck.controller import crds, credentials, operator
from thpcheck.controller import settings as settings_module
from thpcheck.controller.settings import SettingsError, from_env

CRD_DIR = Path(__file__).resolve().parents[2] / "charts" / "thp-checker" / "crds"
SOURCE = credentials.Source("a test kubeconfig", "/nonexistent")


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((CRD_DIR / f"{name}.yaml").read_text())
    return document


def schema(name: str) -> dict[str, Any]:
    (version,) = load(name)["spec"]["versions"]
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


def undocumented(node: dict[str, Any], path: str) -> list[str]:
    missing = [] if node.get("description") or path.endswith(".metadata") else [path]
    for key, child in (node.get("properties") or {}).items():
        missing += undocumented(child, f"{path}.{key}")
    if "items" in node and node["items"].get("properties"):
        missing += [p for p in undocumented(node["items"], f"{path}[]") if p != f"{path}[]"]
    return missing


@pytest.mark.parametrize("name", names.CRD_NAMES)
def test_every_field_is_documented_for_kubectl_explain(name: str) -> None:
    assert undocumented(schema(name), "") == []


@pytest.mark.parametrize("name", names.CRD_NAMES)
def test_the_crds_carry_the_schema_version_the_operator_needs(name: str) -> None:
    crd = load(name)
    assert crd["metadata"]["name"] == name
    assert int(crd["metadata"]["annotations"][names.SCHEMA_VERSION_ANNOTATION]) == (
        names.SCHEMA_VERSION)
    assert crd["spec"]["scope"] == "Cluster"


def test_crd_defaults_match_the_operators_defaults() -> None:
    spec_schema = schema(names.CRD_NAMES[0])["properties"]["spec"]

    def fill(node: dict[str, Any]) -> Any:
        if "properties" in node and "default" in node:
            return {k: fill(v) for k, v in node["properties"].items() if "default" in v}
        return node["default"]

    server_defaults = {k: fill(v) for k, v in spec_schema["properties"].items()
                       if "default" in v}
    assert parse_spec(server_defaults) == CheckSpec() == parse_spec({})


def test_printer_columns_are_the_ones_the_issue_lists() -> None:
    def columns(name: str) -> list[str]:
        (version,) = load(name)["spec"]["versions"]
        return [c["name"].upper() for c in version["additionalPrinterColumns"]
                if not c.get("priority")]

    assert columns("thpchecks.thpcheck.io") == ["PHASE", "NODES", "CHECKED", "AFFECTED",
                                                "SUSCEPTIBLE", "MITIGATED", "CORDONED", "AGE"]
    assert columns("thpnoderesults.thpcheck.io") == ["NODE", "VERDICT", "KERNEL", "MITIGATED",
                                                     "AGE"]


def established(version: str = str(names.SCHEMA_VERSION)) -> dict[str, Any]:
    return {"metadata": {"annotations": {names.SCHEMA_VERSION_ANNOTATION: version}},
            "spec": {"versions": [{"name": "v1alpha1", "served": True}]},
            "status": {"conditions": [{"type": "Established", "status": "True"}]}}


def test_startup_check_names_the_problem_and_the_fix() -> None:
    crds.verify(lambda name: established())
    with pytest.raises(crds.CrdProblem, match=r"thpchecks.thpcheck.io is not installed.*"
                       r"kubectl apply --server-side -f charts/thp-checker/crds/"):
        crds.verify(lambda name: None)
    older = names.SCHEMA_VERSION - 1
    with pytest.raises(crds.CrdProblem, match=f"schema version {older}, this operator needs "
                       f"{names.SCHEMA_VERSION}"):
        crds.verify(lambda name: established(str(older)))
    old = established()
    del old["metadata"]["annotations"]
    assert "schema version none" in crds.problems("x", old)[0]
    unserved = established()
    unserved["spec"]["versions"][0]["served"] = False
    assert crds.problems("x", unserved) == ["CRD x does not serve v1alpha1"]


def test_settings_from_the_environment() -> None:
    settings = from_env({"THPCHECK_NAMESPACE": "ops", "THPCHECK_AGENT_IMAGE": "img:1",
                         "THPCHECK_AGENT_PULL_SECRETS": "a, b", "THPCHECK_METRICS_PORT": "9000",
                         "THPCHECK_STATUS_INTERVAL": "2.5"})
    assert (settings.namespace, settings.agent_image, settings.pull_secrets) == (
        "ops", "img:1", ("a", "b"))
    assert settings.metrics_port == 9000 and settings.status_interval == 2.5
    assert settings.workload().namespace == "ops"
    for bad, message in [({"THPCHECK_METRICS_PORT": "http"}, "THPCHECK_METRICS_PORT"),
                         ({"THPCHECK_METRICS_PORT": "70000"}, "not a port"),
                         ({"THPCHECK_AGENT_PULL_POLICY": "Sometimes"}, "must be one of"),
                         ({"THPCHECK_DEBOUNCE": "-1"}, "at least"),
                         ({"THPCHECK_MITIGATION_STATE_DIR": "/"}, "absolute directory")]:
        with pytest.raises(SettingsError, match=message):
            from_env(bad)


def test_kopf_is_configured_explicitly() -> None:
    settings = from_env({"THPCHECK_NAMESPACE": "ops"})
    config = operator.kopf_settings(settings)
    assert config.persistence.finalizer == names.FINALIZER
    assert config.watching.server_timeout == 300 and config.watching.client_timeout == 330
    assert config.peering.standalone
    assert isinstance(config.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    registry = operator.build_registry(settings, SOURCE)
    assert registry is not None


def test_no_handler_writes_kopf_state_to_nodes_or_pods() -> None:
    """Only ThpChecks get kopf's annotations and finalizer: nodes and pods are indexed and
    watched (kopf.index / kopf.on.event), which store nothing on the objects."""
    registry = operator.build_registry(from_env({"THPCHECK_NAMESPACE": "ops"}), SOURCE)
    changing = registry._changing.get_all_handlers()  # no public listing
    spawning = registry._spawning.get_all_handlers()
    assert len(changing) == 1 and len(spawning) == 1  # the clean-up and the daemon
    for handler in [*changing, *spawning]:
        assert handler.selector.plural == names.CHECK_PLURAL or (
            handler.selector.any_name == names.CHECK_PLURAL), handler


def test_kopf_watches_nothing_there_is_one_of_per_node() -> None:
    """Nodes, pods and results (one or more per node: at 15,000 nodes a re-list of the check
    pods alone took kopf 365 MiB) are the operator's lean watches; kopf watches the
    ThpChecks and our DaemonSets, a few per cluster."""
    registry = operator.build_registry(from_env({"THPCHECK_NAMESPACE": "ops"}), SOURCE)
    handlers = [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers(),
                *registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers()]
    kinds = {handler.selector.plural or handler.selector.any_name for handler in handlers}
    assert kinds == {names.CHECK_PLURAL, "daemonsets"}


def test_kopf_diff_base_is_built_for_thpchecks_only() -> None:
    """kopf deep-copies every body into a diff base; only ThpChecks (daemon, clean-up) use it."""
    storage = operator.kopf_settings(from_env({"THPCHECK_NAMESPACE": "ops"})
                                     ).persistence.diffbase_storage
    check = kopf.Body({"apiVersion": names.API_VERSION, "kind": names.CHECK_KIND,
                       "metadata": {"name": "c", "labels": {"a": "b"}},
                       "spec": {"paths": ["/x"]}, "status": {"phase": "Running"}})
    assert storage.build(body=check) == {"metadata": {"labels": {"a": "b"}},
                                         "spec": {"paths": ["/x"]}}
    node = kopf.Body({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
                      "spec": {"unschedulable": True}, "status": {"nodeInfo": {}}})
    assert storage.build(body=node) == {}


def test_thpcheck_operator_help_names_its_environment() -> None:
    out = subprocess.run([sys.executable, "-m", "thpcheck", "operator", "--help"],
                         capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "operator")})
    assert "THPCHECK_" in out.stdout
    for row in settings_module.TABLE:
        assert row.env in out.stdout, row.env


def test_settings_fields_are_the_table_rows() -> None:
    """One row per Settings field, same order, same default: the table is the one source."""
    fields = dataclasses.fields(settings_module.Settings)
    assert [f.name for f in fields] == [row.field for row in settings_module.TABLE]
    for f, row in zip(fields[1:], settings_module.TABLE[1:], strict=True):
        assert f.default == row.default, row.field
    envs = [row.env for row in settings_module.TABLE]
    assert len(set(envs)) == len(envs) and all(e.startswith("THPCHECK_") for e in envs)
    defaults = from_env({"THPCHECK_NAMESPACE": "ops"})
    assert defaults == settings_module.Settings(namespace="ops")


def test_every_minimum_in_the_table_is_enforced() -> None:
    rows = [row for row in settings_module.TABLE if row.minimum is not None]
    assert rows
    for row in rows:
        below = f"{row.minimum - 0.5:g}"
        with pytest.raises(SettingsError, match=row.env):
            from_env({row.env: below})
        assert getattr(from_env({row.env: f"{row.minimum:g}"}), row.field) == row.minimum


def test_docs_table_is_the_settings_table() -> None:
    """docs/operator-design.md's variable table is generated from the settings table; on a
    failure, paste settings.markdown_table() between its markers."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "operator-design.md").read_text()
    begin = text.index("<!-- settings table:")
    section = text[text.index("\n", begin) + 1:text.index("<!-- end of settings table -->")]
    assert section == settings_module.markdown_table()
