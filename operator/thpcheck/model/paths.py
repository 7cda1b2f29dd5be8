"""Which host paths the agent may write under: one list of rules, used three ways.

The ThpCheck CRD turns every rule into a CEL rule on ``spec.paths[]`` (``cel_rule``; a unit
test keeps the CRD file equal to it), the agent refuses the same paths before writing
(``refusal``), and ``discoverFilesystems`` skips mount points under them. Every spelling of
a path is judged alike: the patterns accept ``//`` and ``/./`` wherever a ``/`` may be, and
a trailing ``/`` (``//proc``, ``/./proc``, ``/proc/`` all mean ``/proc``). ``..`` is refused
outright: what it means depends on the node's symlinks, which neither the API server nor a
spelling can know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The kubelet's and the container runtimes' state: other tenants' volumes, images and pod
# sandboxes (standard paths, k3s/RKE2, k0s, MicroK8s, Docker, CRI-O, cri-dockerd).
KUBELET_DIRS = (
    "/var/lib/kubelet",
    "/var/lib/k0s/kubelet",
    "/var/snap/microk8s/common/var/lib/kubelet",
)
IMAGE_DIRS = (
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/lib/containers",
    "/var/lib/crio",
    "/var/lib/cri-dockerd",
    "/var/lib/rancher/k3s/agent/containerd",
    "/var/lib/rancher/rke2/agent/containerd",
    "/var/lib/k0s/containerd",
    "/var/snap/microk8s/common/var/lib/containerd",
)
# The khugepaged mitigation's host state directory (contract/mitigation.py): its own, so no
# scratch path may be in it (the mitigation refuses a directory holding anything else, and
# would then not stop khugepaged). THPCHECK_MITIGATION_STATE_DIR may move it elsewhere; the
# chart then refuses a default check whose paths overlap it.
MITIGATION_STATE_DIR = "/var/lib/thpcheck-mitigation"


@dataclass(frozen=True)
class PathRule:
    """A family of host paths no scratch directory may be in (or be)."""

    id: str
    pattern: str  # RE2 and Python ``re`` alike, matched against the path in any spelling
    what: str  # for messages: "under ..." / "the root directory"
    message: str  # the CRD's message for spec.paths[]


# A separator in any spelling: ``/``, ``//``, ``/./``, ``/.//./``... Spelled out in each
# pattern instead of normalising first: a CEL normalisation (split, filter, join) costs the
# API server's static estimate a hundred times its budget for 16 paths of 1024 characters,
# ``matches`` on the raw string does not. ``[.]`` rather than ``\.``: no backslash to escape
# through YAML and CEL.
SEP = "/([.]?/)*"


def _spelled(*names: str) -> str:
    """``var``, ``lib`` -> the pattern of ``/var/lib`` in any spelling."""
    return SEP.join(names)


RULES: tuple[PathRule, ...] = (
    PathRule(
        "root", f"^{SEP}[.]?$", "the root directory /",
        "spec.paths entries must not be the root directory / (in any spelling, such as // "
        "or /.)"),
    PathRule(
        "system",
        f"^{SEP}(proc|sys|dev|boot|etc|usr|bin|sbin|lib[^/]*|run|{_spelled('var', 'run')})(/|$)",
        "a host system directory (/proc, /sys, /dev, /boot, /etc, /usr, /bin, /sbin, /lib*, "
        "/run, /var/run)",
        "spec.paths entries must not be under a host system directory (/proc, /sys, /dev, "
        "/boot, /etc, /usr, /bin, /sbin, /lib*, /run, /var/run) in any spelling; the agent "
        "mounts /proc, /sys, /boot, /lib/modules and /etc/os-release read-only"),
    PathRule(
        "kubelet",
        f"^{SEP}({_spelled('var', 'lib', '')}(kubelet|containerd|docker|containers|crio"
        f"|cri-dockerd|cni|etcd|k0s|rancher)|{_spelled('var', 'snap', 'microk8s')}"
        f"|{_spelled('var', 'log', '')}(pods|containers)|{_spelled('opt', 'cni')})(/|$)",
        "the kubelet's or a container runtime's state directory (/var/lib/kubelet, "
        "/var/lib/containerd, /var/lib/docker, /var/lib/containers, /var/lib/crio, "
        "/var/lib/rancher, /var/lib/k0s, /var/snap/microk8s, ...)",
        "spec.paths entries must not be under the kubelet's or a container runtime's state "
        "(/var/lib/kubelet, /var/lib/containerd, /var/lib/docker, /var/lib/containers, "
        "/var/lib/crio, /var/lib/cri-dockerd, /var/lib/cni, /var/lib/etcd, /var/lib/k0s, "
        "/var/lib/rancher, /var/snap/microk8s, /var/log/pods, /var/log/containers, /opt/cni) "
        "in any spelling: other tenants' volumes and images live there"),
    PathRule(
        "mitigation", f"^{SEP}{_spelled(*MITIGATION_STATE_DIR.strip('/').split('/'))}(/|$)",
        f"the khugepaged mitigation's state directory ({MITIGATION_STATE_DIR})",
        f"spec.paths entries must not be under {MITIGATION_STATE_DIR} in any spelling: the "
        "khugepaged mitigation's own state directory, which refuses any other file"),
)

DOTDOT_PATTERN = r"(^|/)[.][.](/|$)"
DOTDOT_MESSAGE = ("spec.paths entries must not contain '..' segments: what they resolve to "
                  "depends on the node's symlinks; write the path without them")
_COMPILED = {rule.id: re.compile(rule.pattern) for rule in RULES}


def normalize(path: str) -> str:
    """``//proc/./x/`` -> ``/proc/x``: empty and ``.`` segments dropped (``..`` kept)."""
    return "/" + "/".join(s for s in path.split("/") if s not in ("", "."))


def has_dotdot(path: str) -> bool:
    return re.search(DOTDOT_PATTERN, path) is not None


def matching_rule(path: str) -> PathRule | None:
    """The rule an absolute path breaks, in whatever spelling (None: allowed)."""
    return next((r for r in RULES if _COMPILED[r.id].search(path)), None)


def refusal(path: str) -> str | None:
    """Why the agent must not write under ``path`` (one clause), or None."""
    if not path.startswith("/"):
        return "is not an absolute host path"
    if has_dotdot(path):
        return "contains '..' segments, whose meaning depends on the node's symlinks"
    rule = matching_rule(path)
    if rule is None:
        return None
    return f"is {rule.what}" if rule.id == "root" else f"is under {rule.what}"


def cel_rule(rule: PathRule) -> str:
    """The CRD's x-kubernetes-validations rule for ``rule`` on one spec.paths entry."""
    return f"!self.matches('{rule.pattern}')"


def cel_validations() -> list[dict[str, str]]:
    """Every CEL rule of spec.paths[] in the CRD, in order (the file must hold exactly these)."""
    return [
        {"rule": "self.startsWith('/')",
         "message": "spec.paths entries must be absolute paths (start with /)"},
        {"rule": f"!self.matches('{DOTDOT_PATTERN}')", "message": DOTDOT_MESSAGE},
        *({"rule": cel_rule(r), "message": r.message} for r in RULES),
    ]


def under_any(path: str, roots: tuple[str, ...]) -> str | None:
    """The first of ``roots`` that ``path`` is (or is under), in normal spelling."""
    normal = normalize(path)
    for root in roots:
        if normal == root or normal.startswith(root + "/"):
            return root
    return None
