"""The two cluster-wide mitigation DaemonSets' bodies (when each should exist: planning.mitigation).

``thpcheck-mitigation`` (nodeSelector ``thpcheck.io/mitigate=true``) stops khugepaged: its
unprivileged pod runs ``thpcheck mitigate`` (record the current ``scan_sleep_millisecs`` in a
state file on the host, once; write 4294967295; hold it), and its readiness probe
(``thpcheck mitigate --verify``) is Ready only while the value is in effect and the pod's own
process holds the node (its readiness file); that readiness is
what the operator reports as ``mitigated``. A stopping pod restores the recorded value only
if no other mitigation pod holds the node (``host/mitigation.py``), and a rolling update
starts the new pod before the old one stops (``maxSurge``, ``maxUnavailable: 0``): an upgrade
never lets khugepaged run.

``thpcheck-mitigation-restore`` runs on every Linux node *not* labelled for mitigation
(node affinity ``thpcheck.io/mitigate NotIn [true]``): its pod restores the recorded value
where one is left and no mitigation pod holds the node (a mitigation pod killed with SIGKILL,
then unlabelled), then idles in a shell; it is Ready once no record is left. The nodes need
no API credentials: the label is the desired state and the kubelet delivers it.

It exists while the mitigation DaemonSet does, and afterwards until every one of its pods is
Ready on every node it should run on: that is the confirmation that no record is left.

Neither pod is privileged (``agent.restricted_security_context``, as the agent): root, every
capability dropped, no privilege escalation, the runtime's default seccomp profile, a
read-only root filesystem. Its only host access is two read-write hostPath volumes: the THP
sysfs directory (the container's own ``/sys`` stays read-only, but a bind mount of the
directory is writable: sysfs checks the file's mode, 0644 root, not a capability) and the
state directory (root's: the mitigation's files are its owner's, no capability needed).
"""

from __future__ import annotations

from typing import Any

from thpcheck.contract import names
from thpcheck.contract.agent import HOST_ROOT, WorkloadConfig, restricted_security_context
from thpcheck.contract.refs import hash_of
from thpcheck.contract.views import NodeView

THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"
STATE_FILE_NAME = "mitigation.state"
# The mitigation pod's own readiness file (an emptyDir, not the host): written once its process
# holds the node, so a new pod is not Ready merely because the old one keeps the value stopped.
READY_DIR = "/run/thpcheck"
READY_FILE = f"{READY_DIR}/holding"
OS_LABEL = "kubernetes.io/os"
EXIT_HELD = 75  # thpcheck mitigate --restore: a mitigation holds the node (cli/mitigate.py)
# The restore pod: restore (retrying while a stopping mitigation pod still holds the node),
# then idle; a failed restore exits, so the kubelet retries it with backoff.
RESTORE_SCRIPT = (
    'while :; do thpcheck mitigate --restore --log-format json --log-level info '
    '--host-root {root} --state-file {state}; rc=$?; [ "$rc" -eq {held} ] || break; '
    'sleep 5; done; [ "$rc" -eq 0 ] || exit "$rc"; '
    "trap 'exit 0' TERM; sleep infinity & wait")


def state_file(config: WorkloadConfig) -> str:
    """The state file's path inside the pod."""
    return f"{HOST_ROOT}{config.mitigation_state_dir}/{STATE_FILE_NAME}"


def _host_volumes(config: WorkloadConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    mounts = [{"name": "thp", "mountPath": HOST_ROOT + THP_SYSFS},
              {"name": "state", "mountPath": HOST_ROOT + config.mitigation_state_dir}]
    volumes = [{"name": "thp", "hostPath": {"path": THP_SYSFS, "type": "Directory"}},
               {"name": "state", "hostPath": {"path": config.mitigation_state_dir,
                                              "type": "DirectoryOrCreate"}}]
    return mounts, volumes


def _daemonset(config: WorkloadConfig, name: str, selector: dict[str, str],
               labels: dict[str, str], pod_spec: dict[str, Any],
               strategy: dict[str, Any]) -> dict[str, Any]:
    if config.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in config.pull_secrets]
    spec = {
        "selector": {"matchLabels": selector},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": strategy},
        "template": {"metadata": {"labels": {**config.extra_labels, **labels}}, "spec": pod_spec},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": name,
            "namespace": config.namespace,
            "labels": {**config.extra_labels, **labels, names.MANAGED_BY: names.MANAGER},
            "annotations": {names.TEMPLATE_HASH_ANNOTATION: hash_of(spec)},
        },
        "spec": spec,
    }


