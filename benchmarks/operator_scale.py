"""How the operator scales: one ThpCheck over N kwok nodes on the real control plane.

For each N: a fresh cluster (devtools/cluster/harness.py) whose kube-controller-manager and
kube-scheduler get a higher client QPS (their default 20 QPS, not the operator, is otherwise
what limits a DaemonSet rollout over thousands of nodes) and whose kube-apiserver writes an
audit log of the operator's requests only. N Ready kwok nodes (this machine's kernel and boot
ID, as in the operator tests), the chart's CRDs, the operator as a real process running as a
ServiceAccount with exactly the chart's RBAC (rendered from the chart by
tests/operator/test_cluster_rbac.py), production
timing (THPCHECK_STATUS_INTERVAL 5 s, THPCHECK_DEBOUNCE 1 s). Then one ThpCheck selecting the
N nodes, and this script plays the kubelet as tests/operator/cluster_kit.py does: as the
check pods come up it writes the agent's compact result (one real `thpcheck check --no-repro`
document of this machine) into their init container's terminated state, at a steady
``--rate`` per second.

With ``--crash-looping P%`` the check pods of P % of the nodes crash-loop instead (the kubelet's
CrashLoopBackOff state, not Ready), and with ``--not-ready P%`` P % of the nodes die as their
check pod starts (the container running, then the node unmanaged by kwok and reported
Ready=False, as a kubelet that stops does). The status then settles when nothing can progress
any more: every other node checked, Progressing=False, phase Degraded naming the stuck nodes.

Reported per N: time from the last injected result to a complete ThpCheck status (every node
checked, phase Completed, or settled as above); API requests per node by verb, from kube-apiserver's
``apiserver_request_total`` (all clients, scraped before the ThpCheck is created and after it
settled) and from the audit log (the operator's own identity only); the operator's peak RSS
and CPU seconds; the load average. Raw results go to benchmarks/out/operator-scale-<N>.json.

    .venv/bin/python -m benchmarks.operator_scale --nodes 100,1000,5000 [--rate 100]
        [--max-concurrent 10%] [--crash-looping 2%] [--not-ready 1%] [--keep] [--profile]

Needs the cluster binaries (devtools/cluster/tools/build.sh). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import queue
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from benchmarks import node_shapes
from benchmarks.object_cost import object_cost
from devtools.cluster.accounts import ACCOUNT, service_account_kubeconfig
from devtools.cluster.harness import KWOK_ANNOTATION, Cluster
from devtools.cluster.operator import (
    CHECKS_PATH,
    OperatorProcess,
    install_crds,
    this_machine,
    with_verdict,
)
from devtools.proc import WaitTimeout, wait_for
from thpcheck.contract import names
from thpcheck.controller.leanwatch import Kind
from thpcheck.controller.watched import NODES, RESULTS, agent_pods
from thpcheck.model.report import compact

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
NAMESPACE = "thp-checker"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
CHECK = "scale"
NODE_LABEL = "thpcheck-bench"
CLIENT_QPS = ["--kube-api-qps=1000", "--kube-api-burst=2000"]
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
# kwok plays every node's kubelet on the same two cores as the whole control plane. A kubelet
# renews its node Lease every 10 s (40 s leases); kwok's workers (4 by default) could not do
# that for 5,000 nodes, and once kwok falls behind (a busy machine, bigger nodes), the node
# lifecycle controller marks nodes NotReady after 50 s and their pods not Ready, which kwok
# never turns back (its pod stages only start Pending pods): the DaemonSet rollout, and the
# run, wait for ever. So kwok gets 32 lease workers and 15 times the kubelet's timing: 600 s
# leases renewed every 150 s, and kube-controller-manager a grace period in proportion
# (50 s -> 750 s). The operator never reads Leases; node status (kwok's heartbeat stage) and
# every other object are unchanged.
LEASE_SECONDS = 600
NODE_GRACE = ["--node-monitor-grace-period=750s"]
# Every control-plane server caches every node: at 5,000 realistic nodes they held 5.8 GiB
# (half of it garbage not yet collected: Go collects when the heap doubles). Soft limits make
# them collect sooner instead, so 15,000 such nodes fit beside other work in 24 GiB. The
# operator is a Python process and is not affected.
GO_MEMORY_LIMITS = {"kube-apiserver": "4GiB", "kube-controller-manager": "2GiB", "kwok": "2GiB",
                    "kube-scheduler": "1536MiB", "etcd": "1536MiB"}
KWOK_CONFIG = """apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  nodeLeaseParallelism: 32
  nodePlayStageParallelism: 16
  podPlayStageParallelism: 16
"""
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["{OPERATOR_USER}"]
- level: None
"""


# -- a small keep-alive admin client (the harness opens a connection per call) ------------


class Api:
    """Admin REST calls over one keep-alive HTTPS connection per thread."""

    def __init__(self, cluster: Cluster) -> None:
        self.port = cluster.ports["apiserver"]
        self.context = ssl.create_default_context(cafile=str(cluster.pki.ca_crt))
        self.context.load_cert_chain(str(cluster.pki.crt("admin")), str(cluster.pki.key("admin")))
        self.local = threading.local()

    def connection(self, timeout: float = 60.0) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                               timeout=timeout)
            self.local.conn = conn
        return conn

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json", accept: str = "application/json") -> Any:
        for attempt in range(2):
            conn = self.connection()
            try:
                headers = {"Accept": accept}
                payload = None if body is None else json.dumps(body)
                if payload is not None:
                    headers["Content-Type"] = content_type
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
                continue
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
            return json.loads(data) if data else None
        return None  # pragma: no cover

    def text(self, path: str) -> str:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                           timeout=60)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def watch(self, path: str, query: Mapping[str, str],
              stop: threading.Event) -> Iterator[dict[str, Any]]:
        """List then watch a collection; yields {"type", "object"} events until ``stop``."""
        listed = self.call("GET", f"{path}?{urlencode(query)}")
        version = listed["metadata"]["resourceVersion"]
        for item in listed["items"]:
            yield {"type": "ADDED", "object": item}
        while not stop.is_set():
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                               timeout=30)
            params = {**query, "watch": "1", "resourceVersion": version,
                      "allowWatchBookmarks": "true", "timeoutSeconds": "20"}
            try:
                conn.request("GET", f"{path}?{urlencode(params)}")
                response = conn.getresponse()
                for line in response:
                    if stop.is_set():
                        return
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch {path}: {event['object']}")
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        yield event
            except (OSError, http.client.HTTPException, TimeoutError):
                continue
            finally:
                conn.close()


