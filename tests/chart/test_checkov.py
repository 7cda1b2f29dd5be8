"""checkov (Kubernetes framework) over the chart rendered with ci/all-values.yaml and the
DaemonSets the operator builds from that render's settings (both agent templates' worst case:
a check pod, with and without filesystem discovery; the mitigation and restore DaemonSets).

Every failure left is listed with its reason in checkov-skips.yaml: a failure not listed
fails the test, and so does a listed one that no longer fails. checkov runs from its own
virtualenv (scripts/setup/checkov.sh; scripts/test exports THPCHECK_CHECKOV)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.cluster.accounts import documents
from tests.chart.chart_kit import ALL_VALUES, Helm, container_env, find
from tests.support.require import skip_or_fail
from thpcheck.contract.agent import CHECK, agent_daemonset
from thpcheck.contract.checkspec import parse_spec
from thpcheck.contract.mitigation import mitigation_daemonset, restore_daemonset
from thpcheck.contract.refs import CheckRef
from thpcheck.controller import settings

SKIPS = Path(__file__).with_name("checkov-skips.yaml")
CHECKOV_ENV = "THPCHECK_CHECKOV"


@pytest.fixture(scope="module")
def checkov() -> Path:
    found = os.environ.get(CHECKOV_ENV) or str(
        Path(os.environ.get("THPCHECK_CACHE", Path.home() / ".cache" / "thp-checker"))
        / "checkov-3.3.30" / "bin" / "checkov")
    if not os.access(found, os.X_OK):
        skip_or_fail("cluster", f"checkov not found at {found}: run scripts/setup/checkov.sh "
                     f"and set {CHECKOV_ENV} to the path it prints")
    return Path(found)


def operator_daemonsets(chart: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the operator creates, with the settings the rendered Deployment gives it."""
    config = settings.from_env(container_env(find(chart, "Deployment"))).workload()
    return [agent_daemonset(parse_spec({}), CheckRef("default", "u1"), config,
                            template=CHECK, run="r1"),
            agent_daemonset(parse_spec({"discoverFilesystems": True}),
                            CheckRef("discover", "u2"), config, template=CHECK, run="r1"),
            mitigation_daemonset(config), restore_daemonset(config)]


def failures(checkov: Path, directory: Path) -> set[tuple[str, str]]:
    """(check id, resource) of every failed check."""
    proc = subprocess.run([str(checkov), "--directory", str(directory), "--framework",
                           "kubernetes", "--output", "json", "--quiet", "--compact",
                           "--skip-download"], capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    reports = json.loads(proc.stdout)
    found: set[tuple[str, str]] = set()
    for report in reports if isinstance(reports, list) else [reports]:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        assert report["summary"]["resource_count"] > 20, report["summary"]
        for failed in report["results"]["failed_checks"]:
            found.add((failed["check_id"], failed["resource"]))
    return found


def skipped() -> Iterator[tuple[str, str]]:
    for entry in yaml.safe_load(SKIPS.read_text()):
        assert entry.get("reason", "").strip(), f"{entry['check']}: no reason"
        for resource in entry["resources"]:
            yield entry["check"], resource


def test_every_checkov_failure_is_known_and_explained(helm: Helm, checkov: Path,
                                                     tmp_path: Path) -> None:
    chart = documents(helm.template("-f", str(ALL_VALUES)))
    (tmp_path / "chart.yaml").write_text(yaml.safe_dump_all(chart))
    (tmp_path / "operator-daemonsets.yaml").write_text(
        yaml.safe_dump_all(operator_daemonsets(chart)))
    found = failures(checkov, tmp_path)
    known = set(skipped())
    new = sorted(found - known)
    assert not new, "checkov failures not in checkov-skips.yaml (fix them or list them " \
                    "with a reason):\n" + "\n".join(f"{c} {r}" for c, r in new)
    stale = sorted(known - found)
    assert not stale, "checkov-skips.yaml lists checks that pass now (remove them):\n" + \
                      "\n".join(f"{c} {r}" for c, r in stale)
    print(f"\ncheckov: {len(found)} known failures, none new")
