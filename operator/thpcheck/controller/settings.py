"""The operator's configuration: one frozen object, read from the environment once.

The Helm chart sets these variables; defaults suit a plain ``thpcheck operator`` run. A bad
value fails at start-up with the variable's name, not later in a handler.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from thpcheck import __version__
from thpcheck.contract.agent import WorkloadConfig
from thpcheck.contract.quantities import IntOrPercent, resolve
from thpcheck.model.paths import MITIGATION_STATE_DIR
from thpcheck.planning.checkplan import Knobs
from thpcheck.planning.remediation import ClusterLimits

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_NAMESPACE = "thp-checker"
DEFAULT_IMAGE = f"ghcr.io/thp-checker/thp-checker:{__version__}"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class SettingsError(ValueError):
    """An environment variable has a value the operator cannot use."""


Parser = Callable[[str, str, "Setting"], Any]  # (variable, its non-empty value, row) -> value


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: the only place a setting is described."""

    field: str  # the Settings attribute
    env: str  # the environment variable (the chart sets exactly these)
    parse: Parser  # its parser, called with a non-empty value; errors name the variable
    default: Any  # the value when the variable is unset or empty
    help: str  # one line for the docs table and ``thpcheck operator --help``
    minimum: float | None = None  # numbers: the smallest value accepted
    unit: str = ""  # numbers: shown after the default ("s")
    shown: str = ""  # the default as the docs show it, when not the value itself
    keep_empty: bool = False  # an empty value is a value (not "use the default")
    fallback: Callable[[], Any] | None = None  # computes the default at start-up instead

    def shown_default(self) -> str:
        if self.shown:
            return self.shown
        if self.default in ("", ()):
            return "none"
        if isinstance(self.default, bool):
            return f"`{str(self.default).lower()}`"
        if isinstance(self.default, float | int) and not isinstance(self.default, bool):
            return f"{self.default:g}{' ' + self.unit if self.unit else ''}"
        if isinstance(self.default, str) and not self.default.endswith("%"):
            return f"`{self.default}`"
        return str(self.default)


def _text(name: str, raw: str, row: Setting) -> str:
    return raw


def _list(name: str, raw: str, row: Setting) -> tuple[str, ...]:
    return tuple(s.strip() for s in raw.split(",") if s.strip())


def _pull_policy(name: str, raw: str, row: Setting) -> str:
    if raw not in PULL_POLICIES:
        raise SettingsError(f"{name}={raw!r} must be one of {', '.join(PULL_POLICIES)}")
    return raw


def _directory(name: str, raw: str, row: Setting) -> str:
    if not raw.startswith("/") or raw.rstrip("/") == "":
        raise SettingsError(f"{name}={raw!r} must be an absolute directory other than /")
    return raw.rstrip("/")


def _number(name: str, raw: str, row: Setting) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if row.minimum is not None and value < row.minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {row.minimum:g}")
    return value


def _count(name: str, raw: str, row: Setting) -> int:
    return int(_number(name, raw, row))


def _port(name: str, raw: str, row: Setting) -> int:
    value = _number(name, raw, row)
    if not value.is_integer() or value > 65535:
        raise SettingsError(f"{name}={raw!r} is not a port (0-65535)")
    return int(value)


def _flag(name: str, raw: str, row: Setting) -> bool:
    value = raw.strip().lower()
    if not value:
        return bool(row.default)
    if value not in ("true", "false"):
        raise SettingsError(f"{name}={raw!r} must be true or false")
    return value == "true"


def _int_or_percent(name: str, raw: str, row: Setting) -> IntOrPercent:
    text = raw.strip()
    if not text:
        return row.default  # type: ignore[no-any-return]
    value: IntOrPercent = int(text) if text.isdigit() else text
    try:
        resolve(value, 100, round_up=False)
    except ValueError:
        raise SettingsError(f"{name}={text!r} must be a whole number or a percentage such as "
                            "10%") from None
    return value