# -- processes: CPU seconds and peak RSS from /proc -------------------------------------------


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Sampler:
    """Samples a process's RSS every ``interval`` seconds in the background (a time series)."""

    pid: int
    interval: float = 1.0
    samples: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(self.interval):
            with contextlib.suppress(OSError, ValueError):
                self.samples.append((round(time.monotonic() - started, 1),
                                     proc_status_kib(self.pid, "VmRSS")))


# -- metrics ------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def request_totals(metrics_text: str) -> dict[tuple[str, str], float]:
    """apiserver_request_total summed by (verb, resource[/subresource])."""
    totals: dict[tuple[str, str], float] = collections.defaultdict(float)
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        totals[(labels.get("verb", ""), resource)] += float(match["value"])
    return dict(totals)


def difference(after: Mapping[tuple[str, str], float],
               before: Mapping[tuple[str, str], float]) -> dict[tuple[str, str], int]:
    return {key: int(value - before.get(key, 0.0)) for key, value in after.items()
            if value - before.get(key, 0.0) > 0}


def writes_of(counts: Mapping[tuple[str, str], int]) -> int:
    """How many of ``counts`` are writes (create, update, patch, delete)."""
    return sum(c for (verb, _), c in counts.items() if verb in WRITE_VERBS)


def lists_of(counts: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """The list requests of ``counts`` by resource (a re-list lists each watched resource)."""
    return {resource: c for (verb, resource), c in sorted(counts.items()) if verb == "list"}


def peak_kib(samples: Iterable[tuple[float, int]], hwm_before: int, hwm_after: int) -> int:
    """A phase's peak RSS: the highest sample, or the high-water mark if the phase raised it
    (a peak between two samples)."""
    peak = max((kib for _, kib in samples), default=0)
    return max(peak, hwm_after) if hwm_after > hwm_before else peak


def by_verb(counts: Mapping[tuple[str, str], int]) -> dict[str, int]:
    verbs: dict[str, int] = collections.Counter()
    for (verb, _), value in counts.items():
        verbs[verb] += value
    return dict(sorted(verbs.items()))


def audit_counts(path: Path, since: datetime, until: datetime | None = None,
                 ) -> dict[tuple[str, str], int]:
    """The operator's requests in the audit log by (verb, resource[/subresource]), counted
    once each (ResponseComplete; a watch also logs ResponseStarted) within [since, until]."""
    counts: dict[tuple[str, str], int] = collections.Counter()
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event.get("stage") != "ResponseComplete" or event["user"]["username"] != OPERATOR_USER:
            continue
        received = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if received < since or (until is not None and received > until):
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", event.get("requestURI", "?"))
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        counts[(event["verb"], resource)] += 1
    return dict(counts)


# -- the kubelet's part ------------------------------------------------------------------------


def real_result_message(workdir: Path, verdict: str | None = None) -> str:
    """One real compact result of this machine (prediction only: nothing written); with
    ``verdict``, the same result saying that verdict instead (every node's Events, labels)."""
    scratch = workdir / "agent-scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(
        [sys.executable, "-m", "thpcheck", "check", "--json", "--no-repro", str(scratch)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO / "operator")})
    document = json.loads(completed.stdout)
    document["paths"][0]["path"] = "/var/lib/thpcheck"
    return with_verdict(document, verdict) if verdict else compact(document)


