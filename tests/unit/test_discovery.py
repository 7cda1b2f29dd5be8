"""``discoverFilesystems`` on /proc/1/mountinfo laid out as Kubernetes nodes have it: a kubeadm
node with containerd and CSI volumes (EBS staging and publish, block mode, NFS), a k3s node
with Longhorn, a MicroK8s node with Ceph RBD, a node whose kubelet has a custom root dir.

Every tenant mount must be absent from the paths and present, with its reason, in the
skipped list; the node's own local disks must be found.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from thpcheck.model.mounts import Discovery, discover, parse_mountinfo

SAMPLES = Path(__file__).with_name("mountinfo")
SANDBOX = "7c1d9e8f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d"
MK8S = "/var/snap/microk8s/common"


def sample(name: str) -> str:
    """A node's /proc/1/mountinfo, kept verbatim in tests/unit/mountinfo/ (see its README)."""
    return (SAMPLES / f"{name}.txt").read_text()


# kubeadm-csi: Ubuntu 22.04, kubeadm, containerd, aws-ebs-csi-driver (filesystem and block
# volumes), an NFS CSI volume, an s3fs FUSE mount and an EFS NFS mount; a data disk on /data
# and containerd's state on its own disk (imagefs).
KUBEADM_CSI = sample("kubeadm-csi")
# k3s-longhorn: k3s on Debian 12, its state (and containerd's) on a second disk at
# /var/lib/rancher, containerd's run dir under /run/k3s, Longhorn CSI volumes, local-path PVs
# (directories, not mounts) and a btrfs data disk with two subvolumes.
K3S_LONGHORN = sample("k3s-longhorn")
# microk8s-ceph: MicroK8s (classic snap) on Ubuntu 24.04, its state on a second disk at
# /var/snap/microk8s/common, kubelet under .../var/lib/kubelet, containerd under .../run and
# .../var/lib/containerd, Rook Ceph RBD volumes, the snap's squashfs.
MICROK8S_CEPH = sample("microk8s-ceph")
# custom-kubelet-root: a kubelet with --root-dir=/mnt/kubelet on its own disk (nodefs), an
# ext4 mounted as the lower layer of a hand-made overlay, and a read-only bind of /data.
CUSTOM_ROOT = sample("custom-kubelet-root")


def run(text: str) -> tuple[Discovery, dict[str, str]]:
    found = discover(parse_mountinfo(text))
    return found, {s.mount_point: s.reason for s in found.skipped}


def tenant_mounts(text: str) -> list[str]:
    """Mount points that belong to pods, CSI drivers or the runtimes in a sample."""
    words = ("/kubelet", "containerd", "/rancher", "microk8s/common")
    return [m.mount_point for m in parse_mountinfo(text)
            if any(w in m.mount_point for w in words)]


@pytest.mark.parametrize("text", [KUBEADM_CSI, K3S_LONGHORN, MICROK8S_CEPH, CUSTOM_ROOT],
                         ids=["kubeadm-csi", "k3s-longhorn", "microk8s-ceph", "custom-root"])
def test_no_tenant_mount_is_discovered_and_each_is_listed(text: str) -> None:
    found, skipped = run(text)
    tenants = tenant_mounts(text)
    assert tenants
    for point in tenants:
        assert not any(p.startswith(point.rstrip("/") + "/") for p in found.paths), point
        assert point in skipped, point


def test_kubeadm_node_with_csi() -> None:
    found, skipped = run(KUBEADM_CSI)
    assert found.paths == ["/.thpcheck", "/data/.thpcheck"]
    csi = [p for p in skipped if "/plugins/kubernetes.io/csi/" in p or "~csi" in p]
    assert len(csi) == 6 and {skipped[p] for p in csi} == {
        "a pod volume or CSI mount under the kubelet's directory (another tenant's data)"}
    assert skipped["/var/lib/containerd"] == "a container runtime's state (images, snapshots)"
    assert skipped["/mnt/s3"] == "a FUSE filesystem"
    assert skipped["/mnt/shared"] == "a network filesystem"
    assert skipped["/snap/core20/2015"] == "a read-only mount"
    assert skipped["/boot/efi"].startswith("under a host system directory")
    assert skipped["/dev/shm"].startswith("under a host system directory")
    assert "/proc" not in skipped and "/sys/fs/cgroup" not in skipped  # kernel interfaces


def test_k3s_node_with_longhorn() -> None:
    found, skipped = run(K3S_LONGHORN)
    assert found.paths == ["/.thpcheck", "/srv/.thpcheck"]
    assert skipped["/var/lib/rancher"] == "the kubelet's or a container runtime's state directory"
    assert skipped["/backups"] == "another mount of the filesystem tested at /srv"
    assert skipped[f"/run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/{SANDBOX}/rootfs"
                   ].startswith("under a host system directory")


def test_microk8s_node_with_ceph() -> None:
    found, skipped = run(MICROK8S_CEPH)
    assert found.paths == ["/.thpcheck"]
    assert skipped[MK8S] == "the kubelet's or a container runtime's state directory"
    rbd = [p for p in skipped if "rook-ceph" in p or "~csi" in p]
    assert len(rbd) == 2


def test_custom_kubelet_root_overlay_layers_and_read_only_binds() -> None:
    found, skipped = run(CUSTOM_ROOT)
    assert found.paths == ["/.thpcheck", "/data/.thpcheck"]
    assert skipped["/mnt/kubelet"].startswith("a pod volume or CSI mount under the kubelet's")
    assert skipped["/srv/layers/base"].startswith("an overlay's lower, upper or work layer")
    assert skipped["/srv/merged"] == "overlay is not a local disk filesystem the discovery tests"
    assert skipped["/export/data"] == "a read-only mount"
