"""Test kit for the Helm chart: rendering, the chart's ServiceAccounts as real API clients, and
the operator process run with the chart's command line, environment and identity.

The chart's operator pod does not really run on kwok nodes (kwok marks it Running without
executing it), so the tests run ``python -m thpcheck`` with the rendered Deployment's args and
env, authenticated with a token of the chart's ServiceAccount (TokenRequest API): whatever it
manages to do, the chart's RBAC allows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.accounts import CHART
from devtools.cluster.harness import Cluster, ClusterError, free_ports
from devtools.cluster.operator import CHECKS_PATH, wait_healthy
from devtools.proc import WaitTimeout, die_with_parent, stop_process, tail, wait_for
from thpcheck.contract import names

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = CHART / "crds"
ALL_VALUES = CHART / "ci" / "all-values.yaml"
# The pre-delete hook Job's args to the image's entrypoint (thpcheck): what the tests run.
HOOK_ARGS = ("uninstall-cleanup",)

# What the operator may leave on a node (docs/operator-design.md, "Names and keys").
NODE_LABELS = (names.VERDICT_LABEL, names.MITIGATED_LABEL, names.MITIGATE_LABEL)
NODE_ANNOTATIONS = (names.CORDONED_BY_ANNOTATION, names.LABELLED_BY_ANNOTATION,
                    names.MITIGATE_BY_ANNOTATION)


def find(docs: Iterable[Mapping[str, Any]], kind: str, name: str | None = None,
         ) -> dict[str, Any]:
    """The one document of ``kind`` (and ``name``); fails the test if not exactly one."""
    found = [dict(d) for d in docs if d.get("kind") == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} documents"
    return found[0]


def container_env(deployment: Mapping[str, Any]) -> dict[str, str]:
    """The operator container's env as name -> value (the chart sets literal values only; the
    API server drops empty ones)."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        assert "valueFrom" not in item, f"env {item['name']} is not a literal value"
        env[item["name"]] = str(item.get("value", ""))
    return env


@dataclass
class Helm:
    """The pinned helm binary with its homes in a private directory."""

    binary: Path
    home: Path
    kube_version: str

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        env = {**os.environ,
               "HELM_CACHE_HOME": str(self.home / "cache"),
               "HELM_CONFIG_HOME": str(self.home / "config"),
               "HELM_DATA_HOME": str(self.home / "data")}
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        else:
            env.pop("KUBECONFIG", None)
        return env

    def run(self, *args: str, kubeconfig: Path | None = None, check: bool = True,
            timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                              env=self.env(kubeconfig), timeout=timeout, check=False)
        if check and proc.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}",
                        pytrace=False)
        return proc

    def template(self, *args: str, namespace: str = "thp-checker",
                 release: str = "thp-checker") -> str:
        """``helm template`` offline (no cluster), for the pinned Kubernetes version."""
        return self.run("template", release, str(CHART), "--namespace", namespace,
                        "--kube-version", self.kube_version, *args).stdout


# -- releases ------------------------------------------------------------------------------


RELEASE = "thp-checker"
OPERATOR_SA = "thp-checker-operator"
CLEANUP_SA = "thp-checker-cleanup"
# The image as devtools/images/build.py tags it; kwok never pulls it.
IMAGE = ("--set", "image.repository=localhost/thp-checker", "--set", "image.pullPolicy=Never")


def fast_values(scratch: Path) -> list[str]:
    """A quick check (1 iteration, 2 MiB, all nodes at once) on a scratch dir of this machine,
    and the test timings: kwok's empty exit-0 message must never turn into an error result
    before the test writes the real one."""
    metrics, health = free_ports(2)
    return [*IMAGE,
            "--set-json", f"defaultCheck.paths={json.dumps([str(scratch)])}",
            "--set", "defaultCheck.maxConcurrent=100%",
            "--set", "defaultCheck.reproducer.iterations=1",
            "--set", "defaultCheck.reproducer.baseSizeBytes=2097152",
            "--set", "operator.tuning.statusInterval=1",
            "--set-json", "operator.tuning.debounce=0.2",
            "--set", "operator.tuning.emptyResultGrace=3600",
            "--set", f"metrics.port={metrics}", "--set", f"operator.healthPort={health}"]


