"""Least privilege in the rendered chart (offline): the NetworkPolicies select every pod the
chart and the operator create, images pinned by digest reach the node pods.

The node pods are built with the operator's own builders (contract/agent.py, contract/mitigation.py)
from the settings the rendered Deployment gives the operator, so a label changed on either
side fails here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from devtools.cluster.accounts import documents
from tests.chart.chart_kit import ALL_VALUES, Helm, container_env, find
from thpcheck.contract.agent import CHECK, STANDBY, agent_daemonset
from thpcheck.contract.checkspec import parse_spec
from thpcheck.contract.mitigation import mitigation_daemonset, restore_daemonset
from thpcheck.contract.refs import CheckRef
from thpcheck.controller import settings

NAMESPACE = "thp-checker"
DIGEST = "sha256:" + "0123456789abcdef" * 4
OTHER_DIGEST = "sha256:" + "f" * 64
POD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob", "ReplicaSet", "Pod"}


def render(helm: Helm, *args: str) -> list[dict[str, Any]]:
    return documents(helm.template(*args, namespace=NAMESPACE))


def _pod_template(obj: Mapping[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return dict(obj)
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"])
    return dict(obj["spec"]["template"])


def chart_pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template the chart renders, by "Kind/name"."""
    return {f"{d['kind']}/{d['metadata']['name']}": _pod_template(d)
            for d in docs if d["kind"] in POD_KINDS}


