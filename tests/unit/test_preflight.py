"""``thpcheck preflight``: predictions from ``status.nodeInfo`` over a corpus of real node strings.

Each case is a (osImage, kernelVersion, architecture) triple as the kubelet reports it, with the
prediction expected from ``kernel-susceptibility.md`` (§3 gate table, §3.2 grading, §5 distro
table, §8 algorithm), written down from the notes, not from running the code:

- the distro row decides ``CONFIG_READ_ONLY_THP_FOR_FS`` and the confidence (``config-known``
  for a row read in a shipped config, ``inferred`` otherwise);
- 7.2+ (G3), pre-5.4 (G2, or G2b with a vendor backport) and fixed stable releases (G4) decide
  by version; a vendor release hiding its sublevel is never fixed;
- an unfixed kernel with the option on is ``susceptible`` on every filesystem class the gate
  table puts at risk for that kernel: ext4 < 6.16 (G10), xfs < 5.17 (G7), btrfs (G12), f2fs
  (G13), and on 6.16+ ext4 data=journal/verity/encrypt (G9); the headline rule is the first of
  ext4, xfs, btrfs, f2fs that is at risk;
- the grade follows §3.2 at the distro's default THP policy.

Where a string was seen in public node listings (``kubectl get nodes -o wide``, nodeInfo
dumps, os-release files) the comment says "seen"; other strings follow the same vendor format
with a chosen version.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from thpcheck.model import preflight
from thpcheck.model.distro import DISTROS, lookup
from thpcheck.model.preflight import (
    NodeInfo,
    NodePrediction,
    NodesDocumentError,
    nodes_from_documents,
    predict_node,
    predict_nodes,
    preflight_exit_code,
    render_table,
    summarize,
    to_document,
)
from thpcheck.model.rules import RULES
from thpcheck.model.verdict import CheckExit

REPO = Path(__file__).resolve().parents[2]
SUS, NA, UNK = "susceptible", "not-affected", "unknown"
KNOWN, INF, UNKNOWN = "config-known", "inferred", "unknown"
E4, XFS, BTRFS, F2FS, E4J = "ext4", "xfs", "btrfs", "f2fs", "ext4 data=journal/verity/encrypt"
# At-risk filesystem classes by kernel band (§2, §3.1): before XFS large folios (< 5.17), before
# ext4 large folios (< 6.16), and after (6.16 - 7.1).
BELOW_5_17 = (E4, XFS, BTRFS, F2FS)
BELOW_6_16 = (E4, BTRFS, F2FS)
FROM_6_16 = (BTRFS, F2FS, E4J)


@dataclass(frozen=True)
class Case:
    id: str
    os_image: str
    kernel: str
    verdict: str
    rule: str
    confidence: str
    row: str | None
    at_risk: tuple[str, ...] = ()
    grade: str | None = None
    arch: str = "amd64"


CORPUS: tuple[Case, ...] = (
    # --- Ubuntu (§5: generic and cloud flavours not set [V]; cloud 6.8+ inferred) -------------
    Case("ubuntu-20.04-generic", "Ubuntu 20.04.6 LTS", "5.4.0-165-generic",  # seen
         NA, "G1", KNOWN, "ubuntu"),
    Case("ubuntu-22.04-generic", "Ubuntu 22.04.4 LTS", "5.15.0-176-generic",  # seen
         NA, "G1", KNOWN, "ubuntu"),
    Case("ubuntu-24.04-generic", "Ubuntu 24.04.3 LTS", "6.8.0-86-generic",  # seen
         NA, "G1", KNOWN, "ubuntu"),
    Case("ubuntu-24.04-generic-arm64", "Ubuntu 24.04.1 LTS", "6.8.0-48-generic",
         NA, "G1", KNOWN, "ubuntu", arch="arm64"),
    Case("ubuntu-18.04-aws-5.4", "Ubuntu 18.04.5 LTS", "5.4.0-1025-aws",  # seen
         NA, "G1", KNOWN, "ubuntu"),
    Case("ubuntu-20.04-aws-5.15", "Ubuntu 20.04.6 LTS", "5.15.0-1037-aws",  # seen
         NA, "G1", KNOWN, "ubuntu"),
    Case("ubuntu-22.04-azure-5.15 (AKS)", "Ubuntu 22.04.5 LTS", "5.15.0-1074-azure",
         NA, "G1", KNOWN, "ubuntu"),
    Case("ubuntu-24.04-aws-6.17 (cloud 6.8+ not read)", "Ubuntu 24.04.4 LTS",
         "6.17.0-1009-aws", NA, "G1", INF, "ubuntu-cloud-6.8+"),  # seen
    Case("ubuntu-24.04-gcp-6.8", "Ubuntu 24.04.1 LTS", "6.8.0-1015-gcp",
         NA, "G1", INF, "ubuntu-cloud-6.8+"),
    Case("ubuntu-22.04-gke-6.8", "Ubuntu 22.04.5 LTS", "6.8.0-1021-gke",
         NA, "G1", INF, "ubuntu-cloud-6.8+"),
    # --- Debian (§5: not set [V]) ------------------------------------------------------------
    Case("debian-11", "Debian GNU/Linux 11 (bullseye)", "5.10.0-32-amd64",
         NA, "G1", KNOWN, "debian"),
    Case("debian-12-cloud", "Debian GNU/Linux 12 (bookworm)", "6.1.0-28-cloud-amd64",
         NA, "G1", KNOWN, "debian"),
    Case("debian-12-arm64", "Debian GNU/Linux 12 (bookworm)", "6.1.0-31-arm64",
         NA, "G1", KNOWN, "debian", arch="arm64"),
    Case("debian-13", "Debian GNU/Linux 13 (trixie)", "6.12.48+deb13-amd64",  # seen
         NA, "G1", KNOWN, "debian"),
    # Testing/unstable: no ABI number (oracle/kconfigs read trixie's testing kernels 6.6-6.12).
    Case("debian testing 6.12.32 (trixie/sid)", "Debian GNU/Linux trixie/sid", "6.12.32-amd64",
         NA, "G1", KNOWN, "debian-testing"),
    Case("debian testing arm64 6.10.11", "Debian GNU/Linux trixie/sid", "6.10.11-arm64",
         NA, "G1", KNOWN, "debian-testing", arch="arm64"),
    Case("debian unstable 6.17.8 (branch not read)", "Debian GNU/Linux forky/sid",
         "6.17.8-amd64", NA, "G1", INF, "debian-testing-other"),
    # Backports rebuild the next suite's source and config: not read, inferred.
    Case("debian-12-backports-6.12", "Debian GNU/Linux 12 (bookworm)", "6.12.12+bpo-amd64",
         NA, "G1", INF, "debian-backports"),
    Case("debian 11 bullseye-backports 6.1", "Debian GNU/Linux 11 (bullseye)",
         "6.1.0-0.deb11.21-amd64", NA, "G1", INF, "debian-backports"),  # seen
    Case("debian 10 buster-backports 5.10", "Debian GNU/Linux 10 (buster)",
         "5.10.0-0.bpo.15-amd64", NA, "G1", INF, "debian-backports"),  # seen
    # Garden Linux (Gardener): Debian packaging, Garden Linux fragments, no ABI number.
    Case("gardenlinux 1877 6.12", "Garden Linux 1877.2", "6.12.44-cloud-amd64",
         NA, "G1", KNOWN, "gardenlinux"),
    Case("gardenlinux 1592 6.6 arm64", "Garden Linux 1592.9", "6.6.87-cloud-arm64",
         NA, "G1", KNOWN, "gardenlinux", arch="arm64"),
    Case("gardenlinux 6.18 metal", "Garden Linux 2017.0", "6.18.45-amd64",
         NA, "G1", KNOWN, "gardenlinux"),
    Case("gardenlinux 6.17 (branch not read)", "Garden Linux 1990.0", "6.17.9-cloud-amd64",
         NA, "G1", INF, "gardenlinux-other"),
    # --- RHEL family (§5: not set [V]; RHEL 10 itself inferred; Rocky 10 not in §5) ----------
    Case("rhel-8.10", "Red Hat Enterprise Linux 8.10 (Ootpa)", "4.18.0-553.5.1.el8_10.x86_64",
         NA, "G1", KNOWN, "rhel-family"),
    Case("rhel-9.4", "Red Hat Enterprise Linux 9.4 (Plow)", "5.14.0-427.13.1.el9_4.x86_64",
         NA, "G1", KNOWN, "rhel-family"),
    Case("rhel-10.0", "Red Hat Enterprise Linux 10.0 (Coughlan)",
         "6.12.0-55.9.1.el10_0.x86_64", NA, "G1", INF, "rhel10"),
    Case("almalinux-9.5", "AlmaLinux 9.5 (Teal Serval)", "5.14.0-503.14.1.el9_5.x86_64",
         NA, "G1", KNOWN, "rhel-family"),
    Case("almalinux-10.0", "AlmaLinux 10.0 (Purple Lion)", "6.12.0-55.12.1.el10_0.x86_64",
         NA, "G1", KNOWN, "rhel-family"),
    Case("rocky-9.5", "Rocky Linux 9.5 (Blue Onyx)", "5.14.0-503.14.1.el9_5.x86_64",
         NA, "G1", KNOWN, "rhel-family"),
    Case("rocky-10.0 (not read)", "Rocky Linux 10.0 (Red Quartz)",
         "6.12.0-55.14.1.el10_0.x86_64", NA, "G1", INF, "rocky10"),
    Case("centos-stream-9", "CentOS Stream 9", "5.14.0-570.el9.x86_64",
         NA, "G1", KNOWN, "rhel-family"),
    Case("centos-stream-10-hyperscale", "CentOS Stream 10 (Coughlan)",
         "6.16.4-1.hs1.hsx.el10.x86_64", NA, "G1", KNOWN, "centos-hyperscale"),
    Case("centos-7 (3.10, pre-5.4, not read)", "CentOS Linux 7 (Core)",
         "3.10.0-1160.119.1.el7.x86_64", NA, "G2", INF, None),
    Case("rhcos-4.12 (RHEL 8)", "Red Hat Enterprise Linux CoreOS 412.86.202402272018-0 (Ootpa)",
         "4.18.0-372.93.1.el8_6.x86_64", NA, "G1", KNOWN, "rhcos"),
    Case("rhcos-4.16 (RHEL 9)", "Red Hat Enterprise Linux CoreOS 416.94.202406251923-0",
         "5.14.0-427.22.1.el9_4.x86_64", NA, "G1", INF, "rhcos-5.x+"),
    # --- Oracle Linux (§5: UEK7/UEK8 =y [V], always; RHCK and UEK6 not set) -------------------
    Case("ol9-uek7", "Oracle Linux Server 9.4", "5.15.0-208.159.3.2.el9uek.x86_64",
         SUS, "G10", KNOWN, "oracle-uek", BELOW_5_17, "medium"),
    Case("ol8-uek7", "Oracle Linux Server 8.10", "5.15.0-317.197.5.1.el8uek.x86_64",  # seen
         SUS, "G10", KNOWN, "oracle-uek", BELOW_5_17, "medium"),
    Case("ol9-uek8 (sublevel hidden: never fixed)", "Oracle Linux Server 9.6",
         "6.12.0-105.51.5.el9uek.x86_64", SUS, "G10", KNOWN, "oracle-uek",  # seen
         BELOW_6_16, "high"),
    Case("ol10-uek8", "Oracle Linux Server 10.0", "6.12.0-104.43.4.3.el10uek.x86_64",  # seen
         SUS, "G10", KNOWN, "oracle-uek", BELOW_6_16, "high"),
    Case("ol9-uek8-arm64", "Oracle Linux Server 9.5", "6.12.0-107.59.3.3.el9uek.aarch64",
         SUS, "G10", KNOWN, "oracle-uek", BELOW_6_16, "high", arch="arm64"),
    Case("ol9-rhck", "Oracle Linux Server 9.4", "5.14.0-427.13.1.0.1.el9_4.x86_64",
         NA, "G1", KNOWN, "oracle-rhck"),
    Case("ol8-uek6", "Oracle Linux Server 8.9", "5.4.17-2136.330.7.1.el8uek.x86_64",
         NA, "G1", KNOWN, "oracle-uek6"),
    # UEK-NEXT (oracle/kconfigs history: el9ueknext/el10ueknext 6.9-6.17, all =y, always).
    Case("ol9-uek-next-6.17", "Oracle Linux Server 9.6", "6.17.0-0.el9ueknext.x86_64",
         SUS, "G12", KNOWN, "oracle-uek-next", FROM_6_16, "high"),
    Case("ol10-uek-next-6.17-arm64", "Oracle Linux Server 10.0", "6.17.0-0.el10ueknext.aarch64",
         SUS, "G12", KNOWN, "oracle-uek-next", FROM_6_16, "high", arch="arm64"),
    Case("ol10-uek-next-6.15", "Oracle Linux Server 10.0", "6.15.0-1.el10ueknext.x86_64",
         SUS, "G10", KNOWN, "oracle-uek-next", BELOW_6_16, "high"),
    Case("ol9-uek-next-6.12 (sublevel hidden)", "Oracle Linux Server 9.5",
         "6.12.0-4.el9ueknext.aarch64", SUS, "G10", KNOWN, "oracle-uek-next", BELOW_6_16, "high",
         arch="arm64"),
    Case("ol10-uek-next-6.18 (branch not read)", "Oracle Linux Server 10.1",
         "6.18.0-0.el10ueknext.x86_64", SUS, "G12", INF, "oracle-uek-next-other", FROM_6_16,
         "high"),
    # --- Amazon (§5: AL2, AL2023 6.1 not set [V]; AL2023 6.12 inferred; Bottlerocket [I]) -----
    Case("al2-5.10", "Amazon Linux 2", "5.10.225-213.878.amzn2.x86_64",
         NA, "G1", KNOWN, "amazon-linux-2"),
    Case("al2-4.14", "Amazon Linux 2", "4.14.355-271.569.amzn2.x86_64",
         NA, "G1", KNOWN, "amazon-linux-2"),
    Case("al2023-6.1", "Amazon Linux 2023.6.20241031", "6.1.112-122.189.amzn2023.x86_64",
         NA, "G1", KNOWN, "amazon-linux-2023-6.1"),
    Case("al2023-6.1-arm64", "Amazon Linux 2023.7.20250512", "6.1.134-152.225.amzn2023.aarch64",
         NA, "G1", KNOWN, "amazon-linux-2023-6.1", arch="arm64"),
    Case("al2023-6.12 (not read)", "Amazon Linux 2023.8.20250908",
         "6.12.40-64.114.amzn2023.x86_64", NA, "G1", INF, "amazon-linux-2023"),  # seen
    Case("bottlerocket-6.1", "Bottlerocket OS 1.26.1 (aws-k8s-1.31)", "6.1.112",  # seen
         NA, "G1", INF, "bottlerocket"),
    Case("bottlerocket-5.15", "Bottlerocket OS 1.19.4 (aws-k8s-1.27)", "5.15.152",  # seen
         NA, "G1", INF, "bottlerocket"),
    # --- Google COS (§5: 5.4/5.10/6.1 not set [V]; 6.6/6.12 inferred; 5.15 not read) ---------
    Case("cos-6.1", "Container-Optimized OS from Google", "6.1.100+",  # seen
         NA, "G1", KNOWN, "cos-read"),
    Case("cos-5.10", "Container-Optimized OS from Google", "5.10.127+",  # seen
         NA, "G1", KNOWN, "cos-read"),
    Case("cos-5.15 (not read)", "Container-Optimized OS from Google", "5.15.146+",  # seen
         NA, "G1", INF, "cos"),
    Case("cos-6.6", "Container-Optimized OS from Google", "6.6.105+",  # seen
         NA, "G1", INF, "cos"),
    Case("cos-6.12", "Container-Optimized OS from Google", "6.12.85+",  # seen
         NA, "G1", INF, "cos"),
    # --- Flatcar, Talos, Azure Linux (§5: not set; read only for some kernels) -----------------
    Case("flatcar-6.1", "Flatcar Container Linux by Kinvolk 3815.2.5 (Oklo)", "6.1.96-flatcar",
         NA, "G1", KNOWN, "flatcar-read"),
    Case("flatcar-6.12", "Flatcar Container Linux by Kinvolk 4459.2.3 (Oklo)",
         "6.12.66-flatcar", NA, "G1", INF, "flatcar"),  # seen
    Case("talos-1.9.1", "Talos (v1.9.1)", "6.12.6-talos", NA, "G1", KNOWN, "talos-read"),
    Case("talos-1.13", "Talos (v1.13.0-beta.1)", "6.18.19-talos",  # seen
         NA, "G1", KNOWN, "talos-read"),
    Case("talos-1.8 (6.6)", "Talos (v1.8.2)", "6.6.58-talos",  # seen
         NA, "G1", KNOWN, "talos-read"),
    # Every Talos kernel config is public (siderolabs/pkgs): THP not even built before 6.6.52.
    Case("talos-1.3 (5.15, THP not built)", "Talos (v1.3.7)", "5.15.106-talos",
         NA, "G1", KNOWN, "talos-read"),
    Case("talos-1.6 (6.1)", "Talos (v1.6.7)", "6.1.82-talos", NA, "G1", KNOWN, "talos-read"),
    Case("talos-1.7 arm64 (6.6.43)", "Talos (v1.7.6)", "6.6.43-talos",
         NA, "G1", KNOWN, "talos-read", arch="arm64"),
    Case("talos 6.19 (not read yet)", "Talos (v1.14.0-alpha.1)", "6.19.3-talos",
         NA, "G1", INF, "talos"),
    Case("cbl-mariner-2", "CBL-Mariner/Linux", "5.15.153.1-2.cm2",  # seen
         NA, "G1", KNOWN, "azure-linux-read"),
    Case("azure-linux-3", "Microsoft Azure Linux 3.0", "6.6.150.1-1.azl3",  # seen
         NA, "G1", KNOWN, "azure-linux-read"),
    Case("azure-linux-3 6.12 (not read)", "Microsoft Azure Linux 3.0", "6.12.40.1-1.azl3",
         NA, "G1", INF, "azure-linux"),
    # --- Fedora (§5: =y since 6.8.2 [V]; FCOS inherits [I]; madvise) ----------------------------
    Case("fedora-40-server", "Fedora Linux 40 (Server Edition)", "6.8.5-301.fc40.x86_64",
         SUS, "G10", KNOWN, "fedora", BELOW_6_16, "low-medium"),
    Case("fedora-42-server", "Fedora Linux 42 (Server Edition)", "6.14.0-63.fc42.x86_64",
         SUS, "G10", KNOWN, "fedora", BELOW_6_16, "low-medium"),
    Case("fedora-43-server (ext4 has large folios)", "Fedora Linux 43 (Server Edition)",
         "6.17.1-300.fc43.x86_64", SUS, "G12", KNOWN, "fedora", FROM_6_16, "low-medium"),
    Case("fedora-39 (6.7, before the switch)", "Fedora Linux 39 (Server Edition)",
         "6.7.7-200.fc39.x86_64", NA, "G1", KNOWN, "fedora-old"),
    Case("fcos-40", "Fedora CoreOS 40.20240616.3.0", "6.8.11-300.fc40.x86_64",
         SUS, "G10", INF, "fedora-coreos", BELOW_6_16, "low-medium"),
    Case("fcos-44 7.1.3 (unfixed)", "Fedora CoreOS 44.20260707.3.1", "7.1.3-200.fc44.aarch64",
         SUS, "G12", INF, "fedora-coreos", FROM_6_16, "low-medium", arch="arm64"),  # seen
    Case("fcos-44 7.1.10 (fixed, 7.1.4 inferred)", "Fedora CoreOS 44.20260829.3.1",
         "7.1.10-200.fc44.x86_64", NA, "G4", INF, "fedora-coreos"),  # seen
    Case("fcos-35 (5.15, read)", "Fedora CoreOS 35.20211203.3.0", "5.15.6-200.fc35.x86_64",
         NA, "G1", KNOWN, "fedora-old"),
    # --- openSUSE / SUSE (§5: Tumbleweed and Leap 16 =y, always; aarch64 TW not set; SLES 15
    # SP4+ not found) --------------------------------------------------------------------------
    Case("tumbleweed-6.18.7", "openSUSE Tumbleweed", "6.18.7-1-default",
         SUS, "G12", KNOWN, "tumbleweed", FROM_6_16, "high"),
    Case("tumbleweed-aarch64", "openSUSE Tumbleweed", "6.18.7-1-default",
         NA, "G1", KNOWN, "tumbleweed-aarch64", arch="arm64"),
    Case("tumbleweed-7.2 (purge removed)", "openSUSE Tumbleweed", "7.2.3-1-default",
         NA, "G3", INF, "tumbleweed"),
    Case("leap-16.0 (sublevel hidden)", "openSUSE Leap 16.0", "6.12.0-160000.33-default",  # seen
         SUS, "G10", KNOWN, "sle16", BELOW_6_16, "high"),
    Case("sles-16.0", "SUSE Linux Enterprise Server 16.0", "6.12.0-160000.5-default",
         SUS, "G10", KNOWN, "sle16", BELOW_6_16, "high"),
    Case("sles-15-sp5 (config not found)", "SUSE Linux Enterprise Server 15 SP5",
         "5.14.21-150500.55.65-default", UNK, "G18", UNKNOWN, "sles15-sp4+"),
    Case("sles-15-sp6", "SUSE Linux Enterprise Server 15 SP6", "6.4.0-150600.23.25-default",
         UNK, "G18", UNKNOWN, "sles15-sp4+"),
    Case("leap-15.6", "openSUSE Leap 15.6", "6.4.0-150600.23.25-default",
         UNK, "G18", UNKNOWN, "sles15-sp4+"),
    Case("sles-15-sp3 (5.3, option absent)", "SUSE Linux Enterprise Server 15 SP3",
         "5.3.18-150300.59.164-default", NA, "G1", KNOWN, "sles15-sp3"),
    # --- Arch (§5: =y, always; tracks mainline) ------------------------------------------------
    Case("arch-6.1", "Arch Linux", "6.1.11-arch1-1",  # seen
         SUS, "G10", KNOWN, "arch", BELOW_6_16, "medium"),
    Case("arch-6.12.10", "Arch Linux", "6.12.10-arch1-1",
         SUS, "G10", KNOWN, "arch", BELOW_6_16, "high"),
    Case("arch-6.15.5", "Arch Linux", "6.15.5-arch1-1",  # seen
         SUS, "G10", KNOWN, "arch", BELOW_6_16, "high"),
    Case("arch-6.18.7", "Arch Linux", "6.18.7-arch1-1",
         SUS, "G12", KNOWN, "arch", FROM_6_16, "high"),
    Case("arch-7.2", "Arch Linux", "7.2.1-arch1-1", NA, "G3", INF, "arch"),
    Case("arch linux-lts 6.12.96 (fixed)", "Arch Linux", "6.12.96-1-lts",
         NA, "G4", KNOWN, "arch-lts"),
    Case("arch linux-lts 6.12.90 (6.12 lts config not read)", "Arch Linux", "6.12.90-1-lts",
         SUS, "G10", INF, "arch-lts", BELOW_6_16, "high"),
    Case("arch linux-lts 6.1.55 (read)", "Arch Linux", "6.1.55-1-lts",
         SUS, "G10", KNOWN, "arch-lts-6.1", BELOW_6_16, "medium"),
    Case("arch linux-lts 6.6.30", "Arch Linux", "6.6.30-1-lts",
         SUS, "G10", INF, "arch-lts", BELOW_6_16, "medium"),
    Case("arch linux arm rpi kernel (not read)", "Arch Linux ARM", "6.12.25-1-rpi",  # seen
         UNK, "G18", UNKNOWN, None, arch="arm64"),
    # --- Alibaba Cloud Linux (§5: 3 =y on 5.10; 2 is a 4.19 backport, contents unknown) --------
    Case("alinux-3", "Alibaba Cloud Linux 3.2104 U10 (OpenAnolis Edition)",
         "5.10.134-16.1.al8.x86_64", SUS, "G10", KNOWN, "alinux3", BELOW_5_17, "low"),  # seen
    Case("alinux-2 (4.19 backport)", "Alibaba Cloud Linux (Aliyun Linux) 2.1903 LTS "
         "(Hunting Beagle)", "4.19.91-27.7.al7.x86_64", UNK, "G2b", UNKNOWN, "alinux2"),
    # --- Others read in NR (not set) -----------------------------------------------------------
    Case("k3os", "k3OS v0.21.5-k3s2r1", "5.4.0-88-generic", NA, "G1", KNOWN, "others-not-set"),
    Case("photon-4", "VMware Photon OS/Linux", "5.10.226-1.ph4", NA, "G1", KNOWN,
         "others-not-set"),
    Case("proxmox-6.8 (PRETTY_NAME is Debian)", "Debian GNU/Linux 12 (bookworm)", "6.8.12-4-pve",
         NA, "G1", KNOWN, "proxmox-6.8"),
    # --- OS image and kernel from different builders: kind/minikube nodes report the node
    # container's os-release next to the host's kernel (§8: the kernel decides) -------------------
    Case("kind on Arch 6.15 (Debian image)", "Debian GNU/Linux 12 (bookworm)",
         "6.15.6-arch1-1", SUS, "G10", INF, "arch-kernel", BELOW_6_16, "high"),  # seen
    Case("minikube on Arch 6.16 (Ubuntu image)", "Ubuntu 24.04.2 LTS", "6.16.8-arch1-1",
         SUS, "G12", INF, "arch-kernel", FROM_6_16, "high"),  # seen
    Case("kind on Arch 5.18 (Ubuntu image)", "Ubuntu 21.10", "5.18.12-arch1-1",  # seen
         SUS, "G10", INF, "arch-kernel", BELOW_6_16, "medium"),
    Case("kind on Ubuntu aws (Debian image)", "Debian GNU/Linux 12 (bookworm)", "6.5.0-1020-aws",
         NA, "G1", INF, "ubuntu-kernel"),  # seen
    Case("kind on Fedora 41 (Debian image)", "Debian GNU/Linux 12 (bookworm)",
         "6.11.4-301.fc41.x86_64", SUS, "G10", INF, "fedora-kernel", BELOW_6_16, "low-medium"),
    Case("kind on Docker Desktop (linuxkit)", "Debian GNU/Linux 12 (bookworm)",
         "5.15.49-linuxkit-pr", NA, "G1", INF, "linuxkit"),  # seen
    # --- Alpine (Rancher Desktop and Lima run Alpine's linux-virt) ------------------------------
    Case("alpine 3.18 linux-lts 6.1", "Alpine Linux v3.18", "6.1.79-0-lts",
         NA, "G1", KNOWN, "alpine-lts-6.1"),
    Case("alpine 3.18 linux-lts 6.1 arm64 (aarch64 not read)", "Alpine Linux v3.18",
         "6.1.79-0-lts", NA, "G1", INF, "alpine", arch="arm64"),
    Case("rancher desktop (alpine 3.21 linux-virt)", "Alpine Linux v3.21", "6.12.13-0-virt",
         NA, "G1", INF, "alpine", arch="arm64"),
    Case("alpine 3.20 linux-lts 6.6", "Alpine Linux v3.20", "6.6.58-0-lts",
         NA, "G1", INF, "alpine"),
    Case("an alpine -lts kernel under another image (the shape alone decides nothing)",
         "Debian GNU/Linux 12 (bookworm)", "6.6.58-0-lts", UNK, "G18", UNKNOWN, None),
    # --- Raspberry Pi OS (its os-release says Debian/Raspbian; THP is not built) ----------------
    Case("raspberry pi os bookworm pi5 6.12", "Debian GNU/Linux 12 (bookworm)",
         "6.12.34+rpt-rpi-2712", NA, "G1", KNOWN, "raspberrypi-read", arch="arm64"),  # seen
    Case("raspberry pi os trixie pi4 6.12", "Debian GNU/Linux 13 (trixie)",
         "6.12.47+rpt-rpi-v8", NA, "G1", KNOWN, "raspberrypi-read", arch="arm64"),
    Case("raspberry pi os bookworm 6.6 (not read)", "Debian GNU/Linux 12 (bookworm)",
         "6.6.51+rpt-rpi-v8", NA, "G1", INF, "raspberrypi", arch="arm64"),  # seen
    Case("raspberry pi os bookworm 6.1 debian-style", "Debian GNU/Linux 12 (bookworm)",
         "6.1.0-rpi7-rpi-v8", NA, "G1", INF, "raspberrypi", arch="arm64"),  # seen
    Case("raspbian buster 5.10 v7l", "Raspbian GNU/Linux 10 (buster)", "5.10.103-v7l+",
         NA, "G1", KNOWN, "raspberrypi-5.10", arch="arm"),  # seen
    Case("raspbian bookworm 32-bit 6.6", "Raspbian GNU/Linux 12 (bookworm)",
         "6.6.31+rpt-rpi-v7l", NA, "G1", INF, "raspberrypi", arch="arm"),
    # --- Developer VMs: WSL2, Docker Desktop / LinuxKit, OrbStack -------------------------------
    Case("minikube in WSL2 (5.15)", "Ubuntu 22.04.5 LTS", "5.15.167.4-microsoft-standard-WSL2",
         NA, "G1", KNOWN, "wsl2-5.15"),  # seen
    Case("kind on Docker Desktop for Windows (WSL2 6.6)", "Debian GNU/Linux 12 (bookworm)",
         "6.6.87.2-microsoft-standard-WSL2", NA, "G1", KNOWN, "wsl2-6.6"),  # seen
    Case("rancher desktop on Windows (WSL2 5.15)", "Rancher Desktop WSL Distribution",
         "5.15.153.1-microsoft-standard-WSL2", NA, "G1", KNOWN, "wsl2-5.15"),
    Case("WSL2 on arm64 (not read)", "Ubuntu 24.04.1 LTS", "6.6.36.6-microsoft-standard-WSL2",
         NA, "G1", INF, "wsl2", arch="arm64"),
    Case("WSL2 5.10 (not read)", "Ubuntu 20.04.6 LTS", "5.10.102.1-microsoft-standard-WSL2",
         NA, "G1", INF, "wsl2"),  # seen
    Case("docker desktop kubernetes (linuxkit 6.10)", "Docker Desktop", "6.10.14-linuxkit",
         NA, "G1", INF, "linuxkit", arch="arm64"),  # seen
    Case("kind on Docker Desktop 4.3x (linuxkit 6.6)", "Debian GNU/Linux 12 (bookworm)",
         "6.6.32-linuxkit", NA, "G1", INF, "linuxkit"),  # seen
    Case("orbstack kubernetes (stub config)", "OrbStack", "6.14.10-orbstack-00291-g1b252bd3edea",
         UNK, "G18", UNKNOWN, "orbstack", arch="arm64"),  # seen
    Case("kind on OrbStack (stub config)", "Debian GNU/Linux 12 (bookworm)",
         "6.15.11-orbstack-00360-g3e0d2d9d1d0e", UNK, "G18", UNKNOWN, "orbstack", arch="arm64"),
    Case("kind on Debian 12 host (Ubuntu image)", "Ubuntu 24.04.2 LTS", "6.1.0-31-amd64",
         NA, "G1", INF, "debian-kernel"),
    Case("kind on Oracle Linux UEK7 (Debian image)", "Debian GNU/Linux 12 (bookworm)",
         "5.15.0-316.196.4.1.el9uek.x86_64", SUS, "G10", INF, "uek-kernel", BELOW_5_17,
         "medium"),
    Case("kind on Oracle Linux UEK-NEXT (Debian image)", "Debian GNU/Linux 12 (bookworm)",
         "6.17.0-0.el9ueknext.x86_64", SUS, "G12", INF, "uek-next-kernel", FROM_6_16, "high"),
    Case("kind on Oracle Linux UEK6 (Debian image)", "Debian GNU/Linux 12 (bookworm)",
         "5.4.17-2136.341.3.1.el8uek.x86_64", NA, "G1", INF, "uek6-kernel"),
    Case("kind on RHEL 9 (Debian image)", "Debian GNU/Linux 12 (bookworm)",
         "5.14.0-503.14.1.el9_5.x86_64", NA, "G1", INF, "rhel-kernel"),
    Case("minikube on Fedora 39 (Ubuntu image)", "Ubuntu 22.04.4 LTS", "6.5.12-300.fc39.x86_64",
         NA, "G1", INF, "fedora-old-kernel"),
    Case("kind on Amazon Linux 2023 (Debian image)", "Debian GNU/Linux 12 (bookworm)",
         "6.1.112-122.189.amzn2023.x86_64", NA, "G1", INF, "amazon-kernel"),
    Case("proxmox 6.5 (not read)", "Debian GNU/Linux 12 (bookworm)", "6.5.13-5-pve",
         NA, "G1", INF, "proxmox"),
    Case("unknown image on 7.2 (Bluefin)", "Bluefin Server 26.09.678", "7.2.2",  # seen
         NA, "G3", INF, None),
    Case("unparsable kernel (a bare kwok node)", "", "kwok-v0.8.0", UNK, "G0", UNKNOWN, None),
)


def _ids(cases: tuple[Case, ...]) -> list[str]:
    return [c.id for c in cases]


def _predict(case: Case) -> NodePrediction:
    return predict_node(NodeInfo(case.id, case.kernel, case.os_image, case.arch))


@pytest.mark.parametrize("case", CORPUS, ids=_ids(CORPUS))
def test_corpus_prediction(case: Case) -> None:
    p = _predict(case)
    got = (p.verdict.value, p.rule, p.confidence, p.distro.row.id if p.distro else None)
    assert got == (case.verdict, case.rule, case.confidence, case.row), p.reason


@pytest.mark.parametrize("case", [c for c in CORPUS if c.verdict == SUS],
                         ids=_ids(tuple(c for c in CORPUS if c.verdict == SUS)))
def test_susceptible_nodes_list_their_filesystems_and_grade(case: Case) -> None:
    p = _predict(case)
    assert tuple(f.filesystem for f in p.at_risk) == case.at_risk
    assert p.grade == case.grade
    assert p.reason.startswith(f"at risk on {', '.join(case.at_risk)}")
    assert f"grade {case.grade}" in p.reason
    # The headline rule is the first at-risk class's rule; every class carries its own.
    assert p.rule == p.at_risk[0].prediction.rule
    by_fs = {f.filesystem: f.prediction.rule for f in p.at_risk}
    expected_rules = {E4: "G10", XFS: "G7", BTRFS: "G12", F2FS: "G13", E4J: "G9"}
    assert by_fs == {fs: expected_rules[fs] for fs in case.at_risk}
    safe = {f.filesystem: f.prediction.rule for f in p.ruled_out}
    if XFS not in case.at_risk:
        assert safe[XFS] == "G6"
    if E4 not in case.at_risk:
        assert safe[E4] == "G8"


def test_corpus_covers_the_issue_list() -> None:
    """Ubuntu, Debian, RHEL/Alma/Rocky, AL2/2023, Bottlerocket, COS, Flatcar, Talos, Azure
    Linux, Fedora, Tumbleweed/Leap 16, Oracle UEK7/UEK8, Arch (issue 10); UEK-NEXT, Arch
    linux-lts, Debian testing/backports, Garden Linux, Alpine, Raspberry Pi OS, WSL2, Docker
    Desktop, OrbStack (issue 16)."""
    images = " | ".join(c.os_image for c in CORPUS)
    for name in ("Ubuntu", "Debian", "Red Hat Enterprise Linux", "AlmaLinux", "Rocky Linux",
                 "Amazon Linux 2 |", "Amazon Linux 2023", "Bottlerocket", "Container-Optimized",
                 "Flatcar", "Talos", "Azure Linux", "CBL-Mariner", "Fedora Linux",
                 "Fedora CoreOS", "openSUSE Tumbleweed", "openSUSE Leap 16", "Oracle Linux",
                 "Arch Linux", "Alibaba Cloud Linux 3", "SUSE Linux Enterprise Server 15 SP5",
                 "Garden Linux", "Alpine Linux", "Raspbian", "Docker Desktop", "OrbStack",
                 "trixie/sid"):
        assert name in images + " |", name
    kernels = {c.kernel for c in CORPUS}
    assert any("el9uek" in k and k.startswith("5.15.0-") for k in kernels)
    assert any("el9uek" in k and k.startswith("6.12.0-") for k in kernels)
    for shape in (r"\.el9ueknext\.x86_64$", r"\.el10ueknext\.aarch64$", r"-\d+-lts$",
                  r"^\d+\.\d+\.\d+-amd64$", r"^\d+\.\d+\.\d+-arm64$", r"\.deb11\.\d+-amd64$",
                  r"\+bpo-", r"-0-virt$", r"\+rpt-rpi-", r"-microsoft-standard-WSL2$",
                  r"-linuxkit$", r"-orbstack-", r"-cloud-amd64$"):
        assert any(re.search(shape, k) for k in kernels), shape
    # Every row of the table is exercised by some case, and "unknown" is left only where the
    # row says no config was found, or for a pre-5.4 vendor backport (G2b: the option is set
    # but what it backported is unknown).
    rows = {c.row for c in CORPUS}
    assert {row.id for row in DISTROS} - rows == set()
    for case in CORPUS:
        if case.confidence == UNKNOWN and case.row is not None and case.rule != "G2b":
            row = next(r for r in DISTROS if r.id == case.row)
            assert row.ro_thp is None and "not found" in row.sources, case.id
    assert len(CORPUS) >= 120


def test_vendor_releases_hiding_the_sublevel_are_never_fixed() -> None:
    for release, os_image in (("6.12.0-107.el9uek", "Oracle Linux Server 9.6"),
                              ("6.12.0-107.59.3.3.el9uek.x86_64", "Oracle Linux Server 9.6"),
                              ("6.12.0-160000.99-default", "openSUSE Leap 16.0")):
        p = predict_node(NodeInfo("n", release, os_image, "amd64"))
        assert (p.verdict.value, p.rule) == (SUS, "G10"), release
        assert p.kernel is not None and p.kernel.sublevel is None
        assert "hides the stable sublevel" in p.reason


def test_fixed_stable_boundaries_by_version_alone() -> None:
    """6.12.96 (verified), 6.18.39 and 7.1.4 (inferred) are fixed; one below is not (§7)."""
    for release, verdict, confidence in (("6.12.95-arch1-1", SUS, KNOWN),
                                         ("6.12.96-arch1-1", NA, KNOWN),
                                         ("6.18.38-arch1-1", SUS, KNOWN),
                                         ("6.18.39-arch1-1", NA, INF),
                                         ("7.1.3-arch1-1", SUS, KNOWN),
                                         ("7.1.4-arch1-1", NA, INF)):
        p = predict_node(NodeInfo("n", release, "Arch Linux", "amd64"))
        assert (p.verdict.value, p.confidence) == (verdict, confidence), release
        if verdict == NA:
            assert p.rule == "G4"
            assert "fixed stable release" in p.reason


def test_ext4_journalled_is_listed_only_where_plain_ext4_is_safe() -> None:
    before = predict_node(NodeInfo("a", "6.15.5-arch1-1", "Arch Linux"))
    after = predict_node(NodeInfo("b", "6.16.1-arch1-1", "Arch Linux"))
    assert [f.filesystem for f in before.at_risk] == [E4, BTRFS, F2FS]
    assert [f.filesystem for f in after.at_risk] == [BTRFS, F2FS, E4J]
    assert [f.filesystem for f in after.ruled_out] == [E4, XFS]


def test_xfs_is_at_risk_only_before_5_17() -> None:
    assert XFS in [f.filesystem for f in predict_node(
        NodeInfo("a", "5.16.20-arch1-1", "Arch Linux")).at_risk]
    assert XFS not in [f.filesystem for f in predict_node(
        NodeInfo("b", "5.17.1-arch1-1", "Arch Linux")).at_risk]


def test_every_prediction_rule_is_a_model_rule() -> None:
    known = {r.id for r in RULES} | {"G18"}
    for case in CORPUS:
        p = _predict(case)
        assert p.rule in known
        assert all(f.prediction.rule in known for f in (*p.at_risk, *p.ruled_out))


def test_distro_rows_are_unique_and_cite_sources() -> None:
    ids = [row.id for row in DISTROS]
    assert len(ids) == len(set(ids))
    assert all(row.sources for row in DISTROS)


def test_a_foreign_kernel_never_borrows_the_os_image_row() -> None:
    """The Debian row (not set, verified) must not speak for a Fedora kernel in a kind node."""
    match = lookup("Debian GNU/Linux 12 (bookworm)", "6.11.4-301.fc41.x86_64", "amd64")
    assert match is not None and match.row.id == "fedora-kernel"
    assert match.row.ro_thp is True and match.row.evidence.value == "inferred"
    assert lookup("Ubuntu 22.04.4 LTS", "5.15.148-tegra", "arm64") is None


def test_a_row_without_a_config_says_why() -> None:
    p = predict_node(NodeInfo("orb", "6.14.10-orbstack-00291-g1b252bd3edea", "OrbStack", "arm64"))
    assert (p.verdict.value, p.rule, p.confidence) == (UNK, "G18", UNKNOWN)
    assert p.reason.startswith("CONFIG_READ_ONLY_THP_FOR_FS unknown for OrbStack kernel (config "
                               "not found: its /proc/config.gz is a stub without the THP "
                               "options")


def test_an_lts_suffix_alone_names_no_builder() -> None:
    """Arch's linux-lts sets the option and Alpine's does not: "-lts" needs its OS image."""
    assert lookup("Arch Linux", "6.6.58-1-lts").row.id == "arch-lts"  # type: ignore[union-attr]
    assert lookup("Alpine Linux v3.20", "6.6.58-0-lts").row.id == "alpine"  # type: ignore[union-attr]
    assert lookup("Debian GNU/Linux 12 (bookworm)", "6.6.58-0-lts") is None


def test_summary_counts_and_exit_codes() -> None:
    predictions = predict_nodes(NodeInfo(c.id, c.kernel, c.os_image, c.arch) for c in CORPUS)
    summary = summarize(predictions)
    want_verdicts = {v: sum(c.verdict == v for c in CORPUS) for v in (SUS, NA, UNK)}
    want_conf = {k: sum(c.confidence == k for c in CORPUS) for k in (KNOWN, INF, UNKNOWN)}
    assert summary.verdicts == want_verdicts
    assert summary.confidence == want_conf
    assert summary.line() == (
        f"{len(CORPUS)} nodes: {want_verdicts[SUS]} susceptible, {want_verdicts[NA]} "
        f"not-affected, {want_verdicts[UNK]} unknown; confidence: {want_conf[KNOWN]} "
        f"config-known, {want_conf[INF]} inferred, {want_conf[UNKNOWN]} unknown")

    by_verdict = {v: [p for p in predictions if p.verdict.value == v] for v in (SUS, NA, UNK)}
    assert preflight_exit_code(predictions) == CheckExit.AT_RISK
    assert preflight_exit_code(by_verdict[NA]) == CheckExit.CLEAN
    assert preflight_exit_code(by_verdict[NA] + by_verdict[UNK]) == CheckExit.INCONCLUSIVE
    assert preflight_exit_code(by_verdict[UNK] + by_verdict[SUS][:1]) == CheckExit.AT_RISK
    assert preflight_exit_code([]) == CheckExit.INCONCLUSIVE


def test_table_and_document() -> None:
    cases = [c for c in CORPUS if c.id in ("ol9-uek8 (sublevel hidden: never fixed)",
                                           "ubuntu-24.04-generic", "sles-15-sp5 (config not "
                                           "found)")]
    predictions = predict_nodes(NodeInfo(c.id, c.kernel, c.os_image, c.arch) for c in cases)
    table = render_table(predictions).splitlines()
    assert table[0].split() == ["NODE", "OS", "IMAGE", "KERNEL", "PREDICTED", "REASON",
                                "CONFIDENCE"]
    rows = {line.split("  ")[0]: line for line in table[1:4]}
    uek = rows["ol9-uek8 (sublevel hidden: never fixed)"]
    assert "Oracle Linux Server 9.6" in uek and "6.12.0-105.51.5.el9uek.x86_64" in uek
    assert " susceptible " in uek and uek.rstrip().endswith("config-known")
    assert rows["ubuntu-24.04-generic"].rstrip().endswith("config-known")
    assert " unknown " in rows["sles-15-sp5 (config not found)"]
    assert table[-1] == ("summary: 3 nodes: 1 susceptible, 1 not-affected, 1 unknown; "
                         "confidence: 2 config-known, 0 inferred, 1 unknown")

    document = json.loads(json.dumps(to_document(predictions, "2026-11-28T16:00:00Z", "a=b")))
    assert document["schema"] == "thpcheck.io/preflight/v1"
    assert document["selector"] == "a=b"
    assert document["summary"] == {
        "nodes": 3, "verdicts": {SUS: 1, NA: 1, UNK: 1},
        "confidence": {KNOWN: 2, INF: 0, UNKNOWN: 1}}
    node = {n["node"]: n for n in document["nodes"]}["ol9-uek8 (sublevel hidden: never fixed)"]
    assert node["predicted"] is True
    assert (node["verdict"], node["rule"], node["confidence"], node["grade"]) == \
        (SUS, "G10", KNOWN, "high")
    assert node["distro"]["id"] == "oracle-uek" and node["distro"]["evidence"] == "verified"
    assert node["kernel"] == {"version": "6.12.?", "read_only_thp_for_fs": True,
                              "config_source": "distro:oracle-uek"}
    assert [f["filesystem"] for f in node["filesystems"]["at_risk"]] == list(BELOW_6_16)
    assert [(f["filesystem"], f["rule"]) for f in node["filesystems"]["not_at_risk"]] == \
        [(XFS, "G6")]


def test_preflight_model_is_pure() -> None:
    tree = ast.parse(Path(preflight.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    allowed_prefixes = ("thpcheck.model.", "__future__", "collections", "dataclasses", "typing")
    assert all(name == "thpcheck" or name.startswith(allowed_prefixes) for name in imported), \
        imported


def test_the_cli_imports_the_kubernetes_client_lazily() -> None:
    code = ("import sys; from thpcheck.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO, env={"PYTHONPATH": str(REPO / "operator")})
    assert out.stdout.strip() == "[]"


def _thpcheck(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point in a child process (it installs signal handlers and logging)."""
    return subprocess.run([sys.executable, "-m", "thpcheck", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, check=False,
                          env={"PYTHONPATH": str(REPO / "operator"), "HOME": str(REPO)})


# --- --nodes-file: saved `kubectl get nodes` output, no cluster ------------------------------

def _node(case: Case, kind: bool = True) -> dict[str, Any]:
    """A Node as `kubectl get nodes -o json` prints it (API list items carry no kind)."""
    node: dict[str, Any] = {"metadata": {"name": case.id, "labels": {"a": "b"}},
                            "spec": {}, "status": {"nodeInfo": {
                                "kernelVersion": case.kernel, "osImage": case.os_image,
                                "architecture": case.arch, "kubeletVersion": "v1.35.0"}}}
    return {"apiVersion": "v1", "kind": "Node", **node} if kind else node


def _kubectl_list(cases: Sequence[Case]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
            "items": [_node(c) for c in cases]}


def _infos(cases: Sequence[Case]) -> list[NodeInfo]:
    return [NodeInfo(c.id, c.kernel, c.os_image, c.arch) for c in cases]


def test_saved_lists_nodes_and_yaml_documents_give_the_same_nodes() -> None:
    cases = CORPUS[:3]
    api_list = {"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "7"},
                "items": [_node(c, kind=False) for c in cases]}
    assert nodes_from_documents([_kubectl_list(cases)]) == _infos(cases)
    assert nodes_from_documents([api_list]) == _infos(cases)
    assert nodes_from_documents([_node(cases[0])]) == _infos(cases[:1])
    assert nodes_from_documents([_node(c) for c in cases] + [None]) == _infos(cases)
    assert nodes_from_documents([{"apiVersion": "v1", "kind": "List", "items": []}]) == []
    bare = {"kind": "Node", "metadata": {"name": "kwok"}, "status": {}}
    assert nodes_from_documents([bare]) == [NodeInfo("kwok", "", "", None)]


@pytest.mark.parametrize(("documents", "message"), [
    ([], "nothing in it"),
    ([None], "nothing in it"),
    ([{"kind": "Pod", "metadata": {"name": "p"}}], "the document is a Pod, not a Node or a "
     "List of Nodes"),
    ([{"metadata": {"name": "n"}}], "the document is an object without a kind, not a Node"),
    (["node-a"], "the document is a str, not a Node or a List of Nodes"),
    ([[1, 2]], "the document is a list, not a Node"),
    ([{"kind": "List"}], "the document is a List without an items list"),
    ([{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "a"}},
                                 {"kind": "Pod", "metadata": {"name": "b"}}]}],
     "item 2 is a Pod, not a Node"),
    ([{"kind": "List", "items": [{"kind": "Node", "metadata": {}}]}],
     "item 1 has no metadata.name"),
    ([{"kind": "List", "items": ["x"]}], "item 1 is not an object"),
    ([{"kind": "Node", "metadata": {"name": "a"}}, {"kind": "Service"}],
     "document 2 is a Service, not a Node"),
    ([{"kind": "Node", "metadata": {"name": "a"}, "status": "Ready"}],
     "the document (a) has a status that is not an object"),
])
def test_anything_else_is_refused_with_the_reason(documents: list[Any], message: str) -> None:
    with pytest.raises(NodesDocumentError) as raised:
        nodes_from_documents(documents)
    assert str(raised.value).startswith(message), str(raised.value)


