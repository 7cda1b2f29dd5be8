"""Fixtures for the qemu kernel matrix.

Missing artifacts skip the tests with the command that builds them, unless
THPCHECK_REQUIRE_VM=1 (CI), where they fail: the matrix is the product's proof.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vm.guest import FILESYSTEMS, BootResult, Kernel, Step, boot
from tests.vm.matrix import Artifacts, MatrixMissing, load_artifacts
from tests.vm.rootfs import build_app

BUILD_HINT = ("build them with `tests/vm/build.sh` (= `.venv/bin/python -m tests.vm.build`; "
              "cold: about 28 CPU-minutes, 15 min on an idle 2-core machine)")


def require_vm() -> bool:
    """CI sets THPCHECK_REQUIRE_VM=1: absence is then a failure, not a skip."""
    return os.environ.get("THPCHECK_REQUIRE_VM") == "1"


@pytest.fixture(scope="session")
def artifacts() -> Artifacts:
    """Kernels, base archive and disks from the cache."""
    try:
        return load_artifacts()
    except MatrixMissing as exc:
        msg = f"qemu matrix artifacts missing ({exc}); {BUILD_HINT}"
        if require_vm():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


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
def run_guest(artifacts: Artifacts, app: App) -> Iterator[GuestRunner]:
    """A callable that boots one kernel with the standard disks and archives."""
    yield GuestRunner(artifacts, app)


@dataclass(frozen=True)
class GuestRunner:
    """Boot helper bound to this session's artifacts."""

    artifacts: Artifacts
    app: App

    def kernel(self, name: str) -> Kernel:
        """A matrix kernel by slot name; missing means the build is incomplete."""
        if name not in self.artifacts.kernels:
            msg = f"kernel {name} not built; {BUILD_HINT}"
            if require_vm():
                pytest.fail(msg, pytrace=False)
            pytest.skip(msg)
        return self.artifacts.kernels[name]

    def __call__(self, kernel: Kernel, steps: list[Step], *, timeout_s: float | None = None,
                 smp: int = 2, mem_mb: int = 1024) -> BootResult:
        """Boot `kernel` with the three test disks; see tests.vm.guest.boot."""
        disks = {fs: self.artifacts.disks[fs] for fs in FILESYSTEMS}
        return boot(kernel, steps, initrd_parts=[self.artifacts.base_cpio, self.app.cpio],
                    disks=disks, timeout_s=timeout_s, smp=smp, mem_mb=mem_mb)
