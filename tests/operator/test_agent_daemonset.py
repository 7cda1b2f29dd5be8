"""The agent DaemonSet builder and its rollout steps (pure: no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from thpcheck.contract import names
from thpcheck.contract.agent import CHECK, STANDBY, WorkloadConfig, agent_daemonset
from thpcheck.contract.checkspec import parse_spec
from thpcheck.contract.mitigation import mitigation_daemonset, restore_daemonset
from thpcheck.contract.refs import CheckRef
from thpcheck.contract.views import daemonset_view
from thpcheck.planning.rollout import Step, plan_rollout, run_token

CHECK_REF = CheckRef("weekly", "uid-1")
CONFIG = WorkloadConfig(namespace="thp-checker", image="thp-checker:test",
                        pull_secrets=("regcred",))
NOW = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)


def build(spec: dict[str, Any] | None = None, template: str = CHECK) -> dict[str, Any]:
    return agent_daemonset(parse_spec(spec), CHECK_REF, CONFIG, template=template, run="r1")


def pod_spec(ds: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    return spec


def test_pods_are_locked_down() -> None:
    spec = pod_spec(build())
    assert spec["automountServiceAccountToken"] is False
    assert "priorityClassName" not in spec  # no class given: the cluster's default
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert "hostPID" not in spec and "hostNetwork" not in spec
    for container in [*spec["initContainers"], *spec["containers"]]:
        context = container["securityContext"]
        assert context["privileged"] is False
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["initContainers"][0]["securityContext"]["runAsUser"] == 0  # scratch dirs
    idle = spec["containers"][0]["securityContext"]
    assert idle["runAsNonRoot"] is True and idle["runAsUser"] == 65532


def test_the_check_container_runs_the_agent_in_pod_mode() -> None:
    (check,) = pod_spec(build({"paths": ["/var/lib/a", "/srv/b"],
                               "reproducer": {"iterations": 7, "baseSizeBytes": 4194304}}))[
        "initContainers"]
    command = check["command"]
    assert command[:2] == ["thpcheck", "check"]
    for flag in ("--json", "--exit-zero", "--host-root"):
        assert flag in command
    assert command[command.index("--result-file") + 1] == "/dev/termination-log"
    assert command[command.index("--iterations") + 1] == "7"
    assert command[command.index("--base-size") + 1] == "4194304"
    assert command[-2:] == ["/var/lib/a", "/srv/b"]
    assert "--no-repro" not in command and "--discover" not in command
    assert check["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_scratch_dirs_are_read_write_and_host_views_read_only() -> None:
    ds = build({"paths": ["/var/lib/a"]})
    spec = pod_spec(ds)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in spec["initContainers"][0]["volumeMounts"]}
    scratch = mounts["/host/var/lib/a"]
    assert not scratch.get("readOnly")
    assert volumes[scratch["name"]]["hostPath"] == {"path": "/var/lib/a", "type": "Directory"}
    reservations = mounts["/host/run/thpcheck"]
    assert not reservations.get("readOnly")
    assert volumes[reservations["name"]]["hostPath"] == {"path": "/run/thpcheck",
                                                         "type": "DirectoryOrCreate"}
    for path in ("/proc", "/sys", "/boot", "/lib/modules", "/etc/os-release"):
        assert mounts["/host" + path]["readOnly"] is True
        assert volumes[mounts["/host" + path]["name"]]["hostPath"]["path"] == path
    assert "/host" not in mounts


def test_only_the_default_path_is_created_when_missing() -> None:
    """A user's path missing on a node must not be created by the kubelet (hostPath type
    Directory: the pod waits and the operator records an error result); the default one is."""
    spec = pod_spec(build({"paths": ["/var/lib/thpcheck", "/srv/data"]}))
    types = {v["hostPath"]["path"]: v["hostPath"].get("type") for v in spec["volumes"]
             if "hostPath" in v}
    assert types["/var/lib/thpcheck"] == "DirectoryOrCreate"
    assert types["/srv/data"] == "Directory"
    assert "DirectoryOrCreate" not in {types[p] for p in ("/proc", "/sys", "/boot")}


def test_the_agent_cannot_preempt_and_is_sized_from_its_run() -> None:
    chosen = WorkloadConfig(namespace="ns", image="i", priority_class="thp-checker-agent")
    spec = agent_daemonset(parse_spec({}), CHECK_REF, chosen, template=CHECK, run="r")[
        "spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "thp-checker-agent"
    (check,) = spec["initContainers"]
    # 48 MiB of agent + 64 MiB base + 200 x 16 KiB appends + 18 MiB: 134 MiB, rounded up.
    assert check["resources"] == {"requests": {"cpu": "100m", "memory": "134Mi"},
                                  "limits": {"cpu": "1", "memory": "134Mi"}}
    big = pod_spec(build({"reproducer": {"baseSizeBytes": 1 << 30, "iterations": 10000,
                                         "appendSizeBytes": 65536}}))["initContainers"][0]
    assert big["resources"]["limits"]["memory"] == "1715Mi"
    predict_only = pod_spec(build({"reproducer": {"enabled": False}}))["initContainers"][0]
    assert predict_only["resources"]["limits"]["memory"] == "66Mi"
    # The mitigation and its restore keep their own class, not the agent's.
    for daemonset in (mitigation_daemonset(chosen), restore_daemonset(chosen)):
        assert daemonset["spec"]["template"]["spec"]["priorityClassName"] == (
            "system-node-critical")


def test_disk_headroom_reaches_the_agent() -> None:
    command = pod_spec(build({"diskHeadroom": {"imagefsAvailablePercent": 20,
                                               "minFreeBytes": 1 << 30}}))[
        "initContainers"][0]["command"]
    assert command[command.index("--imagefs-threshold") + 1] == "20"
    assert command[command.index("--nodefs-threshold") + 1] == "10"
    assert command[command.index("--headroom-margin") + 1] == "5"
    assert command[command.index("--min-free") + 1] == str(1 << 30)


def test_discovery_mounts_the_host_root_with_propagation() -> None:
    spec = pod_spec(build({"discoverFilesystems": True}))
    mounts = {m["mountPath"]: m for m in spec["initContainers"][0]["volumeMounts"]}
    assert mounts["/host"]["mountPropagation"] == "HostToContainer"
    assert mounts["/host/sys"]["readOnly"] is True
    assert "--discover" in spec["initContainers"][0]["command"]


def test_disabled_reproducer_predicts_only() -> None:
    command = pod_spec(build({"reproducer": {"enabled": False}}))["initContainers"][0]["command"]
    assert "--no-repro" in command


def test_standby_has_no_check_container_and_no_host_mounts() -> None:
    ds = build(template=STANDBY)
    assert "initContainers" not in pod_spec(ds) and "volumes" not in pod_spec(ds)
    assert ds["spec"]["template"]["metadata"]["labels"][names.TEMPLATE_LABEL] == STANDBY


def test_max_concurrent_drives_the_rolling_update() -> None:
    assert build()["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%", "maxSurge": 0}}
    assert build({"maxConcurrent": 3})["spec"]["updateStrategy"]["rollingUpdate"][
        "maxUnavailable"] == 3


def test_selection_owner_and_labels() -> None:
    ds = build({"nodeSelector": {"pool": "db"},
                "tolerations": [{"key": "k", "operator": "Equal", "value": "v"}]})
    assert pod_spec(ds)["nodeSelector"] == {"pool": "db"}
    assert pod_spec(ds)["tolerations"] == [{"key": "k", "operator": "Equal", "value": "v"}]
    (owner,) = ds["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "ThpCheck", "weekly", "uid-1", True)
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert ds["metadata"]["namespace"] == "thp-checker"


def test_the_template_hash_follows_the_spec() -> None:
    digest = build()["metadata"]["annotations"][names.TEMPLATE_HASH_ANNOTATION]
    assert digest == build()["metadata"]["annotations"][names.TEMPLATE_HASH_ANNOTATION]
    assert digest != build({"paths": ["/x"]})["metadata"]["annotations"][
        names.TEMPLATE_HASH_ANNOTATION]


def observed(ds: dict[str, Any], *, desired: int = 3, ready: int = 3) -> Any:
    body = {**ds, "metadata": {**ds["metadata"], "generation": 1},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": desired,
                       "updatedNumberScheduled": ready, "numberReady": ready,
                       "numberAvailable": ready}}
    return daemonset_view(body)


def test_rollout_creates_on_standby_then_starts_a_run_once_standby_is_up() -> None:
    spec = parse_spec({})
    plan = plan_rollout(spec, CHECK_REF, CONFIG, None, NOW, 30)
    assert plan.step is Step.CREATE and plan.body is not None
    standby = plan.body
    assert plan_rollout(spec, CHECK_REF, CONFIG, observed(standby, ready=1), NOW, 3).step is (
        Step.NONE)
    start = plan_rollout(spec, CHECK_REF, CONFIG, observed(standby), NOW, 3)
    assert start.step is Step.START_RUN and start.starts_run and start.run == run_token(NOW)
    assert start.body is not None
    assert start.body["spec"]["template"]["metadata"]["annotations"][
        names.RUN_ANNOTATION] == run_token(NOW)


def test_rollout_reruns_after_the_interval_and_updates_on_spec_change() -> None:
    spec = parse_spec({"schedule": {"interval": "24h"}})
    running = agent_daemonset(spec, CHECK_REF, CONFIG, template=CHECK, run=run_token(NOW))
    view = observed(running)
    assert plan_rollout(spec, CHECK_REF, CONFIG, view, NOW + timedelta(hours=23), 3).step is (
        Step.NONE)
    rerun = plan_rollout(spec, CHECK_REF, CONFIG, view, NOW + timedelta(hours=24), 3)
    assert rerun.step is Step.RERUN and rerun.run == run_token(NOW + timedelta(hours=24))
    changed = parse_spec({"schedule": {"interval": "24h"}, "paths": ["/srv"]})
    update = plan_rollout(changed, CHECK_REF, CONFIG, view, NOW, 3)
    assert update.step is Step.UPDATE and update.run == run_token(NOW)
    paused = parse_spec({"schedule": {"interval": "24h"}, "paused": True})
    assert plan_rollout(paused, CHECK_REF, CONFIG, view, NOW + timedelta(days=9), 3).step is (
        Step.NONE)


def test_the_mitigation_daemonset_selects_labelled_nodes() -> None:
    ds = mitigation_daemonset(CONFIG)
    spec = ds["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["nodeSelector"] == {names.MITIGATE_LABEL: "true"}
    assert spec["automountServiceAccountToken"] is False
    assert container["readinessProbe"]["exec"]["command"][:3] == ["thpcheck", "mitigate",
                                                                  "--verify"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/host/sys/kernel/mm/transparent_hugepage",
                      "/host/var/lib/thpcheck-mitigation", "/run/thpcheck"}
    # Ready only once this pod's own process holds the node (its readiness file).
    command, probe = container["command"], container["readinessProbe"]["exec"]["command"]
    assert command[command.index("--ready-file") + 1] == "/run/thpcheck/holding"
    assert probe[probe.index("--ready-file") + 1] == "/run/thpcheck/holding"
    # A rolling update starts the new pod before the old one stops (an upgrade never lets
    # khugepaged run).
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": "10%",
                                                             "maxUnavailable": 0}


def test_when_every_node_may_run_at_once_there_is_no_standby_step() -> None:
    spec = parse_spec({"maxConcurrent": "100%"})
    plan = plan_rollout(spec, CHECK_REF, CONFIG, None, NOW, 5000)
    assert plan.step is Step.CREATE and plan.starts_run and plan.body is not None
    assert plan.body["spec"]["template"]["metadata"]["labels"][names.TEMPLATE_LABEL] == CHECK
    few = plan_rollout(parse_spec({"maxConcurrent": 5}), CHECK_REF, CONFIG, None, NOW, 5)
    assert few.starts_run
    assert not plan_rollout(parse_spec({}), CHECK_REF, CONFIG, None, NOW, 0).starts_run


def test_no_daemonset_selects_an_architecture() -> None:
    """Mixed amd64/arm64 clusters: the image is one multi-arch name (devtools/images/build.py --arch
    amd64,arm64 --archive), so neither DaemonSet pins nodes to an architecture."""
    for ds in (build(), build(template=STANDBY), mitigation_daemonset(CONFIG)):
        text = repr(ds)
        assert "kubernetes.io/arch" not in text and "arm64" not in text and "amd64" not in text
        assert {c["image"] for c in pod_spec(ds)["containers"]} == {CONFIG.image}


def _privileged_paths(obj: Any, path: str = "") -> list[str]:
    """Every place in ``obj`` that grants privilege: ``privileged`` or
    ``allowPrivilegeEscalation`` not false, an added capability, a host namespace."""
    found: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{path}.{key}"
            escalates = key in ("privileged", "allowPrivilegeEscalation") and value is not False
            if escalates or (key in ("hostPID", "hostIPC", "hostNetwork") and value):
                found.append(f"{here}={value}")
            elif key == "capabilities" and value.get("add"):
                found.append(f"{here}.add={value['add']}")
            found += _privileged_paths(value, here)
    elif isinstance(obj, list):
        for index, item in enumerate(obj):
            found += _privileged_paths(item, f"{path}[{index}]")
    return found


@pytest.mark.parametrize("builder", [mitigation_daemonset, restore_daemonset],
                         ids=["mitigation", "restore"])
def test_no_mitigation_daemonset_is_privileged(builder: Any) -> None:
    """Root with nothing else, whatever the configuration: every capability dropped, no
    escalation, RuntimeDefault seccomp, a read-only root filesystem, and exactly two
    read-write host paths (the THP sysfs directory and the state directory)."""
    for config in (CONFIG, WorkloadConfig(namespace="n", image="i", pull_secrets=("s",),
                                          mitigation_state_dir="/srv/mitigation")):
        ds = builder(config)
        assert not _privileged_paths(ds), _privileged_paths(ds)
        spec = ds["spec"]["template"]["spec"]
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = spec["containers"]
        assert "initContainers" not in spec
        assert container["securityContext"] == {
            "runAsUser": 0, "runAsNonRoot": False, "privileged": False,
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
        host_paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
        assert host_paths == {"/sys/kernel/mm/transparent_hugepage",
                              config.mitigation_state_dir}
        # Besides: at most the pod's own readiness file, in memory.
        others = [v for v in spec["volumes"] if "hostPath" not in v]
        assert others in ([], [{"name": "run", "emptyDir": {"medium": "Memory",
                                                            "sizeLimit": "1Mi"}}]), others
        assert all(not m.get("readOnly") for m in container["volumeMounts"])