def terminated_status(pod: Mapping[str, Any], message: str) -> dict[str, Any]:
    """The merge patch a kubelet's status update amounts to once the check container exited."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    statuses = []
    for entry in pod["status"]["initContainerStatuses"]:
        entry = dict(entry)
        if entry["name"] == "check":
            terminated = dict(entry["state"].get("terminated") or {})
            terminated.update(exitCode=0, message=message, finishedAt=now, reason="Completed")
            terminated.setdefault("startedAt", now)
            entry["state"] = {"terminated": terminated}
        statuses.append(entry)
    return {"status": {"initContainerStatuses": statuses}}


def _unready_check(pod: Mapping[str, Any], now: str, **check: Any) -> dict[str, Any]:
    """A status patch: the check container as ``check`` says, the pod not Ready (Pending)."""
    statuses = [dict(entry, ready=False, **check) if entry["name"] == "check" else dict(entry)
                for entry in pod["status"]["initContainerStatuses"]]
    conditions = [{"type": t, "status": "True" if t == "PodScheduled" else "False",
                   "lastTransitionTime": now}
                  for t in ("PodScheduled", "Initialized", "Ready", "ContainersReady")]
    return {"status": {"phase": "Pending", "conditions": conditions,
                       "initContainerStatuses": statuses}}


def crash_loop_status(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The kubelet's status of a pod whose check container keeps failing."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return _unready_check(pod, now, restartCount=3, state={"waiting": {
        "reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=check"}},
        lastState={"terminated": {"exitCode": 1, "reason": "Error",
                                  "message": "Traceback (most recent call last): ...",
                                  "startedAt": now, "finishedAt": now}})


def running_status(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The kubelet's status of a pod whose check container has started (and not ended)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return _unready_check(pod, now, state={"running": {"startedAt": now}})


def choose_faults(count: int, crash_looping: float, not_ready: float) -> dict[str, str]:
    """Which nodes fail how, spread evenly over the names (disjoint sets)."""
    faults: dict[str, str] = {}
    for share, fault in ((crash_looping, "crash"), (not_ready, "notready")):
        wanted = round(count * share / 100)
        if not wanted:
            continue
        step = count / wanted
        offset = 1 if fault == "crash" else 2
        for k in range(wanted):
            index = int(k * step) + offset
            while f"bench-{index % count:05d}" in faults:
                index += 1
            faults[f"bench-{index % count:05d}"] = fault
    return faults


def is_check_pod_ready_for_result(pod: Mapping[str, Any]) -> bool:
    meta, status = pod["metadata"], pod.get("status") or {}
    return (meta.get("labels", {}).get(names.TEMPLATE_LABEL) == "check"
            and not meta.get("deletionTimestamp") and status.get("phase") == "Running"
            and bool(status.get("initContainerStatuses")) and bool(pod["spec"].get("nodeName")))


@dataclass
class Injector:
    """Watches the check's pods and writes results into them at ``rate`` per second."""

    api: Api
    selector: str
    message: str
    rate: float
    expected: int
    workers: int = 8
    faults: Mapping[str, str] = field(default_factory=dict)  # node -> crash | notready
    injected: dict[str, float] = field(default_factory=dict)  # node -> monotonic time
    first_check_pod: float | None = None
    all_check_pods: float | None = None
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.ready: queue.Queue[dict[str, Any]] = queue.Queue()
        self.lock = threading.Lock()
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.feeder = threading.Thread(target=self._feed, daemon=True)

    def start(self) -> Injector:
        self.watcher.start()
        self.feeder.start()
        return self

    def _watch(self) -> None:
        seen: set[str] = set()
        path = f"/api/v1/namespaces/{NAMESPACE}/pods"
        for event in self.api.watch(path, {"labelSelector": self.selector}, self.stop):
            pod = event["object"]
            node = pod["spec"].get("nodeName") or ""
            if event["type"] == "DELETED" or node in seen or not is_check_pod_ready_for_result(pod):
                continue
            seen.add(node)
            now = time.monotonic()
            self.first_check_pod = self.first_check_pod or now
            if len(seen) == self.expected:
                self.all_check_pods = now
            self.ready.put(pod)

    def _feed(self) -> None:
        """A steady rate: the n-th result is written no earlier than start + n / rate."""
        started: float | None = None
        sent = 0
        with ThreadPoolExecutor(self.workers) as pool:
            while not self.stop.is_set() and sent < self.expected:
                try:
                    pod = self.ready.get(timeout=0.5)
                except queue.Empty:
                    continue
                started = started or time.monotonic()
                delay = started + sent / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sent += 1
                pool.submit(self._inject, pod)

    def _inject(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        node = pod["spec"]["nodeName"]
        fault = self.faults.get(node)
        status = (crash_loop_status(pod) if fault == "crash" else
                  running_status(pod) if fault == "notready" else
                  terminated_status(pod, self.message))
        try:
            self.api.call("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/"
                          f"{quote(meta['name'])}/status", status,
                          content_type="application/merge-patch+json")
            if fault == "notready":  # the node dies: kwok lets go of it, it reports NotReady
                self.api.call("PATCH", f"/api/v1/nodes/{quote(node)}", {"metadata": {
                    "annotations": {KWOK_ANNOTATION[0]: None}}},
                    content_type="application/merge-patch+json")
                now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                self.api.call("PATCH", f"/api/v1/nodes/{quote(node)}/status", {"status": {
                    "conditions": [{"type": "Ready", "status": "False",
                                    "reason": "KubeletNotReady",
                                    "message": "container runtime is down",
                                    "lastHeartbeatTime": now, "lastTransitionTime": now}]}},
                    content_type="application/strategic-merge-patch+json")
        except Exception as exc:  # a benchmark reports, it does not stop
            self.errors.append(f"{meta['name']}: {exc}")
            return
        with self.lock:
            self.injected[pod["spec"]["nodeName"]] = time.monotonic()


@dataclass
class ProfiledOperator(OperatorProcess):
    """The tests' operator process, optionally under cProfile (written when it exits)."""

    profile: Path | None = None

    def launch(self) -> subprocess.Popen[bytes]:
        if self.profile is None:
            return super().launch()
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cProfile", "-o", str(self.profile), "-m", "thpcheck",
                 "operator", "--log-format", "json"],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        return self.process


# -- one run -------------------------------------------------------------------------------------


def create_nodes(api: Api, cluster: Cluster, count: int, shape: str,
                 workers: int = 8) -> float:
    """``count`` kwok nodes of ``shape`` labelled for the benchmark; returns seconds until
    all are Ready."""
    started = time.monotonic()
    node_info = this_machine()

    def create(index: int) -> None:
        name = f"bench-{index:05d}"
        body = node_shapes.node(shape, name, index, kubelet_port=cluster.ports["kwok"],
                                kubelet_version=cluster.k8s_version, labels={NODE_LABEL: "1"},
                                node_info=node_info)
        api.call("POST", node_shapes.create_path(shape), body)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, range(count)))
    while ready_nodes(api) < count:
        time.sleep(2)
    return time.monotonic() - started


def ready_nodes(api: Api) -> int:
    """How many benchmark nodes are Ready, from the server's table of them (what
    ``kubectl get nodes`` reads: a row per node, not 25 KiB per realistic node)."""
    table = api.call("GET", f"/api/v1/nodes?labelSelector={NODE_LABEL}%3D1&resourceVersion=0",
                     accept=TABLE)
    column = next(i for i, c in enumerate(table["columnDefinitions"]) if c["name"] == "Status")
    return sum(1 for row in table["rows"] if row["cells"][column].split(",")[0] == "Ready")


