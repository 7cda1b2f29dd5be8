"""Distribution kernel table (kernel-susceptibility.md §5): the fallback for the kernel config.

When a node's kernel config cannot be read (no ``/proc/config.gz``, no ``/boot/config-*``) the
model looks the distribution up here, by OS image text (``node.status.nodeInfo.osImage`` or
os-release ``PRETTY_NAME``), kernel release and architecture. Rows whose value was read in a
shipped config are ``VERIFIED``; rows extrapolated from sibling configs are ``INFERRED``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from thpcheck.model.kernel import KernelVersion, parse_release
from thpcheck.model.rules import Evidence

V, INF = Evidence.VERIFIED, Evidence.INFERRED


@dataclass(frozen=True)
class DistroRow:
    """One distribution/flavour row; ``ro_thp`` None means the notes found no config."""

    id: str
    name: str
    os_pattern: str
    ro_thp: bool | None
    evidence: Evidence
    thp_default: str | None
    ikconfig_proc: bool | None
    sources: str
    kernel_pattern: str | None = None  # regex on the release string (e.g. UEK's "uek")
    kernel_min: tuple[int, int] | None = None  # inclusive
    kernel_below: tuple[int, int] | None = None  # exclusive
    arch_pattern: str | None = None

    def matches(self, os_image: str, release: str, version: KernelVersion | None,
                arch: str | None) -> bool:
        """True when this row describes the node (first matching row wins)."""
        if not re.search(self.os_pattern, os_image, re.IGNORECASE):
            return False
        if self.kernel_pattern and not re.search(self.kernel_pattern, release):
            return False
        if self.arch_pattern and not (arch and re.search(self.arch_pattern, arch)):
            return False
        if self.kernel_min or self.kernel_below:
            if version is None:
                return False
            if self.kernel_min and version.branch < self.kernel_min:
                return False
            if self.kernel_below and version.branch >= self.kernel_below:
                return False
        return True


KC = "oracle/kconfigs gh-pages fa0a490 (2026-01-30)"
NR = "nyrahul/linux-kernel-configs 76bbb04 (2025-07-26)"

DISTROS: tuple[DistroRow, ...] = (
    # Ubuntu: not set in every generic and cloud config read; newer cloud flavours inferred.
    DistroRow("ubuntu-cloud-6.8+", "Ubuntu cloud kernels (aws/gcp/azure/gke/oracle) 6.8+",
              r"^Ubuntu\b", False, INF, "madvise", False,
              "same annotations base as generic; not read (§5)",
              kernel_pattern=r"-(aws|gcp|gke|azure|oracle|nvidia)", kernel_min=(6, 8)),
    DistroRow("ubuntu", "Ubuntu", r"^Ubuntu\b", False, V, "madvise", False,
              f"{KC}; {NR}; CriticalShift/linux-ubuntu-resolute annotations"),
    DistroRow("debian", "Debian", r"^Debian\b", False, V, "always", False, f"{KC}; {NR}"),
    DistroRow("rhcos-5.x+", "Red Hat Enterprise Linux CoreOS (RHEL 9 based)",
              r"CoreOS|^OpenShift", False, INF, "always", False,
              "RHCOS 4.12 verified; later RHCOS inherits RHEL 9 (inferred)",
              kernel_min=(5, 0), kernel_pattern=r"\.el\d"),
    DistroRow("rhcos", "Red Hat Enterprise Linux CoreOS", r"Red Hat Enterprise Linux CoreOS",
              False, V, "always", False, NR),
    DistroRow("rhel10", "Red Hat Enterprise Linux 10", r"^Red Hat Enterprise Linux 10\b",
              False, INF, "always", False, f"inferred from AlmaLinux 10 / CentOS Stream 10 ({KC})"),
    DistroRow("centos-hyperscale", "CentOS Stream Hyperscale", r"^CentOS", False, V, "always",
              False, KC, kernel_pattern=r"\.hs"),
    DistroRow("rhel-family", "RHEL / AlmaLinux / Rocky / CentOS Stream",
              r"^(Red Hat Enterprise Linux|AlmaLinux|Rocky Linux|CentOS)", False, V, "always",
              False, f"{KC}; {NR}"),
    DistroRow("oracle-uek", "Oracle Linux with UEK 7/8/NEXT", r"^Oracle Linux", True, V,
              "always", False, KC, kernel_pattern=r"uek", kernel_min=(5, 15)),
    DistroRow("oracle-uek6", "Oracle Linux with UEK6", r"^Oracle Linux", False, V, "always",
              False, KC, kernel_pattern=r"uek", kernel_below=(5, 15)),
    DistroRow("oracle-rhck", "Oracle Linux with the RHEL-compatible kernel", r"^Oracle Linux",
              False, V, "always", False, KC),
    DistroRow("amazon-linux-2", "Amazon Linux 2", r"^Amazon Linux 2(?!0\d\d)", False, V,
              "madvise", False, NR),
    DistroRow("amazon-linux-2023-6.1", "Amazon Linux 2023 (6.1)", r"^Amazon Linux 20(22|23)",
              False, V, "madvise", False, NR, kernel_below=(6, 2)),
    DistroRow("amazon-linux-2023", "Amazon Linux 2023 (6.12+)", r"^Amazon Linux 20(22|23)",
              False, INF, "madvise", False, "not read; inferred from AL2023 6.1 (§5)"),
    DistroRow("bottlerocket", "Bottlerocket", r"^Bottlerocket", False, INF, "madvise", True,
              "bottlerocket-kernel-kit 2f50162: AL2023 config + fragment without RO_THP"),
    DistroRow("cos-6.1", "Container-Optimized OS (<= 6.1)", r"^Container-Optimized OS", False,
              V, "madvise", True, NR, kernel_below=(6, 2)),
    DistroRow("cos", "Container-Optimized OS (6.6+)", r"^Container-Optimized OS", False, INF,
              "madvise", True, "COS 6.6/6.12 not read; inferred"),
    DistroRow("flatcar-6.1", "Flatcar (<= 6.1)", r"^Flatcar", False, V, "always", True, NR,
              kernel_below=(6, 2)),
    DistroRow("flatcar", "Flatcar (6.6+)", r"^Flatcar", False, INF, "always", True,
              "commonconfig-6.12 does not set it (inferred)"),
    DistroRow("talos", "Talos", r"^Talos", False, V, "madvise", True,
              f"{NR}; siderolabs/pkgs 28f5f23 kernel/build/config-amd64"),
    DistroRow("azure-linux", "Azure Linux / CBL-Mariner", r"(Azure Linux|CBL-Mariner)", False, V,
              "madvise", True, f"microsoft/azurelinux SPECS/kernel/config; {NR}"),
    DistroRow("fedora-coreos", "Fedora CoreOS (6.8+)", r"^Fedora CoreOS", True, INF, "madvise",
              False, "FCOS inherits Fedora's config (inferred)", kernel_min=(6, 8)),
    DistroRow("fedora", "Fedora (kernel 6.8+)", r"^Fedora", True, V, "madvise", False,
              "Fedora dist-git 69f6e97d76ae 'Turn on CONFIG_READ_ONLY_THP_FOR_FS' (6.8.2-300)",
              kernel_min=(6, 8)),
    DistroRow("fedora-old", "Fedora (kernel < 6.8)", r"^Fedora", False, V, "madvise", False,
              NR),
    DistroRow("arch", "Arch Linux", r"^Arch Linux", True, V, "always", True, f"{KC}; {NR}"),
    DistroRow("tumbleweed-aarch64", "openSUSE Tumbleweed (aarch64)", r"^openSUSE Tumbleweed",
              False, V, "always", True, KC, arch_pattern=r"^(aarch64|arm64)$"),
    DistroRow("tumbleweed", "openSUSE Tumbleweed", r"^openSUSE Tumbleweed", True, V, "always",
              True, KC),
    DistroRow("sle16", "openSUSE Leap 16 / SLES 16",
              r"^(openSUSE Leap 16|SUSE Linux Enterprise Server 16|SLES 16)", True, V, "always",
              True, KC),
    DistroRow("sles15-sp3", "SLES 15 SP3 / Leap 15.3 (5.3)",
              r"^(SUSE Linux Enterprise Server 15|SLES 15|openSUSE Leap 15)", False, V, "always",
              True, NR, kernel_below=(5, 4)),
    DistroRow("sles15-sp4+", "SLES 15 SP4-SP7 (5.14.21)",
              r"^(SUSE Linux Enterprise Server 15|SLES 15|openSUSE Leap 15|SUSE Linux Enterprise"
              r" Micro)", None, INF, "always", True, "config not found (§5, §10)"),
    DistroRow("alinux3", "Alibaba Cloud Linux 3", r"^Alibaba Cloud Linux.*\b3\b", True, V,
              "always", True, NR),
    DistroRow("alinux2", "Alibaba Cloud Linux 2 (4.19 backport)", r"^Alibaba Cloud Linux", True,
              V, "always", True, NR),
    DistroRow("others-not-set", "Photon OS, Deepin, Pop!_OS, k3OS, Proxmox, RancherOS",
              r"^(VMware Photon|Photon OS|Deepin|Pop!_OS|k3OS|Proxmox|RancherOS)", False, V,
              None, None, NR),
)


@dataclass(frozen=True)
class DistroMatch:
    """The row that describes a node, with the inputs that selected it."""

    row: DistroRow
    os_image: str
    release: str


def lookup(os_image: str, release: str, arch: str | None = None) -> DistroMatch | None:
    """The first distro row matching this OS image and kernel release, if any."""
    version = parse_release(release)
    for row in DISTROS:
        if row.matches(os_image.strip(), release, version, arch):
            return DistroMatch(row, os_image, release)
    return None
