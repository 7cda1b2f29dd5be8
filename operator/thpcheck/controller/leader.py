"""Leader election for several operator replicas: one Lease, one active operator.

A replica that does not hold the Lease waits (answering its liveness probe) and starts kopf
only once it holds it; nothing is divided between replicas, so there is nothing to hand over:
the new leader rebuilds its view from the cluster, as a restarted operator does (results,
node marks and the cordon budget are level-based). The leader renews the Lease from a thread
of its own, so a busy event loop does not cost it the Lease; if it cannot renew for
``renew_deadline`` (two thirds of the Lease's duration), or finds another holder, it exits at
once (exit code 3): the Deployment restarts it as a standby. A leader stopped by SIGTERM
releases the Lease, so a standby takes over without waiting for it to expire.

Decisions are ``planning.lease.plan_lease``'s; this module only reads and writes the Lease.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import structlog

from thpcheck.controller.api import ApiError, Conflict, Kube, NotFound
from thpcheck.controller.metrics import Metrics
from thpcheck.planning.lease import Decision, LeaseRecord, lease_record, plan_lease, release

log = structlog.get_logger("thpcheck.operator")
LOST_LEADERSHIP = 3  # the exit code of a leader that lost its Lease


def identity() -> str:
    """This process: the pod's name (its hostname) and a suffix unique to this start."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _path(namespace: str, name: str = "") -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace, safe='')}/leases"
    return f"{base}/{quote(name, safe='')}" if name else base


class Leadership:
    """Holds (or waits for) the operator's Lease."""

    def __init__(self, kube: Kube, metrics: Metrics, *, namespace: str, name: str,
                 duration: float, me: str | None = None) -> None:
        self.kube = kube
        self.metrics = metrics
        self.namespace = namespace
        self.name = name
        self.duration = max(int(duration), 3)
        self.retry_period = max(self.duration / 7, 0.5)  # 2 s for the default 15 s
        self.renew_deadline = self.duration * 2 / 3  # 10 s for the default 15 s
        self.me = me or identity()
        self._seen: tuple[tuple[str, str, str], float] | None = None
        self._renewed = 0.0
        self.holder = ""  # the holder as last read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one round ---------------------------------------------------------------------

    def _read(self) -> LeaseRecord | None:
        try:
            return lease_record(self.kube.request_sync("GET", _path(self.namespace, self.name)))
        except NotFound:
            return None

    def try_once(self) -> bool:
        """Read the Lease and make the write ``plan_lease`` asks for; True if we hold it."""
        record = self._read()
        now = time.monotonic()
        self.holder = record.holder if record is not None else ""
        if record is not None and (self._seen is None or self._seen[0] != record.token):
            self._seen = (record.token, now)
        unchanged_for = now - self._seen[1] if self._seen else 0.0
        step = plan_lease(record, self.me, name=self.name, namespace=self.namespace,
                          now=datetime.now(UTC), duration_seconds=self.duration,
                          unchanged_for=unchanged_for)
        if step.decision is Decision.WAIT or step.body is None:
            return False
        try:
            if step.decision is Decision.CREATE:
                self.kube.request_sync("POST", _path(self.namespace), step.body,
                                       resource="leases")
            else:
                self.kube.request_sync("PUT", _path(self.namespace, self.name), step.body,
                                       resource="leases")
        except Conflict:
            return False  # another candidate wrote first
        if step.decision is not Decision.RENEW:
            log.info("leader elected", identity=self.me, lease=f"{self.namespace}/{self.name}",
                     decision=step.decision.value,
                     previous=record.holder if record is not None else "")
        self._renewed = now
        return True

    # -- waiting, keeping, releasing ---------------------------------------------------

    def acquire(self) -> None:
        """Block until this process holds the Lease."""
        log.info("waiting for leadership", identity=self.me,
                 lease=f"{self.namespace}/{self.name}")
        self.metrics.leader.set(0)
        while True:
            try:
                if self.try_once():
                    self.metrics.leader.set(1)
                    return
            except ApiError as exc:
                log.warning("lease not read or written; retrying", error=str(exc))
            time.sleep(self.retry_period)

    def keep(self) -> None:
        """Renew the Lease in the background; exit the process the moment it is lost."""
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal",
                                        daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.retry_period):
            try:
                if self.try_once() or self.holder == self.me:
                    continue  # renewed, or a write raced ours: read again next round
                reason = f"{self.holder or 'nobody'} holds the lease now"
            except ApiError as exc:
                if time.monotonic() - self._renewed < self.renew_deadline:
                    log.warning("lease not renewed; retrying", error=str(exc))
                    continue
                reason = f"the lease could not be renewed for {self.renew_deadline:.0f} s"
            if self._stop.is_set():
                return
            self._lost(reason)

    def _lost(self, reason: str) -> None:
        """Stop at once: another replica may act on the nodes from now on."""
        self.metrics.leader.set(0)
        log.error("leadership lost; exiting so that only the leader acts", reason=reason,
                  identity=self.me)
        os._exit(LOST_LEADERSHIP)

    def release(self) -> None:
        """Stop renewing and give the Lease up (after a clean stop of kopf)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.retry_period + 5)
        with contextlib.suppress(ApiError):
            record = self._read()
            body = release(record, self.me, name=self.name, namespace=self.namespace,
                           now=datetime.now(UTC)) if record else None
            if body is not None:
                self.kube.request_sync("PUT", _path(self.namespace, self.name), body,
                                       resource="leases")
                log.info("leadership released", identity=self.me)
        self.metrics.leader.set(0)


class _Healthy(BaseHTTPRequestHandler):
    server: _ReusableServer

    def do_GET(self) -> None:
        # A standby is live; it is ready while a leader holds the Lease (controller/health.py).
        if self.path.startswith("/healthz"):
            status, text = 200, "standby\n"
        elif self.path.startswith("/readyz"):
            ready = self.server.standby_ready()
            status = 200 if ready else 503
            text = "standby behind a leader\n" if ready else "taking the lease\n"
        else:
            status, text = 404, "not found\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, *_: Any) -> None:
        pass  # one line per probe is noise


class _ReusableServer(ThreadingHTTPServer):
    allow_reuse_address = True  # the leader's endpoints bind the same port right after
    daemon_threads = True
    standby_ready: Callable[[], bool] = staticmethod(lambda: False)


@contextlib.contextmanager
def healthy_while_waiting(port: int, leadership: Leadership) -> Iterator[None]:
    """Answer the liveness and readiness probes (``/healthz``, ``/readyz``) while the replica
    waits for the Lease; the port is free again for the leader's own (controller/health.py)
    afterwards. Ready only while another replica holds the Lease: a standby behind a live
    leader (a rolling update needs it Ready before it stops the old leader), not a replica
    about to lead, which is ready once it has indexed the cluster."""
    if not port:
        yield
        return
    server = _ReusableServer(("0.0.0.0", port), _Healthy)
    server.standby_ready = lambda: leadership.holder not in ("", leadership.me)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