def not_ready_events(api: Api, since: datetime) -> int:
    """How often the node lifecycle controller marked a node NotReady since ``since`` (0
    unless kwok fell behind with its leases during the run)."""
    events = api.call("GET", "/api/v1/namespaces/default/events?fieldSelector="
                      "reason%3DNodeNotReady,involvedObject.kind%3DNode")["items"]
    stamps = (e.get("lastTimestamp") or e.get("eventTime") for e in events)
    return sum(1 for t in stamps if t and datetime.fromisoformat(t.replace("Z", "+00:00"))
               >= since)


def token_seconds(timeout: float) -> int:
    """How long the operator's token must last: start-up, injection, completion and the
    Events each wait up to ``timeout``, plus an hour of margin."""
    return int(4 * timeout) + 3600


def operator_events(api: Api) -> int:
    """How many Events the operator has posted (its source component; metadata only)."""
    listing = api.call("GET", "/api/v1/namespaces/default/events?fieldSelector=source%3D"
                       f"{names.MANAGER}", accept=METADATA_LIST)
    return len(listing["items"])


def wait_events_landed(api: Api, timeout: float, quiet: float = 15.0,
                       poll: float = 3.0) -> tuple[float, int]:
    """Wait until the operator's Event count stops growing (no new one for ``quiet``
    seconds): Events are posted in the background, and a write not yet landed is not
    counted. Returns (seconds from the call until the last one landed, how many)."""
    started = time.monotonic()
    count, grew = operator_events(api), started
    while time.monotonic() - grew < quiet and time.monotonic() - started < timeout:
        time.sleep(poll)
        now = operator_events(api)
        if now != count:
            count, grew = now, time.monotonic()
    return round(grew - started, 1), count


def wait_status(api: Api, done: Callable[[Mapping[str, Any]], bool],
                timeout: float) -> tuple[float | None, dict[str, Any]]:
    """Poll the ThpCheck's status until ``done(status)``; returns when that was seen (None on
    a timeout) and the last status read."""
    status: dict[str, Any] = {}

    def seen() -> float | None:
        nonlocal status
        status = api.call("GET", f"{CHECKS_PATH}/{CHECK}").get("status") or {}
        return time.monotonic() if done(status) else None

    try:
        at: float = wait_for(seen, timeout, "the ThpCheck's status", interval=0.25,
                             tolerate=(RuntimeError, OSError))
    except WaitTimeout:
        return None, status
    return at, status


def wait_complete(api: Api, count: int, timeout: float) -> tuple[float | None, dict[str, Any]]:
    """Poll the ThpCheck until every node is checked and the phase is Completed."""
    return wait_status(api, lambda s: s.get("checked") == count
                       and s.get("phase") == "Completed", timeout)


def wait_settled(api: Api, count: int, not_ready: int,
                 timeout: float) -> tuple[float | None, dict[str, Any]]:
    """Poll the ThpCheck until nothing can progress: every node that can be checked is, and
    Progressing is False (Completed, or Degraded naming what is stuck)."""
    def settled(status: Mapping[str, Any]) -> bool:
        progressing = {c["type"]: c for c in status.get("conditions") or []}.get(
            "Progressing", {})
        return bool(status.get("checked") == count - not_ready
                    and progressing.get("status") == "False")

    return wait_status(api, settled, timeout)


def wait_requested(audit: Path, verb: str, resource: str, since: datetime,
                   timeout: float) -> None:
    """Until the audit log shows the operator's first ``verb`` of ``resource`` since ``since``
    (a watch: its listing of them is complete, as kopf and the node watch both list, then
    watch)."""
    def requested() -> bool:
        with audit.open() as log:
            for line in log:
                event = json.loads(line)
                ref = event.get("objectRef") or {}
                if (event["verb"] == verb and ref.get("resource") == resource
                        and event["user"]["username"] == OPERATOR_USER
                        and datetime.fromisoformat(event["requestReceivedTimestamp"]
                                                   .replace("Z", "+00:00")) >= since):
                    return True
        return False

    try:
        wait_for(requested, timeout, f"a {verb} of {resource}", interval=1.0,
                 tolerate=(OSError, ValueError))
    except WaitTimeout:
        raise RuntimeError(f"the operator did not {verb} {resource} within {timeout:.0f}s"
                           ) from None


def wait_idle(pid: int, since: float, timeout: float, window: float = 5.0,
              busy: float = 0.05) -> float:
    """Seconds from ``since`` until the process used less than ``busy`` of a CPU over a
    ``window`` (its start-up is over)."""
    deadline = time.monotonic() + timeout
    last = proc_cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = proc_cpu_s(pid)
        if now - last < busy * window:
            return time.monotonic() - window - since
        last = now
    raise RuntimeError(f"the operator was still busy after {timeout:.0f}s")


def server_cpu(cluster: Cluster) -> dict[str, float]:
    cpu = {}
    for server in cluster.servers:
        with contextlib.suppress(OSError):
            cpu[server.name] = proc_cpu_s(server.pid)
    return cpu


def object_costs(api: Api, sample: int = 100) -> dict[str, dict[str, float]]:
    """What a node, a check pod and a result of this run cost as JSON, parsed whole (what
    kopf holds per object) and as the view the operator keeps (``object_cost``)."""
    pods = agent_pods(NAMESPACE)
    kinds: dict[str, Kind[Any]] = {"node": NODES, "check pod": pods, "result": RESULTS}
    costs = {}
    for what, kind in kinds.items():
        query = {"limit": str(sample), **({"labelSelector": kind.selector} if kind.selector
                                           else {})}
        items = api.call("GET", f"{kind.path}?{urlencode(query)}")["items"]
        costs[what] = object_cost(items, kind.view)
    return costs


