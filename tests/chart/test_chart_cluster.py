"""The chart on the real control plane (kwok nodes): server-side dry-run, install, the operator
run with the chart's command line, environment and ServiceAccount token, minimal RBAC, upgrades,
and an uninstall that leaves nothing behind.

kwok marks the operator's pod Running without executing it, so the tests run the operator
process here (``ChartOperator``) as the chart's ServiceAccount, and play the kubelet for the
agent pods (tests/operator/cluster_kit.Kubelet). The pre-delete hook Job's pod is completed by
kwok without running either; the uninstall test holds it Pending (cleanup.nodeSelector) while
it runs the hook's program with the hook's own ServiceAccount, then lets it complete.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.accounts import documents, token_kubeconfig
from devtools.cluster.harness import Cluster
from devtools.cluster.operator import CHECKS_PATH, RESULTS_PATH, this_machine, with_verdict
from tests.chart.chart_kit import (
    ALL_VALUES,
    CLEANUP_SA,
    CRD_DIR,
    IMAGE,
    NODE_ANNOTATIONS,
    NODE_LABELS,
    OPERATOR_SA,
    RELEASE,
    ChartOperator,
    Helm,
    Release,
    all_checks,
    can_i,
    checks_deleted_at_exit,
    node_marks,
    run_hook,
)
from tests.operator.cluster_kit import Kubelet, eventually, get_check, results
from thpcheck.contract import names

pytestmark = pytest.mark.cluster


@pytest.fixture
def make_nodes(chart_cluster: Cluster, test_id: str) -> Iterator[Any]:
    """``make_nodes({name: labels})``: kwok nodes with this machine's kernel and boot ID (so
    the real agent's results are current), deleted afterwards."""
    made: list[str] = []

    def make(nodes: dict[str, dict[str, str]]) -> list[str]:
        for name, labels in nodes.items():
            chart_cluster.add_node(f"{name}-{test_id}", labels=labels,
                                   node_info=this_machine(), wait=False)
            made.append(f"{name}-{test_id}")
        chart_cluster.wait_nodes_ready(made, timeout=90)
        return [f"{name}-{test_id}" for name in nodes]

    yield make
    for name in made:
        chart_cluster.delete_node(name, wait=False)
    eventually(lambda: not set(made) & set(chart_cluster.fake_nodes()), 60,
               what="the test's nodes deleted")


def run_agents(kubelet: Kubelet, check: str, nodes: Sequence[str],
               affected: Sequence[str] = ()) -> dict[str, Any]:
    """Play the kubelet: the real agent on this machine for one pod, its document (with an
    ``affected`` verdict where asked) as every node's termination message."""
    pods = kubelet.wait_check_pods(check, nodes)
    message, document = kubelet.run_agent(pods[nodes[0]])
    assert document["verdict"] != "affected"
    for node in nodes:
        kubelet.terminate(pods[node], with_verdict(document, "affected") if node in affected
                          else message)
    return document


def status_of(cluster: Cluster, check: str) -> dict[str, Any]:
    status: dict[str, Any] = (get_check(cluster, check) or {}).get("status") or {}
    return status


