"""The chart rendered offline: helm lint --strict, every object validated against the
Kubernetes 1.36 schemas (kubernetes-validate, strict) or its CRD's schema, and the properties
the issue asks for (security context, RBAC split, hooks, the default ThpCheck)."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from devtools.cluster.accounts import documents
from tests.chart.chart_kit import ALL_VALUES, CHART, CRD_DIR, HOOK_ARGS, Helm, container_env, find
from thpcheck.contract import names
from thpcheck.controller import settings

VALUE_SETS = {
    "defaults": (),
    "all-values": ("-f", str(ALL_VALUES)),
    "report-only": ("--set", "remediation.enabled=false"),
    "minimal": ("--set", "defaultCheck.enabled=false", "--set", "cleanup.enabled=false",
                "--set", "metrics.port=0", "--set", "rbac.aggregateToView=false"),
    # The operator and the hook in the node's network, no listening ports (a node whose pods
    # cannot reach the API server's Service: tests/realnode).
    "host-network": ("--set", "operator.hostNetwork=true", "--set", "operator.healthPort=0",
                     "--set", "metrics.port=0", "--set", "cleanup.hostNetwork=true",
                     "--set-json", 'operator.extraEnv=[{"name":"KUBERNETES_SERVICE_HOST",'
                     '"value":"10.1.2.3"}]',
                     "--set-json", 'cleanup.extraEnv=[{"name":"KUBERNETES_SERVICE_HOST",'
                     '"value":"10.1.2.3"}]'),
}
# Kinds no bundled Kubernetes schema covers, and how each is checked instead.
CRD_SCHEMAS = {f"{names.API_VERSION}/{names.CHECK_KIND}": CRD_DIR / "thpchecks.thpcheck.io.yaml"}
SKIPPED = {"monitoring.coreos.com/v1/ServiceMonitor":
           "the Prometheus Operator's CRD is not in this repository or in kubernetes-validate; "
           "test_service_monitor_scrapes_the_metrics_service checks its wiring",
           "monitoring.coreos.com/v1/PrometheusRule":
           "the same; tests/chart/test_monitoring.py checks its shape and every metric it uses"}
NODE_WRITES = {"create", "update", "patch", "delete", "deletecollection", "*"}


def render(helm: Helm, values: str = "defaults", *extra: str) -> list[dict[str, Any]]:
    return documents(helm.template(*VALUE_SETS[values], *extra, "--include-crds"))


def _strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it with fieldValidation=Strict: unknown
    fields are errors (structural schemas only list known ones)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_validator(path: Path) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(path.read_text())
    schema = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(_strict(schema))


@pytest.mark.parametrize("values", ["defaults", "all-values", "report-only"])
def test_helm_lint_strict(helm: Helm, values: str) -> None:
    out = helm.run("lint", "--strict", str(CHART), "--kube-version", helm.kube_version,
                   *VALUE_SETS[values])
    assert "0 chart(s) failed" in out.stdout, out.stdout


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_object_validates_offline(helm: Helm, values: str) -> None:
    version = helm.kube_version.lstrip("v")
    checked: dict[str, int] = {}
    for doc in render(helm, values):
        key = f"{doc['apiVersion']}/{doc['kind']}"
        if key in SKIPPED:
            continue
        if key in CRD_SCHEMAS:
            errors = [e.message for e in crd_validator(CRD_SCHEMAS[key]).iter_errors(doc)]
            assert errors == [], f"{key} {doc['metadata']['name']}: {errors}"
        else:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{key} {doc['metadata']['name']}: {exc}", pytrace=False)
        checked[doc["kind"]] = checked.get(doc["kind"], 0) + 1
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole",
            "ClusterRoleBinding", "Role", "RoleBinding"} <= checked.keys()


def test_crd_files_are_rendered_unchanged(helm: Helm) -> None:
    """crds/ is the operator's single source: the chart ships the files as they are."""
    rendered = [d for d in render(helm) if d["kind"] == "CustomResourceDefinition"]
    files = [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]
    assert sorted(rendered, key=lambda d: d["metadata"]["name"]) == files
    for crd in files:
        assert crd["metadata"]["annotations"][names.SCHEMA_VERSION_ANNOTATION] == str(
            names.SCHEMA_VERSION)


# -- the operator Deployment ---------------------------------------------------------------