_S = "THPCHECK_"
# The settings table, in Settings' field order. A new setting: a row here and its typed field
# in Settings (tests/operator/test_crds_and_settings.py checks they agree), its line in the
# chart's one env dict ("thp-checker.operatorEnv" in templates/_helpers.tpl, with its value;
# tests/chart/test_render.py checks the rendered names are exactly these, for every value
# set), and the generated docs table (docs/operator-design.md, checked by the same unit test).
TABLE: tuple[Setting, ...] = (
    Setting("namespace", _S + "NAMESPACE", _text, None,
            "where the agent and mitigation DaemonSets live",
            shown="the service account's namespace, else `thp-checker`",
            fallback=lambda: _own_namespace()),
    Setting("agent_image", _S + "AGENT_IMAGE", _text, DEFAULT_IMAGE,
            "image of agent and mitigation pods",
            shown="`ghcr.io/thp-checker/thp-checker:<version>`"),
    Setting("pull_policy", _S + "AGENT_PULL_POLICY", _pull_policy, "IfNotPresent",
            "their `imagePullPolicy`"),
    Setting("pull_secrets", _S + "AGENT_PULL_SECRETS", _list, (),
            "comma-separated `imagePullSecrets`"),
    Setting("priority_class", _S + "PRIORITY_CLASS", _text, "",
            "the agent pods' `priorityClassName` (the chart's: value 0, "
            "`preemptionPolicy: Never`, so a check never preempts a workload)",
            keep_empty=True),
    Setting("mitigation_priority_class", _S + "MITIGATION_PRIORITY_CLASS", _text,
            "system-node-critical",
            "the mitigation and restore pods' `priorityClassName` (protection matters more "
            "than the room they take: tiny requests)", keep_empty=True),
    Setting("mitigation_state_dir", _S + "MITIGATION_STATE_DIR", _directory,
            MITIGATION_STATE_DIR, "host directory of the mitigation's state (its own)"),
    Setting("metrics_port", _S + "METRICS_PORT", _port, 8080, "metrics port; 0 disables",
            minimum=0),
    Setting("health_port", _S + "HEALTH_PORT", _port, 8081,
            "kopf liveness and readiness port (/healthz, /readyz); 0 disables", minimum=0),
    Setting("status_interval", _S + "STATUS_INTERVAL", _number, 5.0,
            "longest gap between reconciles of a check", minimum=0.1, unit="s"),
    Setting("debounce", _S + "DEBOUNCE", _number, 1.0,
            "shortest gap between reconciles of a check (coalesces bursts of events)",
            minimum=0.0, unit="s"),
    Setting("empty_result_grace", _S + "EMPTY_RESULT_GRACE", _number, 30.0,
            "wait for a terminated agent's message before an `error` result (see Results)",
            minimum=0.0, unit="s"),
    Setting("api_workers", _S + "API_WORKERS", _count, 16,
            "concurrent API calls (Events take a quarter of them)", minimum=1),
    Setting("watch_server_timeout", _S + "WATCH_SERVER_TIMEOUT", _number, 300.0,
            "watch timeout asked of the server (kopf's and the node watch's)", minimum=1.0,
            unit="s"),
    Setting("watch_client_timeout", _S + "WATCH_CLIENT_TIMEOUT", _number, 330.0,
            "watch timeout on the client side (kopf's and the node watch's)", minimum=1.0,
            unit="s"),
    Setting("cleanup_backoff_max", _S + "CLEANUP_BACKOFF_MAX", _number, 300.0,
            "longest wait between two attempts of a deleted check's clean-up (no timeout, no "
            "retry limit: the finalizer stays until every mark is gone)", minimum=1.0,
            unit="s"),
    Setting("leader_election", _S + "LEADER_ELECTION", _flag, False,
            "act only while holding the Lease", shown="`false` (the chart: `true`)"),
    Setting("lease_name", _S + "LEASE_NAME", _text, "thpcheck-operator",
            "the Lease (in `THPCHECK_NAMESPACE`)"),
    Setting("lease_duration", _S + "LEASE_DURATION", _number, 15.0,
            "how long a standby waits after the leader's last renewal", minimum=3.0,
            unit="s"),
    Setting("cluster_max_cordoned", _S + "CLUSTER_MAX_CORDONED", _int_or_percent, 1,
            "nodes cordoned by all ThpChecks together (int or % of all nodes)"),
    Setting("max_unhealthy", _S + "MAX_UNHEALTHY", _int_or_percent, "10%",
            "no new cordon while more of a check's selected nodes than this are NotReady or "
            "cordoned by someone else (int or %)"),
)
_DEFAULTS = {row.field: row.default for row in TABLE}


