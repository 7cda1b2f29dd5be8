"""A real node for the test cluster: kubelet + Debian's containerd, runc and CNI plugins.

Opt-in (the `realnode` tier, see tests/realnode/). It joins a `harness.Cluster` as one real
node that runs containers, so the chart's pods really start from the project's image and the
agent really checks a host filesystem through a hostPath.

    node = RealNode(cluster, workdir, pause_archive=..., image_archives=[...]).start()
    ...
    node.stop()   # leaves no process, mount, link, iptables rule or cgroup behind

Everything stays on this machine and off the network:

- kubelet (built by `build.sh --with-node`, same pins as the control plane) serves on
  127.0.0.1 only (`address`, `healthzBindAddress`), read-only port off; it authenticates
  clients by the cluster CA or a token review and authorizes by SubjectAccessReview. It
  talks to the apiserver on 127.0.0.1 with a static `system:node:<name>` client certificate.
- A private containerd: root, state, sockets, runc root and netns mounts under the work dir;
  CRI streaming server on 127.0.0.1; `sandbox_image` is a pause image built here from
  devtools/cluster/pause.c; images come from `ctr images import`, never from a registry.
- CNI: bridge + host-local on a private bridge without an address (`isGateway: false`),
  no masquerade, no portmap: no iptables rule, no route, and pods reach nothing but
  themselves. The conflist lives in the work dir (/etc/cni is not read); the plugins are
  Debian's in /usr/lib/cni.
- No kube-proxy: in-cluster clients use hostNetwork and the apiserver's 127.0.0.1
  (the serving certificate carries that SAN).

What could change the machine, and how it does not:

- cgroups: containerd and kubelet run in `/<cgroup root>/daemons` and kubelet's
  `cgroupRoot` is `/<cgroup root>` (`thpcheck-realnode-<id>`, created in every v1 hierarchy
  and in the unified one), so every process the node starts - shims and containers included
  - lives in one subtree that `stop()` empties and removes.
- Kernel tunables: kubelet sets vm.overcommit_memory, kernel.panic and kernel.panic_on_oops
  unless `protectKernelDefaults`, which instead refuses to start when they differ. So kubelet
  runs in its own mount namespace where those /proc/sys files are read-only bind mounts of
  the values it expects: it starts, and the host's values never change. That namespace is a
  slave of the host's (`/` is made shared while the node runs, and made private again by
  `stop()`), so filesystems mounted on the host later are seen by kubelet too; kubelet's root
  dir is a peer of the host's (pod volume mounts must reach containerd); /var/log is masked
  there (kubelet creates /var/log/containers, a path it has no flag for).
- iptables: `makeIPTablesUtilChains: false` (kubelet's KUBE-FIREWALL and hint chains).
- Paths outside the work dir that containerd or the pods create anyway (/run/containerd/s
  for shim sockets, /var/lib/cni for libcni's result cache, empty hostPath directories such as
  /lib/modules on a machine without modules, the agent's reservation registry /run/thpcheck)
  are removed again when they did not exist.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devtools.cluster.harness import (
    LOOPBACK,
    Cluster,
    ClusterError,
    free_ports,
    node_ready,
    wait_until,
)
from devtools.proc import Server, spawn

PAUSE_SOURCE = Path(__file__).resolve().parent / "pause.c"
PAUSE_IMAGE = "localhost/thpcheck-pause:1"  # containerd's CRI sandbox_image
CFLAGS = ("-Os", "-Wall", "-Werror", "-static")
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
POD_SUBNET = "10.254.250.0/24"  # on a bridge without an address: reachable from nowhere
CGROUP_FS = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "thpcheck-realnode-"
V1_REQUIRED = ("cpu", "cpuacct", "cpuset", "memory", "pids")  # kubelet's minimum
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "gcc", "unshare",
              "mount", "umount", "ip")
# What kubelet wants (pkg/kubelet/cm: setupKernelTunables), shown to it read-only.
KUBELET_TUNABLES = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
# Created outside the work dir by containerd 1.6 (shim sockets), libcni (result cache),
# containerd's CRI (a missing hostPath becomes an empty directory; the agent mounts
# /lib/modules and /boot) or the chart's pods; removed again if absent before.
STRAY_PATHS = (
    Path("/run/containerd"), Path("/var/lib/cni"), Path("/var/log/containers"),
    Path("/var/log/pods"), Path("/var/lib/kubelet"), Path("/var/lib/containerd"),
    Path("/opt/cni"), Path("/opt/containerd"), Path("/run/netns"), Path("/run/runc"),
    Path("/usr/libexec/kubernetes"), Path("/etc/kubernetes"), Path("/lib/modules"),
    Path("/boot"), Path("/var/lib/thpcheck"), Path("/run/thpcheck"),
)
# Files the agent leaves in a stray path on purpose: its disk reservation registry's lock.
AGENT_FILES = {Path("/run/thpcheck/reservations.lock")}
# kubelet's sockets sit deep under its root dir (.../kubelet/root/pod-resources/kubelet.sock)
# and a unix socket path has at most 107 bytes.
MAX_WORKDIR = 48
THP_KNOB = Path("/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs")
SERVER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RealNodeError(ClusterError):
    """The real node could not be prepared, started, used or cleaned up."""


def _run(*args: str, check: bool = True, timeout: float = 120.0,
         env: Mapping[str, str] | None = None, input: str | None = None,
         ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          check=False, env=None if env is None else dict(env), input=input)
    if check and proc.returncode != 0:
        raise RealNodeError(f"{' '.join(args)} failed ({proc.returncode}): "
                            f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


# ---------------------------------------------------------------------------------------------
# Prerequisites


def missing_prerequisites() -> list[str]:
    """What this machine lacks for a real node, each with its fix; empty when ready."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("needs root (kubelet, containerd, mounts, cgroups)")
    for tool in HOST_TOOLS:
        if shutil.which(tool, path=SERVER_PATH) is None:
            problems.append(f"{tool} not found (apt-get install containerd runc "
                            "containernetworking-plugins gcc libc6-dev util-linux iproute2)")
    for plugin in CNI_PLUGINS:
        if not os.access(CNI_BIN_DIR / plugin, os.X_OK):
            problems.append(f"CNI plugin {CNI_BIN_DIR / plugin} missing "
                            "(apt-get install containernetworking-plugins)")
    hierarchies = v1_hierarchies()
    for controller in V1_REQUIRED:
        if controller not in hierarchies:
            problems.append(f"no cgroup v1 '{controller}' hierarchy under {CGROUP_FS} "
                            "(this tier runs kubelet with the cgroupfs driver on cgroup v1)")
    if default_route_ip() is None:
        problems.append("no IPv4 address on the default-route interface (kubelet's node IP)")
    return problems


