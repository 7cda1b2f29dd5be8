"""The operator on the real control plane (kwok nodes; the test plays the kubelet)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.harness import Cluster
from devtools.cluster.operator import CHECKS_PATH, REPO, OperatorProcess, install_crds
from tests.operator.cluster_kit import (
    DISAGREEMENT,
    Kubelet,
    change_events,
    eventually,
    get_check,
    node,
    node_events,
    results,
    with_verdict,
)
from tests.unit.test_paths import REFUSED
from thpcheck.contract import names
from thpcheck.controller.credentials import StartupExit

pytestmark = pytest.mark.cluster
# The start of each path rule's message: the API server must say which rule refused.
RULE_WORDS = {"root": "must not be the root directory",
              "system": "must not be under a host system directory",
              "kubelet": "must not be under the kubelet's or a container runtime's state",
              "mitigation": "must not be under /var/lib/thpcheck-mitigation"}


def create_check(cluster: Cluster, checks: list[str], name: str, test_id: str,
                 scratch: Path, **spec: Any) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    body = {"apiVersion": names.API_VERSION, "kind": names.CHECK_KIND,
            "metadata": {"name": name},
            "spec": {"nodeSelector": {"thpcheck-test": test_id}, "paths": [str(scratch)],
                     "reproducer": {"iterations": 2, "baseSizeBytes": 4 << 20}, **spec}}
    checks.append(name)
    cluster.api("POST", CHECKS_PATH, body)


def all_results(cluster: Cluster, name: str, count: int) -> dict[str, dict[str, Any]]:
    def complete() -> dict[str, dict[str, Any]] | None:
        found = results(cluster, name)
        return found if len(found) == count else None

    found: dict[str, dict[str, Any]] = eventually(complete, what=f"{count} results")
    return found


def status_of(cluster: Cluster, name: str) -> dict[str, Any]:
    check = get_check(cluster, name) or {}
    status: dict[str, Any] = check.get("status") or {}
    return status


# -- the schema ------------------------------------------------------------------------------

BAD_SPECS = [
    ({"paths": ["relative/dir"]}, "spec.paths[0]", "must be absolute paths"),
    ({"paths": ["/var/../etc"]}, "spec.paths[0]", "must not contain '..' segments"),
    ({"paths": ["/proc/.."]}, "spec.paths[0]", "must not contain '..' segments"),
    # Every spelling of every refused family (tests/unit/test_paths.py), each with its rule.
    *(({"paths": [path]}, "spec.paths[0]", RULE_WORDS[family])
      for family, paths in REFUSED.items() for path in paths),
    ({"reproducer": {"baseSizeBytes": 1 << 30, "iterations": 10000, "appendSizeBytes": 1 << 20}},
     "spec.reproducer", "one run may write at most 2 GiB per path"),
    ({"diskHeadroom": {"marginPercent": 95}}, "spec.diskHeadroom.marginPercent",
     "less than or equal to 90"),
    ({"paths": []}, "spec.paths", "should have at least 1 items"),
    ({"paths": [f"/p{i}" for i in range(17)]}, "spec.paths", "must have at most 16 items"),
    ({"paths": ["/a", "/a"]}, "spec.paths[1]", "Duplicate value"),
    ({"reproducer": {"iterations": 0}}, "spec.reproducer.iterations", "greater than or equal to 1"),
    ({"reproducer": {"iterations": 10001}}, "spec.reproducer.iterations",
     "less than or equal to 10000"),
    ({"reproducer": {"baseSizeBytes": 1048576}}, "spec.reproducer.baseSizeBytes",
     "greater than or equal to 2097152"),
    ({"reproducer": {"baseSizeBytes": 2 << 30}}, "spec.reproducer.baseSizeBytes",
     "less than or equal to 1073741824"),
    ({"reproducer": {"appendSizeBytes": 1024}}, "spec.reproducer.appendSizeBytes",
     "greater than or equal to 4096"),
    ({"reproducer": {"appendSizeBytes": 32 << 20}}, "spec.reproducer.appendSizeBytes",
     "less than or equal to 16777216"),
    ({"schedule": {"interval": "1 day"}}, "spec.schedule.interval",
     "must be a duration such as 24h"),
    ({"schedule": {"interval": "5m"}}, "spec.schedule.interval", "must be at least 10m"),
    ({"maxConcurrent": 0}, "spec.maxConcurrent", "positive integer or a percentage"),
    ({"maxConcurrent": "150%"}, "spec.maxConcurrent", "positive integer or a percentage"),
    ({"maxConcurrent": "ten"}, "spec.maxConcurrent", "positive integer or a percentage"),
    ({"remediation": {"maxCordoned": -1}}, "spec.remediation.maxCordoned",
     "non-negative integer or a percentage"),
    ({"remediation": {"maxCordoned": "1/2"}}, "spec.remediation.maxCordoned",
     "non-negative integer or a percentage"),
    ({"remediation": {"cordon": "yes"}}, "spec.remediation.cordon", "must be of type boolean"),
    ({"mode": "quick"}, "spec.mode", 'Unsupported value: "quick"'),
    ({"tolerations": [{"operator": "Exists", "value": "x"}]}, "spec.tolerations[0]",
     "value must be empty when operator is Exists"),
    ({"tolerations": [{"operator": "Equal"}]}, "spec.tolerations[0]",
     "key may be empty only with operator Exists"),
    ({"nodeSelector": {"bad key!": "x"}}, "spec.nodeSelector", "must be valid label keys"),
    ({"discoverFilesystems": "sometimes"}, "spec.discoverFilesystems", "must be of type boolean"),
]


def explain(cluster: Cluster, field: str) -> str:
    """kubectl explain, once the API server has published the CRD's OpenAPI (asynchronous)."""
    def published() -> str:
        outcome = cluster.kubectl("explain", field, check=False)
        return outcome.stdout if outcome.returncode == 0 else ""

    text: str = eventually(published, what=f"kubectl explain {field}")
    return text