@dataclass(frozen=True)
class Settings:
    """Everything configurable about the operator: one typed field per row of ``TABLE``
    (same names, same order; the row holds the variable, default, minimum and meaning)."""

    namespace: str
    agent_image: str = _DEFAULTS["agent_image"]
    pull_policy: str = _DEFAULTS["pull_policy"]
    pull_secrets: tuple[str, ...] = _DEFAULTS["pull_secrets"]
    priority_class: str = _DEFAULTS["priority_class"]
    mitigation_priority_class: str = _DEFAULTS["mitigation_priority_class"]
    mitigation_state_dir: str = _DEFAULTS["mitigation_state_dir"]
    metrics_port: int = _DEFAULTS["metrics_port"]
    health_port: int = _DEFAULTS["health_port"]
    status_interval: float = _DEFAULTS["status_interval"]
    debounce: float = _DEFAULTS["debounce"]
    empty_result_grace: float = _DEFAULTS["empty_result_grace"]
    api_workers: int = _DEFAULTS["api_workers"]
    watch_server_timeout: float = _DEFAULTS["watch_server_timeout"]
    watch_client_timeout: float = _DEFAULTS["watch_client_timeout"]
    cleanup_backoff_max: float = _DEFAULTS["cleanup_backoff_max"]
    leader_election: bool = _DEFAULTS["leader_election"]
    lease_name: str = _DEFAULTS["lease_name"]
    lease_duration: float = _DEFAULTS["lease_duration"]
    cluster_max_cordoned: IntOrPercent = _DEFAULTS["cluster_max_cordoned"]
    max_unhealthy: IntOrPercent = _DEFAULTS["max_unhealthy"]

    def workload(self) -> WorkloadConfig:
        return WorkloadConfig(namespace=self.namespace, image=self.agent_image,
                              pull_policy=self.pull_policy, priority_class=self.priority_class,
                              mitigation_priority_class=self.mitigation_priority_class,
                              pull_secrets=self.pull_secrets,
                              mitigation_state_dir=self.mitigation_state_dir)

    def knobs(self) -> Knobs:
        """What a reconcile plans with (planning.checkplan)."""
        return Knobs(self.workload(), self.status_interval, self.empty_result_grace)

    def limits(self, claimed: frozenset[str] = frozenset()) -> ClusterLimits:
        return ClusterLimits(self.cluster_max_cordoned, self.max_unhealthy, claimed)


def _own_namespace() -> str:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: the process environment), row by row of ``TABLE``."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for row in TABLE:
        raw = env.get(row.env)
        if raw is None or (raw == "" and not row.keep_empty):
            values[row.field] = row.fallback() if row.fallback else row.default
        else:
            values[row.field] = row.parse(row.env, raw, row) if raw else raw
    return Settings(**values)


def markdown_table() -> str:
    """The docs' table of variables (docs/operator-design.md holds this text verbatim)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{row.env}` | {row.shown_default()} | {row.help} |" for row in TABLE]
    return "\n".join(lines) + "\n"


def help_text() -> str:
    """The variables for ``thpcheck operator --help``: name, default, meaning."""
    return "\n".join(f"  {row.env} (default: {row.shown_default().replace('`', '')})\n"
                     + textwrap.fill(row.help.replace("`", ""), width=79,
                                     initial_indent=" " * 6, subsequent_indent=" " * 6)
                     for row in TABLE)