def _pod_spec(config: WorkloadConfig, container: dict[str, Any], volumes: list[dict[str, Any]],
              grace: int) -> dict[str, Any]:
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "priorityClassName": config.mitigation_priority_class,
        "tolerations": [{"operator": "Exists"}],
        "terminationGracePeriodSeconds": grace,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }


def mitigation_daemonset(config: WorkloadConfig) -> dict[str, Any]:
    """The mitigation DaemonSet (unprivileged: see the module)."""
    common = ["--host-root", HOST_ROOT, "--state-file", state_file(config),
              "--ready-file", READY_FILE]
    labels = {names.APP_NAME: names.APP, names.COMPONENT: "mitigator",
              names.POD_ROLE_LABEL: names.MITIGATION_ROLE}
    mounts, volumes = _host_volumes(config)
    container = {
        "name": "mitigate",
        "image": config.image,
        "imagePullPolicy": config.pull_policy,
        # info level: "stopped khugepaged (original N)" and "restored N" are the audit trail
        "command": ["thpcheck", "mitigate", "--log-format", "json", "--log-level", "info",
                    *common],
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "securityContext": restricted_security_context(),
        "readinessProbe": {
            "exec": {"command": ["thpcheck", "mitigate", "--verify", *common]},
            "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 1,
        },
        "resources": {"requests": {"cpu": "1m", "memory": "32Mi"},
                      "limits": {"cpu": "100m", "memory": "64Mi"}},
        "volumeMounts": [*mounts, {"name": "run", "mountPath": READY_DIR}],
    }
    volumes.append({"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
    pod_spec = _pod_spec(config, container, volumes, grace=30)
    pod_spec["nodeSelector"] = {names.MITIGATE_LABEL: "true"}
    # The new pod holds the node before the old one stops: an upgrade never lets khugepaged
    # run (the old pod sees the new one holding and leaves the value stopped).
    return _daemonset(config, names.MITIGATION_DAEMONSET,
                      {names.POD_ROLE_LABEL: names.MITIGATION_ROLE}, labels, pod_spec,
                      {"maxSurge": "10%", "maxUnavailable": 0})


def restore_daemonset(config: WorkloadConfig) -> dict[str, Any]:
    """The restore DaemonSet: every Linux node not labelled for mitigation."""
    state = state_file(config)
    selector = {names.APP_NAME: names.APP, names.COMPONENT: names.RESTORE_COMPONENT}
    mounts, volumes = _host_volumes(config)
    container = {
        "name": "restore",
        "image": config.image,
        "imagePullPolicy": config.pull_policy,
        "command": ["/bin/sh", "-c", RESTORE_SCRIPT.format(root=HOST_ROOT, state=state,
                                                           held=EXIT_HELD)],
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "securityContext": restricted_security_context(),
        # Ready once no record is left on the node (restored and read back, or none made).
        "readinessProbe": {"exec": {"command": ["test", "!", "-e", state]},
                           "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 1},
        "resources": {"requests": {"cpu": "1m", "memory": "8Mi"},
                      "limits": {"cpu": "100m", "memory": "64Mi"}},
        "volumeMounts": mounts,
    }
    pod_spec = _pod_spec(config, container, volumes, grace=5)
    pod_spec["nodeSelector"] = {OS_LABEL: "linux"}
    pod_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": names.MITIGATE_LABEL, "operator": "NotIn", "values": ["true"]}]}]}}}
    return _daemonset(config, names.RESTORE_DAEMONSET, selector, selector, pod_spec,
                      {"maxUnavailable": "10%"})


def runs_restore(node: NodeView) -> bool:
    """The restore DaemonSet should run on ``node``: Linux, not labelled for mitigation."""
    return node.labels.get(OS_LABEL) == "linux" and node.labels.get(names.MITIGATE_LABEL) != "true"


