"""The operator Deployment's readiness probe (offline render): /readyz on the port the
operator serves it on, so a rollout waits for an operator that has indexed the cluster
(tests/operator/test_cluster_readiness.py proves what /readyz means)."""

from __future__ import annotations

from devtools.cluster.accounts import documents
from tests.chart.chart_kit import Helm, container_env, find


def test_the_readiness_probe_asks_the_operator_whether_it_indexed_everything(
        helm: Helm) -> None:
    deployment = find(documents(helm.template()), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    probe = container["readinessProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": "health"}
    assert probe["periodSeconds"] <= 10 and probe["failureThreshold"] >= 1
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == int(container_env(deployment)["THPCHECK_HEALTH_PORT"])
    # No health port: no endpoint to probe, so no probe at all.
    quiet = find(documents(helm.template("--set", "operator.healthPort=0")), "Deployment")
    (container,) = quiet["spec"]["template"]["spec"]["containers"]
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & container.keys()
