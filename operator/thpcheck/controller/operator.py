"""The operator process: explicit kopf settings, the handler registry, and ``run``.

Every kopf knob that matters is set here rather than left to defaults (watch timeouts,
handler timeouts and retries, storage prefixes, finalizer name, posting level), and the
registry is built explicitly, so this module lists everything the operator reacts to.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

import kopf
import structlog

from thpcheck.contract import names
from thpcheck.controller import (
    crds,
    credentials,
    events,
    handlers,
    health,
    indexes,
    kopf_relist,
)
from thpcheck.controller.api import (
    CHECKS_PATH,
    NODES_PATH,
    RESULTS_PATH,
    ApiError,
    Kube,
    daemonsets_path,
    pods_path,
)
from thpcheck.controller.context import MEMO_KEY, OperatorContext
from thpcheck.controller.leader import Leadership, healthy_while_waiting
from thpcheck.controller.metrics import Metrics
from thpcheck.controller.settings import Settings
from thpcheck.controller.watched import CHECKS, OUR_DAEMONSETS

log = structlog.get_logger("thpcheck.operator")



class CheckDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base (the "essence" it compares to detect changes), for ThpChecks only.

    kopf builds it, a deep copy of the whole body, for every watch event of every watched
    kind, but only change handlers and daemons use it, and only ThpChecks have those: for
    nodes, pods, results and DaemonSets (index and event handlers only) the copy is thrown
    away. At 5,000 nodes those copies were a fifth of the operator's CPU during a run (nodes,
    pods and results have since left kopf for the operator's lean watches).
    """

    def build(self, *, body: kopf.Body,
              extra_fields: Iterable[kopf.FieldSpec] | None = None) -> kopf.BodyEssence:
        if body.get("kind") != names.CHECK_KIND or body.get("apiVersion") != names.API_VERSION:
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    """kopf's settings, each one deliberate (see docs/operator-design.md)."""
    config = kopf.OperatorSettings()
    # Watches: bounded requests, so a silently dropped connection is noticed (kopf#585).
    config.watching.server_timeout = int(settings.watch_server_timeout)  # an integer query
    config.watching.client_timeout = settings.watch_client_timeout
    config.watching.connect_timeout = 30
    # Only our DaemonSets, filtered by the API server, in our namespace only
    # (kopf.run(namespaces=...)), so RBAC for them can be a namespaced Role; ThpChecks are
    # watched cluster-wide. Nodes, pods and results are not kopf's (controller/watched.py).
    config.watching.label_selectors["apps", "daemonsets"] = f"{names.MANAGED_BY}={names.MANAGER}"
    # No runtime scanning of CRDs and namespaces: the CRDs are checked at start-up and the
    # namespace is fixed, so no cluster-wide list/watch of either is needed (smaller RBAC).
    config.scanning.disabled = True
    config.networking.request_timeout = 60
    config.networking.connect_timeout = 10
    # Our own names for what kopf stores on ThpChecks (nothing is stored on nodes or pods).
    config.persistence.finalizer = names.FINALIZER
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    config.persistence.diffbase_storage = CheckDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration")
    # Events: ours are posted by controller/events.py; kopf posts only its own warnings and
    # errors (not one per handler success).
    config.posting.level = logging.WARNING
    config.posting.reporting_component = names.MANAGER
    config.posting.event_name_prefix = events.EVENT_NAME_PREFIX
    config.posting.worker_limit = settings.api_workers
    config.peering.standalone = True
    return config