def completed(cluster: Cluster, check: str, nodes: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = status_of(cluster, check)
        return status if status.get("phase") in ("Completed", "Degraded") \
            and status.get("checked") == nodes else None

    found: dict[str, Any] = eventually(done, 90, what=f"{check}: {nodes} nodes checked")
    return found


def release_objects(cluster: Cluster, namespace: str) -> list[str]:
    """Every object left that carries the release's instance label."""
    selector = f"app.kubernetes.io/instance={RELEASE}"
    out = cluster.kubectl(
        "get", "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,jobs,"
        "daemonsets", "-n", namespace, "-l", selector, "-o", "name").stdout.split()
    out += cluster.kubectl("get", "roles,rolebindings", "-n", "default", "-l", selector,
                           "-o", "name").stdout.split()
    out += cluster.kubectl("get", "clusterroles,clusterrolebindings,thpchecks", "-l", selector,
                           "-o", "name").stdout.split()
    return out


# -- dry-run --------------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["defaults", "all-values", "report-only"])
def test_server_side_dry_run(chart_cluster: Cluster, helm: Helm, release: Release,
                             values: str) -> None:
    """The API server (schemas, CEL rules of the CRDs, RBAC escalation checks) accepts every
    rendered object. The ServiceMonitor and PrometheusRule are left out (no Prometheus
    Operator CRDs here), and the dashboard goes to the release namespace (all-values puts it
    in a `monitoring` namespace this cluster does not have)."""
    chart_cluster.kubectl("apply", "--server-side", "-f", str(CRD_DIR))
    for crd in names.CRD_NAMES:
        chart_cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}")
    args = {"defaults": (), "all-values": ("-f", str(ALL_VALUES), "--set",
                                           "metrics.dashboard.namespace="),
            "report-only": ("--set", "remediation.enabled=false")}[values]
    docs = documents(helm.template(*IMAGE, *args, namespace=release.namespace))
    docs = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    outcome = chart_cluster.kubectl(
        "apply", "--dry-run=server", "--server-side", "--field-manager=chart-test",
        "--validate=strict", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    applied = [line for line in outcome.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(docs), outcome.stdout
    assert all_checks(chart_cluster) == []  # nothing was created


# -- install, the operator as the chart's ServiceAccount, minimal RBAC, upgrades ---------------


def test_install_run_as_the_service_account_and_upgrade(
        chart_cluster: Cluster, helm: Helm, release: Release, make_nodes: Any,
        tmp_path: Path) -> None:
    cluster, namespace = chart_cluster, release.namespace
    nodes = make_nodes({"n0": {}, "n1": {}, "n2": {}})
    notes = release.install()
    assert "kubectl get thpchecks" in notes and "kubectl get thpnoderesults" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes

    # 1. What the chart installed.
    for crd in names.CRD_NAMES:
        crd_body = cluster.api("GET", f"/apis/apiextensions.k8s.io/v1/"
                               f"customresourcedefinitions/{crd}")
        assert any(c["type"] == "Established" and c["status"] == "True"
                   for c in crd_body["status"]["conditions"])
    deployment = release.deployment()
    assert deployment["status"]["availableReplicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"  # leader election
    for kind, name, scope in (("serviceaccount", OPERATOR_SA, namespace),
                              ("service", "thp-checker-metrics", namespace),
                              ("role", OPERATOR_SA, namespace),
                              ("rolebinding", OPERATOR_SA, namespace),
                              ("role", f"{OPERATOR_SA}-events", "default"),
                              ("clusterrole", OPERATOR_SA, None),
                              ("clusterrole", "thp-checker-remediation", None),
                              ("clusterrolebinding", "thp-checker-remediation", None),
                              ("clusterrole", "thp-checker-view", None)):
        cluster.kubectl("get", kind, name, *(["-n", scope] if scope else []))
    check = get_check(cluster, "default")
    assert check is not None and check["spec"].get("nodeSelector") in (None, {})
    assert check["spec"]["remediation"]["label"] is True
    assert not cluster.kubectl("get", "jobs", "-n", namespace, "-o", "name").stdout.strip()

    # 2. The operator, as the chart runs it, with the chart's ServiceAccount: a full check.
    token = token_kubeconfig(cluster, namespace, OPERATOR_SA, tmp_path / "operator.kubeconfig")
    operator = ChartOperator(deployment, token, tmp_path / "logs" / "operator.log")
    kubelet = Kubelet(cluster, namespace, tmp_path)
    with checks_deleted_at_exit(cluster, operator):
        operator.start()
        document = run_agents(kubelet, "default", nodes)
        status = completed(cluster, "default", 3)
        assert status["nodes"] == 3 and status["errors"] == 0, status
        found = results(cluster, "default")
        assert sorted(found) == sorted(nodes)
        assert {r["status"]["verdict"] for r in found.values()} == {document["verdict"]}
        marks = eventually(lambda: (m := node_marks(cluster, nodes)) and all(
            names.VERDICT_LABEL in v for v in m.values()) and m, what="verdict labels")
        assert {v[names.VERDICT_LABEL] for v in marks.values()} == {document["verdict"]}
        assert 'thpcheck_nodes{check="default",verdict="unchecked"} 0.0' in operator.metrics()
        assert operator.forbidden() == [], operator.forbidden()

        # Node pods carry no ServiceAccount token.
        pods = kubelet.pods("default")
        assert len(pods) == 3
        for pod in pods:
            assert pod["spec"]["automountServiceAccountToken"] is False
            volumes = pod["spec"].get("volumes") or []
            assert not [v for v in volumes if "projected" in v
                        or v["name"].startswith("kube-api-access")], volumes
            for container in pod["spec"]["containers"] + pod["spec"]["initContainers"]:
                assert not [m for m in container.get("volumeMounts") or []
                            if m["mountPath"].startswith("/var/run/secrets")]

        # 3. Minimal: what the ServiceAccount may not do.
        def may(verb: str, resource: str, ns: str | None = None, **kw: str) -> bool:
            return can_i(cluster, token, verb, resource, ns, **kw)

        assert may("patch", "nodes") and may("create", "daemonsets.apps", namespace)
        assert may("watch", "pods", namespace) and may("list", "daemonsets.apps", namespace)
        assert may("create", "events", "default") and may("patch", "thpchecks.thpcheck.io")
        assert may("patch", "thpchecks.thpcheck.io", subresource="status")
        assert may("get", "customresourcedefinitions.apiextensions.k8s.io",
                   name="thpchecks.thpcheck.io")
        assert not may("get", "customresourcedefinitions.apiextensions.k8s.io",
                       name="roles.rbac.authorization.k8s.io")
        for verb, resource, ns, sub in (
                ("get", "secrets", namespace, None), ("list", "secrets", None, None),
                ("watch", "secrets", "kube-system", None),
                ("get", "configmaps", namespace, None),
                ("update", "nodes", None, None), ("delete", "nodes", None, None),
                ("patch", "nodes", None, "status"),
                ("create", "pods", "default", "eviction"), ("create", "pods", namespace, None),
                ("delete", "pods", namespace, None), ("create", "pods", namespace, "exec"),
                ("create", "daemonsets.apps", "default", None),
                ("create", "daemonsets.apps", "kube-system", None),
                ("delete", "thpchecks.thpcheck.io", None, None),
                ("create", "thpchecks.thpcheck.io", None, None),
                ("update", "thpnoderesults.thpcheck.io", None, None),
                ("create", "clusterrolebindings", None, None),
                ("escalate", "clusterroles", None, None),
                ("impersonate", "serviceaccounts", namespace, None),
                ("create", "serviceaccounts", namespace, "token"),
                ("create", "events", namespace, None),
                # Pods and DaemonSets are read in the release namespace only.
                ("list", "pods", None, None), ("watch", "pods", "kube-system", None),
                ("list", "daemonsets.apps", "default", None),
                ("list", "customresourcedefinitions.apiextensions.k8s.io", None, None)):
            kw = {"subresource": sub} if sub else {}
            assert not may(verb, resource, ns, **kw), \
                f"the operator may {verb} {resource}{'/' + sub if sub else ''} in {ns}"

        # Users bound to `view` cluster-wide can read checks and results, not change them.
        viewer = cluster.user_kubeconfig(f"viewer-{namespace}")
        cluster.kubectl("create", "clusterrolebinding", f"viewer-{namespace}",
                        "--clusterrole=view", f"--user=viewer-{namespace}")
        try:
            eventually(lambda: can_i(cluster, viewer, "list", "thpnoderesults.thpcheck.io"),
                       30, what="view aggregated")
            assert can_i(cluster, viewer, "watch", "thpchecks.thpcheck.io")
            assert not can_i(cluster, viewer, "delete", "thpchecks.thpcheck.io")
        finally:
            cluster.kubectl("delete", "clusterrolebinding", f"viewer-{namespace}")

        # 4. Remediation off: refused while nodes carry the operator's marks (they would be
        # stranded); label off first, then the node write permission goes.
        refused = release.upgrade("--set", "remediation.enabled=false", check=False)
        assert refused.returncode != 0 and "would leave the operator unable" in refused.stderr
        assert may("patch", "nodes")
        release.upgrade("--set", "defaultCheck.remediation.label=false")
        eventually(lambda: not any(node_marks(cluster, nodes)[n].get(names.VERDICT_LABEL)
                                   for n in nodes), 60, what="labels removed")
        assert node_marks(cluster, nodes) == {n: {"unschedulable": False} for n in nodes}
        release.upgrade("--set", "remediation.enabled=false")
        assert not may("patch", "nodes") and not may("update", "nodes")
        assert not may("patch", "nodes", name=nodes[0])
        status = completed(cluster, "default", 3)

        # 5. An upgrade that changes the pod template rolls a new ReplicaSet, and a
        # change of the default ThpCheck reaches the operator.
        before = release.deployment()
        old_hash = replica_set_hashes(cluster, namespace)
        release.upgrade("--set", "operator.logLevel=debug",
                        "--set", "operator.resources.requests.cpu=60m",
                        "--set", "defaultCheck.maxConcurrent=2")
        after = release.deployment()
        assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
        hashes = eventually(lambda: (h := replica_set_hashes(cluster, namespace))
                            and sum(h.values()) == 1 and set(h) != set(old_hash) and h,
                            60, what="one new ReplicaSet with the only replica")
        new = {k for k, replicas in hashes.items() if replicas == 1}
        assert len(hashes) == 2 and not new & set(old_hash)
        (container,) = after["spec"]["template"]["spec"]["containers"]
        assert "--log-level=debug" in container["args"]
        assert container["resources"]["requests"]["cpu"] == "60m"
        # The rollout is over once the old replica is gone: the status read right after the
        # upgrade can still count both (seen under load: availableReplicas 2).
        eventually(lambda: (st := release.deployment()["status"]).get("updatedReplicas")
                   == st.get("availableReplicas") == st.get("replicas") == 1, 60,
                   what="the rollout done: one updated, available replica")
        # The new pod's operator: the new args and env, the same identity.
        operator.stop()
        operator = ChartOperator(after, token, tmp_path / "logs" / "operator-2.log")
        operator.start()
        check = eventually(lambda: (c := get_check(cluster, "default")) and c["status"].get(
            "observedGeneration") == c["metadata"]["generation"] and c,
            60, what="the operator observed the upgraded ThpCheck")
        assert check["spec"]["maxConcurrent"] == 2
        assert operator.forbidden() == []
        operator.stop()
        operator.start()  # for the clean-up of the ThpCheck at exit


def replica_set_hashes(cluster: Cluster, namespace: str) -> dict[str, int]:
    """pod-template-hash -> replicas of the operator's ReplicaSets."""
    items = cluster.api("GET", f"/apis/apps/v1/namespaces/{namespace}/replicasets?"
                        "labelSelector=app.kubernetes.io/component=operator")["items"]
    return {rs["metadata"]["labels"]["pod-template-hash"]: rs["spec"]["replicas"]
            for rs in items}


# -- uninstall: the hook undoes everything while the operator still runs ---------------------


def test_uninstall_leaves_nothing_behind(chart_cluster: Cluster, release: Release,
                                         make_nodes: Any, test_id: str,
                                         tmp_path: Path) -> None:
    cluster, namespace = chart_cluster, release.namespace
    hook_label = f"thpcheck-chart-test-{test_id}"
    a0, a1, a2, admin, b0 = nodes = make_nodes({
        "a0": {"group": "a"}, "a1": {"group": "a"}, "a2": {"group": "a"},
        "admin": {"group": "a"}, "b0": {"group": "b"}})
    cluster.kubectl("cordon", admin)
    before = node_marks(cluster, nodes)
    release.values += ["--set", "defaultCheck.nodeSelector.group=a",
                       "--set", "defaultCheck.remediation.cordon=true",
                       "--set", "defaultCheck.remediation.maxCordoned=1",
                       # The admin's cordon is 1 of the 4 selected nodes: above the 10% guard.
                       "--set", "remediation.maxUnhealthy=50%",
                       # Holds the hook Job's pod Pending until the test lets it run.
                       "--set", f"cleanup.nodeSelector.{hook_label}=run"]
    release.install()
    token = token_kubeconfig(cluster, namespace, OPERATOR_SA, tmp_path / "operator.kubeconfig")
    operator = ChartOperator(release.deployment(), token, tmp_path / "logs" / "operator.log")
    kubelet = Kubelet(cluster, namespace, tmp_path)
    scratch = json.loads(next(v for v in release.values if v.startswith("defaultCheck.paths="))
                         .split("=", 1)[1])
    uninstall: subprocess.Popen[str] | None = None
    with checks_deleted_at_exit(cluster, operator):
        operator.start()
        # A user's own ThpCheck besides the chart's: mitigation on group b.
        cluster.api("POST", CHECKS_PATH, {
            "apiVersion": names.API_VERSION, "kind": names.CHECK_KIND,
            "metadata": {"name": f"mitigate-{test_id}"},
            "spec": {"nodeSelector": {"group": "b"}, "paths": scratch, "maxConcurrent": "100%",
                     "reproducer": {"iterations": 1, "baseSizeBytes": 2 << 20},
                     "remediation": {"mitigate": True}}})
        run_agents(kubelet, "default", [a2, a0, a1, admin], affected=[a0, a1, admin])
        run_agents(kubelet, f"mitigate-{test_id}", [b0], affected=[b0])

        # Remediation happened: labels everywhere, one cordon (budget 1; the admin's cordon
        # is not ours), b0 labelled for mitigation with its pod running there.
        status = eventually(lambda: (s := status_of(cluster, "default")).get("cordoned") == 1
                            and s.get("checked") == 4 and s, 90, what="one cordon")
        assert status["affected"] == 3
        mitigated = f"mitigate-{test_id}"
        eventually(lambda: [r["status"]["mitigated"] for r in
                            results(cluster, mitigated).values()] == [True], 60,
                   what="b0 mitigated (the mitigation pod Ready)")
        during = node_marks(cluster, nodes)
        assert sum(1 for n in (a0, a1) if during[n].get(names.CORDONED_BY_ANNOTATION)) == 1
        assert during[b0][names.MITIGATE_LABEL] == "true"
        assert all(names.VERDICT_LABEL in during[n] for n in nodes)
        daemonsets = cluster.kubectl("get", "daemonsets", "-n", namespace, "-o",
                                     "name").stdout.split()
        assert len(daemonsets) == 4 and {f"daemonset.apps/{names.MITIGATION_DAEMONSET}",
                                         f"daemonset.apps/{names.RESTORE_DAEMONSET}"} \
            <= set(daemonsets)
        assert len(cluster.api("GET", RESULTS_PATH)["items"]) == 5

        # helm uninstall: runs the pre-delete hook first and waits for its Job.
        uninstall = subprocess.Popen(
            [str(release.helm.binary), "uninstall", RELEASE, "--namespace", namespace,
             "--wait", "--timeout", "300s"], env=release.helm.env(cluster.kubeconfig),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        eventually(lambda: cluster.kubectl("get", "job", CLEANUP_SA, "-n", namespace,
                                           check=False).returncode == 0, 60,
                   what="the pre-delete hook Job")
        # Helm has deleted nothing yet: the operator and its permissions are all there.
        assert release.deployment()["status"]["availableReplicas"] == 1
        assert can_i(cluster, token, "patch", "nodes")
        assert all_checks(cluster) == ["default", f"mitigate-{test_id}"]

        # The hook's part, with the hook's own ServiceAccount.
        hook_token = token_kubeconfig(cluster, namespace, CLEANUP_SA,
                                      tmp_path / "cleanup.kubeconfig")
        assert not can_i(cluster, hook_token, "patch", "nodes")
        assert not can_i(cluster, hook_token, "get", "secrets", namespace)
        # An admin's own mitigation label: the uninstall would lift a mitigation it cannot
        # confirm, so the hook fails at once naming the node (once the ThpCheck are gone).
        cluster.kubectl("label", "node", a2, f"{names.MITIGATE_LABEL}=true")
        hook = run_hook(hook_token, namespace)
        assert hook.returncode == 1, hook.stdout + hook.stderr
        assert "deleting ThpCheck default" in hook.stdout
        assert f"deleting ThpCheck mitigate-{test_id}" in hook.stdout
        assert f"nodes labelled thpcheck.io/mitigate=true by hand: {a2}." in hook.stderr

        # Everything the checks did is undone, while the operator still ran.
        assert all_checks(cluster) == []
        others = [n for n in nodes if n != a2]
        assert node_marks(cluster, others) == {n: before[n] for n in others}

        # With the operator stopped: a mark whose ThpCheck is gone, and a node where the
        # restore cannot be confirmed (no kubelet runs its restore pod). The hook names both.
        operator.stop()
        cluster.kubectl("label", "node", a2, f"{names.MITIGATE_LABEL}-")
        cluster.kubectl("annotate", "node", a0, f"{names.LABELLED_BY_ANNOTATION}=ghost")
        dead = f"dead-{test_id}"
        cluster.api("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": dead, "labels": {"kubernetes.io/os": "linux"}}})  # kwok does not run it
        try:
            hook = run_hook(hook_token, namespace, timeout=20)
            assert hook.returncode == 1, hook.stdout + hook.stderr
            assert f"nodes still carrying marks of a ThpCheck: {a0} (ghost)" in hook.stderr
            assert "khugepaged restore not confirmed" in hook.stderr
            assert dead in hook.stderr.split("khugepaged restore not confirmed")[1]
        finally:
            cluster.delete_node(dead, wait=False)
        # The operator back: its orphan sweep undoes the ghost's mark, it deletes the
        # mitigation DaemonSet (no node labelled), and the hook confirms the restore.
        operator.start()
        hook = run_hook(hook_token, namespace)
        assert hook.returncode == 0, hook.stdout + hook.stderr
        assert "khugepaged restore confirmed on all" in hook.stdout or (
            "no mitigation record left to confirm" in hook.stdout)
        assert node_marks(cluster, nodes) == before
        assert before[admin]["unschedulable"] is True  # the admin's cordon stays
        assert cluster.api("GET", RESULTS_PATH)["items"] == []
        eventually(lambda: not cluster.kubectl("get", "daemonsets", "-n", namespace, "-o",
                                               "name").stdout.strip(), 60,
                   what="agent and mitigation DaemonSets gone")
        assert operator.forbidden() == [], operator.forbidden()

        # Let the hook Job's pod run (kwok completes it): Helm goes on with the uninstall.
        cluster.kubectl("label", "node", a2, f"{hook_label}=run")
        try:
            output, _ = uninstall.communicate(timeout=240)
            assert uninstall.returncode == 0, output
        finally:
            cluster.kubectl("label", "node", a2, f"{hook_label}-")
            if uninstall.poll() is None:
                uninstall.kill()
                uninstall.wait()

    # Nothing of the release is left but the CRDs (Helm never deletes crds/).
    eventually(lambda: release_objects(cluster, namespace) == [], 60,
               what="every object of the release deleted")
    assert node_marks(cluster, nodes) == before
    assert all(not set(NODE_LABELS) & set(m) and not set(NODE_ANNOTATIONS) & set(m)
               for m in node_marks(cluster, nodes).values())
    eventually(lambda: cluster.kubectl("get", "daemonsets,pods", "-n", namespace, "-o",
                                       "name").stdout.split() == [], 60,
               what="no DaemonSet or pod left in the namespace")
    assert cluster.kubectl("get", "thpnoderesults", "-o", "name").stdout.split() == []
    for crd in names.CRD_NAMES:
        cluster.kubectl("get", "crd", crd)
    assert not release.installed()
