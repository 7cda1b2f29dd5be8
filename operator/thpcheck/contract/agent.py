"""The agent DaemonSet of a ThpCheck: a pure builder the unit tests call directly.

Two pod templates: *standby* (an idle container only) and *check* (the ``check`` init
container runs the agent, then the idle container keeps the pod alive). A new DaemonSet
starts on standby so that the first run rolls through the nodes like every later one,
``spec.maxConcurrent`` at a time (``updateStrategy.rollingUpdate.maxUnavailable``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from thpcheck.contract import names
from thpcheck.contract.checkspec import DEFAULT_PATHS, CheckSpec
from thpcheck.contract.refs import CheckRef, hash_of
from thpcheck.model.paths import MITIGATION_STATE_DIR

STANDBY = "standby"
CHECK = "check"
HOST_ROOT = "/host"
READ_ONLY_HOST_PATHS = ("/proc", "/sys", "/boot", "/lib/modules", "/etc/os-release")
IDLE_COMMAND = ("/bin/sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait")
TERMINATION_LOG = "/dev/termination-log"
IDLE_USER = 65532  # the image's unprivileged user
RESERVATIONS = "/run/thpcheck"  # host: the disk reservation registry (host.space)
MiB = 1 << 20
# Sized from measurements (docs/benchmarks.md, benchmarks/agent_memory.py): a default run
# that writes its whole base and 200 appends peaks at 28.4 MiB RSS and 78.8 MiB in its memory
# cgroup (RSS charged to it plus the page cache of the 67 MiB it writes), 17.8-18.1 MiB RSS in
# the kernel-matrix guests. The agent's own part, rounded up for other distributions' Python:
AGENT_RSS_BYTES = 48 * MiB
# On top of it, the page cache of the run's own data file is charged to the pod's memory
# cgroup: one path at a time (each file is removed before the next path), plus the 2 MiB
# huge page a collapse allocates, plus slack so the cgroup never reclaims (reclaim would
# write the appended data back and hide a loss). Default run: 134 MiB, 1.7x the measured peak.
PAGE_CACHE_SLACK = 18 * MiB
AGENT_CPU_REQUEST = "100m"
AGENT_CPU_LIMIT = "1"


@dataclass(frozen=True)
class WorkloadConfig:
    """Operator settings that shape the pods it creates (from the operator's environment)."""

    namespace: str
    image: str
    pull_policy: str = "IfNotPresent"
    priority_class: str = ""  # the agent's; the chart's class never preempts (value 0)
    mitigation_priority_class: str = "system-node-critical"
    pull_secrets: tuple[str, ...] = ()
    mitigation_state_dir: str = MITIGATION_STATE_DIR
    extra_labels: Mapping[str, str] = field(default_factory=dict)


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
    room = spec.disk_headroom
    command += ["--base-size", str(spec.reproducer.base_size_bytes),
                "--append-size", str(spec.reproducer.append_size_bytes),
                "--iterations", str(spec.reproducer.iterations),
                "--nodefs-threshold", str(room.nodefs_percent),
                "--imagefs-threshold", str(room.imagefs_percent),
                "--headroom-margin", str(room.margin_percent),
                "--min-free", str(room.min_free_bytes), *spec.paths]
    return command


def agent_memory_bytes(spec: CheckSpec) -> int:
    """The check container's memory request and limit: the agent's RSS plus the page cache
    one path's run writes, rounded up to a MiB."""
    repro = spec.reproducer
    run = (repro.base_size_bytes + repro.iterations * repro.append_size_bytes
           if repro.enabled else 0)
    total = AGENT_RSS_BYTES + run + PAGE_CACHE_SLACK
    return -(-total // MiB) * MiB


def agent_resources(spec: CheckSpec) -> dict[str, Any]:
    """Requests equal to limits for memory (never over its request, so never the kubelet's
    first eviction candidate, and never more than it was given); CPU limited to one core."""
    memory = f"{agent_memory_bytes(spec) // MiB}Mi"
    return {"requests": {"cpu": AGENT_CPU_REQUEST, "memory": memory},
            "limits": {"cpu": AGENT_CPU_LIMIT, "memory": memory}}


def scratch_volume_type(path: str) -> str:
    """``Directory`` for paths a user chose: a missing one is an error result for its node,
    never a directory the kubelet creates; the default path is created (``DirectoryOrCreate``)
    so that a fresh install works everywhere."""
    return "DirectoryOrCreate" if path in DEFAULT_PATHS else "Directory"


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
                            "hostPath": {"path": path, "type": scratch_volume_type(path)}})
            mounts.append({"name": name, "mountPath": HOST_ROOT + path})
        if spec.reproducer.enabled:
            volumes.append({"name": "reservations",
                            "hostPath": {"path": RESERVATIONS, "type": "DirectoryOrCreate"}})
            mounts.append({"name": "reservations", "mountPath": HOST_ROOT + RESERVATIONS})
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
        "resources": agent_resources(spec),
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
        "tolerations": [dict(t) for t in spec.tolerations],
        "terminationGracePeriodSeconds": 60,
        "containers": [_idle_container(config)],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if config.priority_class:
        pod_spec["priorityClassName"] = config.priority_class
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
