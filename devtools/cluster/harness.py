"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes), all bound to 127.0.0.1 on free ports.

Used by the pytest fixtures (`tests/cluster/fixtures.py`), by `scripts/cluster up|down` and by
the benchmarks.
The binaries come from `devtools/cluster/tools/build.sh` (built from Kubernetes' Go modules into
a cache outside the repo). Everything the cluster writes stays under its work dir.

    with Cluster(workdir, nodes=3) as c:
        c.kubectl("get", "nodes")
        c.add_node("n1", labels={"x": "y"}, node_info={"kernelVersion": "6.12.95"})
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from devtools.cluster.pki import Pki, issue_client_cert, write_pki
from devtools.proc import Server, ServerDied, WaitTimeout, spawn, stop_all, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = Path(__file__).resolve().parent / "tools"
BUILD_SCRIPT = TOOLS_DIR / "build.sh"
PINS_FILE = TOOLS_DIR / "pins.env"

SERVERS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
CORE_BINARIES = (*SERVERS, "kubectl", "kwokctl", "helm")
NODE_BINARIES = ("kubelet", "kube-proxy")
KWOK_STAGES = "kwok-stages.yaml"  # written by build.sh next to bin/ (share/)

SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"
LOOPBACK = "127.0.0.1"
# kwok manages only nodes carrying this annotation, so a real kubelet node can join later.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
FAKE_NODE_PREFIX = "kwok-node-"
STATE_FILE = "state.json"
PORT_ATTEMPTS = 3


class ClusterError(RuntimeError):
    """The cluster could not be built, started or used."""


class BinariesMissing(ClusterError):
    """The binaries have not been built for the current pins."""


# ---------------------------------------------------------------------------------------------
# Pins and binaries


def read_pins() -> dict[str, str]:
    """The KEY=VALUE pins of tools/pins.env (the single source of tool versions)."""
    pins: dict[str, str] = {}
    for line in PINS_FILE.read_text().splitlines():
        m = re.fullmatch(r"\s*([A-Z0-9_]+)=(\S+)\s*", line)
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def pinned_k8s_version() -> str:
    """E.g. "v1.36.3": what the apiserver's /version must report."""
    return read_pins()["K8S_VERSION"]


