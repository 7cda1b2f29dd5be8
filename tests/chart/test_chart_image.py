"""The chart's two API clients in the real image, with the chart's runtime settings: the
operator container (its args, env, uid 65532, read-only root filesystem without any writable
volume, no capabilities, no new privileges) and the pre-delete hook's ``thpcheck
uninstall-cleanup`` (the image's entrypoint with the Job's args), each authenticated with its
ServiceAccount's token, against the chart's test cluster.

kwok never runs containers, so podman runs them here in the host's network namespace (the API
server listens on 127.0.0.1 only).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.accounts import documents, token_kubeconfig
from devtools.cluster.harness import Cluster
from devtools.cluster.operator import this_machine
from devtools.images import build
from tests.chart.chart_kit import (
    OPERATOR_SA,
    RELEASE,
    Helm,
    Release,
    container_env,
    fast_values,
    find,
)
from tests.operator.cluster_kit import eventually, get_check
from tests.support.require import skip_or_fail

pytestmark = [pytest.mark.cluster, pytest.mark.images]

TIER = "images"
# Kubernetes' readOnlyRootFilesystem without podman's extra tmpfs mounts (/tmp, /run, ...).
CHART_RUNTIME = ("--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges", "--network", "host")


@pytest.fixture(scope="module")
def image() -> build.Built:
    if os.geteuid() != 0:
        skip_or_fail(TIER, "running the image needs root")
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        skip_or_fail(TIER, f"{', '.join(missing)} not installed")
    try:
        return build.build()
    except build.BuildError as exc:
        pytest.fail(f"image build failed: {exc}", pytrace=False)


def security_args(container: dict[str, Any]) -> list[str]:
    """podman flags for the container's securityContext (what the chart sets)."""
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] and context["capabilities"] == {"drop": ["ALL"]}
    assert context["allowPrivilegeEscalation"] is False
    return ["--user", f"{context['runAsUser']}:{context['runAsGroup']}", *CHART_RUNTIME]


def mounted_kubeconfig(kubeconfig: Path, cluster: Cluster, workdir: Path) -> list[str]:
    """The kubeconfig and the cluster CA, read-only, readable by uid 65532."""
    config = json.loads(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["certificate-authority"] = "/kube/ca.crt"
    target = workdir / f"{kubeconfig.stem}-in-container"
    target.mkdir()
    (target / "config").write_text(json.dumps(config))
    shutil.copyfile(cluster.pki.ca_crt, target / "ca.crt")
    for path in (target, target / "config", target / "ca.crt"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return ["-v", f"{target}:/kube:ro", "-e", "KUBECONFIG=/kube/config"]


def env_args(env: dict[str, str]) -> list[str]:
    return [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]


def podman_logs(name: str) -> str:
    out = build.podman("logs", name, check=False)
    return (out.stdout or "") + (out.stderr or "")


def run_detached(name: str, args: Sequence[str]) -> None:
    build.podman("run", "-d", "--name", name, *args)


@pytest.fixture
def containers() -> Iterator[list[str]]:
    names_: list[str] = []
    yield names_
    for name in names_:
        build.podman("rm", "-f", "-t", "30", name, check=False)


def test_operator_and_hook_run_in_the_image_as_the_chart_runs_them(
        image: build.Built, chart_cluster: Cluster, helm: Helm, tmp_path: Path,
        containers: list[str]) -> None:
    cluster = chart_cluster
    test_id = uuid.uuid4().hex[:6]
    namespace = f"img-{test_id}"
    cluster.kubectl("create", "namespace", namespace)
    node = f"img-{test_id}"
    cluster.add_node(node, node_info=this_machine())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    tag = image.tags[-1].rsplit(":", 1)[1]  # <version>-<content hash>: exactly this build
    release = Release(cluster, helm, namespace,
                      [*fast_values(scratch), "--set", f"image.tag={tag}"])
    try:
        release.install()
        deployment = release.deployment()
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == image.tags[-1]

        # The operator: the Deployment's image, args, env and security settings.
        token = token_kubeconfig(cluster, namespace, OPERATOR_SA, tmp_path / "operator")
        operator = f"thpc-chart-operator-{test_id}"
        containers.append(operator)
        run_detached(operator, [
            *security_args(container), *mounted_kubeconfig(token, cluster, tmp_path),
            *env_args(container_env(deployment)), container["image"], *container["args"]])
        health = f"http://127.0.0.1:{container_env(deployment)['THPCHECK_HEALTH_PORT']}/healthz"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(health, timeout=2) as reply:
                    return bool(reply.status == 200)
            except OSError:
                return False

        eventually(healthy, 90, what=f"the operator in the image:\n{podman_logs(operator)}")
        eventually(lambda: (get_check(cluster, "default") or {}).get("status", {})
                   .get("nodes") == 1, 60, what="the operator's first reconcile")
        # Ready (the Deployment's readinessProbe): it has indexed the cluster's node.
        ready = health.replace("/healthz", container["readinessProbe"]["httpGet"]["path"])
        with urllib.request.urlopen(ready, timeout=5) as reply:
            assert json.loads(reply.read())["indexed"]["nodes"] >= 1
        cluster.kubectl("get", "daemonset", "thpcheck-default", "-n", namespace)

        # The hook's command with its ServiceAccount and rules (the rendered hook objects
        # without the Job), in the image with the Job's settings, while the operator runs.
        hook_docs = documents(helm.template(
            *release.values, "--show-only", "templates/cleanup-hook.yaml",
            namespace=namespace, release=RELEASE))
        job = find(hook_docs, "Job")["spec"]["template"]["spec"]
        cluster.kubectl("apply", "-f", "-", input="\n---\n".join(
            json.dumps(d) for d in hook_docs if d["kind"] != "Job"))
        hook_token = token_kubeconfig(cluster, namespace, job["serviceAccountName"],
                                      tmp_path / "cleanup")
        (hook,) = job["containers"]
        # The Job's env; the downward-API namespace is what the kubelet would put there.
        env = {e["name"]: e.get("value", namespace) for e in hook["env"]}
        outcome = build.podman(
            "run", "--rm", *security_args(hook), *mounted_kubeconfig(hook_token, cluster,
                                                                    tmp_path),
            *env_args(env), hook["image"], *hook["args"], check=False, timeout=180)
        assert outcome.returncode == 0, outcome.stdout + outcome.stderr
        assert "deleting ThpCheck default" in outcome.stdout
        assert get_check(cluster, "default") is None
        assert not cluster.kubectl("get", "daemonsets", "-n", namespace, "-o",
                                   "name").stdout.strip()
        logs = podman_logs(operator)
        assert "check deleted; changes undone" in logs
        assert not [line for line in logs.splitlines()
                    if "forbidden" in line.lower() or "not enough permissions" in line.lower()]
        stopped = build.podman("stop", "-t", "30", operator, check=False)
        assert stopped.returncode == 0
        state = build.podman("inspect", "--format", "{{.State.ExitCode}}", operator)
        assert state.stdout.strip() == "0", podman_logs(operator)[-2000:]
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input="\n---\n".join(
            json.dumps(d) for d in hook_docs if d["kind"] != "Job"))
    finally:
        cluster.kubectl("delete", "thpchecks", "--all", "--wait=false", check=False)
        for name in cluster.kubectl("get", "thpchecks", "-o", "name", check=False
                                    ).stdout.split():
            cluster.kubectl("patch", name, "--type=merge", "-p",
                            '{"metadata":{"finalizers":[]}}', check=False)
        release.run("uninstall", RELEASE, "--no-hooks", "--wait", check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.delete_node(node, wait=False)