def test_operator_deployment_is_locked_down(helm: Helm) -> None:
    deployment = find(render(helm), "Deployment")
    spec = deployment["spec"]
    # One replica; leader election on, so a new pod may start before the old one is gone.
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "RollingUpdate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["runAsNonRoot"] is True and context.get("privileged") is False
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # The operator writes nothing to disk: no volumes at all, not even /tmp (verified with the
    # image run read-only in test_chart_image.py).
    assert "volumes" not in pod and "volumeMounts" not in container
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = container_env(deployment)
    assert ports == {"metrics": int(env["THPCHECK_METRICS_PORT"]),
                     "health": int(env["THPCHECK_HEALTH_PORT"])}
    assert container["args"][0] == "operator" and "command" not in container
    assert container["image"] == settings.DEFAULT_IMAGE


@pytest.mark.parametrize("values", [*sorted(VALUE_SETS), "no-leader-election"])
def test_operator_env_is_exactly_what_the_operator_reads(helm: Helm, values: str) -> None:
    """Whatever the values, the chart's operator env (one dict, "thp-checker.operatorEnv")
    sets every row of the operator's settings table (thpcheck.controller.settings.TABLE,
    which from_env reads row by row), each once, and no other THPCHECK_ variable; the
    rendered values parse."""
    read = {row.env for row in settings.TABLE}
    docs = (render(helm, "defaults", "--set", "operator.leaderElection.enabled=false")
            if values == "no-leader-election" else render(helm, values))
    deployment = find(docs, "Deployment")
    env = container_env(deployment)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ours = [e["name"] for e in container["env"] if e["name"].startswith("THPCHECK_")]
    assert set(ours) == read, (sorted(set(ours) - read), sorted(read - set(ours)))
    assert len(ours) == len(read)  # each once
    parsed = settings.from_env(env)
    assert parsed.namespace == "thp-checker"
    assert parsed.leader_election is (values != "no-leader-election")


def test_operator_env_values(helm: Helm) -> None:
    env = container_env(find(render(helm, "all-values"), "Deployment"))
    assert env["THPCHECK_AGENT_IMAGE"] == (
        "registry.example.com/thp-checker-agent@sha256:fedcba9876543210fedcba9876543210"
        "fedcba9876543210fedcba9876543210")
    assert env["THPCHECK_AGENT_PULL_POLICY"] == "Always"
    assert env["THPCHECK_AGENT_PULL_SECRETS"] == "registry-credentials"
    assert env["TZ"] == "UTC"


def test_host_network_without_listening_ports(helm: Helm) -> None:
    docs = render(helm, "host-network")
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "ports" not in container and "livenessProbe" not in container
    env = container_env(find(docs, "Deployment"))
    assert env["THPCHECK_HEALTH_PORT"] == env["THPCHECK_METRICS_PORT"] == "0"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.1.2.3"
    job = find(docs, "Job")["spec"]["template"]["spec"]
    assert job["hostNetwork"] is True
    assert {"name": "KUBERNETES_SERVICE_HOST", "value": "10.1.2.3"} in job["containers"][0]["env"]
    assert not [d for d in docs if d["kind"] in ("Service", "ServiceMonitor")]
    default = find(render(helm), "Deployment")["spec"]["template"]["spec"]
    assert "hostNetwork" not in default and "hostNetwork" not in find(render(helm), "Job")[
        "spec"]["template"]["spec"]


def test_agent_image_defaults_to_the_operator_image(helm: Helm) -> None:
    env = container_env(find(render(helm, "defaults", "--set",
                                    "image.repository=localhost/thp-checker",
                                    "--set", "image.tag=t1", "--set", "image.pullPolicy=Never"),
                             "Deployment"))
    assert env["THPCHECK_AGENT_IMAGE"] == "localhost/thp-checker:t1"
    assert env["THPCHECK_AGENT_PULL_POLICY"] == "Never"
    assert env["THPCHECK_AGENT_PULL_SECRETS"] == ""


# -- RBAC ----------------------------------------------------------------------------------


def _rules(docs: list[dict[str, Any]], subject: str) -> list[tuple[str, str, str, str]]:
    """(namespace or *, apiGroup, resource, verb) granted to ServiceAccount ``subject``."""
    roles = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", "*")): d
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    granted = []
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["name"] == subject for s in binding["subjects"]):
            continue
        scope = binding["metadata"].get("namespace", "*")
        ref = binding["roleRef"]
        role = roles[(ref["kind"], ref["name"], scope if ref["kind"] == "Role" else "*")]
        for rule in role["rules"]:
            only = f"[{','.join(rule['resourceNames'])}]" if "resourceNames" in rule else ""
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted += [(scope, group, resource + only, verb) for verb in rule["verbs"]]
    return sorted(granted)


