"""The operator's configuration: one frozen object, read from the environment once.

The Helm chart sets these variables; defaults suit a plain ``thpcheck operator`` run. A bad
value fails at start-up with the variable's name, not later in a handler.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from thpcheck import __version__
from thpcheck.model.paths import MITIGATION_STATE_DIR
from thpcheck.specs.agent import WorkloadConfig
from thpcheck.specs.quantities import IntOrPercent, resolve
from thpcheck.specs.remediation import ClusterLimits

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_NAMESPACE = "thp-checker"
DEFAULT_IMAGE = f"ghcr.io/thp-checker/thp-checker:{__version__}"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class SettingsError(ValueError):
    """An environment variable has a value the operator cannot use."""


@dataclass(frozen=True)
class Settings:
    """Everything configurable about the operator (env var in brackets)."""

    namespace: str  # THPCHECK_NAMESPACE: where the agent and mitigation DaemonSets live
    agent_image: str = DEFAULT_IMAGE  # THPCHECK_AGENT_IMAGE
    pull_policy: str = "IfNotPresent"  # THPCHECK_AGENT_PULL_POLICY
    pull_secrets: tuple[str, ...] = ()  # THPCHECK_AGENT_PULL_SECRETS (comma-separated)
    # THPCHECK_PRIORITY_CLASS: the agent pods' class. Empty: none (the cluster's default);
    # the chart creates one with value 0 and preemptionPolicy Never, so a check never
    # preempts a workload.
    priority_class: str = ""
    # THPCHECK_MITIGATION_PRIORITY_CLASS: the mitigation pods' class (protection matters more
    # than the room they take: tiny requests).
    mitigation_priority_class: str = "system-node-critical"
    mitigation_state_dir: str = MITIGATION_STATE_DIR  # THPCHECK_MITIGATION_STATE_DIR
    metrics_port: int = 8080  # THPCHECK_METRICS_PORT (0 disables)
    health_port: int = 8081  # THPCHECK_HEALTH_PORT (kopf liveness, /healthz; 0 disables)
    status_interval: float = 5.0  # THPCHECK_STATUS_INTERVAL: longest gap between reconciles
    debounce: float = 1.0  # THPCHECK_DEBOUNCE: shortest gap (coalesces bursts of events)
    empty_result_grace: float = 30.0  # THPCHECK_EMPTY_RESULT_GRACE
    api_workers: int = 16  # THPCHECK_API_WORKERS: concurrent API calls
    watch_server_timeout: float = 300.0  # THPCHECK_WATCH_SERVER_TIMEOUT
    watch_client_timeout: float = 330.0  # THPCHECK_WATCH_CLIENT_TIMEOUT
    # THPCHECK_CLEANUP_BACKOFF_MAX: longest wait between two attempts of a deleted check's
    # clean-up (it never gives up: the finalizer stays until every mark is gone)
    cleanup_backoff_max: float = 300.0
    leader_election: bool = False  # THPCHECK_LEADER_ELECTION: act only while holding a Lease
    lease_name: str = "thpcheck-operator"  # THPCHECK_LEASE_NAME (in THPCHECK_NAMESPACE)
    lease_duration: float = 15.0  # THPCHECK_LEASE_DURATION: seconds before a standby takes over
    # THPCHECK_CLUSTER_MAX_CORDONED: nodes cordoned by all ThpChecks together (or % of nodes)
    cluster_max_cordoned: IntOrPercent = 1
    # THPCHECK_MAX_UNHEALTHY: no new cordon while more of a check's selected nodes than this
    # are NotReady or cordoned by someone else
    max_unhealthy: IntOrPercent = "10%"

    def workload(self) -> WorkloadConfig:
        return WorkloadConfig(namespace=self.namespace, image=self.agent_image,
                              pull_policy=self.pull_policy, priority_class=self.priority_class,
                              mitigation_priority_class=self.mitigation_priority_class,
                              pull_secrets=self.pull_secrets,
                              mitigation_state_dir=self.mitigation_state_dir)

    def limits(self, claimed: frozenset[str] = frozenset()) -> ClusterLimits:
        return ClusterLimits(self.cluster_max_cordoned, self.max_unhealthy, claimed)


def _own_namespace() -> str:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def _int_or_percent(env: Mapping[str, str], name: str, default: IntOrPercent) -> IntOrPercent:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    value: IntOrPercent = int(raw) if raw.isdigit() else raw
    try:
        resolve(value, 100, round_up=False)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} must be a whole number or a percentage such as "
                            "10%") from None
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = _number(env, name, default, 0)
    if not value.is_integer() or value > 65535:
        raise SettingsError(f"{name}={env.get(name)!r} is not a port (0-65535)")
    return int(value)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise SettingsError(f"{name}={env.get(name)!r} must be true or false")
    return raw == "true"


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    pull_policy = env.get("THPCHECK_AGENT_PULL_POLICY") or "IfNotPresent"
    if pull_policy not in PULL_POLICIES:
        raise SettingsError(f"THPCHECK_AGENT_PULL_POLICY={pull_policy!r} must be one of "
                            f"{', '.join(PULL_POLICIES)}")
    state_dir = env.get("THPCHECK_MITIGATION_STATE_DIR") or MITIGATION_STATE_DIR
    if not state_dir.startswith("/") or state_dir.rstrip("/") == "":
        raise SettingsError(f"THPCHECK_MITIGATION_STATE_DIR={state_dir!r} must be an absolute "
                            "directory other than /")
    return Settings(
        namespace=env.get("THPCHECK_NAMESPACE") or _own_namespace(),
        agent_image=env.get("THPCHECK_AGENT_IMAGE") or DEFAULT_IMAGE,
        pull_policy=pull_policy,
        pull_secrets=tuple(s.strip() for s in env.get("THPCHECK_AGENT_PULL_SECRETS", "")
                           .split(",") if s.strip()),
        priority_class=env.get("THPCHECK_PRIORITY_CLASS", ""),
        mitigation_priority_class=env.get("THPCHECK_MITIGATION_PRIORITY_CLASS",
                                          "system-node-critical"),
        mitigation_state_dir=state_dir.rstrip("/"),
        metrics_port=_port(env, "THPCHECK_METRICS_PORT", 8080),
        health_port=_port(env, "THPCHECK_HEALTH_PORT", 8081),
        status_interval=_number(env, "THPCHECK_STATUS_INTERVAL", 5.0, 0.1),
        debounce=_number(env, "THPCHECK_DEBOUNCE", 1.0, 0.0),
        empty_result_grace=_number(env, "THPCHECK_EMPTY_RESULT_GRACE", 30.0, 0.0),
        api_workers=int(_number(env, "THPCHECK_API_WORKERS", 16, 1)),
        watch_server_timeout=_number(env, "THPCHECK_WATCH_SERVER_TIMEOUT", 300.0, 1.0),
        watch_client_timeout=_number(env, "THPCHECK_WATCH_CLIENT_TIMEOUT", 330.0, 1.0),
        cleanup_backoff_max=_number(env, "THPCHECK_CLEANUP_BACKOFF_MAX", 300.0, 1.0),
        leader_election=_flag(env, "THPCHECK_LEADER_ELECTION", False),
        lease_name=env.get("THPCHECK_LEASE_NAME") or "thpcheck-operator",
        lease_duration=_number(env, "THPCHECK_LEASE_DURATION", 15.0, 3.0),
        cluster_max_cordoned=_int_or_percent(env, "THPCHECK_CLUSTER_MAX_CORDONED", 1),
        max_unhealthy=_int_or_percent(env, "THPCHECK_MAX_UNHEALTHY", "10%"),
    )