def build_registry(settings: Settings, source: credentials.Source) -> kopf.OperatorRegistry:
    """Every handler of the operator, in one place."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(id="login", registry=registry)(login_handler(source))
    kopf.on.cleanup(registry=registry)(handlers.stop_sweeper)
    # /healthz and /readyz (kopf's own liveness endpoint serves one path only).
    kopf.on.startup(id="health", registry=registry)(health.start)
    kopf.on.cleanup(id="health", registry=registry)(health.stop)

    # Nodes, pods and results: the operator's own lean watches, listed before kopf watches
    # anything else.
    kopf.on.startup(id="watch", registry=registry)(handlers.start_watches)
    kopf.on.cleanup(id="stop-watches", registry=registry)(handlers.stop_watches)
    kopf.on.cleanup(id="flush-events", registry=registry)(handlers.flush_events)

    # Indexes: what the planners read (small views, filled before any handler runs).
    kopf.index("apps", "v1", "daemonsets", labels=OUR_DAEMONSETS, id=indexes.DAEMONSETS,
               registry=registry)(indexes.index_daemonset)
    kopf.index(*CHECKS, id=indexes.CHECKS, registry=registry)(indexes.index_check)

    # Wake-ups: watch events only poke the affected checks' daemons.
    kopf.on.event(*CHECKS, id="poke-check", registry=registry)(handlers.poke_for_check)
    kopf.on.event("apps", "v1", "daemonsets", labels=OUR_DAEMONSETS, id="poke-daemonset",
                  registry=registry)(handlers.poke_for_daemonset)

    # The work: one daemon per ThpCheck, and the clean-up when one is deleted.
    kopf.daemon(*CHECKS, id="reconcile", cancellation_timeout=30, backoff=5,
                registry=registry)(handlers.run_check)
    # No timeout and no retry limit: a clean-up that gives up would let kopf drop the
    # finalizer with marks still on nodes. The handler sets its own backoff.
    kopf.on.delete(*CHECKS, id="clean-up", timeout=None, retries=None, backoff=5,
                   registry=registry)(handlers.clean_up_check)
    return registry


def login_handler(source: credentials.Source) -> Callable[..., kopf.ConnectionInfo]:
    """kopf's login from the source chosen at start-up, reloaded on each call so that
    refreshed tokens (exec plugins, the projected service-account token) are picked up.
    kopf's own ``login_via_client`` would reload from the client's import-time default."""

    def login(**_: Any) -> kopf.ConnectionInfo:
        config = credentials.load(source)
        scheme, token = credentials.bearer_token(config)
        return kopf.ConnectionInfo(
            server=config.host, ca_path=config.ssl_ca_cert, insecure=not config.verify_ssl,
            username=config.username or None, password=config.password or None,
            scheme=scheme, token=token, certificate_path=config.cert_file,
            private_key_path=config.key_file)

    return login


def startup_probes(namespace: str) -> list[tuple[str, str]]:
    """(what, path) of one ``list`` per watched kind: the operator's first requests, made
    before kopf starts so that a denial is one line instead of a retrying watch."""
    return [
        ("list thpchecks", CHECKS_PATH),
        ("list thpnoderesults", RESULTS_PATH),
        ("list nodes", NODES_PATH),
        (f"list pods in namespace {namespace}", pods_path(namespace)),
        (f"list daemonsets in namespace {namespace}", daemonsets_path(namespace)),
    ]


def verify_startup(kube: Kube, settings: Settings) -> None:
    """The server answers, accepts the credentials, has our CRDs and lets us list what we
    watch; otherwise a StartupError with one line and its exit code."""
    doing = "read the CustomResourceDefinitions"
    try:
        crds.verify(kube.get_crd_sync)
        for probe, path in startup_probes(settings.namespace):
            doing = probe  # named in the error if this request fails
            kube.request_sync("GET", path, query={"limit": "1"})
    except crds.CrdProblem as exc:
        raise credentials.StartupError(str(exc), credentials.StartupExit.CRDS) from exc
    except ApiError as exc:
        raise kube.startup_error(exc, doing) from exc


def run(settings: Settings, kubeconfig: str | None = None) -> int:
    """Check the credentials, the CRDs and RBAC, serve metrics, (with leader election) wait
    for the Lease, and run kopf until SIGTERM: cluster-scoped kinds cluster-wide, pods and
    DaemonSets in the operator's namespace."""
    metrics = Metrics()
    try:
        kube = Kube.connect(kubeconfig, metrics, settings.api_workers)
    except credentials.StartupError as exc:
        return _cannot_start(exc)
    source = kube.source
    assert source is not None  # Kube.connect records it
    try:
        verify_startup(kube, settings)
    except credentials.StartupError as exc:
        kube.close()
        return _cannot_start(exc)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    context = OperatorContext(settings=settings, kube=kube, metrics=metrics)
    relist = kopf_relist.announce_relist_deletions()
    log.info("operator starting", namespace=settings.namespace, image=settings.agent_image,
             server=kube.server, credentials=source.description,
             metrics_port=settings.metrics_port, health_port=settings.health_port,
             relist_deletions=relist)
    leadership = None
    if settings.leader_election:
        leadership = Leadership(kube, metrics, namespace=settings.namespace,
                                name=settings.lease_name, duration=settings.lease_duration)
        with healthy_while_waiting(settings.health_port, leadership):
            leadership.acquire()
        leadership.keep()
    else:
        metrics.leader.set(1)
    try:
        kopf.run(registry=build_registry(settings, source), settings=kopf_settings(settings),
                 namespaces=[settings.namespace], standalone=True,
                 memo=kopf.Memo({MEMO_KEY: context}))
    finally:
        if leadership is not None:
            leadership.release()
        kube.close()
    return 0


def _cannot_start(exc: credentials.StartupError) -> int:
    """One line on stderr naming the problem and the fix (no traceback, no log noise)."""
    print(f"thpcheck operator: {exc}", file=sys.stderr, flush=True)
    return int(exc.exit)