# -- the aftermath: the operator's memory when it lists everything again ----------------------

# What the operator lists and watches that grows with the fleet: nodes, the check pods and the
# ThpNodeResults.
WATCHED = ("nodes", "pods", names.RESULT_PLURAL)


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def is_healthy(operator: OperatorProcess) -> bool:
    """The operator process runs and its liveness endpoint answers 200."""
    if operator.process is None or operator.process.poll() is not None:
        return False
    url = f"http://127.0.0.1:{operator.health_port}/healthz"
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as reply:
        return bool(reply.status == 200)
    return False


def after_phase(api: Api, operator: OperatorProcess, audit: Path, nodes: int,
                since: datetime, log_after: int = 0) -> dict[str, Any]:
    """What a phase left: the operator healthy, the ThpCheck still complete (checked == N), and
    the operator's requests since ``since`` (writes ~0: nothing was left to do)."""
    complete, status = wait_complete(api, nodes, 60)
    counts = audit_counts(audit, since, datetime.now(UTC))
    return {"healthy": is_healthy(operator), "still_complete": complete is not None,
            "status": {k: status.get(k) for k in ("phase", "nodes", "checked")},
            "lists": lists_of(counts), "writes": writes_of(counts),
            "requests": {f"{v} {r}": c for (v, r), c in sorted(counts.items())},
            "log_warnings": _log_warnings(operator.log, log_after)}


