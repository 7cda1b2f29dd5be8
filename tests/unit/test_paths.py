"""Paths the agent never writes under: one rule list for the CRD's CEL, the agent and
discovery; and what the kubelet really mounted for a hostPath, read from mountinfo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from thpcheck.model.mounts import bind_target, parse_mountinfo
from thpcheck.model.paths import cel_validations, matching_rule, normalize, refusal

CRD = (Path(__file__).resolve().parents[2] / "charts" / "thp-checker" / "crds"
       / "thpchecks.thpcheck.io.yaml")

# Every spelling of every refused family; the same list is sent to the real API server in
# tests/operator/test_cluster_operator.py.
REFUSED = {
    "root": ["/", "//", "/.", "/./", "///.//"],
    "system": ["/proc", "/./proc", "//proc", "/proc/", "/proc/self", "/sys/kernel/", "/dev/shm",
               "/boot", "/etc", "/etc/kubernetes", "/usr/local/x", "/bin", "/sbin", "/lib",
               "/lib64", "/lib/modules", "/libx32/", "/lib.usr-is-merged", "/run",
               "/run/thpcheck", "/var/run", "//var//run/x"],
    "kubelet": ["/var/lib/kubelet", "/var/lib/kubelet/pods/x", "/var//lib/./kubelet/",
                "/var/lib/containerd", "/var/lib/docker", "/var/lib/crio", "/var/lib/containers",
                "/var/lib/cri-dockerd", "/var/lib/cni", "/var/lib/etcd", "/var/lib/rancher/k3s",
                "/var/lib/k0s/kubelet", "/var/snap/microk8s/common", "/var/log/pods",
                "/var/log/containers/", "/opt/cni/bin"],
    "mitigation": ["/var/lib/thpcheck-mitigation", "/var/lib/thpcheck-mitigation/x",
                   "//var/./lib/thpcheck-mitigation/"],
}
ALLOWED = ["/var/lib/thpcheck", "/srv/data", "/data/", "/var/lib/kubelet-scratch", "/proc-x",
           "/var/lib", "/var", "/tmp/t1", "/mnt/run", "/opt/data", "/var/snap/x", "/srv/lib",
           "/home/u/etc", "/var/lib/thpcheck-mitigation2"]


def test_normal_spelling() -> None:
    assert normalize("//proc/./x/") == "/proc/x"
    assert normalize("/") == normalize("//") == normalize("/./") == "/"
    assert normalize("/a/../b") == "/a/../b"  # '..' is never resolved here


@pytest.mark.parametrize(("family", "path"),
                         [(f, p) for f, paths in REFUSED.items() for p in paths])
def test_every_spelling_is_refused_by_its_rule(family: str, path: str) -> None:
    rule = matching_rule(path)
    assert rule is not None and rule.id == family
    assert refusal(path)


@pytest.mark.parametrize("path", ALLOWED)
def test_ordinary_paths_are_allowed(path: str) -> None:
    assert matching_rule(path) is None and refusal(path) is None


def spellings(path: str) -> list[str]:
    """Other spellings of ``path``: each separator doubled or given a ``/./``, a trailing
    ``/`` or ``/.``."""
    parts = path.split("/")
    out = [path.rstrip("/") + "/", path.rstrip("/") + "/.", "/." + path]
    for i in range(1, len(parts)):
        for sep in ("//", "/./", "/.//./"):
            out.append("/".join(parts[:i]) + sep + "/".join(parts[i:]))
    return out


@pytest.mark.parametrize("path", [p for paths in REFUSED.values() for p in paths] + ALLOWED)
def test_the_patterns_judge_every_spelling_as_its_normal_form(path: str) -> None:
    normal = matching_rule(normalize(path))
    for spelling in spellings(path):
        assert matching_rule(spelling) == normal, spelling


@pytest.mark.parametrize("path", ["/proc/..", "/var/../etc", "/a/b/../../sys", ".."])
def test_dotdot_is_refused(path: str) -> None:
    assert "'..'" in (refusal(path) or "") or refusal(path) == "is not an absolute host path"


def test_the_crd_holds_exactly_these_rules() -> None:
    crd: dict[str, Any] = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    paths = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["paths"]
    assert paths["items"]["x-kubernetes-validations"] == cel_validations()


# -- what the kubelet mounted for a hostPath ------------------------------------------------

HOST = """\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw
23 22 259:3 / /data rw,relatime shared:2 - xfs /dev/nvme2n1 rw,attr2,inode64
24 22 0:35 /@ /srv rw,relatime shared:3 - btrfs /dev/sdb rw,subvol=/@
25 22 0:35 /@home /home rw,relatime shared:4 - btrfs /dev/sdb rw,subvol=/@home
26 22 259:1 /var/lib/real /mnt/bound rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw
"""


def bind(device: str, root: str, host_path: str) -> str:
    """The container's mountinfo line for a hostPath mounted at /host<path>."""
    return (f"800 700 {device} {root} /host{host_path} rw,relatime - ext4 /dev/x rw\n")


@pytest.mark.parametrize(("host_path", "device", "root", "expected"), [
    # the path itself: nothing to say
    ("/var/lib/thpcheck", "259:1", "/var/lib/thpcheck", None),
    ("/data", "259:3", "/", None),
    ("/data/scratch", "259:3", "/scratch", None),
    ("/srv/scratch", "0:35", "/@/scratch", None),
    ("/mnt/bound/x", "259:1", "/var/lib/real/x", None),  # a bind mount is not a symlink
    # /var/lib/thpcheck -> /data/thpcheck (another filesystem)
    ("/var/lib/thpcheck", "259:3", "/thpcheck", "/data/thpcheck"),
    # /var/lib/thpcheck -> /var/lib/elsewhere (same filesystem)
    ("/var/lib/thpcheck", "259:1", "/var/lib/elsewhere", "/var/lib/elsewhere"),
    # a symlinked parent: /srv/link -> /home/u, path /srv/link/scratch
    ("/srv/link/scratch", "0:35", "/@home/u/scratch", "/home/u/scratch"),
    # a target no host mount shows
    ("/var/lib/thpcheck", "0:99", "/x", "/x on device 0:99"),
])
def test_bind_target_names_where_a_hostpath_really_resolves(
        host_path: str, device: str, root: str, expected: str | None) -> None:
    (bound,) = parse_mountinfo(bind(device, root, host_path))
    assert bind_target(host_path, bound, parse_mountinfo(HOST)) == expected
