"""The agent DaemonSet of a ThpCheck: a pure builder the unit tests call directly.

Two pod templates: *standby* (an idle container only) and *check* (the ``check`` init
container runs the agent, then the idle container keeps the pod alive). A new DaemonSet
starts on standby so that the first run rolls through the nodes like every later one,
``spec.maxConcurrent`` at a time (``updateStrategy.rollingUpdate.maxUnavailable``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from thpcheck.specs import names
from thpcheck.specs.checkspec import CheckSpec

STANDBY = "standby"
CHECK = "check"
HOST_ROOT = "/host"
READ_ONLY_HOST_PATHS = ("/proc", "/sys", "/boot", "/lib/modules", "/etc/os-release")
IDLE_COMMAND = ("/bin/sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait")
TERMINATION_LOG = "/dev/termination-log"
IDLE_USER = 65532  # the image's unprivileged user


@dataclass(frozen=True)
class WorkloadConfig:
    """Operator settings that shape the pods it creates (from the operator's environment)."""

    namespace: str
    image: str
    pull_policy: str = "IfNotPresent"
    priority_class: str = "system-node-critical"
    pull_secrets: tuple[str, ...] = ()
    mitigation_state_dir: str = "/var/lib/thpcheck"
    extra_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckRef:
    """The ThpCheck an object belongs to (for names, labels and ownerReferences)."""

    name: str
    uid: str

    def owner_reference(self, controller: bool = True) -> dict[str, Any]:
        return {"apiVersion": names.API_VERSION, "kind": names.CHECK_KIND, "name": self.name,
                "uid": self.uid, "controller": controller, "blockOwnerDeletion": False}


def hash_of(obj: Any) -> str:
    """A stable digest of a JSON-able object (dict key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def restricted_security_context() -> dict[str, Any]:
    """Root (to write scratch dirs and read host files) but nothing else."""
    return {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _volume_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index}"


def agent_command(spec: CheckSpec) -> list[str]:
    """The ``thpcheck check`` command line of the init container."""
    command = ["thpcheck", "check", "--json", "--exit-zero", "--result-file", TERMINATION_LOG,
               "--log-format", "json", "--host-root", HOST_ROOT]
    if not spec.reproducer.enabled:
        command.append("--no-repro")
    if spec.discover_filesystems:
        command.append("--discover")
    command += ["--base-size", str(spec.reproducer.base_size_bytes),
                "--append-size", str(spec.reproducer.append_size_bytes),
                "--iterations", str(spec.reproducer.iterations), *spec.paths]
    return command


def _host_mounts(spec: CheckSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts: scratch dirs read-write, the host's kernel views read-only."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec.discover_filesystems:
        volumes.append({"name": "host-root", "hostPath": {"path": "/", "type": "Directory"}})
        mounts.append({"name": "host-root", "mountPath": HOST_ROOT,
                       "mountPropagation": "HostToContainer"})
    else:
        for index, path in enumerate(spec.paths):
            name = _volume_name("scratch", index)
            volumes.append({"name": name,
                            "hostPath": {"path": path, "type": "DirectoryOrCreate"}})
            mounts.append({"name": name, "mountPath": HOST_ROOT + path})
    for index, path in enumerate(READ_ONLY_HOST_PATHS):
        name = _volume_name("host-ro", index)
        volumes.append({"name": name, "hostPath": {"path": path}})
        mounts.append({"name": name, "mountPath": HOST_ROOT + path, "readOnly": True})
    volumes.append({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    return volumes, mounts


def _idle_container(config: WorkloadConfig) -> dict[str, Any]:
    """Keeps the pod alive after the check; needs nothing, so it is not even root."""
    context = {**restricted_security_context(), "runAsUser": IDLE_USER, "runAsGroup": IDLE_USER,
               "runAsNonRoot": True}
    return {
        "name": "idle",
        "image": config.image,
        "imagePullPolicy": config.pull_policy,
        "command": list(IDLE_COMMAND),
        "securityContext": context,
        "resources": {"requests": {"cpu": "1m", "memory": "8Mi"},
                      "limits": {"cpu": "10m", "memory": "16Mi"}},
    }


def _check_container(spec: CheckSpec, config: WorkloadConfig,
                     mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "check",
        "image": config.image,
        "imagePullPolicy": config.pull_policy,
        "command": agent_command(spec),
        "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "securityContext": restricted_security_context(),
        # The base file lives in page cache charged to the pod: no memory limit, so the
        # reproducer is not distorted by cgroup reclaim.
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


def pod_labels(check: CheckRef, template: str) -> dict[str, str]:
    return {
        names.APP_NAME: names.APP,
        names.COMPONENT: "checker",
        names.POD_ROLE_LABEL: names.AGENT_ROLE,
        names.CHECK_LABEL: names.label_value(check.name),
        names.TEMPLATE_LABEL: template,
    }


def selector_labels(check: CheckRef) -> dict[str, str]:
    """Immutable DaemonSet selector: the check, and the agent role."""
    return {names.POD_ROLE_LABEL: names.AGENT_ROLE,
            names.CHECK_LABEL: names.label_value(check.name)}


def pod_template(spec: CheckSpec, check: CheckRef, config: WorkloadConfig, template: str,
                 run: str) -> dict[str, Any]:
    """The pod template for ``standby`` or ``check``; ``run`` identifies the run."""
    volumes, mounts = _host_mounts(spec)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "priorityClassName": config.priority_class,
        "tolerations": [dict(t) for t in spec.tolerations],
        "terminationGracePeriodSeconds": 60,
        "containers": [_idle_container(config)],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if config.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in config.pull_secrets]
    if template == CHECK:
        pod_spec["initContainers"] = [_check_container(spec, config, mounts)]
        pod_spec["volumes"] = volumes
    return {
        "metadata": {
            "labels": {**config.extra_labels, **pod_labels(check, template)},
            "annotations": {names.CHECK_NAME_ANNOTATION: check.name,
                            names.RUN_ANNOTATION: run},
        },
        "spec": pod_spec,
    }


def agent_daemonset(spec: CheckSpec, check: CheckRef, config: WorkloadConfig, *,
                    template: str, run: str,
                    max_unavailable: int | str | None = None) -> dict[str, Any]:
    """The whole agent DaemonSet, annotated with the hash of its spec. ``max_unavailable``
    overrides ``spec.maxConcurrent`` (the rollout widens it past stuck nodes)."""
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": names.agent_daemonset_name(check.name),
            "namespace": config.namespace,
            "labels": {**config.extra_labels, names.APP_NAME: names.APP,
                       names.COMPONENT: "checker", names.MANAGED_BY: names.MANAGER,
                       names.CHECK_LABEL: names.label_value(check.name)},
            "annotations": {names.CHECK_NAME_ANNOTATION: check.name},
            "ownerReferences": [check.owner_reference()],
        },
        "spec": {
            "selector": {"matchLabels": selector_labels(check)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {
                "maxUnavailable": (spec.max_concurrent if max_unavailable is None
                                   else max_unavailable), "maxSurge": 0}},
            "revisionHistoryLimit": 3,
            "template": pod_template(spec, check, config, template, run),
        },
    }
    body["metadata"]["annotations"][names.TEMPLATE_HASH_ANNOTATION] = hash_of(body["spec"])
    return body