def operator_pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template the operator creates, built by its own code from the settings the
    rendered Deployment gives it: both agent templates, the mitigation and the restore pod."""
    config = settings.from_env(container_env(find(docs, "Deployment"))).workload()
    check = CheckRef("a-check", "uid-1")
    built = [agent_daemonset(parse_spec({}), check, config, template=t, run="r1")
             for t in (STANDBY, CHECK)]
    built += [mitigation_daemonset(config), restore_daemonset(config)]
    pods = {}
    for ds in built:
        template = ds["spec"]["template"]
        name = template["metadata"]["labels"].get("thpcheck.io/template", "")
        pods[f"DaemonSet/{ds['metadata']['name']}{'/' + name if name else ''}"] = {
            **template, "metadata": {**template["metadata"],
                                     "namespace": ds["metadata"]["namespace"]}}
    return pods


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector's meaning (matchLabels and matchExpressions, ANDed)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values")
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def policies_of(docs: list[dict[str, Any]], namespace: str,
                labels: Mapping[str, str]) -> list[str]:
    return [p["metadata"]["name"] for p in docs if p["kind"] == "NetworkPolicy"
            and p["metadata"]["namespace"] == namespace
            and selects(p["spec"]["podSelector"], labels)]


def test_selector_semantics() -> None:
    """The evaluator the tests rely on, against plain cases."""
    labels = {"a": "1", "b": "2"}
    assert selects({}, labels)
    assert selects({"matchLabels": {"a": "1"}}, labels)
    assert not selects({"matchLabels": {"a": "2"}}, labels)
    assert selects({"matchExpressions": [{"key": "b", "operator": "In", "values": ["2"]}]},
                   labels)
    assert not selects({"matchExpressions": [{"key": "c", "operator": "Exists"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "a", "operator": "NotIn",
                                              "values": ["1"]}]}, labels)


@pytest.mark.parametrize("values", [(), ("-f", str(ALL_VALUES)), ("--set", "nameOverride=thp",
                                     "--set", "fullnameOverride=x", "--set",
                                     "namespaceOverride=other")],
                         ids=["defaults", "all-values", "overrides"])
def test_network_policies_select_every_pod(helm: Helm, values: tuple[str, ...]) -> None:
    """Every pod of the chart and of the operator is selected by exactly one policy of the
    release: the node pods by one that allows nothing, the operator and the hook by the
    operator's."""
    docs = render(helm, *values)
    node_pods = operator_pods(docs)
    own_pods = chart_pods(docs)
    assert {k.split("/")[0] for k in own_pods} == {"Deployment", "Job"}
    assert len(node_pods) == 4
    policies = {p["metadata"]["name"]: p for p in docs if p["kind"] == "NetworkPolicy"}
    for where, pod in {**own_pods, **node_pods}.items():
        namespace = pod["metadata"].get("namespace") or next(
            d["metadata"]["namespace"] for d in docs
            if f"{d['kind']}/{d['metadata']['name']}" == where)
        selected = policies_of(docs, namespace, pod["metadata"]["labels"])
        assert len(selected) == 1, (where, selected)
        (policy,) = selected
        spec = policies[policy]["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        if where in node_pods:
            assert "ingress" not in spec and "egress" not in spec, policy
        else:
            assert spec["egress"] and where.startswith(("Deployment/", "Job/")), policy


def test_the_operator_may_reach_only_the_api_server_and_dns(helm: Helm) -> None:
    docs = render(helm)
    (policy,) = [p for p in docs if p["kind"] == "NetworkPolicy"
                 and "egress" in p["spec"]]
    api, dns = policy["spec"]["egress"]
    assert api["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]
    assert api["ports"] == [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    # Ingress: exactly the ports the operator container listens on.
    (container,) = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    (ingress,) = policy["spec"]["ingress"]
    assert sorted(p["port"] for p in ingress["ports"]) == sorted(
        p["containerPort"] for p in container["ports"])
    assert "from" not in ingress

    narrowed = render(helm, "--set-json", 'networkPolicy.apiServer.cidrs=["10.0.0.1/32"]',
                      "--set-json", "networkPolicy.apiServer.ports=[8443]",
                      "--set", "networkPolicy.dns=false",
                      "--set-json", 'networkPolicy.metricsFrom=[{"namespaceSelector":'
                      '{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]',
                      "--set", "metrics.port=0")
    (policy,) = [p for p in narrowed if p["kind"] == "NetworkPolicy" and "egress" in p["spec"]]
    assert policy["spec"]["egress"] == [{"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
                                         "ports": [{"port": 8443, "protocol": "TCP"}]}]
    assert policy["spec"]["ingress"] == [{
        "ports": [{"port": 8081, "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}]}]
    # No listening port: no ingress at all.
    closed = render(helm, "--set", "metrics.port=0", "--set", "operator.healthPort=0")
    (policy,) = [p for p in closed if p["kind"] == "NetworkPolicy" and "egress" in p["spec"]]
    assert policy["spec"]["ingress"] == []
    assert not [d for d in render(helm, "--set", "networkPolicy.enabled=false")
                if d["kind"] == "NetworkPolicy"]


def _images(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The image of every container the chart and the operator create."""
    found = {}
    for where, pod in {**chart_pods(docs), **operator_pods(docs)}.items():
        for container in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]:
            found[f"{where}/{container['name']}"] = container["image"]
    return found


def test_images_by_digest_reach_every_pod(helm: Helm) -> None:
    repo = "registry.example.com/thp-checker"
    pinned = render(helm, "--set", f"image.repository={repo}", "--set", "image.tag=1.2.3",
                    "--set", f"image.digest={DIGEST}")
    images = _images(pinned)
    assert len(images) >= 7  # operator, hook, standby idle, check + idle, mitigate, restore
    assert set(images.values()) == {f"{repo}@{DIGEST}"}, images
    assert container_env(find(pinned, "Deployment"))["THPCHECK_AGENT_IMAGE"] == (
        f"{repo}@{DIGEST}")

    # The agent image's own digest wins; the operator keeps its own.
    own = _images(render(helm, "--set", f"image.repository={repo}",
                         "--set", f"image.digest={DIGEST}",
                         "--set", "agent.image.repository=example.com/agent",
                         "--set", f"agent.image.digest={OTHER_DIGEST}"))
    assert {v for k, v in own.items() if k.startswith("DaemonSet/")} == {
        f"example.com/agent@{OTHER_DIGEST}"}
    assert {v for k, v in own.items() if not k.startswith("DaemonSet/")} == {
        f"{repo}@{DIGEST}"}
    # Another agent repository or tag without its own digest: not the operator's digest.
    tagged = _images(render(helm, "--set", f"image.digest={DIGEST}",
                            "--set", "agent.image.tag=2.0"))
    assert {v for k, v in tagged.items() if k.startswith("DaemonSet/")} == {
        "ghcr.io/thp-checker/thp-checker:2.0"}


def test_a_malformed_digest_is_refused(helm: Helm) -> None:
    for key in ("image.digest", "agent.image.digest"):
        proc = helm.run("template", "t", str(ALL_VALUES.parents[1]), "--set",
                        f"{key}=1.2.3", check=False)
        assert proc.returncode != 0 and "does not match pattern" in proc.stderr, proc.stderr
