"""Plain-dict Kubernetes objects and agent documents for the operator's unit tests."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from thpcheck.contract import names
from thpcheck.contract.termination import parse_termination
from thpcheck.contract.views import AgentPodView, CheckRun, NodeView, ResultView
from thpcheck.model.report import compact

KERNEL = "6.12.90"
BOOT = "boot-1"


def report_document(verdict: str = "not-affected", *, paths: Sequence[Mapping[str, Any]] = (),
                    mitigated: bool = False, kernel: str = KERNEL,
                    boot_id: str = BOOT,
                    skipped_mounts: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A ``thpcheck check --json`` document shaped like ``model.report.to_document``'s."""
    return {
        "schema": "thpcheck.io/report/v1",
        "agent_version": "0.1.0",
        "checked_at": "2026-11-28T16:00:00Z",
        "verdict": verdict,
        "mitigated": mitigated,
        "kernel": {"release": kernel, "boot_id": boot_id, "read_only_thp_for_fs": True,
                   "config_source": "proc/config.gz"},
        "paths": list(paths) or [{
            "path": "/var/lib/thpcheck", "fstype": "ext4", "verdict": verdict, "rule": "G10",
            "reason": "because", "disagreement": None,
            "repro": {"outcome": "reproduced" if verdict == "affected" else "not_reproduced",
                      "iteration": 0, "bad_bytes": 16384, "duration_s": 0.8},
        }],
        "skipped_mounts": list(skipped_mounts),
    }


def message(verdict: str = "not-affected", **kw: Any) -> str:
    """The compact termination message the agent would write."""
    return compact(report_document(verdict, **kw))


def node(name: str, *, labels: Mapping[str, str] | None = None,
         annotations: Mapping[str, str] | None = None, unschedulable: bool = False,
         kernel: str = KERNEL, boot_id: str = BOOT, taints: Sequence[Mapping[str, str]] = (),
         uid: str = "") -> NodeView:
    from thpcheck.contract.views import node_view

    return node_view({
        "metadata": {"name": name, "uid": uid or f"uid-{name}", "resourceVersion": "7",
                     "labels": dict(labels or {}), "annotations": dict(annotations or {})},
        "spec": {"unschedulable": unschedulable, "taints": list(taints)},
        "status": {"nodeInfo": {"kernelVersion": kernel, "bootID": boot_id,
                                "osImage": "Debian GNU/Linux 12"}},
    })


def agent_pod(check: str, node_name: str, text: str | None = None, *, template: str = "check",
              finished_at: str = "2026-11-28T16:00:05Z", exit_code: int = 0,
              uid: str = "") -> AgentPodView:
    """An agent pod; ``text`` None means the check container has not finished yet."""
    run = None
    if text is not None:
        result = parse_termination(text, exit_code) if text or exit_code else None
        run = CheckRun(exit_code=exit_code, finished_at=finished_at, message=text,
                       result=result)
    return AgentPodView(name=f"thpcheck-{check}-{node_name}", namespace="thp-checker",
                        uid=uid or f"pod-{node_name}-{finished_at}", check=check,
                        node=node_name, template=template, run=run)


def result(check: str, node_name: str, *, verdict: str = "not-affected", content_hash: str = "x",
           mitigated: bool = False, stale: bool = False, kernel: str = KERNEL,
           boot_id: str = BOOT, owner_uid: str = "uid-check") -> ResultView:
    """A result the operator wrote for the check whose uid is ``owner_uid``."""
    return ResultView(name=names.result_name(check, node_name), check=check, node=node_name,
                      content_hash=content_hash, verdict=verdict, mitigated=mitigated,
                      stale=stale, kernel_release=kernel, boot_id=boot_id, owner_uid=owner_uid)


def pod_body(check: str, node_name: str, message_text: str | None) -> dict[str, Any]:
    """A kubelet-shaped agent pod body (for the view parsers)."""
    terminated: dict[str, Any] = {"exitCode": 0, "reason": "Completed",
                                  "finishedAt": "2026-11-28T16:00:05Z"}
    if message_text is not None:
        terminated["message"] = message_text
    return {
        "metadata": {"name": f"p-{node_name}", "namespace": "ns", "uid": "u1",
                     "labels": {names.CHECK_LABEL: names.label_value(check),
                                names.TEMPLATE_LABEL: "check"},
                     "annotations": {names.CHECK_NAME_ANNOTATION: check}},
        "spec": {"nodeName": node_name},
        "status": {"phase": "Running", "initContainerStatuses": [
            {"name": "check", "state": {"terminated": terminated}}]},
    }


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