OPERATOR_RULES = sorted([
    ("*", "thpcheck.io", "thpchecks", "list"), ("*", "thpcheck.io", "thpchecks", "watch"),
    ("*", "thpcheck.io", "thpchecks", "patch"), ("*", "thpcheck.io", "thpchecks/status", "patch"),
    *[("*", "thpcheck.io", "thpnoderesults", v)
      for v in ("list", "watch", "create", "patch", "delete", "deletecollection")],
    ("*", "", "nodes", "list"), ("*", "", "nodes", "watch"),
    ("*", "apiextensions.k8s.io",
     "customresourcedefinitions[thpchecks.thpcheck.io,thpnoderesults.thpcheck.io]", "get"),
    ("thp-checker", "", "pods", "list"), ("thp-checker", "", "pods", "watch"),
    *[("thp-checker", "apps", "daemonsets", v)
      for v in ("list", "watch", "create", "patch", "delete")],
    ("thp-checker", "", "events", "list"),
    ("default", "", "events", "create"),
])
LEASE_RULES = [("thp-checker", "coordination.k8s.io", "leases", "create"),
               ("thp-checker", "coordination.k8s.io", "leases[thp-checker-operator]", "get"),
               ("thp-checker", "coordination.k8s.io", "leases[thp-checker-operator]", "update")]


def test_operator_rbac_is_exactly_the_verbs_it_uses(helm: Helm) -> None:
    sa = "thp-checker-operator"
    assert _rules(render(helm, "report-only"), sa) == sorted(OPERATOR_RULES + LEASE_RULES)
    with_remediation = _rules(render(helm), sa)
    assert sorted(set(with_remediation) - set(OPERATOR_RULES + LEASE_RULES)) == [
        ("*", "", "nodes", "patch")]
    alone = _rules(render(helm, "report-only", "--set", "operator.leaderElection.enabled=false"),
                   sa)
    assert alone == OPERATOR_RULES
    for docs in (render(helm), render(helm, "report-only")):
        granted = _rules(docs, sa)
        assert not [g for g in granted if g[2] in ("secrets", "configmaps", "pods/exec")]
        assert not [g for g in granted if "*" in g[1:]]
    assert not [g for g in _rules(render(helm, "report-only"), sa)
                if g[2] == "nodes" and g[3] in NODE_WRITES]


def test_nodes_status_only_with_remediation_condition(helm: Helm) -> None:
    """The node condition needs patch on nodes/status; without remediation.condition (the
    default) the operator has no nodes/status permission at all."""
    sa = "thp-checker-operator"
    for docs in (render(helm), render(helm, "report-only")):
        assert not [g for g in _rules(docs, sa) if g[2].startswith("nodes/status")]
    granted = _rules(render(helm, "defaults", "--set", "remediation.condition=true"), sa)
    assert sorted(set(granted) - set(_rules(render(helm), sa))) == [
        ("*", "", "nodes/status", "patch")]
    with_check = render(helm, "defaults", "--set", "remediation.condition=true",
                        "--set", "defaultCheck.remediation.condition=true",
                        "--set", "defaultCheck.remediation.taint=PreferNoSchedule")
    remedy = find(with_check, names.CHECK_KIND)["spec"]["remediation"]
    assert (remedy["condition"], remedy["taint"]) == (True, "PreferNoSchedule")
    for extra, needed in ((("--set", "defaultCheck.remediation.condition=true"),
                           "needs remediation.enabled=true and remediation.condition=true"),
                          (("--set", "remediation.enabled=false", "--set",
                            "remediation.condition=true"), "needs remediation.enabled=true")):
        refused = helm.run("template", "r", str(CHART), *extra, check=False)
        assert refused.returncode != 0 and needed in refused.stderr, refused.stderr