def _thpcheck_stdin(data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "thpcheck", "preflight", *args],
                          input=data, capture_output=True, timeout=60, cwd=REPO, check=False,
                          env={"PYTHONPATH": str(REPO / "operator"), "HOME": str(REPO)})


def test_a_saved_list_prints_the_table_the_api_would(tmp_path: Path) -> None:
    """The corpus as `kubectl get nodes -o json` output, from stdin and as a YAML file: the
    table the live command renders for the same nodeInfo, and the same exit code."""
    saved = json.dumps(_kubectl_list(CORPUS)).encode()
    want = render_table(predict_nodes(_infos(CORPUS))) + "\n"
    from_stdin = _thpcheck_stdin(saved, "--nodes-file", "-")
    assert (from_stdin.returncode, from_stdin.stderr) == (CheckExit.AT_RISK, b"")
    assert from_stdin.stdout.decode() == want
    import yaml

    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump(_kubectl_list(CORPUS)))
    from_yaml = _thpcheck("preflight", "--nodes-file", str(path), "--json")
    assert from_yaml.returncode == CheckExit.AT_RISK
    document = json.loads(from_yaml.stdout)
    assert document["nodes"] == json.loads(json.dumps(
        to_document(predict_nodes(_infos(CORPUS)), "t")["nodes"]))
    clean = [c for c in CORPUS if c.verdict == NA][:2]
    assert _thpcheck_stdin(json.dumps(_kubectl_list(clean)).encode(), "--nodes-file",
                           "-").returncode == CheckExit.CLEAN