def v1_hierarchies() -> dict[str, Path]:
    """Mounted cgroup v1 hierarchies by controller (or name=...), from /proc/self/mounts."""
    found: dict[str, Path] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup":
            for opt in fields[3].split(","):
                if opt in ("rw", "ro") or opt.startswith(("relatime", "no", "clone_")):
                    continue
                found[opt] = Path(_unescape(fields[1]))
    return found


def unified_hierarchy() -> Path | None:
    """The cgroup2 mount of a hybrid host (/sys/fs/cgroup/unified), if any."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(_unescape(fields[1]))
    return None


def cgroup_mounts() -> list[Path]:
    """Every distinct cgroup mount point (v1 hierarchies and cgroup2)."""
    paths = sorted(set(v1_hierarchies().values()))
    unified = unified_hierarchy()
    return [*paths, *([unified] if unified else [])]


def default_route_ip() -> str | None:
    """The IPv4 address of the default-route interface: kubelet's --node-ip (it refuses
    loopback). Only reported in the Node's status; nothing listens on it."""
    try:
        routes = json.loads(_run("ip", "-j", "-4", "route", "show", "default").stdout or "[]")
        for route in routes:
            dev = route.get("dev")
            if not dev:
                continue
            addrs = json.loads(_run("ip", "-j", "-4", "addr", "show", "dev", dev).stdout)
            for link in addrs:
                for info in link.get("addr_info", []):
                    if info.get("family") == "inet" and info.get("local"):
                        return str(info["local"])
    except (RealNodeError, OSError, ValueError):
        return None
    return None