def relist_phase(cluster: Cluster, api: Api, operator: OperatorProcess, audit: Path,
                 nodes: int, timeout: float) -> dict[str, Any]:
    """Every watch of the idle operator ends with 410 Gone and lists again, as after a
    kube-apiserver restart that outlasts etcd's history (tests/operator/
    test_cluster_watch_relist.py): paused, the API server restarted, one write and a
    compaction up to it (every resourceVersion the operator holds is gone), resumed. Its RSS
    sampled every 0.2 s from before the pause until it is idle again."""
    assert operator.process is not None
    pid = operator.process.pid
    wait_idle(pid, time.monotonic(), timeout)
    hwm_before, rss_before, cpu_before = (proc_status_kib(pid, "VmHWM"),
                                          proc_status_kib(pid, "VmRSS"), proc_cpu_s(pid))
    log_after = len(_log_lines(operator.log))
    sampler = Sampler(pid, interval=0.2)
    os.kill(pid, signal.SIGSTOP)
    try:
        cluster.restart_apiserver()
        api.call("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "relist-"}})
        cluster.compact_etcd()
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed, resumed_at = time.monotonic(), datetime.now(UTC)
    not_relisted = []
    for resource in WATCHED:
        try:
            wait_requested(audit, "list", resource, resumed_at, min(timeout, 300))
        except RuntimeError:
            not_relisted.append(resource)
    idle_s = wait_idle(pid, resumed, timeout)
    sampler.stop.set()
    hwm_after = proc_status_kib(pid, "VmHWM")
    return {"rss_mib_before": mib(rss_before),
            "peak_rss_mib": mib(peak_kib(sampler.samples, hwm_before, hwm_after)),
            "hwm_mib_before": mib(hwm_before), "hwm_mib_after": mib(hwm_after),
            "rss_mib_after": mib(proc_status_kib(pid, "VmRSS")),
            "idle_after_s": round(idle_s, 1), "cpu_s": round(proc_cpu_s(pid) - cpu_before, 1),
            "not_relisted": not_relisted,
            **after_phase(api, operator, audit, nodes, resumed_at, log_after),
            "rss_series": sampler.samples}


def restart_phase(api: Api, operator: OperatorProcess, audit: Path, nodes: int,
                  timeout: float) -> dict[str, Any]:
    """The operator stopped and started again (same environment) with every check pod and
    ThpNodeResult present: it lists them all and should find nothing to do."""
    operator.stop(timeout=60)
    launched, launched_at = time.monotonic(), datetime.now(UTC)
    operator.start(timeout=900)
    assert operator.process is not None
    pid = operator.process.pid
    healthy_s = time.monotonic() - launched
    for resource in WATCHED:
        wait_requested(audit, "watch", resource, launched_at, timeout)
    idle_s = wait_idle(pid, launched, timeout)
    return {"healthy_s": round(healthy_s, 1), "idle_after_s": round(idle_s, 1),
            "cpu_s": round(proc_cpu_s(pid), 1),
            "rss_mib_after": mib(proc_status_kib(pid, "VmRSS")),
            "peak_rss_mib": mib(proc_status_kib(pid, "VmHWM")),
            **after_phase(api, operator, audit, nodes, launched_at)}


def run_one(nodes: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    audit = workdir / "audit.log"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)
    (workdir / "kwok-config.yaml").write_text(KWOK_CONFIG)
    extra = {
        "kube-controller-manager": CLIENT_QPS + NODE_GRACE,
        "kube-scheduler": CLIENT_QPS,
        # not a log line per lease renewal; more workers; longer leases (above)
        "kwok": ["--v=WARN", f"--config={workdir / 'kwok-config.yaml'}",
                 f"--node-lease-duration-seconds={LEASE_SECONDS}"],
        # 15,000 realistic nodes are 400 MB, and each write keeps a revision until the API
        # server compacts them (every 5 minutes): past etcd's default 2 GiB quota
        "etcd": ["--quota-backend-bytes=8589934592"],
        "kube-apiserver": [f"--audit-policy-file={workdir / 'audit-policy.yaml'}",
                           f"--audit-log-path={audit}", "--audit-log-format=json",
                           "--audit-log-maxbackup=0", "--audit-log-maxsize=0"],
    }
    faults = choose_faults(nodes, _percent(args.crash_looping), _percent(args.not_ready))
    not_ready = sum(1 for f in faults.values() if f == "notready")
    doc: dict[str, Any] = {"nodes": nodes, "node_shape": args.node_shape,
                           "rate_per_s": args.rate,
                           "crash_looping": sum(1 for f in faults.values() if f == "crash"),
                           "not_ready": not_ready,
                           "operator_src": str(args.operator_src),
                           "max_concurrent": args.max_concurrent, "client_qps": CLIENT_QPS,
                           "lease_seconds": LEASE_SECONDS, "go_memory_limits": GO_MEMORY_LIMITS,
                           "load": {"start": os.getloadavg()}}
    cluster = Cluster(workdir / "cluster", nodes=0, extra_args=extra, timeout=300,
                      extra_env={k: {"GOMEMLIMIT": v} for k, v in GO_MEMORY_LIMITS.items()})
    operator: OperatorProcess | None = None
    sampler: Sampler | None = None
    try:
        cluster.start()
        api = Api(cluster)
        install_crds(cluster)
        api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": NAMESPACE}})
        doc["nodes_ready_s"] = round(create_nodes(api, cluster, nodes, args.node_shape), 1)
        doc["node_json_bytes"] = len(json.dumps(api.call("GET", "/api/v1/nodes/bench-00000"),
                                                separators=(",", ":")))
        message = real_result_message(workdir, args.verdict)
        # The token is static in the file (a pod's is refreshed by the kubelet): minted now,
        # after the nodes (15,000 take half an hour), and valid for every wait of the run.
        # A token minted before the nodes expired mid-run at 15,000 nodes (401, operator gone).
        kubeconfig = service_account_kubeconfig(cluster, NAMESPACE, workdir / "sa.kubeconfig",
                                                seconds=token_seconds(args.timeout))
        env = {"KUBECONFIG": str(kubeconfig), "THPCHECK_STATUS_INTERVAL": "5",
               "THPCHECK_DEBOUNCE": "1", "THPCHECK_EMPTY_RESULT_GRACE": "3600",
               "PYTHONPATH": str(args.operator_src.resolve())}
        operator = ProfiledOperator(cluster, NAMESPACE, workdir / "logs", extra_env=env,
                                    profile=workdir / "operator.prof" if args.profile else None)
        launched, launched_at = time.monotonic(), datetime.now(UTC)
        operator.start(timeout=900)
        assert operator.process is not None
        pid = operator.process.pid
        sampler = Sampler(pid)
        doc["operator_healthy_s"] = round(time.monotonic() - launched, 1)
        # kopf answers /healthz at once but handles nothing until every watched object is
        # indexed: wait until the operator watches nodes (its listing is done: a process
        # waiting for a 100 MB list looks idle too) and then until it is idle, so the
        # start-up is not counted in the run.
        wait_requested(audit, "watch", "nodes", launched_at, args.timeout)
        doc["operator_start_s"] = round(wait_idle(pid, launched, args.timeout), 1)
        doc["operator_start_cpu_s"] = round(proc_cpu_s(pid), 1)
        doc["operator_rss_mib_after_start"] = round(proc_status_kib(pid, "VmRSS") / 1024, 1)
        doc["operator_peak_rss_mib_start"] = round(proc_status_kib(pid, "VmHWM") / 1024, 1)
        doc["load"]["before_check"] = os.getloadavg()
        before = request_totals(api.text("/metrics"))
        cpu_before = proc_cpu_s(pid)
        servers_before = server_cpu(cluster)
        doc["operator_rss_mib_idle"] = round(proc_status_kib(pid, "VmRSS") / 1024, 1)
        since = datetime.now(UTC)
        started = time.monotonic()
        api.call("POST", CHECKS_PATH, {
            "apiVersion": names.API_VERSION, "kind": names.CHECK_KIND,
            "metadata": {"name": CHECK},
            "spec": {"nodeSelector": {NODE_LABEL: "1"}, "paths": ["/var/lib/thpcheck"],
                     "maxConcurrent": args.max_concurrent}})
        selector = f"{names.CHECK_LABEL}={names.label_value(CHECK)}"
        injector = Injector(api, selector, message, args.rate, nodes, faults=faults).start()
        try:
            wait_for(lambda: len(injector.injected) + len(injector.errors) >= nodes,
                     args.timeout, "every result injected", interval=0.2)
        except WaitTimeout:
            raise RuntimeError(f"only {len(injector.injected)} of {nodes} results injected "
                               f"after {args.timeout:.0f}s") from None
        last = max(injector.injected.values())
        first = min(injector.injected.values())
        complete, status = (wait_settled(api, nodes, not_ready, args.timeout) if faults
                            else wait_complete(api, nodes, args.timeout))
        # Events are posted in the background: count the writes once they have all landed
        doc["events_landed_after_complete_s"], doc["operator_events"] = wait_events_landed(
            api, args.timeout)
        time.sleep(args.tail)
        injector.stop.set()
        after = request_totals(api.text("/metrics"))
        until = datetime.now(UTC)
        cpu_after = proc_cpu_s(pid)
        servers_after = server_cpu(cluster)
        doc["load"]["end"] = os.getloadavg()
        doc["operator_peak_rss_mib"] = round(proc_status_kib(pid, "VmHWM") / 1024, 1)
        doc["operator_cpu_s_run"] = round(cpu_after - cpu_before, 1)
        doc["operator_cpu_s_total"] = round(cpu_after, 1)
        doc["server_cpu_s_run"] = {k: round(v - servers_before.get(k, 0.0), 1)
                                   for k, v in servers_after.items()}
        doc["server_peak_rss_mib"] = {s.name: round(proc_status_kib(s.pid, "VmHWM") / 1024)
                                      for s in cluster.servers if s.alive()}
        sampler.stop.set()
        doc["operator_rss_series"] = sampler.samples
        doc["timeline_s"] = {
            "first_check_pod": _rel(injector.first_check_pod, started),
            "all_check_pods": _rel(injector.all_check_pods, started),
            "first_result_injected": _rel(first, started),
            "last_result_injected": _rel(last, started),
            "complete": _rel(complete, started),
        }
        doc["settle_s"] = round(complete - last, 1) if complete else None
        with contextlib.suppress(RuntimeError, KeyError):
            created = api.call("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/"
                               f"{names.agent_daemonset_name(CHECK)}")["metadata"]
            doc["timeline_s"]["daemonset_created"] = round((datetime.fromisoformat(
                created["creationTimestamp"].replace("Z", "+00:00")) - since).total_seconds())
        doc["node_not_ready_events"] = not_ready_events(api, since.replace(microsecond=0))
        doc["injection_errors"] = injector.errors[:20]
        doc["final_status"] = {k: status.get(k) for k in (
            "phase", "nodes", "checked", "affected", "notAffected", "susceptible", "unknown",
            "errors")}
        doc["final_conditions"] = {c["type"]: f"{c['status']} {c['reason']}: {c['message']}"
                                   for c in status.get("conditions") or []
                                   if c["type"] in ("Progressing", "Degraded")}
        doc["runs_by_outcome"] = _runs(operator.metrics())
        doc["verdict"] = json.loads(message)["verdict"]
        everyone = difference(after, before)
        operator_own = audit_counts(audit, since, until)
        doc["apiserver_requests"] = {f"{v} {r}": c for (v, r), c in sorted(everyone.items())}
        doc["apiserver_requests_by_verb"] = by_verb(everyone)
        doc["operator_requests"] = {f"{v} {r}": c for (v, r), c in sorted(operator_own.items())}
        doc["operator_requests_by_verb"] = by_verb(operator_own)
        writes = writes_of(operator_own)
        doc["operator_writes"] = writes
        doc["operator_writes_per_node"] = round(writes / nodes, 3)
        # The FailedMount check's reads (one list per namespace, not per stuck pod).
        doc["operator_event_lists"] = operator_own.get(("list", "events"), 0)
        doc["operator_requests_per_node_by_verb"] = {
            v: round(c / nodes, 3) for v, c in by_verb(operator_own).items()}
        doc["apiserver_requests_per_node_by_verb"] = {
            v: round(c / nodes, 3) for v, c in by_verb(everyone).items()}
        doc["operator_metrics_writes"] = _operator_writes(operator.metrics())
        doc["operator_log_warnings"] = _log_warnings(operator.log)
        doc["per_object_kib"] = object_costs(api)
        if args.aftermath:  # after every figure above: they are not affected
            doc["relist"] = relist_phase(cluster, api, operator, audit, nodes, args.timeout)
            doc["restart_with_everything"] = restart_phase(api, operator, audit, nodes,
                                                           args.timeout)
        return doc
    except BaseException as exc:  # keep what was measured: a long run is costly to repeat
        doc["failed"] = f"{type(exc).__name__}: {exc}"
        if sampler is not None:
            doc["operator_rss_series"] = sampler.samples
        if operator is not None:
            doc["operator_log_tail"] = operator.tail(40)
        partial = OUT / f"operator-scale-{args.node_shape}-{nodes}.failed.json"
        partial.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"run failed ({doc['failed']}); what was measured: {partial}", file=sys.stderr)
        raise
    finally:
        if operator is not None:
            operator.stop(timeout=60)
        cluster.stop()
        doc["load"]["after_stop"] = os.getloadavg()


