"""Fixtures for the qemu kernel matrix.

Missing artifacts skip the tests with the command that builds them, unless the tier is required:
THPCHECK_REQUIRE_VM=1 (CI) for the x86-64 matrix, THPCHECK_REQUIRE_VM_ARM64=1 for the arm64
kernels (scripts/test sets it when their cache exists, see devtools/vm/README.md); then they fail:
the matrix is the product's proof.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools.vm.guest import FILESYSTEMS, BootResult, Kernel, Step, boot
from devtools.vm.kernels import TIER_OF
from devtools.vm.matrix import Artifacts, MatrixMissing, load_artifacts
from devtools.vm.rootfs import build_app

BUILD_HINT = {
    "x86_64": "build them with `devtools/vm/build.sh` (= `.venv/bin/python -m devtools.vm.build`; "
              "cold: about 28 CPU-minutes, 15 min on an idle 2-core machine)",
    "arm64": "build them with `devtools/vm/build.sh --arch arm64` (four cross-compiled kernels; "
             "see devtools/vm/README.md for the time it takes)",
}
REQUIRE = {"x86_64": "THPCHECK_REQUIRE_VM", "arm64": "THPCHECK_REQUIRE_VM_ARM64"}


def require_vm(tier: str = "x86_64") -> bool:
    """CI sets THPCHECK_REQUIRE_VM[_ARM64]=1: absence is then a failure, not a skip."""
    return os.environ.get(REQUIRE[tier]) == "1"


def skip_or_fail(tier: str, msg: str) -> None:
    if require_vm(tier):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def tier_artifacts(tier: str) -> Artifacts:
    """One tier's kernels, base archive and disks from the cache (skip or fail when missing)."""
    try:
        return load_artifacts(tier=tier)
    except MatrixMissing as exc:
        skip_or_fail(tier, f"qemu matrix artifacts ({tier}) missing ({exc}); {BUILD_HINT[tier]}")
        raise  # not reached: skip_or_fail raises


@pytest.fixture(scope="session")
def artifacts() -> Artifacts:
    """The x86-64 kernels, base archive and disks from the cache."""
    return tier_artifacts("x86_64")


@pytest.fixture(scope="session")
def arm64_artifacts() -> Artifacts:
    """The arm64 kernels (4K, 16K and 64K pages), arm64 base archive and disks from the cache."""
    return tier_artifacts("arm64")


@dataclass(frozen=True)
class App:
    """The per-session archive with the working tree's agent."""

    cpio: Path
    has_agent: bool


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> App:
    """Build app.cpio from the working tree, so the guest runs the agent under test."""
    out = tmp_path_factory.mktemp("thpvm-app") / "app.cpio"
    return App(out, build_app(out))


@pytest.fixture(scope="session")
def run_guest(app: App) -> Iterator[GuestRunner]:
    """A callable that boots one kernel (of either tier) with the standard disks and archives."""
    yield GuestRunner(app)


@dataclass
class GuestRunner:
    """Boot helper bound to this session's artifacts (each tier loaded when first asked for)."""

    app: App
    tiers: dict[str, Artifacts] = field(default_factory=dict)

    def artifacts(self, tier: str) -> Artifacts:
        if tier not in self.tiers:
            self.tiers[tier] = tier_artifacts(tier)
        return self.tiers[tier]

    def kernel(self, name: str) -> Kernel:
        """A matrix kernel by slot name; missing means the build is incomplete."""
        tier = TIER_OF.get(name, "x86_64")
        kernels = self.artifacts(tier).kernels
        if name not in kernels:
            skip_or_fail(tier, f"kernel {name} not built; {BUILD_HINT[tier]}")
        return kernels[name]

    def __call__(self, kernel: Kernel, steps: list[Step], *, timeout_s: float | None = None,
                 smp: int = 2, mem_mb: int = 1024,
                 disks: Mapping[str, Path] | None = None) -> BootResult:
        """Boot `kernel` with the three test disks (or `disks`); see devtools.vm.guest.boot."""
        art = self.artifacts(kernel.arch)
        if disks is None:
            disks = {fs: art.disks[fs] for fs in FILESYSTEMS}
        return boot(kernel, steps, initrd_parts=[art.base_cpio, self.app.cpio],
                    disks=disks, timeout_s=timeout_s, smp=smp, mem_mb=mem_mb)