def default_bin_dir() -> Path:
    """Where build.sh puts the binaries for the current pins (THPCHECK_K8S_BIN overrides).

    Raises BinariesMissing if the path cannot even be computed (e.g. no Go on PATH).
    """
    override = os.environ.get("THPCHECK_K8S_BIN")
    if override:
        return Path(override)
    try:
        out = subprocess.run([str(BUILD_SCRIPT), "--print-bin-dir"], capture_output=True,
                             text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise BinariesMissing(f"cannot locate the cluster binaries: {detail.strip()}") from exc
    return Path(out.stdout.strip().splitlines()[-1])


def missing_binaries(bin_dir: Path, names: Iterable[str] = CORE_BINARIES) -> list[str]:
    """Names of required files absent from `bin_dir` (kwok's stages file included)."""
    missing = [n for n in names if not os.access(bin_dir / n, os.X_OK)]
    if not (bin_dir.parent / "share" / KWOK_STAGES).is_file():
        missing.append(f"../share/{KWOK_STAGES}")
    return missing


def build_binaries(with_node: bool = False) -> Path:
    """Run build.sh (a no-op when up to date) and return the bin dir."""
    argv = [str(BUILD_SCRIPT), *(["--with-node"] if with_node else [])]
    out = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        raise BinariesMissing(f"{BUILD_SCRIPT.name} failed with exit code {out.returncode} "
                              "(its output is above)")
    return Path(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Small helpers


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1, so clusters never collide."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               servers: Sequence[Server] = (), interval: float = 0.25) -> None:
    """Poll `check` until true; fail early, with its log, if a watched server dies. Errors of
    a server still starting count as not yet; every failure is a ClusterError."""
    try:
        wait_for(check, timeout, what, interval=interval, servers=servers,
                 tolerate=(OSError, ValueError, ClusterError, http.client.HTTPException))
    except ServerDied as exc:
        raise ClusterError(str(exc)) from None
    except WaitTimeout:
        msg = f"timed out after {timeout:.0f}s waiting for {what}"
        raise ClusterError(servers[-1].describe_failure(msg) if servers else msg) from None


def _https_ok(port: int, path: str) -> bool:
    """True if a self-signed loopback HTTPS endpoint (kcm, scheduler) answers 200."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(LOOPBACK, port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


def _http_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: Pki, user: str) -> Path:
    """A self-contained kubeconfig (certs embedded) for client identity `user`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "thpcheck", "cluster": {
            "server": server, "certificate-authority-data": _b64(pki.ca_crt)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": _b64(pki.crt(user)),
            "client-key-data": _b64(pki.key(user))}}],
        "contexts": [{"name": "thpcheck", "context": {"cluster": "thpcheck", "user": user}}],
        "current-context": "thpcheck",
    }
    path.touch(mode=0o600)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def node_manifest(name: str, *, kubelet_port: int, kubelet_version: str,
                  labels: Mapping[str, str] | None = None,
                  annotations: Mapping[str, str] | None = None,
                  node_info: Mapping[str, str] | None = None,
                  taints: Sequence[Mapping[str, str]] | None = None,
                  capacity: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A kwok-managed Node with status set at creation (Nodes accept status on create).

    kwok's node-initialize stage keeps any nodeInfo field already set, so a test's
    kernelVersion/osImage survive; its addresses point at kwok's kubelet API on loopback.
    """
    caps = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi",
            **(capacity or {})}
    info = {"architecture": "amd64", "operatingSystem": "linux",
            "kubeletVersion": kubelet_version, **(node_info or {})}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "type": "kwok", **(labels or {})},
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1],
                            "node.alpha.kubernetes.io/ttl": "0", **(annotations or {})},
        },
        "spec": {"taints": [dict(t) for t in taints]} if taints else {},
        "status": {
            "capacity": caps,
            "allocatable": caps,
            "nodeInfo": info,
            "addresses": [{"type": "InternalIP", "address": LOOPBACK},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        },
    }


def node_ready(node: Mapping[str, Any]) -> bool:
    conds = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


# ---------------------------------------------------------------------------------------------
# The cluster


class Cluster:
    """One control plane plus kwok, rooted at `workdir`.

    `start()` returns once the apiserver is ready, the controllers and scheduler are healthy,
    the default ServiceAccount exists and `nodes` fake nodes are Ready. `stop()` ends every
    process it started. With `detach=True` the servers outlive this Python process; a later
    `Cluster.load(workdir).stop()` (what `scripts/cluster down` does) stops them.
    """

    def __init__(self, workdir: Path, *, bin_dir: Path | None = None, nodes: int = 3,
                 detach: bool = False, timeout: float = 180.0,
                 extra_args: Mapping[str, Sequence[str]] | None = None,
                 extra_env: Mapping[str, Mapping[str, str]] | None = None) -> None:
        for what, given in (("extra_args", extra_args), ("extra_env", extra_env)):
            unknown = sorted(set(given or {}) - set(SERVERS))
            if unknown:
                raise ClusterError(f"{what} for unknown servers {unknown}; known: {SERVERS}")
        self.workdir = workdir.resolve()
        # Opt-in flags per server (e.g. {"kube-controller-manager": ["--kube-api-qps=500"]}),
        # appended after the harness's own: a repeated flag overrides (the last one wins).
        self.extra_args = {name: list(args) for name, args in (extra_args or {}).items()}
        # Opt-in environment per server (e.g. {"kwok": {"GOMEMLIMIT": "2GiB"}}).
        self.extra_env = {name: dict(env) for name, env in (extra_env or {}).items()}
        self.bin_dir = (bin_dir or default_bin_dir()).resolve()
        self.initial_nodes = nodes
        self.detach = detach
        self.timeout = timeout
        self.servers: list[Server] = []
        self.ports: dict[str, int] = {}
        self.pki = Pki(self.workdir / "pki")
        self.k8s_version = pinned_k8s_version()
        self._ssl: ssl.SSLContext | None = None

    # -- paths and environment ------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """The admin (system:masters) kubeconfig."""
        return self.workdir / "kubeconfig"

    @property
    def server_url(self) -> str:
        return f"https://{LOOPBACK}:{self.ports['apiserver']}"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    def bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for clients (kubectl, helm, kopf) that keeps their caches in the work
        dir: KUBECONFIG, PATH with the bin dir first, KUBECACHEDIR and HELM_* homes."""
        env = dict(os.environ if base is None else base)
        state = self.workdir / "client"
        env.update({
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "KUBECACHEDIR": str(state / "kube-cache"),
            "HELM_CACHE_HOME": str(state / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(state / "helm" / "config"),
            "HELM_DATA_HOME": str(state / "helm" / "data"),
        })
        return env

    def _server_env(self) -> dict[str, str]:
        """Servers get HOME/TMPDIR inside the work dir: nothing they write escapes it."""
        home = self.workdir / "home"
        tmp = self.workdir / "tmp"
        home.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                "TMPDIR": str(tmp), "KWOK_WORKDIR": str(home / ".kwok"), "LANG": "C.UTF-8"}

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Cluster:
        """Start everything and wait until usable; on failure stop what started and raise."""
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise BinariesMissing(f"missing in {self.bin_dir}: {', '.join(missing)}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start_once()
                break
            except ClusterError as exc:
                # Free ports are picked then released, so another process can take one in
                # between; only that race is worth a retry with fresh ports.
                if attempt == PORT_ATTEMPTS or "address already in use" not in str(exc):
                    raise
                shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        self.save_state()
        return self

    def _start_once(self) -> None:
        try:
            self._prepare()
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            self._start_kwok()
            self._wait_workloads_possible()
            self.scale_nodes(self.initial_nodes)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every server this cluster started (TERM, then KILL), newest first."""
        stop_all(self.servers)
        self.servers = []
        state = self.workdir / STATE_FILE
        if state.exists():
            state.unlink()

    def _prepare(self) -> None:
        names = ("etcd-client", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self._ssl = None
        write_pki(self.pki.dir)
        write_kubeconfig(self.kubeconfig, self.server_url, self.pki, "admin")
        for user in ("kube-controller-manager", "kube-scheduler", "kwok"):
            write_kubeconfig(self.workdir / f"{user}.kubeconfig", self.server_url, self.pki, user)
        shutil.copyfile(self.bin_dir.parent / "share" / KWOK_STAGES, self.workdir / KWOK_STAGES)

    def _spawn(self, name: str, args: Sequence[str]) -> Server:
        server = spawn(name, [self.bin(name), *args, *self.extra_args.get(name, ())],
                       self.logs_dir / f"{name}.log",
                       {**self._server_env(), **self.extra_env.get(name, {})}, self.workdir,
                       detach=self.detach)
        self.servers.append(server)
        return server

    def _start_etcd(self) -> None:
        client = f"http://{LOOPBACK}:{self.ports['etcd-client']}"
        peer = f"http://{LOOPBACK}:{self.ports['etcd-peer']}"
        server = self._spawn("etcd", [
            "--name=thpcheck", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=thpcheck={peer}", "--initial-cluster-state=new",
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        wait_until(lambda: _http_json(self.ports["etcd-client"], "/health").get("health")
                   == "true", self.timeout, "etcd /health", [server])

    def _start_apiserver(self) -> None:
        p = self.pki
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://{LOOPBACK}:{self.ports['etcd-client']}",
            f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}",
            # Endpoints may not hold loopback IPs, so the lease reconciler would fail every 10s
            # publishing 127.0.0.1 for the `kubernetes` Service; nothing in-cluster needs it
            # while nodes are fake. A real node (kube-proxy) will need a routable address.
            "--endpoint-reconciler-type=none",
            f"--secure-port={self.ports['apiserver']}",
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={p.crt('apiserver')}", f"--tls-private-key-file={p.key('apiserver')}",
            f"--client-ca-file={p.ca_crt}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            f"--kubelet-client-certificate={p.crt('apiserver-kubelet-client')}",
            f"--kubelet-client-key={p.key('apiserver-kubelet-client')}",
            f"--kubelet-certificate-authority={p.ca_crt}",
            "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false", "--v=1",
        ])
        wait_until(lambda: self._api_status("/readyz") == 200, self.timeout,
                   "kube-apiserver /readyz", self._watch("kube-apiserver"))

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (what kube-apiserver does every
        5 minutes): a watch resumed from an older resourceVersion then gets 410 Gone, however
        the API server serves it. Returns the revision. Uses etcd's JSON gateway."""
        def call(path: str, body: dict[str, Any]) -> Any:
            conn = http.client.HTTPConnection(LOOPBACK, self.ports["etcd-client"], timeout=30)
            try:
                conn.request("POST", path, json.dumps(body),
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
            if response.status != 200:
                raise ClusterError(f"etcd {path}: HTTP {response.status}: {data[:300]!r}")
            return json.loads(data)

        key = base64.b64encode(b"/registry/").decode()
        revision = int(call("/v3/kv/range", {"key": key, "limit": 1})["header"]["revision"])
        call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver (SIGTERM, as a control-plane upgrade does) and start it again
        with the same flags; return once it is ready. Every client's watch ends, and the new
        server's watch cache starts at etcd's current revision, so a watch resumed from an
        older resourceVersion gets 410 Gone."""
        index = next(i for i, s in enumerate(self.servers) if s.name == "kube-apiserver")
        old = self.servers[index]
        old.stop()
        self.servers[index] = spawn(old.name, old.argv, old.log, self._server_env(),
                                    self.workdir, detach=self.detach)
        self._ssl = None
        wait_until(lambda: self._api_status("/readyz") == 200, self.timeout,
                   "kube-apiserver /readyz after a restart", self._watch("kube-apiserver"))
        self.save_state()

    def _start_controllers(self) -> None:
        p = self.pki
        common = [f"--bind-address={LOOPBACK}", "--leader-elect=false", "--profiling=false"]
        kcm_kc = self.workdir / "kube-controller-manager.kubeconfig"
        self._spawn("kube-controller-manager", [
            *common, f"--secure-port={self.ports['kcm']}", f"--cert-dir={self.workdir / 'kcm'}",
            f"--kubeconfig={kcm_kc}", f"--authentication-kubeconfig={kcm_kc}",
            f"--authorization-kubeconfig={kcm_kc}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p.sa_key}", f"--root-ca-file={p.ca_crt}",
            f"--cluster-signing-cert-file={p.ca_crt}", f"--cluster-signing-key-file={p.ca_key}",
            "--enable-garbage-collector=true", "--controllers=*",
            # Its default, /usr/libexec/kubernetes/..., would be created outside the work dir.
            f"--flex-volume-plugin-dir={self.workdir / 'kcm' / 'flexvolume'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ])
        sched_kc = self.workdir / "kube-scheduler.kubeconfig"
        self._spawn("kube-scheduler", [
            *common, f"--secure-port={self.ports['scheduler']}",
            f"--cert-dir={self.workdir / 'scheduler'}",
            f"--kubeconfig={sched_kc}", f"--authentication-kubeconfig={sched_kc}",
            f"--authorization-kubeconfig={sched_kc}",
        ])
        wait_until(lambda: _https_ok(self.ports["kcm"], "/healthz"), self.timeout,
                   "kube-controller-manager /healthz", self._watch("kube-controller-manager"))
        wait_until(lambda: _https_ok(self.ports["scheduler"], "/healthz"), self.timeout,
                   "kube-scheduler /healthz", self._watch("kube-scheduler"))

    def _start_kwok(self) -> None:
        p = self.pki
        port = self.ports["kwok"]
        self._spawn("kwok", [
            f"--kubeconfig={self.workdir / 'kwok.kubeconfig'}",
            f"--config={self.workdir / KWOK_STAGES}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION[0]}={KWOK_ANNOTATION[1]}",
            f"--cidr={POD_CIDR}", f"--node-ip={LOOPBACK}",
            f"--node-port={port}", f"--server-address={LOOPBACK}:{port}",
            f"--tls-cert-file={p.crt('kwok-serving')}",
            f"--tls-private-key-file={p.key('kwok-serving')}",
            "--node-lease-duration-seconds=40",
        ])

    def _watch(self, blamed: str) -> list[Server]:
        """All servers, `blamed` last: wait_until shows the last one's log on a timeout."""
        return sorted(self.servers, key=lambda s: s.name == blamed)

    def _wait_workloads_possible(self) -> None:
        """Pods are refused until the default ServiceAccount exists (kcm creates it)."""
        wait_until(lambda: self._api_status("/api/v1/namespaces/default/serviceaccounts/default")
                   == 200, self.timeout, "the default ServiceAccount",
                   self._watch("kube-controller-manager"))

    # -- state for detached clusters ----------------------------------------------------------

    def save_state(self) -> None:
        """Record pids (with start times), ports and paths so `down` can find them later."""
        state = {"version": 1, "bin_dir": str(self.bin_dir), "ports": self.ports,
                 "kubeconfig": str(self.kubeconfig), "k8s_version": self.k8s_version,
                 "servers": [s.to_state() for s in self.servers]}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path) -> Cluster:
        """Re-attach to a cluster started (possibly detached) by another process."""
        data = json.loads((workdir / STATE_FILE).read_text())
        cluster = cls(workdir, bin_dir=Path(data["bin_dir"]), nodes=0)
        cluster.ports = {k: int(v) for k, v in data["ports"].items()}
        cluster.servers = [Server.from_state(s) for s in data["servers"]]
        return cluster

    def user_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig for a client-certificate identity `user` in `groups` (O=), signed by
        the cluster CA: for RBAC tests as a real user, or a real kubelet (system:node:N)."""
        stem = "user-" + re.sub(r"[^A-Za-z0-9_.-]", "_", user)
        issue_client_cert(self.pki, stem, user, groups)
        return write_kubeconfig(self.workdir / f"{stem}.kubeconfig", self.server_url,
                                self.pki, stem)

    def running_servers(self) -> list[Server]:
        return [s for s in self.servers if s.alive()]

    # -- API access -----------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPSConnection:
        """An HTTPS connection as admin, verifying the apiserver against our CA."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.pki.ca_crt))
            self._ssl.load_cert_chain(str(self.pki.crt("admin")), str(self.pki.key("admin")))
        return http.client.HTTPSConnection(LOOPBACK, self.ports["apiserver"],
                                           context=self._ssl, timeout=30)

    def _api_status(self, path: str) -> int:
        conn = self._connection()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def api(self, method: str, path: str, body: Any = None,
            content_type: str = "application/json") -> Any:
        """One admin REST call; returns the decoded JSON, raises ClusterError on >= 400."""
        conn = self._connection()
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = content_type
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            raise ClusterError(f"{method} {path}: HTTP {resp.status}: {data.decode()[:500]}")
        return json.loads(data) if data else None

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl as admin; raises ClusterError with its stderr if `check`."""
        return self._run("kubectl", args, input, check, timeout)

    def helm(self, *args: str, input: str | None = None, check: bool = True,
             timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run the pinned helm against this cluster, with its homes in the work dir."""
        return self._run("helm", args, input, check, timeout)

    def _run(self, tool: str, args: Sequence[str], input: str | None, check: bool,
             timeout: float) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.bin(tool), *args], input=input, capture_output=True,
                              text=True, env=self.env(), timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise ClusterError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stderr.strip()}")
        return proc

    # -- nodes ----------------------------------------------------------------------------

    def add_node(self, name: str, *, labels: Mapping[str, str] | None = None,
                 node_info: Mapping[str, str] | None = None,
                 annotations: Mapping[str, str] | None = None,
                 taints: Sequence[Mapping[str, str]] | None = None,
                 capacity: Mapping[str, str] | None = None, wait: bool = True,
                 timeout: float = 60.0) -> dict[str, Any]:
        """Create a kwok fake node (Ready, runs pods to Running) and return it.

        `node_info` sets status.nodeInfo fields (kernelVersion, osImage, ...); kwok keeps
        them. `labels` are added to the usual kubernetes.io/{hostname,os,arch} ones.
        """
        manifest = node_manifest(name, kubelet_port=self.ports["kwok"],
                                 kubelet_version=self.k8s_version, labels=labels,
                                 annotations=annotations, node_info=node_info, taints=taints,
                                 capacity=capacity)
        self.api("POST", "/api/v1/nodes", manifest)
        if wait:
            self.wait_nodes_ready([name], timeout)
        node: dict[str, Any] = self.api("GET", f"/api/v1/nodes/{name}")
        return node

    def delete_node(self, name: str, *, wait: bool = True, timeout: float = 60.0) -> None:
        """Delete a node (its pods are then garbage-collected by kube-controller-manager)."""
        self.api("DELETE", f"/api/v1/nodes/{name}")
        if wait:
            wait_until(lambda: self._api_status(f"/api/v1/nodes/{name}") == 404, timeout,
                       f"node {name} to go away", self.servers)

    def fake_nodes(self) -> list[str]:
        """Names of all kwok-managed nodes (from scale_nodes or add_node)."""
        nodes = self.api("GET", "/api/v1/nodes")["items"]
        key, value = KWOK_ANNOTATION
        return sorted(n["metadata"]["name"] for n in nodes
                      if (n["metadata"].get("annotations") or {}).get(key) == value)

    def scale_nodes(self, count: int, timeout: float = 90.0) -> list[str]:
        """Make exactly `count` generic fake nodes kwok-node-0..count-1 exist and be Ready.

        Nodes added with other names through add_node are left alone.
        """
        existing = {n for n in self.fake_nodes() if n.startswith(FAKE_NODE_PREFIX)}
        wanted = {f"{FAKE_NODE_PREFIX}{i}" for i in range(count)}
        for name in sorted(wanted - existing):
            self.add_node(name, wait=False)
        for name in sorted(existing - wanted):
            self.delete_node(name, wait=False)
        self.wait_nodes_ready(sorted(wanted), timeout)
        return sorted(wanted)

    def wait_nodes_ready(self, names: Sequence[str], timeout: float = 60.0) -> None:
        def all_ready() -> bool:
            nodes = {n["metadata"]["name"]: n for n in self.api("GET", "/api/v1/nodes")["items"]}
            return all(name in nodes and node_ready(nodes[name]) for name in names)

        wait_until(all_ready, timeout, f"nodes {', '.join(names) or '(none)'} Ready",
                   self._watch("kwok"))