def test_crds_install_with_short_names_and_docs(crds: Cluster) -> None:
    assert "percentage of the selected nodes" in explain(
        crds, "thpchecks.spec.remediation.maxCordoned")
    assert "collapse_unsupported" in explain(crds, "thpnoderesults.status.paths.repro")
    for kind in ("thpc", "thpr"):  # the short names resolve
        crds.kubectl("get", kind)


@pytest.mark.parametrize(("spec", "field", "message"), BAD_SPECS,
                         ids=[f"{f}:{json.dumps(s)[:48]}" for s, f, _ in BAD_SPECS])
def test_bad_specs_are_rejected_with_a_message_naming_the_field(
        crds: Cluster, spec: dict[str, Any], field: str, message: str) -> None:
    body = {"apiVersion": names.API_VERSION, "kind": names.CHECK_KIND,
            "metadata": {"name": "bad"}, "spec": spec}
    outcome = crds.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(body),
                           check=False)
    assert outcome.returncode != 0, f"accepted: {spec}"
    assert field in outcome.stderr and message in outcome.stderr, outcome.stderr


def test_a_good_sparse_spec_gets_every_default(crds: Cluster) -> None:
    body = {"apiVersion": names.API_VERSION, "kind": names.CHECK_KIND,
            "metadata": {"name": "defaults"}, "spec": {"schedule": {"interval": "24h"}}}
    created = json.loads(crds.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                      input=json.dumps(body)).stdout)
    assert created["spec"] == {
        "mode": "full", "tolerations": [{"operator": "Exists"}],
        "paths": ["/var/lib/thpcheck"], "discoverFilesystems": False,
        "diskHeadroom": {"nodefsAvailablePercent": 10, "imagefsAvailablePercent": 15,
                         "marginPercent": 5, "minFreeBytes": 268435456},
        "reproducer": {"enabled": True, "iterations": 200, "baseSizeBytes": 67108864,
                       "appendSizeBytes": 16384},
        "schedule": {"interval": "24h"}, "maxConcurrent": "10%",
        "remediation": {"label": True, "cordon": False, "mitigate": False, "dryRun": False,
                        "maxCordoned": 1, "taint": "", "condition": False},
        "paused": False}


