"""One credential order for every command that talks to the Kubernetes API.

``thpcheck operator``, ``thpcheck preflight`` and the chart's uninstall clean-up load their
credentials here, in the order kubectl uses:

1. ``--kubeconfig FILE`` (the flag);
2. ``$KUBECONFIG`` (one file, or several joined by ``:``, merged as kubectl does);
3. ``~/.kube/config``, when it exists;
4. the in-cluster service account (``KUBERNETES_SERVICE_HOST`` and the mounted token).

A source that is named but unusable (a flag or ``$KUBECONFIG`` naming a missing file) is an
error, never a silent fall-through to the next source. The path is always passed to the loader
explicitly: the official client fixes its default path from ``$KUBECONFIG`` at import time,
so setting the variable later (as the operator once did for ``--kubeconfig``) is ignored.

Start-up failures are one line naming the problem and the fix, with an exit code per kind
(``StartupExit``), the same for every command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import kubernetes

IN_CLUSTER = "the in-cluster service account"


class StartupExit(IntEnum):
    """Exit codes for failures before any work starts (operator and preflight alike)."""

    BAD_CONFIG = 2  # no usable kubeconfig (missing, unreadable, invalid) or bad settings
    UNREACHABLE = 5  # the API server did not answer
    UNAUTHORIZED = 6  # the API server rejected the credentials (HTTP 401)
    FORBIDDEN = 7  # RBAC denies a request the command needs (HTTP 403)
    CRDS = 8  # the operator's CRDs are missing or older than it needs


class StartupError(Exception):
    """Why a command cannot start; the message is one line that says the fix."""

    def __init__(self, message: str, exit: StartupExit) -> None:
        super().__init__(message)
        self.exit = exit


@dataclass(frozen=True)
class Source:
    """Where the credentials come from: a kubeconfig (``path``) or the service account."""

    description: str  # for messages: "--kubeconfig F", "KUBECONFIG=F", "~/.kube/config", ...
    path: str | None  # None: in-cluster


def one_line(text: object, limit: int = 300) -> str:
    """An exception or an API message as one bounded line."""
    flat = " ".join(str(text).split())
    return flat[:limit] or type(text).__name__


def choose_source(flag: str | None, environ: Mapping[str, str] = os.environ,
                  home: Path | None = None) -> Source:
    """Pick the source in the documented order; StartupError when a named one is missing."""
    if flag:
        _require_readable(flag, f"--kubeconfig {flag}")
        return Source(f"--kubeconfig {flag}", flag)
    env = environ.get("KUBECONFIG", "")
    paths = [p for p in env.split(os.pathsep) if p]
    if paths:
        for path in paths:
            _require_readable(path, f"KUBECONFIG={env}" if len(paths) == 1
                              else f"KUBECONFIG={env} ({path})")
        return Source(f"KUBECONFIG={env}", env)
    default = (home or Path(os.path.expanduser("~"))) / ".kube" / "config"
    if default.is_file():
        return Source(str(default), str(default))
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return Source(IN_CLUSTER, None)
    raise StartupError(
        "no Kubernetes configuration: pass --kubeconfig FILE, set KUBECONFIG, create "
        "~/.kube/config, or run in a pod with a service account", StartupExit.BAD_CONFIG)


def _require_readable(path: str, named: str) -> None:
    if not os.path.exists(path):
        raise StartupError(f"{named}: no such file", StartupExit.BAD_CONFIG)
    if not os.path.isfile(path):
        raise StartupError(f"{named}: not a file", StartupExit.BAD_CONFIG)
    if not os.access(path, os.R_OK):
        raise StartupError(f"{named}: not readable by this user", StartupExit.BAD_CONFIG)


def load(source: Source) -> kubernetes.client.Configuration:
    """A client configuration from ``source``; StartupError (BAD_CONFIG) if unusable."""
    configuration = kubernetes.client.Configuration()
    try:
        if source.path is None:
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
        else:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=source.path, client_configuration=configuration)
    except Exception as exc:  # the loaders raise ConfigException, TypeError, YAML errors
        what = ("the in-cluster service account is not usable" if source.path is None
                else "not a usable kubeconfig")
        raise StartupError(f"{source.description}: {what}: {one_line(exc)}",
                           StartupExit.BAD_CONFIG) from exc
    return configuration


def configuration(flag: str | None) -> tuple[kubernetes.client.Configuration, Source]:
    """The documented order, loaded: what every command calls."""
    source = choose_source(flag)
    return load(source), source


def bearer_token(config: kubernetes.client.Configuration) -> tuple[str | None, str | None]:
    """(scheme, token) of the Authorization header the configuration would send."""
    header = (config.get_api_key_with_prefix("BearerToken")
              or config.get_api_key_with_prefix("authorization"))
    parts = str(header).split(" ", 1) if header else []
    if not parts:
        return None, None
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], parts[1]


def http_failure(status: int, body: bytes | str | None, server: str, doing: str) -> StartupError:
    """The one-line StartupError for an HTTP failure of ``doing`` (e.g. "list nodes")."""
    message = api_message(body)
    if status == 401:
        return StartupError(
            f"the API server at {server} rejected the credentials (HTTP 401): {message}; "
            "renew the token or certificate in the kubeconfig", StartupExit.UNAUTHORIZED)
    if status == 403:
        return StartupError(
            f"the API server at {server} refused to {doing} (HTTP 403): {message}; grant it "
            "with RBAC (the chart's templates/rbac.yaml lists what thp-checker needs)",
            StartupExit.FORBIDDEN)
    return StartupError(f"{doing} at {server} failed (HTTP {status}): {message}",
                        StartupExit.UNREACHABLE)


def transport_error(exc: BaseException) -> str:
    """The useful part of a connection failure: urllib3 wraps "[Errno 111] Connection
    refused" in a retry error that repeats the URL and the pool."""
    text = str(getattr(exc, "reason", None) or exc)
    marker = "Failed to establish a new connection: "
    return one_line(text.split(marker, 1)[1] if marker in text else text)


def unreachable(server: str, cause: BaseException | str) -> StartupError:
    reason = cause if isinstance(cause, str) else transport_error(cause)
    return StartupError(
        f"cannot reach the API server at {server}: {one_line(reason)}; check the server "
        "address in the kubeconfig and that the cluster is up", StartupExit.UNREACHABLE)


def api_message(body: bytes | str | None) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    try:
        decoded: Any = json.loads(text)
        return one_line(decoded["message"])
    except (ValueError, KeyError, TypeError):
        return one_line(text) if text else "no message"