def _unescape(path: str) -> str:
    """Undo the octal escapes of /proc/*/mounts and mountinfo (\\040 is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


# ---------------------------------------------------------------------------------------------
# Host state: what must be the same before and after a node's life


def mount_points() -> list[str]:
    """Mount points of this mount namespace, in mount order (duplicates kept)."""
    return [_unescape(line.split()[4])
            for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def propagation(mount_point: str = "/") -> str:
    """The propagation of a mount point as mountinfo shows it, without peer group numbers:
    "private", "shared", "master" (a slave) or "master,shared"."""
    kinds = "private"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if _unescape(fields[4]) == mount_point:  # the last (topmost) entry wins
            optional = fields[6:fields.index("-")]
            kinds = ",".join(sorted({f.split(":")[0] for f in optional
                                     if f.startswith(("shared:", "master:"))})) or "private"
    return kinds


def link_names() -> list[str]:
    return sorted(json_link["ifname"] for json_link in
                  json.loads(_run("ip", "-j", "link", "show").stdout or "[]"))


def iptables_rules() -> list[str]:
    """iptables-save and ip6tables-save without comments and counters (empty when absent)."""
    lines: list[str] = []
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool, path=SERVER_PATH) is None:
            continue
        out = _run(tool, check=False).stdout
        lines += [f"{tool}: " + re.sub(r"\[\d+:\d+\]", "", ln) for ln in out.splitlines()
                  if ln and not ln.startswith("#")]
    return lines


def top_cgroups() -> list[str]:
    """First-level cgroups of every hierarchy, plus any kubepods cgroup at any depth."""
    found: list[str] = []
    for mount in cgroup_mounts():
        with contextlib.suppress(OSError):
            found += [f"{mount.name}/{p.name}" for p in mount.iterdir() if p.is_dir()]
        for sub in ("kubepods", "kubepods.slice"):
            if (mount / sub).exists():
                found.append(f"{mount.name}/{sub}")
    return sorted(set(found))


def thp_knob() -> str:
    """khugepaged's scan_sleep_millisecs: what the project's mitigation pod changes."""
    try:
        return THP_KNOB.read_text().strip()
    except OSError:
        return "(absent)"


def read_tunables() -> dict[str, str]:
    out = {}
    for name in KUBELET_TUNABLES:
        with contextlib.suppress(OSError):
            out[name] = Path("/proc/sys", name).read_text().strip()
    return out


def daemon_processes() -> list[str]:
    """Command lines of kubelet, kube-proxy, containerd and shim processes on the machine."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            name = os.path.basename(argv[0].decode(errors="replace"))
            if name in ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2"):
                found.append(" ".join(a.decode(errors="replace") for a in argv if a))
    return sorted(found)


@dataclass(frozen=True)
class HostState:
    """A snapshot of what a node could leave behind; compare two with `leaks`."""

    mounts: tuple[str, ...]
    root_propagation: str
    links: tuple[str, ...]
    iptables: tuple[str, ...]
    cgroups: tuple[str, ...]
    strays: tuple[str, ...]
    tunables: tuple[tuple[str, str], ...]
    thp_knob: str
    processes: tuple[str, ...]

    @classmethod
    def capture(cls) -> HostState:
        return cls(mounts=tuple(mount_points()), root_propagation=propagation("/"),
                   links=tuple(link_names()),
                   iptables=tuple(iptables_rules()), cgroups=tuple(top_cgroups()),
                   strays=tuple(str(p) for p in STRAY_PATHS if os.path.lexists(p)),
                   tunables=tuple(sorted(read_tunables().items())), thp_knob=thp_knob(),
                   processes=tuple(daemon_processes()))

    def summary(self) -> str:
        """The numbers the issue asks for: `mount | wc -l`, links, `iptables-save | wc -l`."""
        v4 = sum(1 for r in self.iptables if r.startswith("iptables-save"))
        return (f"mounts={len(self.mounts)} (/ {self.root_propagation}) "
                f"links={','.join(self.links)} "
                f"iptables-save lines={v4} ip6tables-save lines={len(self.iptables) - v4} "
                f"top cgroups={len(self.cgroups)} daemons={len(self.processes)} "
                f"scan_sleep_millisecs={self.thp_knob}")

    def leaks(self, later: HostState) -> dict[str, Any]:
        """What differs in `later` (added and removed), by kind; empty when equal."""
        out: dict[str, Any] = {}
        for name in ("mounts", "links", "iptables", "cgroups", "strays", "processes"):
            before, after = getattr(self, name), getattr(later, name)
            if sorted(before) != sorted(after):
                added = sorted(set(after) - set(before)) or [
                    f"{len(after) - len(before)} more of the same"]
                out[name] = {"added": added, "removed": sorted(set(before) - set(after))}
        if self.root_propagation != later.root_propagation:
            out["root_propagation"] = {"before": self.root_propagation,
                                       "after": later.root_propagation}
        if self.thp_knob != later.thp_knob:
            out["thp_knob"] = {"before": self.thp_knob, "after": later.thp_knob}
        if self.tunables != later.tunables:
            out["tunables"] = {"before": dict(self.tunables), "after": dict(later.tunables)}
        return out


