"""Distribution kernel table (kernel-susceptibility.md §5): the fallback for the kernel config.

When a node's kernel config cannot be read (no ``/proc/config.gz``, no ``/boot/config-*``) the
model looks the distribution up here, by OS image text (``node.status.nodeInfo.osImage`` or
os-release ``PRETTY_NAME``), kernel release and architecture. Rows whose value was read in a
shipped config are ``VERIFIED``; rows extrapolated from sibling configs are ``INFERRED``.

A row speaks only for the kernels its vendor builds, so most rows also match the release string
(``6.8.0-45-generic``, ``…el9uek.x86_64``, ``6.1.100+``) and a verified row covers only the
kernel branches that were read. An OS image with a foreign kernel (a kind node: Debian image,
host kernel) falls through to the kernel-signature rows at the end (inferred), or to no row
(unknown). The first matching row wins.
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
PKGS = "siderolabs/pkgs"
LINUXKIT = "linuxkit/linuxkit 3bf33c3 kernel/{5.4,5.10,5.15,6.6,6.12}.x/config-{x86_64,aarch64}"
WSL = "userdocs/wsl-kernel acfe97d configs/linux-msft-wsl-{5.15.y,6.6.y}/config-wsl"

# Kernel release shapes. An OS image row only speaks for the kernel its vendor builds: a kind or
# k3d node reports its container's os-release (e.g. "Debian GNU/Linux 12 (bookworm)") next to
# the host's kernel (e.g. "6.5.0-1020-aws", "6.11.4-301.fc41.x86_64", "5.15.49-linuxkit-pr"),
# and RHEL images can boot Oracle's UEK. A row whose kernel pattern does not match falls
# through to the kernel-signature rows at the end of the table, or to no row at all (unknown).
UBUNTU_KERNEL = (r"^\d+\.\d+\.0-\d+-(generic|lowlatency|aws|azure|gcp|gke|gkeop|kvm|oracle|oem|"
                 r"nvidia|ibm|raspi|realtime|fips|intel|virtual)\b")
UBUNTU_CLOUD_KERNEL = r"^\d+\.\d+\.0-\d+-(aws|azure|gcp|gke|gkeop|oracle|nvidia|ibm)\b"
_DEBIAN_FLAVOUR = (r"-((cloud|rt)-)?(amd64|arm64|686|686-pae|armmp|armmp-lpae|powerpc64le|s390x|"
                   r"marvell|rpi|loong64|riscv64|mips\w*|octeon|loongson-3)$")
# Stable releases: an ABI number (6.1.0-28-amd64) or, from trixie on, "+debN" (6.12.48+deb13-amd64).
DEBIAN_KERNEL = r"^\d+\.\d+\.(0-\d+|\d+\+deb\d+[\w.~+]*)" + _DEBIAN_FLAVOUR
# Testing/unstable (and Garden Linux, built with Debian's packaging): no ABI, 6.12.32-amd64.
DEBIAN_TESTING_KERNEL = r"^\d+\.\d+\.\d+" + _DEBIAN_FLAVOUR
# Backports: 6.1.0-0.deb11.21-amd64 (bullseye-backports), 5.10.0-0.bpo.15-amd64 (buster-
# backports), 6.12.12+bpo-amd64 (bookworm-backports).
DEBIAN_BACKPORTS_KERNEL = r"^\d+\.\d+\.(0-0\.(deb\d+|bpo)\.\d+|\d+\+bpo)" + _DEBIAN_FLAVOUR
ANY_DEBIAN_KERNEL = f"({DEBIAN_KERNEL})|({DEBIAN_TESTING_KERNEL})|({DEBIAN_BACKPORTS_KERNEL})"
# RHEL, AlmaLinux, Rocky, CentOS Stream, Oracle RHCK, RHCOS: X.Y.0-<build>.elN[_M].<arch>.
RHEL_KERNEL = r"^\d+\.\d+\.0-\d+\S*\.el\d+(_\d+)?\.(x86_64|aarch64|ppc64le|s390x)\b"
RHEL_KERNEL_READ = r"^(4\.18|5\.14|6\.12)\.0-\d+\S*\.el\d+(_\d+)?\.(x86_64|aarch64|ppc64le|s390x)\b"
UEK_KERNEL = r"\.el\d+uek\b"
UEK_NEXT_KERNEL = r"\.el\d+ueknext\b"  # 6.17.0-0.el10ueknext.aarch64
FEDORA_KERNEL = r"\.fc\d+\.(x86_64|aarch64|ppc64le|s390x)\b"
ARCH_KERNEL = r"-arch\d+-\d+$"
# Arch linux-lts: 6.12.10-1-lts. Alpine's are 6.6.58-0-lts: the shape alone cannot tell them
# apart (Arch sets the option, Alpine does not), so "-lts" only counts under its OS image.
ARCH_LTS_KERNEL = r"^\d+\.\d+\.\d+-\d+-lts$"
ALPINE_KERNEL = r"^\d+\.\d+\.\d+-\d+-(lts|virt)$"
AL2_KERNEL = r"\.amzn2\.(x86_64|aarch64)$"
AL2023_KERNEL = r"\.amzn2023\.(x86_64|aarch64)$"
SUSE_DEFAULT_KERNEL = r"-default$"
# Garden Linux builds with Debian's packaging and no ABI number: 6.18.45-cloud-amd64.
GARDEN_KERNEL = r"^\d+\.\d+\.\d+(\+\w+)?-((cloud|rt)-)?(amd64|arm64)$"
# Raspberry Pi kernels: 6.12.34+rpt-rpi-v8, 6.1.0-rpi7-rpi-2712 (bookworm), 5.10.17-v7l+.
RPI_KERNEL = (r"(\+rpt-rpi-(v6|v7|v7l|v8|2712)|-rpi\d+-rpi-(v6|v7|v7l|v8|2712)|"
              r"-v(7|7l|8)(-16k)?\+)$")
WSL2_KERNEL = r"-microsoft-standard-WSL2$"  # 5.15.167.4-microsoft-standard-WSL2
X86_64 = r"^(amd64|x86_64)$"
ANY_OS = r""  # kernel-signature rows: the kernel release alone identifies the build

DISTROS: tuple[DistroRow, ...] = (
    # Ubuntu: not set in every generic and cloud config read; newer cloud flavours inferred.
    DistroRow("ubuntu-cloud-6.8+", "Ubuntu cloud kernels (aws/gcp/azure/gke/oracle) 6.8+",
              r"^Ubuntu\b", False, INF, "madvise", False,
              "same annotations base as generic; not read (§5)",
              kernel_pattern=UBUNTU_CLOUD_KERNEL, kernel_min=(6, 8)),
    DistroRow("ubuntu", "Ubuntu", r"^Ubuntu\b", False, V, "madvise", False,
              f"{KC}; {NR}; CriticalShift/linux-ubuntu-resolute annotations",
              kernel_pattern=UBUNTU_KERNEL, kernel_min=(5, 4)),
    DistroRow("debian-backports", "Debian backports kernel (~bpo, 0.debNN)", r"^Debian\b", False,
              INF, "always", False, "not read: a backport rebuilds the next suite's linux source "
              f"and debian/config for the older suite; those read not set ({KC}: bookworm 6.1, "
              "trixie 6.12)", kernel_pattern=DEBIAN_BACKPORTS_KERNEL),
    DistroRow("debian", "Debian", r"^Debian\b", False, V, "always", False, f"{KC}; {NR}",
              kernel_pattern=DEBIAN_KERNEL),
    DistroRow("debian-testing", "Debian testing/unstable (6.6-6.12)", r"^Debian\b", False, V,
              "always", False, f"{KC} history, trixie while testing: linux-image-6.6.15-amd64 .. "
              "6.12.32-amd64 and -arm64 (2024-03 .. 2025-06)", kernel_pattern=DEBIAN_TESTING_KERNEL,
              kernel_min=(6, 6), kernel_below=(6, 13)),
    DistroRow("debian-testing-other", "Debian testing/unstable (other kernels)", r"^Debian\b",
              False, INF, "always", False, "branch not read; inferred from trixie testing 6.6-6.12 "
              "and forky's testing build (oracle/kconfigs 1712276 'Debian 14 Forky x86_64': not "
              "set, always)", kernel_pattern=DEBIAN_TESTING_KERNEL),
    DistroRow("rhcos-5.x+", "Red Hat Enterprise Linux CoreOS (RHEL 9 based)",
              r"CoreOS|^OpenShift", False, INF, "always", False,
              "RHCOS 4.12 verified; later RHCOS inherits RHEL 9 (inferred)",
              kernel_min=(5, 0), kernel_pattern=RHEL_KERNEL),
    DistroRow("rhcos", "Red Hat Enterprise Linux CoreOS", r"Red Hat Enterprise Linux CoreOS",
              False, V, "always", False, NR, kernel_pattern=RHEL_KERNEL),
    DistroRow("rhel10", "Red Hat Enterprise Linux 10", r"^Red Hat Enterprise Linux 10\b",
              False, INF, "always", False, f"inferred from AlmaLinux 10 / CentOS Stream 10 ({KC})",
              kernel_pattern=RHEL_KERNEL),
    DistroRow("rocky10", "Rocky Linux 10", r"^Rocky Linux 10\b", False, INF, "always", False,
              f"not read; inferred from AlmaLinux 10 / CentOS Stream 10 ({KC})",
              kernel_pattern=RHEL_KERNEL),
    DistroRow("centos-hyperscale", "CentOS Stream Hyperscale", r"^CentOS", False, V, "always",
              False, KC, kernel_pattern=r"\.hs"),
    DistroRow("rhel-family", "RHEL / AlmaLinux / Rocky / CentOS Stream",
              r"^(Red Hat Enterprise Linux|AlmaLinux|Rocky Linux|CentOS)", False, V, "always",
              False, f"{KC}; {NR} (4.18, 5.14, 6.12 builds)", kernel_pattern=RHEL_KERNEL_READ),
    DistroRow("oracle-uek", "Oracle Linux with UEK 7/8/NEXT", r"^Oracle Linux", True, V,
              "always", False, KC, kernel_pattern=UEK_KERNEL, kernel_min=(5, 15)),
    DistroRow("oracle-uek-next", "Oracle Linux with UEK-NEXT (6.9-6.17)", r"^Oracle Linux", True,
              V, "always", False, f"{KC} history: el9ueknext 6.9.0-2 .. 6.17.0-0 and el10ueknext "
              "6.12.0-4 .. 6.17.0-0, x86_64 and aarch64 (2024-07 .. 2025-10)",
              kernel_pattern=UEK_NEXT_KERNEL, kernel_min=(6, 9), kernel_below=(6, 18)),
    DistroRow("oracle-uek-next-other", "Oracle Linux with UEK-NEXT (other kernels)",
              r"^Oracle Linux", True, INF, "always", False, "branch not read; inferred from "
              "UEK-NEXT 6.9-6.17 (all =y)", kernel_pattern=UEK_NEXT_KERNEL),
    DistroRow("oracle-uek6", "Oracle Linux with UEK6", r"^Oracle Linux", False, V, "always",
              False, KC, kernel_pattern=UEK_KERNEL, kernel_below=(5, 15)),
    DistroRow("oracle-rhck", "Oracle Linux with the RHEL-compatible kernel", r"^Oracle Linux",
              False, V, "always", False, KC, kernel_pattern=RHEL_KERNEL_READ),
    DistroRow("amazon-linux-2", "Amazon Linux 2", r"^Amazon Linux 2(?!0\d\d)", False, V,
              "madvise", False, NR, kernel_pattern=AL2_KERNEL),
    DistroRow("amazon-linux-2023-6.1", "Amazon Linux 2023 (6.1)", r"^Amazon Linux 20(22|23)",
              False, V, "madvise", False, f"{NR}: 6.1.19, 6.1.141",
              kernel_pattern=r"^6\.1\.\d+-\S*" + AL2023_KERNEL),
    DistroRow("amazon-linux-2023", "Amazon Linux 2023 (6.12+)", r"^Amazon Linux 20(22|23)",
              False, INF, "madvise", False, "not read; inferred from AL2023 6.1 (§5, §10)",
              kernel_pattern=r"\.amzn202[23]\.(x86_64|aarch64)$"),
    DistroRow("bottlerocket", "Bottlerocket", r"^Bottlerocket", False, INF, "madvise", True,
              "bottlerocket-kernel-kit 2f50162: AL2023 config + fragment without RO_THP"),
    DistroRow("cos-read", "Container-Optimized OS (5.4, 5.10, 6.1)", r"^Container-Optimized OS",
              False, V, "madvise", True, f"{NR}: 5.4.144+, 5.10.90+, 6.1.85+",
              kernel_pattern=r"^(5\.4|5\.10|6\.1)\.\d+\+$"),
    DistroRow("cos", "Container-Optimized OS (5.15, 6.6, 6.12, ...)", r"^Container-Optimized OS",
              False, INF, "madvise", True, "COS 5.15/6.6/6.12 milestones not read; inferred from "
              "5.4/5.10/6.1 (§5, §10)", kernel_pattern=r"^\d+\.\d+\.\d+\+$"),
    DistroRow("flatcar-read", "Flatcar (5.10, 6.1)", r"^Flatcar", False, V, "always", True,
              f"{NR}: 5.10.84, 6.1.96", kernel_pattern=r"^(5\.10|6\.1)\.\d+-flatcar$"),
    DistroRow("flatcar", "Flatcar (5.15, 6.6, 6.12, ...)", r"^Flatcar", False, INF, "always",
              True, "commonconfig-6.12 does not set it (inferred)",
              kernel_pattern=r"-flatcar$"),
    DistroRow("talos-read", "Talos (every kernel 4.19-6.18)", r"^Talos\b", False, V, "madvise",
              True, f"{PKGS} full history 9499e56 (2019-10, 5.2.8) .. 28f5f23 (2026-08, 6.18.45), "
              "config-amd64/arm64 under kernel/, kernel/kernel/, kernel/build/: "
              "TRANSPARENT_HUGEPAGE not set up to 6.6.52 (2024-09), then THP madvise with "
              f"READ_ONLY_THP_FOR_FS not set; {NR}: 6.12.6 (v1.9.1)", kernel_pattern=r"-talos$",
              kernel_below=(6, 19)),
    DistroRow("talos", "Talos (kernels after 6.18)", r"^Talos\b", False, INF, "madvise", True,
              "not read; inferred from every Talos kernel 4.19-6.18", kernel_pattern=r"-talos$"),
    DistroRow("gardenlinux", "Garden Linux (6.1, 6.6, 6.12, 6.18)", r"^Garden Linux", False, V,
              "always", None, "gardenlinux/package-linux d0631a7 (6.6-6.18.45, 31 config "
              "commits), package-linux-6.6 81eef31, deprecated-package-linux-6.1 113bbe9: "
              "Debian's config plus Garden Linux fragments, none sets READ_ONLY_THP_FOR_FS "
              "(Kconfig default n); THP always",
              kernel_pattern=r"^(6\.1|6\.6|6\.12|6\.18)\.\d+(\+\w+)?-((cloud|rt)-)?(amd64|arm64)$"),
    DistroRow("gardenlinux-other", "Garden Linux (other kernels)", r"^Garden Linux", False, INF,
              "always", None, "branch not read; inferred from Garden Linux 6.1-6.18",
              kernel_pattern=GARDEN_KERNEL),
    DistroRow("alpine-lts-6.1", "Alpine Linux linux-lts 6.1 (x86_64)", r"^Alpine Linux", False, V,
              "always", None, "alpinelinux/aports 00ac647 and cf6b558 main/linux-lts/"
              "lts.x86_64.config (6.1, a minimal config): TRANSPARENT_HUGEPAGE=y, default "
              "always, READ_ONLY_THP_FOR_FS absent (Kconfig default n)",
              kernel_pattern=r"^6\.1\.\d+-\d+-lts$", arch_pattern=X86_64),
    DistroRow("alpine", "Alpine Linux linux-lts/linux-virt (other kernels)", r"^Alpine Linux",
              False, INF, "always", None, "not read; inferred from Alpine linux-lts 6.1",
              kernel_pattern=ALPINE_KERNEL),
    DistroRow("azure-linux-read", "Azure Linux 3.0 (6.6) / CBL-Mariner 2 (5.15)",
              r"(Azure Linux|CBL-Mariner)", False, V, "madvise", True,
              f"microsoft/azurelinux SPECS/kernel/config (3.0, 6.6.57.1); {NR} (5.15.138.1)",
              kernel_pattern=r"^(6\.6\.\d+\.\d+-\d+\.azl3|5\.15\.\d+\.\d+-\d+\.cm2)$"),
    DistroRow("azure-linux", "Azure Linux / CBL-Mariner (other kernels)",
              r"(Azure Linux|CBL-Mariner)", False, INF, "madvise", True,
              "not read; inferred from Azure Linux 3.0 6.6 and CBL-Mariner 2 5.15",
              kernel_pattern=r"\.(azl|cm)\d+$"),
    DistroRow("fedora-coreos", "Fedora CoreOS (6.8+)", r"^Fedora CoreOS", True, INF, "madvise",
              False, "FCOS inherits Fedora's config (inferred)", kernel_pattern=FEDORA_KERNEL,
              kernel_min=(6, 8)),
    DistroRow("fedora", "Fedora (kernel 6.8+)", r"^Fedora", True, V, "madvise", False,
              "Fedora dist-git 69f6e97d76ae 'Turn on CONFIG_READ_ONLY_THP_FOR_FS' (6.8.2-300); "
              f"{KC} F42/F43/Rawhide", kernel_pattern=FEDORA_KERNEL, kernel_min=(6, 8)),
    DistroRow("fedora-old", "Fedora (kernel < 6.8)", r"^Fedora", False, V, "madvise", False,
              f"{NR}: F39 6.7.7, FCOS 35 5.15.6", kernel_pattern=FEDORA_KERNEL),
    DistroRow("arch-lts-6.1", "Arch Linux (linux-lts 6.1)", r"^Arch Linux", True, V, "always", True,
              "archlinux/svntogit-packages 07790ca linux-lts/trunk/config (6.1): =y, THP always",
              kernel_pattern=r"^6\.1\.\d+-\d+-lts$"),
    DistroRow("arch-lts", "Arch Linux (linux-lts, other kernels)", r"^Arch Linux", True, INF,
              "always", True, "not read (Arch's packaging moved off GitHub); inferred from "
              "linux-lts 6.1 and linux 6.2-6.18, all =y", kernel_pattern=ARCH_LTS_KERNEL),
    DistroRow("arch", "Arch Linux (linux package)", r"^Arch Linux", True, V, "always", True,
              f"{KC}; {NR}", kernel_pattern=ARCH_KERNEL),
    DistroRow("tumbleweed-aarch64", "openSUSE Tumbleweed (aarch64)", r"^openSUSE Tumbleweed",
              False, V, "always", True, KC, arch_pattern=r"^(aarch64|arm64)$",
              kernel_pattern=SUSE_DEFAULT_KERNEL),
    DistroRow("tumbleweed", "openSUSE Tumbleweed", r"^openSUSE Tumbleweed", True, V, "always",
              True, KC, kernel_pattern=SUSE_DEFAULT_KERNEL),
    DistroRow("sle16", "openSUSE Leap 16 / SLES 16",
              r"^(openSUSE Leap 16|SUSE Linux Enterprise Server 16|SLES 16)", True, V, "always",
              True, f"{KC}: 6.12.0-160000.8.1, all four architectures",
              kernel_pattern=SUSE_DEFAULT_KERNEL),
    DistroRow("sles15-sp3", "SLES 15 SP3 / Leap 15.3 (5.3)",
              r"^(SUSE Linux Enterprise Server 15|SLES 15|openSUSE Leap 15)", False, V, "always",
              True, NR, kernel_below=(5, 4)),
    DistroRow("sles15-sp4+", "SLES 15 SP4-SP7 / Leap 15.4-15.6 / SLE Micro (5.14.21, 6.4)",
              r"^(SUSE Linux Enterprise Server 15|SLES 15|openSUSE Leap 15|SUSE Linux Enterprise"
              r" Micro|SUSE Linux Micro)", None, INF, "always", True,
              "config not found (§5, §10)"),
    DistroRow("alinux3", "Alibaba Cloud Linux 3 (5.10)", r"^Alibaba Cloud Linux.*\b3\b", True, V,
              "always", True, f"{NR}: 5.10.134-16.1", kernel_pattern=r"^5\.10\.\d+-\S*\.al8\b"),
    DistroRow("alinux2", "Alibaba Cloud Linux 2 (4.19 backport)", r"^Alibaba Cloud Linux", True,
              V, "always", True, f"{NR}: 4.19.91-27.7", kernel_pattern=r"^4\.19\.\d+-\S*\.al7\b"),
    DistroRow("others-not-set", "Photon OS, Deepin, Pop!_OS, k3OS, RancherOS",
              r"^(VMware Photon|Photon OS|Deepin|Pop!_OS|k3OS|RancherOS)", False, V,
              None, None, NR),
    # Kernel-signature rows: the OS image did not identify the kernel's builder (a kind node's
    # container image, an unusual image name), but the release string names a vendor build
    # whose config is in the table. Inferred: that the release string is that vendor's build.
    DistroRow("ubuntu-kernel", "Ubuntu kernel build under another OS image", ANY_OS,
              False, INF, "madvise", False, "Ubuntu rows above; release string shape",
              kernel_pattern=UBUNTU_KERNEL),
    DistroRow("debian-kernel", "Debian kernel build under another OS image", ANY_OS,
              False, INF, "always", False, "Debian rows above; release string shape",
              kernel_pattern=ANY_DEBIAN_KERNEL),
    DistroRow("uek-kernel", "Oracle UEK 7/8 build under another OS image", ANY_OS, True,
              INF, "always", False, "Oracle UEK rows above; release string shape",
              kernel_pattern=UEK_KERNEL, kernel_min=(5, 15)),
    DistroRow("uek-next-kernel", "Oracle UEK-NEXT build under another OS image", ANY_OS, True,
              INF, "always", False, "Oracle UEK-NEXT rows above; release string shape",
              kernel_pattern=UEK_NEXT_KERNEL),
    DistroRow("uek6-kernel", "Oracle UEK6 build under another OS image", ANY_OS, False,
              INF, "always", False, "Oracle UEK6 row above; release string shape",
              kernel_pattern=UEK_KERNEL),
    DistroRow("rhel-kernel", "RHEL-family kernel build under another OS image",
              ANY_OS, False, INF, "always", False, "RHEL-family rows above; release string shape",
              kernel_pattern=RHEL_KERNEL, kernel_min=(4, 18)),  # RHEL 7's 3.10 was not read
    DistroRow("fedora-kernel", "Fedora kernel 6.8+ under another OS image", ANY_OS, True, INF,
              "madvise", False, "Fedora row above; release string shape",
              kernel_pattern=FEDORA_KERNEL, kernel_min=(6, 8)),
    DistroRow("fedora-old-kernel", "Fedora kernel < 6.8 under another OS image", ANY_OS, False,
              INF, "madvise", False, "Fedora row above; release string shape",
              kernel_pattern=FEDORA_KERNEL),
    DistroRow("amazon-kernel", "Amazon Linux kernel build under another OS image",
              ANY_OS, False, INF, "madvise", False, "Amazon Linux rows above; release string "
              "shape", kernel_pattern=r"\.amzn(2|2022|2023)\.(x86_64|aarch64)$"),
    DistroRow("arch-kernel", "Arch Linux kernel build under another OS image", ANY_OS, True, INF,
              "always", True, "Arch row above; release string shape", kernel_pattern=ARCH_KERNEL),
    DistroRow("proxmox-6.8", "Proxmox VE kernel 6.8", ANY_OS, False, V,
              None, False, f"{NR}: 6.8.12-pve", kernel_pattern=r"^6\.8\.\d+-\d+-pve$"),
    DistroRow("proxmox", "Proxmox VE kernel (other versions)", ANY_OS, False, INF, None, False,
              "not read; inferred from Proxmox 6.8.12-pve", kernel_pattern=r"-pve$"),
    # Raspberry Pi kernels: the Foundation's defconfigs do not build THP at all.
    DistroRow("raspberrypi-read", "Raspberry Pi OS kernel (rpi-v8, rpi-2712; 6.12+)", ANY_OS,
              False, V, None, None, "oracle/kconfigs f9ac50d 'Raspberry Pi OS 13 Trixie aarch64 "
              "- rpi-2712', b46ff8f '... - rpi-v8' (2026): # CONFIG_TRANSPARENT_HUGEPAGE is not "
              "set", kernel_pattern=r"\+rpt-rpi-(v8|2712)$", kernel_min=(6, 12)),
    DistroRow("raspberrypi-5.10", "Raspbian kernel 5.10 (v7l)", ANY_OS, False, V, None, True,
              f"{NR}: Raspbian 10 5.10.17-v7l+: # CONFIG_TRANSPARENT_HUGEPAGE is not set",
              kernel_pattern=r"^5\.10\.\d+-v7l\+$"),
    DistroRow("raspberrypi", "Raspberry Pi OS kernel (other kernels)", ANY_OS, False, INF, None,
              None, "branch not read; inferred from the Raspberry Pi 5.10 and 2026 trixie "
              "builds (THP not built)", kernel_pattern=RPI_KERNEL),
    # Developer VMs people run Kubernetes in: WSL2 (also Docker Desktop and Rancher Desktop on
    # Windows), Docker Desktop / LinuxKit, OrbStack. Rancher Desktop on macOS and Lima run
    # Alpine ("-virt") or Ubuntu kernels: the rows above.
    DistroRow("wsl2-5.15", "WSL2 kernel 5.15 (x86_64)", ANY_OS, False, V, "always", True,
              f"{WSL} (5.15.146.1, copied from microsoft/WSL2-Linux-Kernel): not set",
              kernel_pattern=r"^5\.15\.\S+" + WSL2_KERNEL, arch_pattern=X86_64),
    DistroRow("wsl2-6.6", "WSL2 kernel 6.6 (x86_64)", ANY_OS, False, V, "madvise", True,
              f"{WSL} (6.6.29.1 .. 6.6.87.1, copied from microsoft/WSL2-Linux-Kernel): not set",
              kernel_pattern=r"^6\.6\.\S+" + WSL2_KERNEL, arch_pattern=X86_64),
    DistroRow("wsl2", "WSL2 kernel (arm64, other branches)", ANY_OS, False, INF, None, True,
              "not read; inferred from the x86_64 5.15 and 6.6 configs",
              kernel_pattern=WSL2_KERNEL),
    DistroRow("linuxkit", "Docker Desktop / LinuxKit kernel", ANY_OS, False, INF, "always", True,
              f"{LINUXKIT}: not set, THP always; Docker Desktop builds its own -linuxkit kernels "
              "from a config it does not publish (it differs from LinuxKit's: "
              "docker/for-mac#7250)", kernel_pattern=r"-linuxkit(-\w+)?$"),
    DistroRow("orbstack", "OrbStack kernel", ANY_OS, None, INF, None, None,
              "config not found: its /proc/config.gz is a stub without the THP options (NR: "
              "6.14.10-orbstack, arm64), orbstack/linux-macvirt publishes none",
              kernel_pattern=r"-orbstack\b"),
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