def _rel(value: float | None, start: float) -> float | None:
    return None if value is None else round(value - start, 1)


def _operator_writes(metrics: str) -> dict[str, float]:
    found = {}
    for line in metrics.splitlines():
        if line.startswith("thpcheck_api_writes_total{"):
            labels, _, value = line.rpartition(" ")
            found[labels[len("thpcheck_api_writes_total"):]] = float(value)
    return found


def _percent(text: str) -> float:
    return float(text.rstrip("%") or 0)


def _runs(metrics: str) -> dict[str, float]:
    found = {}
    for line in metrics.splitlines():
        match = re.match(r'thpcheck_runs_total\{check="[^"]*",outcome="(\w+)"\} (\S+)', line)
        if match:
            found[match[1]] = float(match[2])
    return found


def _log_lines(log: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace").splitlines()
    return []


def _log_warnings(log: Path, after: int = 0) -> list[str]:
    """The first warnings and errors of the operator's log, from line ``after`` on."""
    lines = []
    for line in _log_lines(log)[after:]:
        if '"warning"' in line or '"error"' in line or "Forbidden" in line:
            lines.append(line[:300])
    return lines[:20]


def print_summary(doc: Mapping[str, Any]) -> None:
    load = doc["load"]
    print(f"\n{doc['nodes']} {doc['node_shape']} nodes ({doc['node_json_bytes']} bytes of JSON "
          f"each), maxConcurrent {doc['max_concurrent']}, "
          f"{doc['rate_per_s']} results/s; load at start {_load(load['start'])}, "
          f"before check {_load(load.get('before_check'))}, end {_load(load.get('end'))}")
    timeline = doc["timeline_s"]
    print(f"  nodes Ready in {doc['nodes_ready_s']} s; after the ThpCheck was created: "
          f"DaemonSet {timeline.get('daemonset_created')} s, first check pod "
          f"{timeline['first_check_pod']} s, all {timeline['all_check_pods']} s, "
          f"results {timeline['first_result_injected']}-{timeline['last_result_injected']} s, "
          f"complete {timeline['complete']} s")
    print(f"  settle (last result -> complete status): {doc['settle_s']} s; status "
          f"{doc['final_status']}; NodeNotReady events {doc['node_not_ready_events']}")
    if doc.get("crash_looping") or doc.get("not_ready"):
        print(f"  faults: {doc['crash_looping']} crash-looping check pods, {doc['not_ready']} "
              f"nodes NotReady mid-run; runs by outcome {doc['runs_by_outcome']}")
        for kind, text in doc["final_conditions"].items():
            print(f"  {kind}: {text[:400]}")
    print(f"  operator start with {doc['nodes']} nodes: healthy in {doc['operator_healthy_s']} "
          f"s, idle (everything indexed) after {doc['operator_start_s']} s and "
          f"{doc['operator_start_cpu_s']} CPU s; RSS then {doc['operator_rss_mib_after_start']} "
          f"MiB, peak {doc['operator_peak_rss_mib_start']} MiB")
    print(f"  operator: peak RSS {doc['operator_peak_rss_mib']} MiB (idle "
          f"{doc['operator_rss_mib_idle']}), CPU {doc['operator_cpu_s_run']} s in the run, "
          f"{doc['operator_cpu_s_total']} s total")
    print(f"  operator writes per node: {doc['operator_writes_per_node']} "
          f"({doc['operator_writes']} writes); requests per node by verb: "
          f"{doc['operator_requests_per_node_by_verb']}")
    print(f"  operator Events: {doc['operator_events']}, the last landed "
          f"{doc['events_landed_after_complete_s']} s after the status was complete")
    print(f"  operator requests: {doc['operator_requests']}; list events: "
          f"{doc.get('operator_event_lists')}")
    print(f"  all clients, per node by verb: {doc['apiserver_requests_per_node_by_verb']}")
    print(f"  server CPU s in the run: {doc['server_cpu_s_run']}; peak RSS MiB "
          f"{doc['server_peak_rss_mib']}")
    for what, cost in doc.get("per_object_kib", {}).items():
        print(f"  a {what}: {cost.get('json_kib')} KiB of JSON, {cost.get('parsed_kib')} KiB "
              f"parsed, {cost.get('view_kib')} KiB as the operator's view")
    if doc["injection_errors"] or doc["operator_log_warnings"]:
        print(f"  injection errors: {doc['injection_errors'][:3]}; operator warnings: "
              f"{doc['operator_log_warnings'][:3]}")
    if "relist" in doc:
        print_aftermath(doc)


def print_aftermath(doc: Mapping[str, Any]) -> None:
    relist, restart = doc["relist"], doc["restart_with_everything"]
    print(f"  re-list (kube-apiserver restarted, etcd compacted): RSS {relist['rss_mib_before']}"
          f" -> peak {relist['peak_rss_mib']} -> {relist['rss_mib_after']} MiB once idle "
          f"({relist['idle_after_s']} s, {relist['cpu_s']} CPU s; VmHWM "
          f"{relist['hwm_mib_before']} -> {relist['hwm_mib_after']} MiB); lists "
          f"{relist['lists']}{'; NOT re-listed: ' if relist['not_relisted'] else ''}"
          f"{relist['not_relisted'] or ''}")
    for name, phase in (("re-list", relist), ("restart", restart)):
        print(f"    after the {name}: healthy {phase['healthy']}, status {phase['status']} "
              f"(still complete: {phase['still_complete']}), operator writes "
              f"{phase['writes']}; warnings {phase['log_warnings'][:3]}")
    print(f"  operator restarted with {doc['nodes']} check pods and results present: healthy in "
          f"{restart['healthy_s']} s, idle after {restart['idle_after_s']} s and "
          f"{restart['cpu_s']} CPU s; RSS then {restart['rss_mib_after']} MiB, peak "
          f"{restart['peak_rss_mib']} MiB; lists {restart['lists']}")


def _load(values: Iterable[float] | None) -> str:
    return "-" if values is None else "/".join(f"{v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="100,1000,5000",
                        help="comma-separated node counts, one fresh cluster each")
    parser.add_argument("--node-shape", choices=node_shapes.SHAPES, default="thin",
                        help="kwok's thin nodes, or nodes shaped like a real cloud node "
                        "(benchmarks/node_shapes.py; default thin)")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="results injected per second (default 100)")
    parser.add_argument("--max-concurrent", default="10%",
                        help="the ThpCheck's spec.maxConcurrent (default 10%%, the CRD's)")
    parser.add_argument("--crash-looping", default="0%",
                        help="share of check pods that crash-loop instead of finishing (e.g. 2%%)")
    parser.add_argument("--not-ready", default="0%",
                        help="share of nodes that go NotReady as their check starts (e.g. 1%%)")
    parser.add_argument("--verdict", choices=("unknown", "susceptible", "error"), default=None,
                        help="every node's result says this instead of this machine's real "
                        "verdict (a first verdict other than not-affected posts an Event per "
                        "node; default: the real one)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--tail", type=float, default=5.0,
                        help="seconds to wait, once the operator's Events stop growing, before "
                             "scraping metrics")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the clusters' files here (default: a temp dir, removed)")
    parser.add_argument("--operator-src", type=Path, default=REPO / "operator",
                        help="directory holding the thpcheck package the operator runs "
                        "(default: this tree's; another version for before/after figures)")
    parser.add_argument("--aftermath", action="store_true",
                        help="once the run is measured: force every watch of the operator to "
                        "list again (kube-apiserver restarted, etcd compacted), then restart the "
                        "operator with every check pod and result present; its memory, CPU and "
                        "writes in each")
    parser.add_argument("--profile", action="store_true",
                        help="run the operator under cProfile (operator.prof in the work dir)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="thpcheck-scale-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups
    try:
        for count in (int(n) for n in args.nodes.split(",")):
            doc = run_one(count, args, base / f"{args.node_shape}-{count}")
            doc["machine"] = {"nproc": os.cpu_count(), "kernel": os.uname().release}
            out = OUT / f"operator-scale-{args.node_shape}-{count}.json"
            out.write_text(json.dumps(doc, indent=2) + "\n")
            print_summary(doc)
            sys.stdout.flush()
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