# ---------------------------------------------------------------------------------------------
# The pause image: the project's own program, as an OCI archive for `ctr images import`


def _go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def build_pause_archive(directory: Path, image: str = PAUSE_IMAGE) -> Path:
    """Compile devtools/cluster/pause.c (static) and wrap it as a one-layer OCI image archive.

    Deterministic: the same source and compiler give the same image digest.
    """
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "pause"
    _run("gcc", *CFLAGS, "-o", str(binary), str(PAUSE_SOURCE))
    _run(str(binary), "-v")  # it runs (a static ELF for this machine)
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        _tar_member(layer, "pause", binary.read_bytes(), 0o755)
    layer_bytes = layer_buf.getvalue()
    blobs: dict[str, bytes] = {}
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar",
                  **_blob(blobs, layer_bytes)}
    config = {
        "architecture": _go_arch(), "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created_by": f"gcc {' '.join(CFLAGS)} devtools/cluster/pause.c"}],
    }
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(blobs, json.dumps(config, sort_keys=True).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     **_blob(blobs, json.dumps(manifest, sort_keys=True).encode()),
                     "annotations": {"io.containerd.image.name": image,
                                     "org.opencontainers.image.ref.name": image},
                     "platform": {"architecture": _go_arch(), "os": "linux"}}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}
    archive = directory / "pause.oci.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        _tar_member(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _tar_member(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        for digest, data in sorted(blobs.items()):
            _tar_member(tar, f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
    return archive


# ---------------------------------------------------------------------------------------------
# The node


@dataclass(frozen=True)
class _Paths:
    root: Path

    @property
    def containerd(self) -> Path:
        return self.root / "containerd"

    @property
    def socket(self) -> Path:
        return self.containerd / "containerd.sock"

    @property
    def kubelet(self) -> Path:
        return self.root / "kubelet"

    @property
    def cni(self) -> Path:
        return self.root / "cni"


@dataclass
class RealNode:
    """One kubelet + containerd node of `cluster`, rooted at `workdir` (keep it short: unix
    socket paths are limited to 107 bytes)."""

    cluster: Cluster
    workdir: Path
    pause_archive: Path
    image_archives: Sequence[Path] = ()
    name: str = "realnode"
    labels: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 180.0
    servers: list[Server] = field(default_factory=list)
    node_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _strays_before: dict[Path, bool] = field(default_factory=dict)
    _root_propagation: str | None = None  # "/" before we made it shared; None: untouched
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()
        self.paths = _Paths(self.workdir)
        self.cgroup_root = f"/{CGROUP_PREFIX}{self.node_id}"
        self.bridge = f"thpck{self.node_id[:6]}"
        self.network = f"thpcheck-{self.node_id}"
        self.ports: dict[str, int] = {}

    # -- public ----------------------------------------------------------------------------

    @property
    def containerd_socket(self) -> Path:
        return self.paths.socket

    @property
    def pod_logs_dir(self) -> Path:
        return self.paths.kubelet / "pod-logs"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> RealNode:
        """Start containerd and kubelet, import the images, wait for the Node to be Ready."""
        problems = missing_prerequisites()
        if problems:
            raise RealNodeError("this machine cannot run a real node: " + "; ".join(problems))
        if len(str(self.workdir)) > MAX_WORKDIR:
            raise RealNodeError(f"work dir too long for the unix sockets under it (at most "
                                f"{MAX_WORKDIR} characters): {self.workdir}")
        self._strays_before = {p: os.path.lexists(p) for p in STRAY_PATHS}
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._make_cgroups()
            self._share_root()
            self._write_cni()
            mark = time.monotonic()
            self._start_containerd()
            self.timings["containerd_start_s"] = round(time.monotonic() - mark, 1)
            mark = time.monotonic()
            self.ctr("images", "import", str(self.pause_archive), timeout=120)
            for archive in self.image_archives:
                self.ctr("images", "import", str(archive), timeout=600)
            self.timings["image_import_s"] = round(time.monotonic() - mark, 1)
            mark = time.monotonic()
            self._start_kubelet()
            self.wait_ready()
            self.timings["kubelet_ready_s"] = round(time.monotonic() - mark, 1)
        except BaseException:
            self.stop()
            raise
        return self

    def ctr(self, *args: str, timeout: float = 120.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ctr` against this node's containerd, in the CRI namespace (k8s.io)."""
        return _run("ctr", "--address", str(self.paths.socket), "--namespace", "k8s.io", *args,
                    timeout=timeout, check=check)

    def images(self) -> list[str]:
        return sorted(self.ctr("images", "list", "--quiet").stdout.split())

    def node(self) -> dict[str, Any]:
        node: dict[str, Any] = self.cluster.api("GET", f"/api/v1/nodes/{self.name}")
        return node

    def wait_ready(self, timeout: float | None = None) -> None:
        def ready() -> bool:
            return node_ready(self.node())

        wait_until(ready, timeout or self.timeout, f"real node {self.name} Ready",
                   self._watch("kubelet"))

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        """A container's log as kubelet stores it (the apiserver cannot reach a kubelet that
        listens on 127.0.0.1 while the Node's address is the machine's: no `kubectl logs`)."""
        texts = []
        for path in sorted(self.pod_logs_dir.glob(f"{namespace}_{pod}_*/{container}/*.log")):
            with contextlib.suppress(OSError):
                texts.append(cri_log_text(path.read_text(errors="replace")))
        return "".join(texts)

    def open_pod_log(self, namespace: str, pod: str, container: str) -> IO[str]:
        """The container's current CRI log file, open: still readable after kubelet deleted
        it with the pod (to see what a container logged while being stopped)."""
        paths = sorted(self.pod_logs_dir.glob(f"{namespace}_{pod}_*/{container}/*.log"))
        if not paths:
            raise RealNodeError(f"no log of {namespace}/{pod}/{container} in {self.pod_logs_dir}")
        return paths[-1].open(errors="replace")

    def all_pod_logs(self, limit: int = 4000) -> str:
        """Every container log (tail), for failure messages."""
        out = []
        for path in sorted(self.pod_logs_dir.glob("*/*/*.log")):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace")
                out.append(f"--- {path.relative_to(self.pod_logs_dir)}\n{text[-limit:]}")
        return "\n".join(out)

    def cgroup_pids(self) -> list[int]:
        """Every process in this node's cgroup subtree (daemons, shims, containers)."""
        pids: set[int] = set()
        for mount in cgroup_mounts():
            base = mount / self.cgroup_root.lstrip("/")
            if not base.is_dir():
                continue
            for procs in base.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
        return sorted(pids)

    # -- preparation ---------------------------------------------------------------------------

    def _make_cgroups(self) -> None:
        """`/<root>` and `/<root>/daemons` in every hierarchy; cpuset needs its cpus/mems."""
        for mount in cgroup_mounts():
            for rel in ("", "daemons"):
                path = mount / self.cgroup_root.lstrip("/") / rel
                path.mkdir(exist_ok=True)
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    target = path / knob
                    if target.exists() and not target.read_text().strip():
                        target.write_text((path.parent / knob).read_text())

    def _share_root(self) -> None:
        """Make / a shared mount while the node runs (restored by stop()): kubelet's mount
        namespace is then a slave of the host's, so a filesystem mounted on the host after
        kubelet started (a test's loop mount) is what kubelet sees at that path too; with /
        private it would see, and create hostPath directories in, the covered directory."""
        before = propagation("/")
        if "shared" not in before:
            _run("mount", "--make-shared", "/")
            self._root_propagation = before

    def _restore_root(self) -> None:
        if self._root_propagation is None:
            return
        _run("mount", "--make-slave" if "master" in self._root_propagation else "--make-private",
             "/")
        self._root_propagation = None

    def _daemon_cgroups(self) -> list[str]:
        return [str(mount / self.cgroup_root.lstrip("/") / "daemons")
                for mount in cgroup_mounts()]

    def _write_cni(self) -> None:
        net_d = self.paths.cni / "net.d"
        net_d.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [{
                "type": "bridge", "bridge": self.bridge, "isGateway": False,
                "isDefaultGateway": False, "ipMasq": False, "hairpinMode": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                         "dataDir": str(self.paths.cni / "ipam")},
            }],
        }
        (net_d / "10-thpcheck.conflist").write_text(json.dumps(conflist, indent=2) + "\n")

    def _containerd_config(self) -> str:
        c = self.paths.containerd
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""version = 2
root = "{c / 'root'}"
state = "{c / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.paths.socket}"

[debug]
  level = "info"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "{LOOPBACK}"
  stream_server_port = "0"
  disable_tcp_service = true
  netns_mounts_under_state_dir = true
  # No CAP_SYS_RESOURCE here: lowering oom_score_adj (node-critical pods: -997) would fail.
  restrict_oom_score_adj = true

  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.paths.cni / 'net.d'}"
    max_conf_num = 1

  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{c / 'runc'}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / 'opt'}"
"""

    def _env(self) -> dict[str, str]:
        home = self.workdir / "home"
        tmp = self.workdir / "tmp"
        home.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        return {"PATH": SERVER_PATH, "HOME": str(home), "TMPDIR": str(tmp), "LANG": "C.UTF-8"}

    def _in_cgroups(self, argv: Sequence[str]) -> list[str]:
        """argv wrapped so the process joins the daemons cgroups before it execs."""
        script = ('while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs"; shift; done; '
                  'shift; exec "$@"')
        return ["/bin/sh", "-c", script, "sh", *self._daemon_cgroups(), "--", *argv]

    def _spawn(self, name: str, argv: Sequence[str]) -> Server:
        server = spawn(name, self._in_cgroups(argv), self.logs_dir / f"{name}.log",
                       self._env(), self.workdir, detach=False)
        self.servers.append(server)
        return server

    def _watch(self, blamed: str) -> list[Server]:
        return sorted(self.servers, key=lambda s: s.name == blamed)

    def _start_containerd(self) -> None:
        c = self.paths.containerd
        c.mkdir(parents=True, exist_ok=True)
        (c / "config.toml").write_text(self._containerd_config())
        server = self._spawn("containerd", ["containerd", "--config", str(c / "config.toml")])

        def up() -> bool:
            return _run("ctr", "--address", str(self.paths.socket), "version",
                        check=False, timeout=10).returncode == 0

        wait_until(up, 60, "containerd", [server])

    def _kubelet_config(self) -> dict[str, Any]:
        k = self.paths.kubelet
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # Loopback only: the API, healthz; no read-only port.
            "address": LOOPBACK,
            "port": self.ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": LOOPBACK,
            "healthzPort": self.ports["kubelet-healthz"],
            "enableSystemLogHandler": False,
            "enableSystemLogQuery": False,
            "enableProfilingHandler": False,
            "enableDebugFlagsHandler": False,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True, "cacheTTL": "30s"},
                "x509": {"clientCAFile": str(self.cluster.pki.ca_crt)},
            },
            "authorization": {"mode": "Webhook"},
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            # The runtime: containerd 1.6 cannot report its cgroup driver (CRI
            # RuntimeConfig), so kubelet takes cgroupDriver; cgroup v1 needs failCgroupV1.
            "containerRuntimeEndpoint": f"unix://{self.paths.socket}",
            "imageServiceEndpoint": f"unix://{self.paths.socket}",
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            "failSwapOn": False,
            # Leave the host alone: no sysctl writes (see the module docstring), no iptables.
            "protectKernelDefaults": True,
            "makeIPTablesUtilChains": False,
            "kernelMemcgNotification": False,
            "shutdownGracePeriod": "0s",
            "podLogsDir": str(self.pod_logs_dir),
            "volumePluginDir": str(k / "volume-plugins"),
            "resolvConf": "/etc/resolv.conf",
            "maxPods": 32,
            "serializeImagePulls": False,
            # Never collect the imported images (nothing could pull them back) and never
            # evict on a busy test machine.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "imageMinimumGCAge": "24h",
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%",
                             "imagefs.inodesFree": "1%"},
            "evictionPressureTransitionPeriod": "5s",
            "nodeStatusUpdateFrequency": "5s",
            "nodeStatusReportFrequency": "30s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
            "registerNode": True,
            "logging": {"format": "text"},
        }

    def _kubelet_wrapper(self) -> str:
        """The shell run by `unshare --mount --propagation unchanged` before kubelet.

        The new namespace starts as a peer of the host's. `/` becomes a slave (host mounts
        still arrive, nothing mounted here leaves) and so does /proc (the tunables' masks stay
        here); kubelet's root dir stays a peer of the host's (pod volumes reach containerd).
        Then the read-only tunables and the masked /var/log."""
        lines = ["set -eu", "mount --make-slave /", "mount --make-rslave /proc"]
        masks = self.paths.kubelet / "tunables"
        masks.mkdir(parents=True, exist_ok=True)
        for name, value in KUBELET_TUNABLES.items():
            src = masks / name.replace("/", ".")
            src.write_text(value + "\n")
            lines.append(f"mount --bind -o ro {src} /proc/sys/{name}")
        var_log = self.paths.kubelet / "var-log"
        var_log.mkdir(parents=True, exist_ok=True)
        lines += [f"mount --bind {var_log} /var/log", 'exec "$@"']
        return "\n".join(lines)

    def _start_kubelet(self) -> None:
        k = self.paths.kubelet
        root_dir = k / "root"
        root_dir.mkdir(parents=True, exist_ok=True)
        # kubelet's root dir must be a shared mount: pod volumes kubelet mounts in its own
        # mount namespace then appear on the host, where containerd bind-mounts them.
        _run("mount", "--bind", str(root_dir), str(root_dir))
        _run("mount", "--make-shared", str(root_dir))
        self.ports = dict(zip(("kubelet", "kubelet-healthz"), free_ports(2), strict=True))
        config = k / "config.json"
        config.write_text(json.dumps(self._kubelet_config(), indent=2) + "\n")
        kubeconfig = self.cluster.user_kubeconfig(f"system:node:{self.name}",
                                                  groups=("system:nodes",))
        node_ip = default_route_ip()
        labels = ",".join(f"{k_}={v}" for k_, v in {"test.thpcheck.io/realnode": "true",
                                                     **self.labels}.items())
        kubelet = [
            str(self.cluster.bin_dir / "kubelet"), f"--config={config}",
            f"--kubeconfig={kubeconfig}", f"--root-dir={root_dir}",
            f"--cert-dir={k / 'pki'}", f"--hostname-override={self.name}",
            f"--node-ip={node_ip}", f"--node-labels={labels}", "--v=1",
        ]
        argv = ["unshare", "--mount", "--propagation", "unchanged", "--",
                "/bin/sh", "-c", self._kubelet_wrapper(), "kubelet-ns", *kubelet]
        self._spawn("kubelet", argv)

    # -- teardown --------------------------------------------------------------------------

    def stop(self) -> None:
        """Drain, stop kubelet and containerd, then remove every trace (idempotent)."""
        errors: list[str] = []

        def step(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # every step runs: leave as little as possible
                errors.append(f"{what}: {exc}")

        kubelet = next((s for s in self.servers if s.name == "kubelet"), None)
        if kubelet is not None and kubelet.alive():
            step("drain", self.drain)
        for server in reversed(self.servers):
            step(f"stop {server.name}", server.stop, 15.0)
        self.servers = []
        step("kill leftover processes", self._kill_cgroup_processes)
        step("unmount", self._unmount_all)
        step("remove links", self._remove_links)
        step("remove cgroups", self._remove_cgroups)
        step("remove stray paths", self._remove_strays)
        step("remove containerd data", shutil.rmtree, self.paths.containerd / "root", True)
        step("restore / propagation", self._restore_root)
        if errors:
            raise RealNodeError("real node teardown: " + "; ".join(errors))

    def drain(self, timeout: float = 120.0) -> None:
        """Delete every workload and pod so kubelet stops them through the CRI (which also
        tears down their networks and netns), and wait until the node runs none.

        Repeated until no pod is left: a controller still running (an operator being stopped)
        may create a workload again meanwhile."""
        c = self.cluster
        kinds = "daemonsets,deployments,replicasets,statefulsets,jobs,cronjobs"
        path = f"/api/v1/pods?fieldSelector=spec.nodeName%3D{self.name}"
        deadline = time.monotonic() + timeout
        while True:
            c.kubectl("delete", kinds, "--all", "--all-namespaces", "--wait=false",
                      check=False)
            c.kubectl("delete", "pods", "--all", "--all-namespaces", "--wait=false",
                      "--grace-period=10", check=False)
            with contextlib.suppress(ClusterError):
                wait_until(lambda: not c.api("GET", path)["items"], 15,
                           f"pods on {self.name} to be gone", self._watch("kubelet"))
            if not c.api("GET", path)["items"]:
                break
            if time.monotonic() > deadline:
                c.kubectl("delete", "pods", "--all", "--all-namespaces", "--force",
                          "--grace-period=0", check=False)
                raise RealNodeError(f"pods on {self.name} still there after {timeout:.0f}s")
        # kubelet stops sandboxes after the API objects are gone; wait for the runtime too.
        wait_until(lambda: not self._running_tasks(), 60, "containers to stop",
                   self._watch("kubelet"))

    def _running_tasks(self) -> list[str]:
        out = self.ctr("tasks", "list", check=False, timeout=30).stdout.splitlines()[1:]
        return [line for line in out if "RUNNING" in line]

    def _kill_cgroup_processes(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            pids = [p for p in self.cgroup_pids() if p != os.getpid()]
            if not pids:
                return
            if time.monotonic() > deadline:
                raise RealNodeError(f"processes survive SIGKILL: {pids}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def _our_mounts(self) -> list[str]:
        prefix = str(self.workdir) + "/"
        return [m for m in mount_points() if m.startswith(prefix) or m == str(self.workdir)]

    def _unmount_all(self) -> None:
        """Every mount under the work dir (volumes, rootfs overlays, netns, the root-dir
        bind), deepest first; lazily if busy."""
        for _ in range(5):
            ours = self._our_mounts()
            if not ours:
                return
            for mount in sorted(set(ours), key=lambda m: (-m.count("/"), m)):
                if _run("umount", mount, check=False).returncode != 0:
                    _run("umount", "-l", mount, check=False)
        left = self._our_mounts()
        if left:
            raise RealNodeError(f"still mounted: {left}")

    def _remove_links(self) -> None:
        """The bridge (its veths go with the pods' network namespaces)."""
        links = json.loads(_run("ip", "-j", "link", "show").stdout or "[]")
        for link in links:
            if link.get("master") == self.bridge:
                _run("ip", "link", "delete", link["ifname"], check=False)
        if any(link["ifname"] == self.bridge for link in links):
            _run("ip", "link", "delete", self.bridge)

    def _cgroup_dirs(self) -> list[Path]:
        dirs: list[Path] = []
        for mount in cgroup_mounts():
            base = mount / self.cgroup_root.lstrip("/")
            if base.is_dir():
                dirs += [base, *(p for p in base.rglob("*") if p.is_dir())]
        return dirs

    def _remove_cgroups(self) -> None:
        """rmdir the subtree, deepest first, in every hierarchy (empty cgroups only)."""
        for _ in range(50):
            dirs = self._cgroup_dirs()
            if not dirs:
                return
            for path in sorted(dirs, key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    path.rmdir()
            time.sleep(0.1)
        raise RealNodeError(f"cgroups not removable: {[str(p) for p in self._cgroup_dirs()]}")

    def _remove_strays(self) -> None:
        """Paths outside the work dir that did not exist before: removed when they hold
        nothing but what this node made (dead shim sockets, our CNI results, empty dirs)."""
        left = []
        for path, existed in self._strays_before.items():
            if existed or not os.path.lexists(path):
                continue
            self._clean_tree(Path(os.path.realpath(path)))
            if os.path.lexists(path):
                left.append(str(path))
        if left:
            raise RealNodeError(f"left outside the work dir (not ours alone): {left}")

    def _clean_tree(self, root: Path) -> None:
        for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
            if path.is_symlink() or path.is_file():
                if self.network in path.name or path in AGENT_FILES:  # libcni's, the agent's
                    path.unlink()
            elif path.is_socket():
                if not _socket_alive(path):
                    path.unlink()
            elif path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()


def cri_log_text(raw: str) -> str:
    """The output in a CRI log file (`<time> <stream> <P|F> <text>` lines; P: partial)."""
    out = []
    for line in raw.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue
        text = parts[3] if len(parts) == 4 else ""
        out.append(text if parts[2] == "P" else text + "\n")
    return "".join(out)


def _socket_alive(path: Path) -> bool:
    """A unix socket somebody still listens on (another containerd's shim): keep it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(1)
        sock.connect(str(path))
        return True
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        sock.close()
