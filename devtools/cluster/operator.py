"""The operator as a real process against a development cluster (`devtools.cluster.harness`):
the chart's CRDs installed, ``python -m thpcheck operator`` started and stopped, its health,
metrics and log. Used by the operator and preflight tests and by benchmarks/operator_scale.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.cluster.harness import Cluster, free_ports
from devtools.proc import die_with_parent, stop_process, tail, wait_for
from thpcheck.contract import names
from thpcheck.model.report import compact

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "charts" / "thp-checker" / "crds"
AGENT_IMAGE = "thp-checker:test"
RESULTS_PATH = f"/apis/{names.GROUP}/{names.VERSION}/{names.RESULT_PLURAL}"
CHECKS_PATH = f"/apis/{names.GROUP}/{names.VERSION}/{names.CHECK_PLURAL}"


def this_machine() -> dict[str, str]:
    """nodeInfo of this machine, so the real agent's results are not stale on a kwok node."""
    return {"kernelVersion": os.uname().release,
            "bootID": Path("/proc/sys/kernel/random/boot_id").read_text().strip()}


def install_crds(cluster: Cluster, directory: Path = CRD_DIR) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory))
    for name in names.CRD_NAMES:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


@dataclass
class OperatorProcess:
    """``python -m thpcheck operator`` against the test cluster, as a child process."""

    cluster: Cluster
    namespace: str
    log_dir: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    args: Sequence[str] = ()  # extra command-line arguments, e.g. ("--kubeconfig", FILE)
    unset_env: Sequence[str] = ()  # variables removed from the environment, e.g. KUBECONFIG
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.metrics_port, self.health_port = free_ports(2)

    @property
    def log(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def env(self) -> dict[str, str]:
        env = self._env()
        for name in self.unset_env:
            env.pop(name, None)
        return env

    def _env(self) -> dict[str, str]:
        return {**self.cluster.env(), "PYTHONPATH": str(REPO / "operator"),
                "THPCHECK_NAMESPACE": self.namespace, "THPCHECK_AGENT_IMAGE": AGENT_IMAGE,
                "THPCHECK_METRICS_PORT": str(self.metrics_port),
                "THPCHECK_HEALTH_PORT": str(self.health_port),
                "THPCHECK_STATUS_INTERVAL": "1", "THPCHECK_DEBOUNCE": "0.2",
                # kwok's empty exit-0 message must not turn into an error before we inject.
                "THPCHECK_EMPTY_RESULT_GRACE": "3600",
                **self.extra_env}

    def launch(self) -> subprocess.Popen[bytes]:
        """Start without waiting (for start-up failures)."""
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "thpcheck", "operator", "--log-format", "json",
                 *self.args],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                preexec_fn=die_with_parent)
        return self.process

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        process = self.launch()

        wait_healthy(process, self.health_port, timeout, self.log)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        process, self.process = self.process, None
        return stop_process(process, sig, timeout)

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        self.stop(signal.SIGKILL)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as response:
            return str(response.read().decode())

    def tail(self, lines: int = 60) -> str:
        return tail(self.log, lines)


class OperatorExited(RuntimeError):
    """The operator process ended while it was expected to start."""


def wait_healthy(process: subprocess.Popen[bytes], port: int, timeout: float,
                 log: Path) -> None:
    """Until the operator's liveness endpoint on ``port`` answers 200; OperatorExited (with
    its log's tail) as soon as the process ends."""
    def healthy() -> bool:
        if process.poll() is not None:
            raise OperatorExited(f"operator exited {process.returncode}:\n{tail(log, 60)}")
        url = f"http://127.0.0.1:{port}/healthz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
        return False

    wait_for(healthy, timeout, "operator liveness endpoint")


def with_verdict(document: Mapping[str, Any], verdict: str) -> str:
    """The compact result of a real agent document with every verdict set to ``verdict``."""
    changed = json.loads(json.dumps(document))
    changed["verdict"] = verdict
    for path in changed["paths"]:
        path["verdict"] = verdict
        if verdict == "affected":
            path["repro"].update(outcome="reproduced", iteration=0, bad_bytes=16384)
            path["reason"] = "reproduced: 16384 appended bytes lost at iteration 0"
    return compact(changed)
