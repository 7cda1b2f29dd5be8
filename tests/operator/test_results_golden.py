"""The agent's result keeps its exact shapes on the way to the CRD (golden).

One fixed agent document must give exactly the compact termination message, and that message
exactly the ThpNodeResult status, that the code gave before the result became one typed schema
(``model/result.py``): the CRD's shape may not drift. The values below were captured from the
code before that change; a test failing here means a wire shape changed, not a test to update.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.operator.factories import agent_pod, node
from thpcheck.contract.refs import CheckRef
from thpcheck.model.preflight import NodeInfo, predict_node
from thpcheck.model.report import compact
from thpcheck.planning.prediction import prediction_record
from thpcheck.planning.results import plan_predicted_results, plan_results

CHECK = CheckRef("weekly", "uid-check")
NOW = datetime(2026, 11, 28, 16, 1, tzinfo=UTC)
LONG = "the reproducer lost data after collapse; " * 8 + "déjà vu"  # > 240 characters


def _path(i: int, verdict: str = "affected", reason: str = LONG) -> dict[str, Any]:
    return {"path": f"/var/lib/thpcheck/{i}", "fstype": "ext4", "mount_point": "/var/lib",
            "verdict": verdict, "rule": "G10", "reason": reason,
            "disagreement": f"predicted safe by G6 but lost {i}" if i % 2 else None,
            "prediction": {"verdict": "at-risk", "rule": "G10"},
            "repro": {"outcome": "reproduced", "iteration": i, "bad_bytes": 4096 * i,
                      "lost_iterations": 1, "duration_s": 0.25 * i}}


def document(paths: int = 2, mounts: int = 2, reason: str = LONG) -> dict[str, Any]:
    """A ``thpcheck check --json`` document (``model.report.to_document``'s shape)."""
    rows = [_path(i, reason=reason) for i in range(1, paths)]
    rows.append({"path": "/scratch", "fstype": "xfs", "verdict": "not-affected", "rule": "G6",
                 "reason": "xfs has large folios", "disagreement": None, "prediction": None,
                 "repro": {"outcome": "skipped"}})
    return {
        "schema": "thpcheck.io/report/v1", "agent_version": "0.9.1",
        "checked_at": "2026-11-28T16:00:00Z", "hostname": "n1", "verdict": "affected",
        "mitigated": False, "disagreements": [],
        "kernel": {"release": "6.12.90", "boot_id": "boot-1", "read_only_thp_for_fs": True,
                   "config_source": "proc/config.gz", "version": "6.12.90"},
        "paths": rows,
        "skipped_mounts": [{"mount_point": f"/mnt/nfs{i}", "fstype": "nfs4",
                            "reason": "network filesystem " + "x" * 70} for i in range(mounts)],
    }


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


GOLDEN_MESSAGE = (
    '{"schema":"thpcheck.io/result/v1","agentVersion":"0.9.1","checkedAt":"2026-11-28T16:00:00Z'
    '","verdict":"affected","mitigated":false,"kernelRelease":"6.12.90","bootID":"boot-1","read'
    'OnlyThpForFs":true,"configSource":"proc/config.gz","paths":[{"path":"/var/lib/thpcheck/1",'
    '"fstype":"ext4","verdict":"affected","rule":"G10","reason":"the reproducer lost data after'
    ' collapse; the reproducer lost data after collapse; the reproducer lost data after collaps'
    'e; the reproducer lost data after collapse; the reproducer lost data after collapse; the r'
    'eproducer lost data after col\\u2026","repro":"reproduced","iteration":1,"badBytes":4096,"'
    'durationS":0.25,"disagreement":"predicted safe by G6 but lost 1"},{"path":"/scratch","fsty'
    'pe":"xfs","verdict":"not-affected","rule":"G6","reason":"xfs has large folios","repro":"sk'
    'ipped","iteration":null,"badBytes":null,"durationS":null,"disagreement":null}],"skippedMou'
    'nts":[{"mountPoint":"/mnt/nfs0","reason":"network filesystem xxxxxxxxxxxxxxxxxxxxxxxxxxxxx'
    'xxxxxxxxxxx\\u2026"},{"mountPoint":"/mnt/nfs1","reason":"network filesystem xxxxxxxxxxxxxx'
    'xxxxxxxxxxxxxxxxxxxxxxxxxx\\u2026"}]}')


def test_a_fixed_document_gives_todays_compact_message() -> None:
    assert compact(document()) == GOLDEN_MESSAGE


# Each compaction stage in turn: skipped mounts cut to a count, reasons to 60 characters,
# reasons dropped, paths dropped (``truncated``).
@pytest.mark.parametrize(("paths", "mounts", "reason", "expected"), [
    (2, 40, 100, "d6c20856d0bd55e8c501"),
    (12, 3, 400, "b7afadc8768563c8c16e"),
    (30, 0, 200, "6a11d46c2cc2d83b8130"),
    (60, 10, 50, "faff1ff5cf8b4c22d4f6"),
])
def test_every_compaction_stage_gives_todays_message(paths: int, mounts: int, reason: int,
                                                     expected: str) -> None:
    text = compact(document(paths, mounts, "r" * reason))
    assert len(text.encode()) <= 4096 and digest(text) == expected


# The status of GOLDEN_MESSAGE, keys sorted.
GOLDEN_STATUS = (
    '{"agentVersion":"0.9.1","bootID":"boot-1","check":"weekly","checkedAt":"2026-11-28T16:00:0'
    '0Z","configSource":"proc/config.gz","kernelRelease":"6.12.90","message":"/var/lib/thpcheck'
    '/1 ext4 affected (G10): the reproducer lost data after collapse; the reproducer lost data '
    'after collapse; the reproducer lost data after collapse; the reproducer lost data after co'
    'llapse; the reproducer lost data after collapse; the reproducer lost data after col\\u2026'
    '; /scratch xfs not-affected (G6): xfs has large folios","mitigated":false,"node":"n1","osI'
    'mage":"Debian GNU/Linux 12","paths":[{"badBytes":4096,"disagreement":"predicted safe by G6'
    ' but lost 1","durationSeconds":0.25,"fstype":"ext4","iteration":1,"path":"/var/lib/thpchec'
    'k/1","reason":"the reproducer lost data after collapse; the reproducer lost data after col'
    'lapse; the reproducer lost data after collapse; the reproducer lost data after collapse; t'
    'he reproducer lost data after collapse; the reproducer lost data after col\\u2026","repro"'
    ':"reproduced","rule":"G10","verdict":"affected"},{"fstype":"xfs","path":"/scratch","reason'
    '":"xfs has large folios","repro":"skipped","rule":"G6","verdict":"not-affected"}],"pod":{"'
    'exitCode":0,"finishedAt":"2026-11-28T16:00:05Z","name":"thpcheck-weekly-n1","uid":"pod-n1-'
    '2026-11-28T16:00:05Z"},"predicted":false,"prediction":{"atRisk":[],"confidence":"unknown",'
    '"kernelVersion":"6.12.90","notAtRisk":[],"osImage":"Debian GNU/Linux 12","reason":"CONFIG_'
    'READ_ONLY_THP_FOR_FS unknown (OS image and kernel not in the distro table); run thpcheck c'
    'heck on the node to read its config","rule":"G18","verdict":"unknown"},"proof":{"bootID":"'
    'boot-1","kernelRelease":"6.12.90","provenAt":"2026-11-28T16:00:00Z","verdict":"affected"},'
    '"readOnlyThpForFs":true,"skippedMountCount":2,"skippedMounts":[{"mountPoint":"/mnt/nfs0","'
    'reason":"network filesystem xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\u2026"},{"mountPoint'
    '":"/mnt/nfs1","reason":"network filesystem xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\u2026'
    '"}],"stale":false,"verdict":"affected"}')


def _status(text: str) -> dict[str, Any]:
    pod = agent_pod("weekly", "n1", text)
    (write,) = plan_results(CHECK, [node("n1")], [pod], [], {}, NOW, timedelta(seconds=30)).writes
    return write.body


def test_the_message_gives_todays_result_status() -> None:
    body = _status(compact(document()))
    # Keys sorted, as the API server stores a custom resource (and as the content hash sees
    # it): the order of a Python dict's keys reaches no one.
    assert json.dumps(body["status"], sort_keys=True, separators=(",", ":")) == GOLDEN_STATUS
    assert body["metadata"]["annotations"] == {"thpcheck.io/content-hash": "621c99a910fea046"}


HOSTILE = json.dumps({
    "schema": "thpcheck.io/result/v1", "agentVersion": "v" * 100, "checkedAt": 7,
    "verdict": "affected", "mitigated": "yes", "kernelRelease": "k" * 300, "bootID": ["b"],
    "readOnlyThpForFs": 1, "configSource": {"a": 1},
    "paths": [{"path": "/p" * 600, "fstype": "f" * 70, "verdict": "bogus", "rule": "r" * 40,
               "reason": "é" * 600, "repro": 5, "iteration": True, "badBytes": 1.5,
               "durationS": "2", "disagreement": None},
              {"path": 3}, "not a path",
              {"path": "/ok", "verdict": "affected", "iteration": 2, "badBytes": 8,
               "durationS": 1e400}],
    "skippedMounts": [{"mountPoint": "/m" * 600, "reason": "q" * 300}, {"reason": "x"}, 4],
})


def test_hostile_fields_are_capped_as_today() -> None:
    body = _status(HOSTILE)
    assert digest(json.dumps(body["status"], sort_keys=True, separators=(",", ":"))) == (
        "a12d129f722d8852631f")


def test_a_prediction_gives_todays_records() -> None:
    nodes = [NodeInfo("a", "6.12.90", "Debian GNU/Linux 12 (bookworm)", "amd64"),
             NodeInfo("b", "5.15.0-1075-azure", "Ubuntu 22.04.5 LTS", "amd64"),
             NodeInfo("c", "6.1.0", "Some Linux", None),
             NodeInfo("d", "7.3.0", "Fedora Linux 44", "arm64"),
             NodeInfo("e", "6.12.9-200.fc41.x86_64", "Fedora Linux 41 (Container Image)",
                      "amd64")]
    predictions = [predict_node(n) for n in nodes]
    records = [prediction_record(p, "why" if p.node.name == "b" else None) for p in predictions]
    assert digest(json.dumps(records, separators=(",", ":"))) == "243a037b7505613f6f26"
    documents = [p.to_dict() for p in predictions]
    assert digest(json.dumps(documents, separators=(",", ":"))) == "223dba7c3914fa4fb4bb"
    plan = plan_predicted_results(CHECK, [node("n1")], [], {}, NOW)
    (write,) = plan.writes
    assert digest(json.dumps(write.body, separators=(",", ":"))) == "5cd77fdaade39549be9a"


def test_the_agents_report_gives_todays_prediction_objects(tmp_path: Any) -> None:
    from tests.unit.hosttree import HostTree
    from thpcheck.host.facts import collect
    from thpcheck.host.hostroot import HostRoot
    from thpcheck.model.predict import ConfigKnowledge, predict
    from thpcheck.model.report import CheckReport, PathReport, to_document
    from thpcheck.model.rules import Evidence
    from thpcheck.model.verdict import PathVerdict, Verdict

    facts = collect(HostRoot(str(HostTree().write(tmp_path))))
    config = ConfigKnowledge(True, False, "proc/config.gz", Evidence.VERIFIED)
    report = CheckReport(facts, config, predict(facts.kernel.version, config, node_only=True),
                         checked_at="2026-11-28T00:00:00Z")
    for fstype in ("ext4", "xfs", "tmpfs"):
        prediction = predict(facts.kernel.version, config, fstype, thp=facts.thp)
        report.paths.append(PathReport(f"/scratch/{fstype}", None, prediction, None,
                                       PathVerdict(Verdict.SUSCEPTIBLE, "r", prediction.rule)))
    document = to_document(report)
    objects = [document["node_prediction"], *(p["prediction"] for p in document["paths"])]
    assert digest(json.dumps(objects, separators=(",", ":"))) == "38e24c06d9ef2b011bc0"
