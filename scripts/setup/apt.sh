#!/usr/bin/env bash
# Install the Debian packages the test suite needs, once: skips apt entirely when every package
# is already installed, so it is cheap to call on every run.
set -euo pipefail

packages=(
  # the agent's real-kernel tests: loop-mounted filesystems, signal tests
  e2fsprogs btrfs-progs xfsprogs util-linux strace
  # the kernel matrix: Debian kernel sources, kernel build, guest root, qemu
  qemu-system-x86 busybox-static flex bison bc libelf-dev libssl-dev cpio dpkg-dev xz-utils python3.11
  debootstrap gcc make
  # arm64: cross-compiled kernels and repro7, their qemu guest, and the arm64 image's build
  # steps under qemu-user (registered in binfmt_misc by devtools/images/build.py when needed)
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm qemu-user-static
  # container images and the real node: podman/buildah, containerd, runc, CNI
  podman buildah containerd runc containernetworking-plugins iptables conntrack skopeo
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "apt.sh: all ${#packages[@]} packages present" >&2
  exit 0
fi
echo "apt.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
