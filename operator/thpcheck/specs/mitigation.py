"""The cluster-wide mitigation DaemonSet: stops khugepaged on nodes labelled for it.

Its pod runs ``thpcheck mitigate``: record the current ``scan_sleep_millisecs`` in a state
file on the host (once), write 4294967295, read it back; the readiness probe (``thpcheck
mitigate --verify``) is Ready only while the value is in effect, and that readiness is what
the operator reports as ``mitigated``. SIGTERM (label removed, DaemonSet deleted) restores
the recorded value.
"""

from __future__ import annotations

from typing import Any

from thpcheck.specs import names
from thpcheck.specs.agent import HOST_ROOT, WorkloadConfig, hash_of

THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"
STATE_FILE_NAME = "mitigation.state"


def state_file(config: WorkloadConfig) -> str:
    """The state file's path inside the pod."""
    return f"{HOST_ROOT}{config.mitigation_state_dir}/{STATE_FILE_NAME}"


def mitigation_daemonset(config: WorkloadConfig) -> dict[str, Any]:
    """The mitigation DaemonSet (privileged: sysfs is read-only in unprivileged pods)."""
    common = ["--host-root", HOST_ROOT, "--state-file", state_file(config)]
    labels = {names.APP_NAME: names.APP, names.COMPONENT: "mitigator",
              names.POD_ROLE_LABEL: names.MITIGATION_ROLE}
    container = {
        "name": "mitigate",
        "image": config.image,
        "imagePullPolicy": config.pull_policy,
        # info level: "stopped khugepaged (original N)" and "restored N" are the audit trail
        "command": ["thpcheck", "mitigate", "--log-format", "json", "--log-level", "info",
                    *common],
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "securityContext": {"privileged": True, "runAsUser": 0,
                            "readOnlyRootFilesystem": True},
        "readinessProbe": {
            "exec": {"command": ["thpcheck", "mitigate", "--verify", *common]},
            "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 1,
        },
        "resources": {"requests": {"cpu": "1m", "memory": "32Mi"},
                      "limits": {"cpu": "100m", "memory": "64Mi"}},
        "volumeMounts": [
            {"name": "thp", "mountPath": HOST_ROOT + THP_SYSFS},
            {"name": "state", "mountPath": HOST_ROOT + config.mitigation_state_dir},
        ],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "priorityClassName": config.mitigation_priority_class,
        "nodeSelector": {names.MITIGATE_LABEL: "true"},
        "tolerations": [{"operator": "Exists"}],
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": [
            {"name": "thp", "hostPath": {"path": THP_SYSFS, "type": "Directory"}},
            {"name": "state", "hostPath": {"path": config.mitigation_state_dir,
                                           "type": "DirectoryOrCreate"}},
        ],
    }
    if config.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in config.pull_secrets]
    spec = {
        "selector": {"matchLabels": {names.POD_ROLE_LABEL: names.MITIGATION_ROLE}},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
        "template": {"metadata": {"labels": {**config.extra_labels, **labels}}, "spec": pod_spec},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": names.MITIGATION_DAEMONSET,
            "namespace": config.namespace,
            "labels": {**config.extra_labels, **labels, names.MANAGED_BY: names.MANAGER},
            "annotations": {names.TEMPLATE_HASH_ANNOTATION: hash_of(spec)},
        },
        "spec": spec,
    }
