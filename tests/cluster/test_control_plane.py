"""The real control plane does what the operator and chart tests will rely on."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster.harness import (
    LOOPBACK,
    REPO_ROOT,
    SERVERS,
    Cluster,
    ClusterError,
    node_ready,
    read_pins,
)
from devtools.proc import Server
from tests.support.wait import eventually

pytestmark = pytest.mark.cluster


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def apply(cluster: Cluster, manifest: dict[str, Any] | str, *extra: str) -> None:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    cluster.kubectl("apply", "-f", "-", *extra, input=text)


# ---------------------------------------------------------------------------------------------


def test_kubectl_reports_pinned_server_version(cluster: Cluster) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    pinned = read_pins()["K8S_VERSION"]
    assert versions["serverVersion"]["gitVersion"] == pinned
    assert versions["clientVersion"]["gitVersion"] == pinned
    assert versions["serverVersion"]["minor"] == pinned.split(".")[1]


def test_servers_listen_on_loopback_only(cluster: Cluster) -> None:
    listening = _listening_addresses()
    seen = {}
    for server in cluster.servers:
        addrs = {listening[i] for i in _socket_inodes(server.pid) if i in listening}
        seen[server.name] = addrs
        assert addrs, f"{server.name} listens on nothing?"
        assert all(host == LOOPBACK for host, _ in addrs), (server.name, addrs)
    assert set(seen) == set(SERVERS)


def test_crd_cel_rule_rejects_bad_object(cluster: Cluster, namespace: str) -> None:
    group = f"t{uuid.uuid4().hex[:8]}.thpcheck.test"
    message = "spec.minReplicas must not exceed spec.maxReplicas"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object",
                    "properties": {"minReplicas": {"type": "integer"},
                                   "maxReplicas": {"type": "integer"}},
                    "x-kubernetes-validations": [{
                        "rule": "self.minReplicas <= self.maxReplicas", "message": message}],
                }}}},
            }],
        },
    }
    apply(cluster, crd)
    try:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}",
                        "--timeout=60s")

        def widget(name: str, lo: int, hi: int) -> dict[str, Any]:
            return {"apiVersion": f"{group}/v1", "kind": "Widget",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"minReplicas": lo, "maxReplicas": hi}}

        apply(cluster, widget("good", 1, 3))
        with pytest.raises(ClusterError) as bad:
            apply(cluster, widget("bad", 5, 2))
        assert message in str(bad.value)
        assert "Invalid value" in str(bad.value)
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_daemonset_runs_one_pod_per_kwok_node(cluster: Cluster, namespace: str) -> None:
    nodes = set(cluster.fake_nodes())
    assert len(nodes) >= 3
    apply(cluster, {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "probe"}},
            "template": {
                "metadata": {"labels": {"app": "probe"}},
                # kwok never pulls or runs the image; the name only has to be valid.
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/probe:1"}]},
            },
        },
    })

    def running_pods() -> dict[str, str] | None:
        pods = get_json(cluster, "get", "pods", "-n", namespace, "-l", "app=probe")["items"]
        by_node = {p["spec"].get("nodeName"): p["status"].get("phase") for p in pods}
        ok = (len(pods) == len(nodes) and set(by_node) == nodes
              and set(by_node.values()) == {"Running"})
        return by_node if ok else None

    eventually(running_pods, timeout=90)
    ds = get_json(cluster, "get", "daemonset", "probe", "-n", namespace)
    assert ds["status"]["desiredNumberScheduled"] == len(nodes)
    eventually(lambda: get_json(cluster, "get", "daemonset", "probe", "-n", namespace)
               ["status"].get("numberReady") == len(nodes))


def test_orphan_of_deleted_owner_is_garbage_collected(cluster: Cluster, namespace: str) -> None:
    def configmap(name: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if owner:
            meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap",
                                        "name": owner["metadata"]["name"],
                                        "uid": owner["metadata"]["uid"]}]
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}

    def gone(name: str) -> bool:
        return cluster.kubectl("get", "configmap", name, "-n", namespace,
                               check=False).returncode != 0

    # A child pointing at an owner that no longer exists is collected.
    apply(cluster, configmap("owner"))
    owner = get_json(cluster, "get", "configmap", "owner", "-n", namespace)
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace, "--wait=true")
    apply(cluster, configmap("orphan", owner))
    eventually(lambda: gone("orphan"), timeout=60)

    # And deleting a live owner cascades to its dependent.
    apply(cluster, configmap("parent"))
    parent = get_json(cluster, "get", "configmap", "parent", "-n", namespace)
    apply(cluster, configmap("child", parent))
    assert not gone("child")
    cluster.kubectl("delete", "configmap", "parent", "-n", namespace)
    eventually(lambda: gone("child"), timeout=60)


def test_impersonated_service_account_without_grant_is_refused(cluster: Cluster,
                                                              namespace: str) -> None:
    for sa in ("nobody", "reader"):
        cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    cluster.kubectl("create", "role", "pod-reader", "-n", namespace, "--verb=get,list",
                    "--resource=pods")
    cluster.kubectl("create", "rolebinding", "reader", "-n", namespace, "--role=pod-reader",
                    f"--serviceaccount={namespace}:reader")

    def as_sa(sa: str, *args: str) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(*args, "-n", namespace,
                               f"--as=system:serviceaccount:{namespace}:{sa}", check=False)

    denied = as_sa("nobody", "auth", "can-i", "list", "pods")
    assert denied.returncode == 1 and denied.stdout.strip() == "no"
    request = as_sa("nobody", "get", "pods")
    assert request.returncode != 0
    assert "Forbidden" in request.stderr
    assert f"system:serviceaccount:{namespace}:nobody" in request.stderr

    # The control: the same request with a grant succeeds, so RBAC (not a broken setup) said no.
    allowed = eventually(lambda: as_sa("reader", "auth", "can-i", "list", "pods").returncode == 0)
    assert allowed
    assert as_sa("reader", "get", "pods").returncode == 0


def test_certificate_users_get_their_groups_rights(cluster: Cluster, namespace: str) -> None:
    group = f"thpcheck:viewers-{namespace}"
    cluster.kubectl("create", "rolebinding", "viewers", "-n", namespace, "--clusterrole=view",
                    f"--group={group}")
    viewer = cluster.user_kubeconfig(f"alice-{namespace}", groups=[group])
    stranger = cluster.user_kubeconfig(f"bob-{namespace}")

    def get_pods(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(f"--kubeconfig={kubeconfig}", "get", "pods", "-n", namespace,
                               check=False)

    assert eventually(lambda: get_pods(viewer).returncode == 0)
    refused = get_pods(stranger)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr
    assert f'User "bob-{namespace}"' in refused.stderr


def test_helm_version_and_default_kube_version(cluster: Cluster, tmp_path: Path,
                                               namespace: str) -> None:
    pins = read_pins()
    assert cluster.helm("version", "--template", "{{.Version}}").stdout.strip() == \
        pins["HELM_VERSION"]
    chart = _write_chart(tmp_path / "kv")
    minor = pins["K8S_VERSION"].split(".")[1]

    # Offline rendering uses the ldflags' default (v1.20.0 without them).
    rendered = cluster.helm("template", "kv", str(chart)).stdout
    assert f"kubeVersion: v1.{minor}.0" in rendered

    # Against the cluster, Helm reads the apiserver's /version (the pinned version ldflags).
    cluster.helm("install", "kv", str(chart), "-n", namespace, "--wait", "--timeout=60s")
    cm = get_json(cluster, "get", "configmap", "kv", "-n", namespace)
    assert cm["data"]["kubeVersion"] == pins["K8S_VERSION"]
    cluster.helm("uninstall", "kv", "-n", namespace)


def test_added_node_keeps_node_info_and_runs_pods(cluster: Cluster, namespace: str) -> None:
    name = f"custom-{uuid.uuid4().hex[:6]}"
    info = {"kernelVersion": "6.12.95-thp", "osImage": "Debian GNU/Linux 13 (trixie)"}
    node = cluster.add_node(name, labels={"thpcheck.io/pool": "test"}, node_info=info)
    try:
        assert node["status"]["nodeInfo"]["kernelVersion"] == info["kernelVersion"]
        assert node["status"]["nodeInfo"]["osImage"] == info["osImage"]
        assert node["metadata"]["labels"]["thpcheck.io/pool"] == "test"
        apply(cluster, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "pinned", "namespace": namespace},
            "spec": {"nodeSelector": {"thpcheck.io/pool": "test"},
                     "containers": [{"name": "c", "image": "registry.invalid/probe:1"}]},
        })
        pod = eventually(lambda: (p := get_json(cluster, "get", "pod", "pinned", "-n",
                                                namespace))["status"].get("phase") == "Running"
                         and p)
        assert pod["spec"]["nodeName"] == name
        # Still Ready later: kwok's lease heartbeat keeps it from going NotReady.
        again = cluster.api("GET", f"/api/v1/nodes/{name}")
        assert again["status"]["nodeInfo"]["kernelVersion"] == info["kernelVersion"]
    finally:
        cluster.delete_node(name)


def test_scale_nodes(cluster: Cluster) -> None:
    before = [n for n in cluster.fake_nodes() if n.startswith("kwok-node-")]
    try:
        assert len(cluster.scale_nodes(len(before) + 2)) == len(before) + 2
        assert cluster.scale_nodes(len(before)) == sorted(before)
    finally:
        cluster.scale_nodes(len(before))


def test_scripts_cluster_up_then_down_leaves_nothing(k8s_bin_dir: Path,
                                                     tmp_path: Path) -> None:
    workdir = tmp_path / "people-cluster"
    home = tmp_path / "home"  # must stay empty: nothing may be written outside the work dir
    home.mkdir()
    script = REPO_ROOT / "scripts" / "cluster"
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
    env.update(THPCHECK_K8S_BIN=str(k8s_bin_dir), HOME=str(home))

    up = subprocess.run([str(script), "--dir", str(workdir), "up", "--nodes", "2",
                         "--no-build"], capture_output=True, text=True, env=env, timeout=300,
                        start_new_session=True, check=False)
    assert up.returncode == 0, up.stderr
    assert f"export KUBECONFIG={workdir / 'kubeconfig'}" in up.stdout
    state = json.loads((workdir / "state.json").read_text())
    servers = [Server.from_state(s) for s in state["servers"]]
    try:
        assert sorted(s.name for s in servers) == sorted(SERVERS)
        assert all(s.alive() for s in servers), "up returned but a server is not running"
        nodes = get_json(Cluster.load(workdir), "get", "nodes")
        assert len(nodes["items"]) == 2
        assert all(node_ready(n) for n in nodes["items"])
    finally:
        # `down` from a fresh shell: a new session, not a child of `up`.
        down = subprocess.run(["bash", "-lc", f"{script} --dir {workdir} down"],
                              capture_output=True, text=True, env=env, timeout=120,
                              start_new_session=True, check=False)
    assert down.returncode == 0, down.stderr
    survivors = [f"{s.name}={s.pid}" for s in servers if s.alive()]
    assert not survivors, f"still running after down: {survivors}"
    assert not (workdir / "state.json").exists()
    assert (workdir / "logs" / "kube-apiserver.log").exists()
    assert list(home.iterdir()) == []


# ---------------------------------------------------------------------------------------------


def _write_chart(directory: Path) -> Path:
    """A tiny chart that records .Capabilities.KubeVersion and demands a recent cluster."""
    (directory / "templates").mkdir(parents=True)
    (directory / "Chart.yaml").write_text(textwrap.dedent("""\
        apiVersion: v2
        name: kv
        version: 0.1.0
        kubeVersion: ">=1.30.0-0"
    """))
    (directory / "templates" / "cm.yaml").write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: {{ .Release.Name }}
        data:
          kubeVersion: {{ .Capabilities.KubeVersion.Version }}
    """))
    return directory


def _listening_addresses() -> dict[int, tuple[str, int]]:
    """socket inode -> (host, port) of every listening TCP socket, from /proc/net/tcp{,6}."""
    out: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_host, hex_port = fields[1].split(":")
            out[int(fields[9])] = (_decode_host(hex_host), int(hex_port, 16))
    return out


def _decode_host(hex_host: str) -> str:
    raw = bytes.fromhex(hex_host)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    # IPv6: four little-endian 32-bit words; report IPv4-mapped loopback as 127.0.0.1.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    if words[:12] == b"\0" * 10 + b"\xff\xff":
        return ".".join(str(b) for b in words[12:])
    return words.hex()


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes
