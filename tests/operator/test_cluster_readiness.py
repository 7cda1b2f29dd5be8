"""The operator's readiness on the real control plane: ``/readyz`` answers 200 only once kopf
has listed and indexed every watched kind, and says what it indexed; ``/healthz`` answers
before that. The chart's readinessProbe uses it (tests/chart/test_least_privilege.py)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster
from tests.operator.cluster_kit import OperatorProcess

pytestmark = pytest.mark.cluster
NODES = 40


def probe(port: int, path: str) -> tuple[int, dict[str, object] | None]:
    """(HTTP status or 0 when nothing answers, the JSON body if any)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            text = reply.read().decode()
            status = reply.status
    except urllib.error.HTTPError as exc:
        text, status = exc.read().decode(), exc.code
    except OSError:
        return 0, None
    try:
        return status, json.loads(text)
    except ValueError:
        return status, None


def test_ready_only_once_every_index_is_filled(crds: Cluster, namespace: str, tmp_path: Path,
                                              make_nodes: Callable[..., list[str]]) -> None:
    mine = make_nodes(NODES)
    before = len(crds.api("GET", "/api/v1/nodes")["items"])
    operator = OperatorProcess(crds, namespace, tmp_path / "logs")
    process = operator.launch()
    samples: list[tuple[float, int, int, dict[str, object] | None]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < 60:
            assert process.poll() is None, operator.tail()
            ready, body = probe(operator.health_port, "/readyz")
            live, _ = probe(operator.health_port, "/healthz")
            samples.append((round(time.monotonic() - started, 3), ready, live, body))
            if ready == 200 and len([s for s in samples if s[1] == 200]) >= 20:
                break
            time.sleep(0.02)
        first = next((s for s in samples if s[1] == 200), None)
        assert first is not None, f"/readyz never answered 200: {samples[-5:]}\n{operator.tail()}"
        # At the moment it first said ready, every node was indexed (kopf's start-up
        # barrier lifted); what it answered before was "not ready" or nothing at all.
        body = first[3]
        assert body is not None and body["ready"] is True, body
        indexed = body["indexed"]
        assert isinstance(indexed, dict)
        assert indexed["nodes"] >= len(mine), (indexed, before)
        earlier = {s[1] for s in samples if s[0] < first[0]}
        assert earlier <= {0, 503}, earlier
        # Ready stays ready, and the process is live throughout.
        assert {s[1] for s in samples if s[0] >= first[0]} == {200}
        assert {s[2] for s in samples if s[0] >= first[0]} == {200}
        not_ready = [s for s in samples if s[1] == 503]
        if not_ready:
            assert not_ready[0][3] == {"ready": False, "waiting": (
                "kopf's initial listing and indexing of every watched kind")}
        print(f"\nreadiness: first 200 after {first[0]} s, indexed {indexed}; "
              f"{len(not_ready)} samples answered 503 before, "
              f"{len([s for s in samples if s[1] == 0 and s[0] < first[0]])} nothing")
    finally:
        operator.stop()