def test_replicas_and_leader_election(helm: Helm) -> None:
    two = find(render(helm, "defaults", "--set", "operator.replicas=2"), "Deployment")
    env = container_env(two)
    assert two["spec"]["replicas"] == 2 and two["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert (env["THPCHECK_LEADER_ELECTION"], env["THPCHECK_LEASE_NAME"],
            env["THPCHECK_LEASE_DURATION"]) == ("true", "thp-checker-operator", "15")
    alone = find(render(helm, "defaults", "--set", "operator.leaderElection.enabled=false"),
                 "Deployment")
    assert alone["spec"]["strategy"] == {"type": "Recreate"}
    assert container_env(alone)["THPCHECK_LEADER_ELECTION"] == "false"
    refused = helm.run("template", "thp-checker", str(CHART), "--set", "operator.replicas=2",
                       "--set", "operator.leaderElection.enabled=false", check=False)
    assert refused.returncode != 0
    assert "operator.replicas > 1 needs operator.leaderElection.enabled=true" in refused.stderr


def test_view_role_aggregates_read_access(helm: Helm) -> None:
    role = find(render(helm), "ClusterRole", "thp-checker-view")
    assert role["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert role["rules"] == [{"apiGroups": ["thpcheck.io"],
                              "resources": ["thpchecks", "thpnoderesults"],
                              "verbs": ["get", "list", "watch"]}]


# -- the pre-delete hook ------------------------------------------------------------------


