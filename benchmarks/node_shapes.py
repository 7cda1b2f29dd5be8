"""Node objects for the operator benchmark: kwok's thin nodes, or nodes shaped like a real
cloud node.

``thin``: the test harness's kwok node (``devtools/cluster/harness.py``), about 0.75 KiB of JSON
before kwok and the API server add to it.

``realistic``: modelled on a GKE node (node pool of ``n2-standard-8`` machines,
Container-Optimized OS, containerd, the persistent-disk CSI driver, node-problem-detector),
as ``kubectl get node -o json`` shows one: the labels GKE and the cloud provider set plus a
team's own (35 in all), annotations with JSON values (the CSI driver's node id, GKE's
last-applied labels, Calico's addresses), 50 images (the kubelet's default
``nodeStatusMaxImages``) each named by digest and by tag, 12 conditions (the kubelet's four,
the route controller's NetworkUnavailable and node-problem-detector's seven), eight attached
and mounted persistent disks, runtime handlers, and managedFields of the managers that write
such a node (the kubelet, kube-controller-manager, cloud-controller-manager,
node-problem-detector; kwok adds its own as it plays the kubelet). About 25 KiB of JSON as
the API server returns it (thin nodes: 3.7 KiB).

The node's kernel and boot ID are this machine's (``node_info``), its InternalIP loopback and
its kubelet endpoint kwok's, as for thin nodes: kwok serves them and the real agent's result
matches them. Everything else is deterministic in the node's index, so reruns create the same
cluster.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from devtools.cluster.harness import KWOK_ANNOTATION, LOOPBACK, node_manifest

SHAPES = ("thin", "realistic")
PROJECT = "acme-prod-2291"
REGION = "europe-west4"
ZONES = ("europe-west4-a", "europe-west4-b", "europe-west4-c")
POOL_SIZE = 500  # nodes per node pool
MACHINE = "n2-standard-8"
TIMESTAMP = "2026-11-02T08:14:31Z"
IMAGE_COUNT = 50  # the kubelet's default nodeStatusMaxImages
VOLUME_COUNT = 8
# node-problem-detector's conditions on GKE (type, reason, message): all healthy.
NPD_CONDITIONS = (
    ("FrequentKubeletRestart", "NoFrequentKubeletRestart", "kubelet is functioning properly"),
    ("FrequentDockerRestart", "NoFrequentDockerRestart", "docker is functioning properly"),
    ("FrequentContainerdRestart", "NoFrequentContainerdRestart",
     "containerd is functioning properly"),
    ("KernelDeadlock", "KernelHasNoDeadlock", "kernel has no deadlock"),
    ("ReadonlyFilesystem", "FilesystemIsNotReadOnly", "Filesystem is not read-only"),
    ("CorruptDockerOverlay2", "NoCorruptDockerOverlay2",
     "docker overlay2 is functioning properly"),
    ("FrequentUnregisterNetDevice", "NoFrequentUnregisterNetDevice",
     "node is functioning properly"),
)
# Images a GKE node of a busy cluster holds: system DaemonSets and a team's workloads.
IMAGE_REPOS = (
    "gke.gcr.io/gke-metrics-agent", "gke.gcr.io/fluent-bit", "gke.gcr.io/fluent-bit-gke-exporter",
    "gke.gcr.io/gcp-compute-persistent-disk-csi-driver", "gke.gcr.io/csi-node-driver-registrar",
    "gke.gcr.io/kube-proxy-amd64", "gke.gcr.io/netd-amd64", "gke.gcr.io/ip-masq-agent",
    "gke.gcr.io/calico/node", "gke.gcr.io/calico/cni", "gke.gcr.io/k8s-dns-node-cache",
    "gke.gcr.io/gke-node-termination-handler", "gke.gcr.io/pause", "gke.gcr.io/prometheus-to-sd",
    "gke.gcr.io/gke-metadata-server", "gke.gcr.io/addon-resizer",
    "gke.gcr.io/cluster-proportional-autoscaler", "gke.gcr.io/konnectivity-agent",
    "gke.gcr.io/event-exporter", "gke.gcr.io/metrics-server",
    "registry.k8s.io/node-problem-detector/node-problem-detector",
    "registry.k8s.io/ingress-nginx/controller",
    "registry.k8s.io/kube-state-metrics/kube-state-metrics",
    "quay.io/prometheus/node-exporter", "quay.io/prometheus-operator/prometheus-config-reloader",
    "docker.io/grafana/promtail", "docker.io/istio/proxyv2", "docker.io/istio/pilot",
    "quay.io/jetstack/cert-manager-controller", "quay.io/jetstack/cert-manager-webhook",
    "docker.io/bitnami/redis", "docker.io/library/postgres", "docker.io/library/nginx",
    "docker.io/datadog/agent", "ghcr.io/external-secrets/external-secrets",
    f"europe-docker.pkg.dev/{PROJECT}/apps/checkout-api",
    f"europe-docker.pkg.dev/{PROJECT}/apps/payments-worker",
    f"europe-docker.pkg.dev/{PROJECT}/apps/catalog-service",
    f"europe-docker.pkg.dev/{PROJECT}/apps/search-indexer",
    f"europe-docker.pkg.dev/{PROJECT}/apps/notifications",
    f"europe-docker.pkg.dev/{PROJECT}/apps/recommendations",
    f"europe-docker.pkg.dev/{PROJECT}/apps/frontend-ssr",
    f"europe-docker.pkg.dev/{PROJECT}/apps/auth-gateway",
    f"europe-docker.pkg.dev/{PROJECT}/apps/inventory-sync",
    f"europe-docker.pkg.dev/{PROJECT}/apps/order-events",
    f"europe-docker.pkg.dev/{PROJECT}/apps/reporting-batch",
    f"europe-docker.pkg.dev/{PROJECT}/apps/image-resizer",
    f"europe-docker.pkg.dev/{PROJECT}/apps/feature-flags",
    f"europe-docker.pkg.dev/{PROJECT}/apps/audit-log-shipper",
    f"europe-docker.pkg.dev/{PROJECT}/apps/ml-scoring",
)


def _hex(*parts: object, length: int = 64) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:length]


def _uuid(*parts: object) -> str:
    h = _hex(*parts, length=32)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _images() -> list[dict[str, Any]]:
    """Each image by digest and by tag, as the kubelet reports them (largest first)."""
    images = []
    for number, repo in enumerate(IMAGE_REPOS[:IMAGE_COUNT]):
        tag = f"v1.{number % 17}.{number % 5}-gke.{100 + number}"
        images.append({"names": [f"{repo}@sha256:{_hex(repo, tag)}", f"{repo}:{tag}"],
                       "sizeBytes": 900_000_000 - number * 17_000_003})
    return images


IMAGES = _images()


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"lastHeartbeatTime": TIMESTAMP, "lastTransitionTime": TIMESTAMP,
            "message": message, "reason": reason, "status": status, "type": kind}


def _fields(value: Any, keyed: Mapping[str, str] = {}, name: str = "") -> dict[str, Any]:
    """A managedFields ``fieldsV1`` set for ``value``: maps field by field, lists keyed by
    ``keyed[name]`` item by item (as conditions and addresses are), other lists atomic."""
    if isinstance(value, Mapping):
        return {".": {}, **{f"f:{k}": _fields(v, keyed, k) for k, v in value.items()}}
    if isinstance(value, list) and name in keyed:
        key = keyed[name]
        return {".": {}, **{"k:" + json.dumps({key: item[key]}, separators=(",", ":")):
                            _fields(item, keyed) for item in value}}
    return {}


def _managed(manager: str, fields: Mapping[str, Any], subresource: str = "") -> dict[str, Any]:
    entry = {"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": fields,
             "manager": manager, "operation": "Update", "time": TIMESTAMP}
    if subresource:
        entry["subresource"] = subresource
    return entry


def realistic_node(name: str, index: int, *, kubelet_port: int, kubelet_version: str,
                   labels: Mapping[str, str], node_info: Mapping[str, str]) -> dict[str, Any]:
    """A Node shaped like a GKE node of a large cluster (see the module's docstring)."""
    pool = f"pool-{index // POOL_SIZE:02d}"
    zone = ZONES[index % len(ZONES)]
    instance = f"gke-prod-{pool}-{_hex(pool, length=8)}-{_hex(name, length=4)}"
    kubelet_labels = {
        "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/instance-type": MACHINE,
        "beta.kubernetes.io/os": "linux", "failure-domain.beta.kubernetes.io/region": REGION,
        "failure-domain.beta.kubernetes.io/zone": zone, "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": MACHINE, "topology.kubernetes.io/region": REGION,
        "topology.kubernetes.io/zone": zone,
    }
    cloud_labels = {
        "cloud.google.com/gke-boot-disk": "pd-balanced",
        "cloud.google.com/gke-container-runtime": "containerd",
        "cloud.google.com/gke-cpu-scaling-level": "8",
        "cloud.google.com/gke-logging-variant": "DEFAULT",
        "cloud.google.com/gke-max-pods-per-node": "110",
        "cloud.google.com/gke-memory-gb-scaling-level": "32",
        "cloud.google.com/gke-netd-ready": "true",
        "cloud.google.com/gke-nodepool": pool,
        "cloud.google.com/gke-os-distribution": "cos",
        "cloud.google.com/gke-provisioning": "standard",
        "cloud.google.com/gke-stack-type": "IPV4",
        "cloud.google.com/machine-family": "n2",
        "cloud.google.com/private-node": "true",
        "iam.gke.io/gke-metadata-server-enabled": "true",
        "node.kubernetes.io/masq-agent-ds-ready": "true",
        "addon.gke.io/node-local-dns-ds-ready": "true",
        "topology.gke.io/zone": zone,
    }
    team_labels = {
        "acme.example/team": ("payments", "search", "platform", "growth")[index % 4],
        "acme.example/environment": "production",
        "acme.example/cost-center": f"cc-{4100 + index % 7}",
        "acme.example/workload-class": ("general", "memory", "batch")[index % 3],
        "acme.example/pool-generation": "2026-10",
        "type": "kwok",
        **labels,
    }
    all_labels = {**kubelet_labels, **cloud_labels, **team_labels}
    csi_id = json.dumps({"pd.csi.storage.gke.io":
                         f"projects/{PROJECT}/zones/{zone}/instances/{instance}"},
                        separators=(",", ":"))
    kubelet_annotations = {"csi.volume.kubernetes.io/nodeid": csi_id,
                           "volumes.kubernetes.io/controller-managed-attach-detach": "true"}
    cloud_annotations = {
        "container.googleapis.com/instance_id": str(4_759_028_284_894_128_442 + index * 7919),
        "node.gke.io/last-applied-node-labels": ",".join(
            f"{k}={v}" for k, v in sorted(cloud_labels.items())),
        "node.gke.io/last-applied-node-taints": "",
    }
    internal = f"10.{164 + index // 65_536}.{index // 256 % 256}.{index % 256}"
    tunnel = f"10.{index % 200}.{index % 97}.1"
    calico_annotations = {"projectcalico.org/IPv4Address": f"{internal}/32",
                          "projectcalico.org/IPv4IPIPTunnelAddr": tunnel}
    annotations = {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1], "node.alpha.kubernetes.io/ttl": "0",
                   **kubelet_annotations, **cloud_annotations, **calico_annotations}
    pod_cidr = f"10.{(index // 256) % 64 + 64}.{index % 256}.0/24"
    spec = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr],
            "providerID": f"gce://{PROJECT}/{zone}/{instance}"}
    volumes = [f"kubernetes.io/csi/pd.csi.storage.gke.io^projects/{PROJECT}/zones/{zone}/disks/"
               f"pvc-{_uuid(name, v)}" for v in range(VOLUME_COUNT)]
    resources = {"attachable-volumes-gce-pd": "127", "cpu": "8",
                 "ephemeral-storage": "98831908Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
                 "memory": "32863372Ki", "pods": "110"}
    allocatable = {**resources, "cpu": "7910m", "ephemeral-storage": "47060071478",
                   "memory": "29022348Ki"}
    npd = [_condition(kind, "False", reason, message) for kind, reason, message in NPD_CONDITIONS]
    route = [_condition("NetworkUnavailable", "False", "RouteCreated",
                        "NodeController create implicit route")]
    info = {"architecture": "amd64", "bootID": _uuid(name, "boot"),
            "containerRuntimeVersion": "containerd://1.7.24",
            "kernelVersion": "6.6.56+", "kubeProxyVersion": kubelet_version,
            "kubeletVersion": kubelet_version, "machineID": _hex(name, "machine", length=32),
            "operatingSystem": "linux", "osImage": "Container-Optimized OS from Google",
            "systemUUID": _uuid(name, "system"), **node_info}
    kubelet_status = {
        "addresses": [{"address": LOOPBACK, "type": "InternalIP"},
                      {"address": f"34.{90 + index // 65_536}.{index // 256 % 256}.{index % 256}",
                       "type": "ExternalIP"},
                      {"address": f"{instance}.{zone}.c.{PROJECT}.internal",
                       "type": "InternalDNS"},
                      {"address": name, "type": "Hostname"}],
        "allocatable": allocatable, "capacity": resources,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "features": {"supplementalGroupsPolicy": True},
        "images": IMAGES, "nodeInfo": info,
        "runtimeHandlers": [
            {"features": {"recursiveReadOnlyMounts": True, "userNamespaces": True}, "name": ""},
            {"features": {"recursiveReadOnlyMounts": True, "userNamespaces": True},
             "name": "runc"},
            {"features": {"recursiveReadOnlyMounts": False, "userNamespaces": False},
             "name": "gvisor"}],
        "volumesInUse": volumes,
    }
    # kwok's node-initialize stage adds the kubelet's four conditions (Ready among them)
    # and keeps these: its status patch merges conditions by type.
    status = {**kubelet_status, "conditions": [*route, *npd],
              "volumesAttached": [{"devicePath": "", "name": v} for v in volumes]}
    keyed = {"conditions": "type", "addresses": "type", "runtimeHandlers": "name"}
    kubelet_conditions = [_condition(kind, "False", "", "") for kind in
                          ("MemoryPressure", "DiskPressure", "PIDPressure")]
    kubelet_conditions.append(_condition("Ready", "True", "", ""))
    # The API server keeps a create's status-subresource entries and makes the creating
    # manager (the kubelet, see CREATE_QUERY) the owner of everything else it set.
    managed = [
        _managed("kubelet", {"f:status": _fields(
            {**kubelet_status, "conditions": kubelet_conditions}, keyed)}, "status"),
        _managed("kube-controller-manager", {"f:status": {"f:volumesAttached": {}}}, "status"),
        _managed("cloud-controller-manager", {"f:status": {"f:conditions": _fields(
            route, keyed, "conditions")}}, "status"),
        _managed("node-problem-detector", {"f:status": {"f:conditions": _fields(
            npd, keyed, "conditions")}}, "status"),
    ]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": all_labels, "annotations": annotations,
                         "managedFields": managed},
            "spec": spec, "status": status}


def create_path(shape: str) -> str:
    """Where a node of ``shape`` is POSTed: realistic nodes as the kubelet registers its node
    (the owner of its metadata and spec in managedFields)."""
    return "/api/v1/nodes" + ("?fieldManager=kubelet" if shape == "realistic" else "")


def node(shape: str, name: str, index: int, *, kubelet_port: int, kubelet_version: str,
         labels: Mapping[str, str], node_info: Mapping[str, str]) -> dict[str, Any]:
    """One benchmark node of ``shape`` (``thin`` or ``realistic``)."""
    if shape == "thin":
        return node_manifest(name, kubelet_port=kubelet_port, kubelet_version=kubelet_version,
                             labels=labels, node_info=node_info)
    if shape == "realistic":
        return realistic_node(name, index, kubelet_port=kubelet_port,
                              kubelet_version=kubelet_version, labels=labels, node_info=node_info)
    raise ValueError(f"unknown node shape {shape!r}; one of {', '.join(SHAPES)}")