def test_a_saved_list_without_nodes_is_inconclusive() -> None:
    result = _thpcheck_stdin(b'{"apiVersion": "v1", "kind": "List", "items": []}',
                             "--nodes-file", "-")
    assert result.returncode == CheckExit.INCONCLUSIVE
    assert result.stderr.decode().strip() == ("thpcheck preflight: no nodes in --nodes-file "
                                              "stdin; nothing was predicted")


HINT = ("pass the output of 'kubectl get nodes -o json' (or -o yaml): a List, or a single "
        "Node")


@pytest.mark.parametrize(("data", "args", "line"), [
    (b"", ("--nodes-file", "-"), f"--nodes-file stdin: nothing in it; {HINT}"),
    (b'{"items": [', ("--nodes-file", "-"), "--nodes-file stdin: neither JSON nor YAML "
     f"(line 1); {HINT}"),
    (b"\xff\xfe\x00", ("--nodes-file", "-"), f"--nodes-file stdin: not UTF-8 text; {HINT}"),
    (b"kind: Pod\nmetadata: {name: p}\n", ("--nodes-file", "-"), "--nodes-file stdin: the "
     f"document is a Pod, not a Node or a List of Nodes; {HINT}"),
    (b"", ("--nodes-file", "/nonexistent/nodes.json"),
     "--nodes-file /nonexistent/nodes.json: no such file"),
    (b"{}", ("--nodes-file", "-", "--selector", "a=b"), "--selector does not apply to "
     "--nodes-file (the nodes are already saved); select them when saving: kubectl get nodes "
     "-l SELECTOR -o json"),
    (b"{}", ("--nodes-file", "-", "--kubeconfig", "k"), "--kubeconfig does not apply to "
     "--nodes-file"),
])
def test_a_bad_nodes_file_is_one_line_and_exit_2(data: bytes, args: tuple[str, ...],
                                                  line: str) -> None:
    result = _thpcheck_stdin(data, *args)
    assert result.returncode == CheckExit.BAD_INPUT
    assert result.stdout == b""
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("thpcheck preflight: " + line), lines