def test_cleanup_hook(helm: Helm) -> None:
    docs = render(helm)
    hooks = [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in hooks) == [
        ("ClusterRole", "thp-checker-cleanup"), ("ClusterRoleBinding", "thp-checker-cleanup"),
        ("Job", "thp-checker-cleanup"), ("Role", "thp-checker-cleanup"),
        ("RoleBinding", "thp-checker-cleanup"), ("ServiceAccount", "thp-checker-cleanup")]
    for doc in hooks:
        annotations = doc["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-delete"
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    weights = {d["kind"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in hooks}
    assert weights["ServiceAccount"] < weights["ClusterRoleBinding"] < weights["Job"]
    # The contract's names (the DaemonSets the operator creates), granted by name only.
    both = ",".join(sorted((names.MITIGATION_DAEMONSET, names.RESTORE_DAEMONSET)))
    assert sorted(_rules(docs, "thp-checker-cleanup")) == [
        ("*", "", "nodes", "list"),
        ("*", names.GROUP, names.CHECK_PLURAL, "delete"),
        ("*", names.GROUP, names.CHECK_PLURAL, "list"),
        ("thp-checker", "", "pods", "list"),
        ("thp-checker", "apps", f"daemonsets[{both}]", "get"),
        ("thp-checker", "apps", f"daemonsets[{names.RESTORE_DAEMONSET}]", "delete")]
    job = find(hooks, "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The image's entrypoint with the subcommand the tests run (test_chart_cluster.py): no
    # program of the chart's own.
    assert "command" not in container and container["args"] == list(HOOK_ARGS)
    assert not list((CHART / "files").glob("*.py"))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["restartPolicy"] == "Never" and job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["activeDeadlineSeconds"] > int(
        {e["name"]: e.get("value") for e in container["env"]}["THPCHECK_CLEANUP_TIMEOUT"])
    disabled = documents(helm.template("--set", "cleanup.enabled=false"))
    assert not [d for d in disabled if "cleanup" in d["metadata"]["name"]]


def test_cleanup_job_follows_the_operator_placement(helm: Helm) -> None:
    docs = render(helm, "all-values")
    job = find(docs, "Job")["spec"]["template"]["spec"]
    operator = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert job["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert job["tolerations"] == operator["tolerations"]


# -- the default ThpCheck ------------------------------------------------------------------


def test_default_check_is_every_node_labels_only(helm: Helm) -> None:
    check = find(render(helm), names.CHECK_KIND)
    assert check["metadata"]["name"] == "default" and "namespace" not in check["metadata"]
    spec = check["spec"]
    assert spec["nodeSelector"] == {} and spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["remediation"] == {"label": True, "cordon": False, "mitigate": False,
                                   "dryRun": False, "maxCordoned": 1, "taint": "",
                                   "condition": False}
    assert spec["reproducer"]["baseSizeBytes"] == 67108864  # an integer, not 6.7e+07
    assert "schedule" not in spec


def test_report_only_renders_no_node_writes_anywhere(helm: Helm) -> None:
    docs = render(helm, "report-only")
    assert find(docs, names.CHECK_KIND)["spec"]["remediation"]["label"] is False
    assert not [d for d in docs if d["metadata"]["name"].endswith("-remediation")]
    refused = helm.run("template", "r", str(CHART), "--set", "remediation.enabled=false",
                       "--set", "defaultCheck.remediation.cordon=true", check=False)
    assert refused.returncode != 0
    assert "need remediation.enabled=true" in refused.stderr


def test_the_mitigation_state_dir_is_never_an_agent_path(helm: Helm) -> None:
    assert "/var/lib/thpcheck-mitigation" not in find(render(helm), names.CHECK_KIND)[
        "spec"]["paths"]
    for state, path in (("/var/lib/thpcheck", "/var/lib/thpcheck"),
                        ("/srv/data/state", "/srv/data"), ("/srv", "/srv/data/")):
        refused = helm.run("template", "r", str(CHART), "--set",
                           f"agent.mitigationStateDir={state}", "--set-json",
                           f'defaultCheck.paths=["{path}"]', check=False)
        assert refused.returncode != 0, (state, path)
        assert (f"agent.mitigationStateDir {state} overlaps defaultCheck.paths entry {path}"
                in refused.stderr)
    assert helm.run("template", "r", str(CHART), "--set", "agent.mitigationStateDir=/srv/a",
                    "--set-json", 'defaultCheck.paths=["/srv/ab"]', check=False).returncode == 0


def test_all_values_check(helm: Helm) -> None:
    spec = find(render(helm, "all-values"), names.CHECK_KIND)["spec"]
    assert spec["maxConcurrent"] == 2 and spec["remediation"]["maxCordoned"] == "10%"
    assert spec["schedule"] == {"interval": "24h"}
    assert spec["paths"] == ["/var/lib/thpcheck", "/srv/data"]


def test_disabled_default_check(helm: Helm) -> None:
    assert not [d for d in render(helm, "minimal") if d["kind"] == names.CHECK_KIND]


# -- metrics -------------------------------------------------------------------------------


def test_service_monitor_scrapes_the_metrics_service(helm: Helm) -> None:
    docs = render(helm, "all-values")
    service = find(docs, "Service")
    monitor = find(docs, "ServiceMonitor")
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["thp-checker"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [
        p["name"] for p in service["spec"]["ports"]]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    pod_labels = find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert not [d for d in render(helm, "minimal") if d["kind"] in ("Service", "ServiceMonitor")]


def test_labels_follow_the_conventions(helm: Helm) -> None:
    for doc in render(helm, "all-values"):
        if doc["kind"] == "CustomResourceDefinition":
            continue
        labels: Mapping[str, str] = doc["metadata"]["labels"]
        for key in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/component"):
            assert key in labels, f"{doc['kind']} {doc['metadata']['name']} lacks {key}"


def test_offline_crd_validation_catches_mistakes(helm: Helm) -> None:
    """The stand-in for the API server's validation of ThpChecks is not a no-op."""
    check = find(render(helm), names.CHECK_KIND)
    validator = crd_validator(CRD_SCHEMAS[f"{names.API_VERSION}/{names.CHECK_KIND}"])
    bad = copy.deepcopy(check)
    bad["spec"]["remediation"]["cordonn"] = True
    bad["spec"]["mode"] = "quick"
    messages = [e.message for e in validator.iter_errors(bad)]
    assert any("cordonn" in m for m in messages) and any("quick" in m for m in messages)


def test_renders_as_a_dependency_of_another_chart(helm: Helm, tmp_path: Path) -> None:
    """A parent chart passes `global` values: the schema must let them through."""
    parent = tmp_path / "parent"
    (parent / "charts").mkdir(parents=True)
    (parent / "Chart.yaml").write_text("apiVersion: v2\nname: parent\nversion: 0.0.1\n")
    shutil.copytree(CHART, parent / "charts" / CHART.name)
    out = helm.run("template", "p", str(parent), "--kube-version", helm.kube_version,
                   "--set", "global.imageRegistry=example.com").stdout
    assert find(documents(out), "Deployment")["metadata"]["name"] == "p-thp-checker-operator"


def test_nothing_selects_an_architecture(helm: Helm) -> None:
    """The chart works unchanged on a mixed amd64/arm64 cluster: one image name (a multi-arch
    index, devtools/images/build.py --arch amd64,arm64 --archive) and no architecture selector."""
    text = yaml.safe_dump_all(render(helm))
    assert "kubernetes.io/arch" not in text and "arm64" not in text and "amd64" not in text