@dataclass
class Release:
    """One helm release of the chart in its own namespace."""

    cluster: Cluster
    helm: Helm
    namespace: str
    values: list[str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.helm.run(*args, "--namespace", self.namespace,
                             kubeconfig=self.cluster.kubeconfig, check=check)

    def install(self) -> str:
        return self.run("install", RELEASE, str(CHART), *self.values, "--wait",
                        "--timeout", "120s").stdout

    def upgrade(self, *changes: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Upgrade with the release's values plus ``changes`` (which then stay)."""
        outcome = self.run("upgrade", RELEASE, str(CHART), *self.values, *changes, "--wait",
                           "--timeout", "120s", check=check)
        if outcome.returncode == 0:
            self.values += changes
        return outcome

    def deployment(self) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.api(
            "GET", f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{OPERATOR_SA}")
        return found

    def installed(self) -> bool:
        listing = self.run("list", "--all", "-q").stdout.split()
        return RELEASE in listing


# -- identities ------------------------------------------------------------------------------


def can_i(cluster: Cluster, kubeconfig: Path, verb: str, resource: str,
          namespace: str | None = None, *, name: str | None = None,
          subresource: str | None = None) -> bool:
    """``kubectl auth can-i`` as the kubeconfig's identity (a SelfSubjectAccessReview);
    without a namespace, cluster-wide."""
    target = f"{resource}/{name}" if name else resource
    args = [cluster.bin("kubectl"), "auth", "can-i", verb, target,
            *(["--namespace", namespace] if namespace else ["--all-namespaces"]),
            *([f"--subresource={subresource}"] if subresource else [])]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False,
                          env={**cluster.env(), "KUBECONFIG": str(kubeconfig)})
    answer = proc.stdout.strip()
    if proc.returncode not in (0, 1) or answer not in ("yes", "no"):
        raise ClusterError(f"kubectl auth can-i {verb} {target}: {proc.stderr.strip()}")
    return answer == "yes"


# -- the operator, as the chart runs it -------------------------------------------------------


# A refused call as the operator logs it: its own ApiError ("PATCH ...: 403 Forbidden: ..."),
# kopf's APIForbiddenError and its "Not enough permissions" warnings. (A bare "403" would
# also match timestamps.)
_REFUSED = re.compile(r"forbidden|not enough permissions", re.IGNORECASE)


@dataclass
class ChartOperator:
    """``python -m thpcheck <the Deployment's args>`` with the Deployment's env, as the
    chart's ServiceAccount."""

    deployment: Mapping[str, Any]
    kubeconfig: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = container_env(self.deployment)

    @property
    def args(self) -> list[str]:
        (container,) = self.deployment["spec"]["template"]["spec"]["containers"]
        assert "command" not in container, "the chart must use the image's entrypoint"
        return [str(a) for a in container["args"]]

    def start(self, timeout: float = 60.0) -> ChartOperator:
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                       "HOME": str(self.log.parent), "LANG": "C.UTF-8",
                       "PYTHONPATH": str(REPO / "operator"), "PYTHONDONTWRITEBYTECODE": "1",
                       "KUBECONFIG": str(self.kubeconfig), **self.env}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "thpcheck", *self.args], env=environment,
                stdout=log, stderr=subprocess.STDOUT, cwd=self.log.parent,
                preexec_fn=die_with_parent)
        wait_healthy(self.process, int(self.env["THPCHECK_HEALTH_PORT"]), timeout, self.log)
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        process, self.process = self.process, None
        return stop_process(process, signal.SIGTERM, timeout)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.env['THPCHECK_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def tail(self, lines: int = 80) -> str:
        return tail(self.log, lines)

    def forbidden(self) -> list[str]:
        """Log lines that report a refused API call (403)."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if _REFUSED.search(line)]


def run_hook(kubeconfig: Path, namespace: str,
             timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """The pre-delete hook's command (``thpcheck`` with the Job's args), with the kubeconfig's
    identity and the Job's environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KUBECONFIG": str(kubeconfig),
           "THPCHECK_CLEANUP_TIMEOUT": str(int(timeout)), "THPCHECK_NAMESPACE": namespace,
           "PYTHONPATH": str(REPO / "operator"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "thpcheck", *HOOK_ARGS], env=env,
                          capture_output=True, text=True, timeout=timeout + 60, check=False)


# -- cluster state --------------------------------------------------------------------------


def node_marks(cluster: Cluster, nodes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per node: what the operator may have changed (its labels, annotations, cordon)."""
    marks: dict[str, dict[str, Any]] = {}
    for name in nodes:
        node = cluster.api("GET", f"/api/v1/nodes/{name}")
        labels = node["metadata"].get("labels") or {}
        annotations = node["metadata"].get("annotations") or {}
        marks[name] = {"unschedulable": bool(node["spec"].get("unschedulable")),
                       **{k: labels[k] for k in NODE_LABELS if k in labels},
                       **{k: annotations[k] for k in NODE_ANNOTATIONS if k in annotations}}
    return marks


def all_checks(cluster: Cluster) -> list[str]:
    return sorted(c["metadata"]["name"] for c in cluster.api("GET", CHECKS_PATH)["items"])


@contextlib.contextmanager
def checks_deleted_at_exit(cluster: Cluster, operator: ChartOperator) -> Iterator[None]:
    """On the way out, delete every ThpCheck while the operator still runs (its finalizer),
    then stop it; strip finalizers only as a last resort."""
    try:
        yield
    finally:
        cluster.kubectl("delete", "thpchecks", "--all", "--wait=false", check=False)
        if operator.process is not None:
            with contextlib.suppress(WaitTimeout):
                wait_for(lambda: not all_checks(cluster), 60, "every ThpCheck gone",
                         interval=0.5)
        operator.stop()
        for name in all_checks(cluster):
            cluster.kubectl("patch", "thpcheck", name, "--type=merge", "-p",
                            '{"metadata":{"finalizers":[]}}', check=False)