# -- a check over three nodes --------------------------------------------------------------


def test_a_check_over_three_nodes(crds: Cluster, operator: OperatorProcess, kubelet: Kubelet,
                                  checks: list[str], make_nodes: Callable[..., list[str]],
                                  test_id: str, tmp_path: Path) -> None:
    n0, n1, n2 = make_nodes(3)
    name = f"three-{test_id}"
    create_check(crds, checks, name, test_id, tmp_path / "scratch")

    # One DaemonSet, with the pod security the design asks for, rolled onto the check template.
    pods = kubelet.wait_check_pods(name, [n0, n1, n2])
    daemonset = crds.api("GET", f"/apis/apps/v1/namespaces/{operator.namespace}/daemonsets/"
                         f"{names.agent_daemonset_name(name)}")
    pod_spec = daemonset["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert "priorityClassName" not in pod_spec  # the operator's default: none
    assert pod_spec["tolerations"] == [{"operator": "Exists"}]
    (check_container,) = pod_spec["initContainers"]
    context = check_container["securityContext"]
    assert (context["privileged"], context["allowPrivilegeEscalation"],
            context["readOnlyRootFilesystem"], context["capabilities"]) == (
        False, False, True, {"drop": ["ALL"]})
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"
    assert daemonset["metadata"]["ownerReferences"][0]["name"] == name

    # The kubelet's part: a real agent run, an affected result, and garbage.
    message, document = kubelet.run_agent(pods[n0])
    real_verdict = document["verdict"]
    kubelet.terminate(pods[n0], message)
    skipped = {"mount_point": "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pvc/mount",
               "fstype": "ext4", "reason": "a pod volume (another tenant's data)"}
    kubelet.terminate(pods[n1], with_verdict({**document, "skipped_mounts": [skipped]},
                                             "affected"))
    kubelet.terminate(pods[n2], message[: len(message) // 2], exit_code=0)

    found = all_results(crds, name, 3)
    # What discovery skipped is kept by the API server (declared in the CRD, not pruned).
    assert found[n1]["status"]["skippedMounts"] == [
        {"mountPoint": skipped["mount_point"], "reason": skipped["reason"]}]
    assert found[n1]["status"]["skippedMountCount"] == 1
    verdicts = {n: found[n]["status"]["verdict"] for n in (n0, n1, n2)}
    assert verdicts == {n0: real_verdict, n1: "affected", n2: "error"}
    assert "truncated" in found[n2]["status"]["message"]
    first = found[n0]
    assert first["metadata"]["labels"][names.VERDICT_LABEL] == real_verdict
    assert first["status"]["kernelRelease"] == document["kernel"]["release"]
    assert first["status"]["stale"] is False
    assert first["status"]["paths"][0]["path"] == str(tmp_path / "scratch")
    owners = {o["kind"]: o for o in first["metadata"]["ownerReferences"]}
    assert owners["ThpCheck"]["controller"] is True
    assert owners["Node"]["name"] == n0

    def counted() -> dict[str, Any] | None:
        status = status_of(crds, name)
        return status if status.get("checked") == 3 else None

    status = eventually(counted, what="status counts")
    expected = {"affected": 1, "errors": 1, "notAffected": 0, "susceptible": 0, "unknown": 0}
    expected[{"not-affected": "notAffected", "susceptible": "susceptible",
              "unknown": "unknown", "affected": "affected", "error": "errors"}[real_verdict]] += 1
    assert {k: status[k] for k in expected} == expected
    assert (status["nodes"], status["phase"], status["observedGeneration"]) == (
        3, "Degraded", 1)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Degraded"] == "True"

    # The columns people see.
    table = crds.kubectl("get", "thpchecks", name).stdout
    assert table.split()[:9] == ["NAME", "PHASE", "NODES", "CHECKED", "AFFECTED", "SUSCEPTIBLE",
                                 "MITIGATED", "CORDONED", "AGE"]
    assert table.splitlines()[1].split()[:8] == [name, "Degraded", "3", "3", "1", "0", "0", "0"]
    table = crds.kubectl("get", "thpnoderesults", "-l",
                         f"{names.CHECK_LABEL}={name}").stdout
    assert table.split()[:6] == ["NAME", "NODE", "VERDICT", "KERNEL", "MITIGATED", "AGE"]
    print(crds.kubectl("get", "thpchecks", name).stdout)
    print(table)

    # Labels on the nodes, one Event per node, metrics.
    assert node(crds, n1)["metadata"]["labels"][names.VERDICT_LABEL] == "affected"
    assert change_events(crds, n1) == ["VerdictChanged"]
    # The injected loss contradicts the prediction for the nodes' kernel (a fixed 6.18):
    # a Warning of its own says so.
    warning = eventually(lambda: [e for e in node_events(crds, n1) if e["reason"] == DISAGREEMENT],
                         what="a PredictionDisagreement event")
    assert warning[0]["type"] == "Warning"
    metrics = operator.metrics()
    assert f'thpcheck_nodes{{check="{name}",verdict="affected"}} 1.0' in metrics
    assert f'thpcheck_results_written_total{{check="{name}"}} 3.0' in metrics

    # Deleting a node deletes its result (the operator does: the garbage collector only
    # collects an object whose owners are all gone, and the ThpCheck still exists).
    crds.delete_node(n2)
    eventually(lambda: n2 not in results(crds, name), what="the deleted node's result gone")
    eventually(lambda: status_of(crds, name).get("nodes") == 2, what="two nodes left")

    # Deleting the ThpCheck removes its DaemonSet, results and node labels.
    crds.kubectl("delete", "thpcheck", name, "--wait=true", "--timeout=60s")
    assert results(crds, name) == {}
    eventually(lambda: not crds.kubectl(
        "get", "daemonsets", "-n", operator.namespace, "-o", "name").stdout.strip(),
        what="the DaemonSet gone")
    for n in (n0, n1):
        labels = node(crds, n)["metadata"]["labels"]
        assert names.VERDICT_LABEL not in labels and names.MITIGATED_LABEL not in labels
        assert names.LABELLED_BY_ANNOTATION not in (node(crds, n)["metadata"].get(
            "annotations") or {})


def test_restarting_the_operator_mid_run_duplicates_and_loses_nothing(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    n0, n1, n2 = make_nodes(3)
    name = f"restart-{test_id}"
    create_check(crds, checks, name, test_id, tmp_path / "scratch")
    pods = kubelet.wait_check_pods(name, [n0, n1, n2])
    message, document = kubelet.run_agent(pods[n0])
    kubelet.terminate(pods[n0], message)
    first = eventually(lambda: results(crds, name).get(n0), what="the first result")

    operator.kill()  # kill -9 in the middle of the run
    kubelet.terminate(pods[n1], with_verdict(document, "affected"))
    kubelet.terminate(pods[n2], with_verdict(document, "susceptible"))
    operator.start()

    found = all_results(crds, name, 3)
    assert found[n0]["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert {n: r["status"]["verdict"] for n, r in found.items()} == {
        n0: document["verdict"], n1: "affected", n2: "susceptible"}
    eventually(lambda: status_of(crds, name).get("checked") == 3, what="status after restart")
    everything = crds.api("GET", "/apis/thpcheck.io/v1alpha1/thpnoderesults")["items"]
    assert len([r for r in everything if r["status"]["check"] == name]) == 3
    # Events are best effort: kill -9 may drop one the operator had queued, not yet posted;
    # none is ever repeated, and the ones decided after the restart are all there.
    for n in (n1, n2):
        assert change_events(crds, n) == ["VerdictChanged"], n
    assert len(change_events(crds, n0)) <= 1

    # Another restart with nothing new: nothing is written at all.
    versions = {n: r["metadata"]["resourceVersion"] for n, r in found.items()}
    check_version = get_check(crds, name)["metadata"]["resourceVersion"]  # type: ignore[index]
    operator.stop()
    operator.start()
    eventually(lambda: "thpcheck_reconcile_duration_seconds_count" in operator.metrics()
               and _reconciles(operator.metrics()) >= 3, what="a few reconciles")
    assert {n: r["metadata"]["resourceVersion"]
            for n, r in results(crds, name).items()} == versions
    assert get_check(crds, name)["metadata"]["resourceVersion"] == check_version  # type: ignore[index]
    assert "thpcheck_api_writes_total{" not in operator.metrics()


def _reconciles(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("thpcheck_reconcile_duration_seconds_count"):
            return float(line.split()[-1])
    return 0.0


# -- start-up checks -------------------------------------------------------------------------


def test_startup_fails_clearly_without_crds_or_with_old_ones(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    cluster = make_cluster(nodes=0)
    operator = OperatorProcess(cluster, "default", tmp_path / "logs")
    process = operator.launch()
    assert process.wait(60) == StartupExit.CRDS
    log = operator.tail()
    assert "Traceback" not in log
    assert len(log.strip().splitlines()) == 1, log  # one line, nothing else
    assert log.startswith("thpcheck operator: CRD thpchecks.thpcheck.io is not installed")
    assert log.strip().endswith("kubectl apply --server-side -f charts/thp-checker/crds/")

    old = tmp_path / "old-crds"
    old.mkdir()
    for source in (REPO / "charts" / "thp-checker" / "crds").glob("*.yaml"):
        (old / source.name).write_text(source.read_text().replace(
            f'thpcheck.io/schema-version: "{names.SCHEMA_VERSION}"',
            f'thpcheck.io/schema-version: "{names.SCHEMA_VERSION - 1}"'))
    install_crds(cluster, old)
    process = operator.launch()
    assert process.wait(60) == StartupExit.CRDS
    assert (f"has schema version {names.SCHEMA_VERSION - 1}, this operator needs "
            f"{names.SCHEMA_VERSION} or newer") in operator.tail()

    install_crds(cluster)
    operator.start()
    assert operator.stop() == 0


def test_reboots_mark_results_stale_and_spec_changes_roll_the_daemonset(
        crds: Cluster, operator: OperatorProcess, kubelet: Kubelet, checks: list[str],
        make_nodes: Callable[..., list[str]], test_id: str, tmp_path: Path) -> None:
    n0, n1 = make_nodes(2)
    name = f"stale-{test_id}"
    create_check(crds, checks, name, test_id, tmp_path / "scratch")
    pods = kubelet.wait_check_pods(name, [n0, n1])
    message, _ = kubelet.run_agent(pods[n0])
    for n in (n0, n1):
        kubelet.terminate(pods[n], message)
    all_results(crds, name, 2)

    # A reboot: the node reports a new boot ID; the old result is stale until re-checked.
    crds.api("PATCH", f"/api/v1/nodes/{n0}/status",
             {"status": {"nodeInfo": {"bootID": "rebooted-once"}}},
             content_type="application/merge-patch+json")
    eventually(lambda: results(crds, name)[n0]["status"]["stale"], what="a stale result")
    status = eventually(lambda: (s := status_of(crds, name)).get("stale") == 1 and s,
                        what="stale counted")
    assert status["checked"] == 1 and status["phase"] == "Running"
    rebooted = json.loads(message)
    rebooted["bootID"] = "rebooted-once"
    kubelet.terminate(kubelet.check_pod(name, n0) or pods[n0], json.dumps(rebooted))
    eventually(lambda: not results(crds, name)[n0]["status"]["stale"], what="re-checked")
    eventually(lambda: status_of(crds, name).get("checked") == 2, what="both checked again")

    # A spec change re-plans: the DaemonSet rolls to the new agent command line.
    crds.api("PATCH", f"{CHECKS_PATH}/{name}", {"spec": {"reproducer": {"iterations": 3}}},
             content_type="application/merge-patch+json")

    def rolled() -> bool:
        found = [kubelet.check_pod(name, n) for n in (n0, n1)]
        commands = [p["spec"]["initContainers"][0]["command"] for p in found if p]
        return len(commands) == 2 and all(
            c[c.index("--iterations") + 1] == "3" for c in commands)

    eventually(rolled, what="pods on the new template")
    assert status_of(crds, name)["observedGeneration"] == 2
