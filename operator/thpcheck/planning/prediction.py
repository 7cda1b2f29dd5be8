"""The preflight prediction as the operator records it, and when the agent contradicts it.

The operator predicts every selected node from ``status.nodeInfo`` with the same model as
``thpcheck preflight`` (``model/preflight.py``). In ``mode: preflight`` the prediction *is* the
result (``status.predicted: true``); in ``mode: full`` it is recorded beside the agent's result
(``status.prediction``), and a disagreement between the two means the model or the distro
table is wrong for that node.

Disagreement, precisely. The agent's evidence is compared with the prediction only when both
speak about the same kernel (the result's ``kernelRelease`` is the node's ``kernelVersion``),
and paths with verdict ``unknown`` or ``error`` are no evidence. Then the agent contradicts the
prediction when any of these holds:

1. **Config**: the prediction knows ``CONFIG_READ_ONLY_THP_FOR_FS`` from the distro table, the
   agent read the node's own kernel config (its config source is not the distro table too),
   and the two differ. Not compared on 7.2+, where the option no longer exists.
2. **Predicted not-affected** (a node-level gate: config off, pre-5.4, 7.2+, a fixed stable
   release) but a path is ``affected`` or ``susceptible``.
3. **Predicted susceptible** but a path is ``not-affected`` by a rule the prediction did not
   already expect: expected are the rules of the filesystem classes it listed as safe (e.g.
   G6 for xfs on 5.17+) and the rules that rest on what nodeInfo cannot show (G5: tmpfs,
   erofs, read-only mounts; G14: bcachefs; G19 and RT2: a 64K-page kernel, whose PMD is
   above the page-cache limit). Anything else (config off G1, a fixed stable
   release G4, btrfs large folios G11, the runtime refusal RT1, ...) means the prediction's
   view of the kernel or its config is wrong.
4. **Predicted susceptible** but data was lost (``affected``) on a path whose filesystem
   class the prediction listed as safe (its rule is one of theirs, e.g. xfs by G6).

A prediction of ``unknown`` claims nothing, so only (1) can apply to it. (An ``affected`` path
whose rule says not-affected always contradicts the agent's own model, which the agent reports
in the path's ``disagreement``; it contradicts the prediction only as in 2 or 4.)

The disagreement is part of the recorded result, so it is written (and its Warning Event
posted) only when it changes, never on a quiet reconcile.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from thpcheck.contract.views import NodeView
from thpcheck.model.preflight import NodeInfo, NodePrediction, predict_node
from thpcheck.model.result import AgentResult, PathOutcome
from thpcheck.model.rules import PURGE_REMOVED
from thpcheck.model.text import clip
from thpcheck.model.verdict import Verdict

# Not-affected rules decided by what nodeInfo does not show: a path's filesystem or mount
# (G5, G14), the kernel's page size (G19, and RT2: 64K pages, a refused PMD-sized file collapse).
FILESYSTEM_FACT_RULES = frozenset({"G5", "G14", "G19", "RT2"})
DISAGREEMENT_LIMIT = 1024
_AT_RISK = (Verdict.AFFECTED, Verdict.SUSCEPTIBLE)
_NO_EVIDENCE = (Verdict.UNKNOWN, Verdict.ERROR)


@lru_cache(maxsize=4096)
def _predicted(kernel_version: str, os_image: str,
               architecture: str) -> tuple[NodePrediction, dict[str, Any]]:
    """Fleets have few distinct (kernel, image, arch) triples: predict each once, and build
    its record once (never mutated: ``node_record`` hands out copies)."""
    prediction = predict_node(NodeInfo("", kernel_version, os_image, architecture or None))
    return prediction, prediction_record(prediction)


def predict_view(node: NodeView) -> NodePrediction:
    """The preflight prediction for a node's current ``status.nodeInfo`` (name left empty)."""
    return _predicted(node.kernel_version, node.os_image, node.architecture)[0]


def node_record(node: NodeView, disagreement: str | None = None) -> dict[str, Any]:
    """``status.prediction`` for a node's current nodeInfo (a fresh dict, shared parts)."""
    record = dict(_predicted(node.kernel_version, node.os_image, node.architecture)[1])
    if disagreement:
        record["disagreement"] = disagreement
    return record


def prediction_record(prediction: NodePrediction,
                      disagreement: str | None = None) -> dict[str, Any]:
    """``status.prediction`` of a ThpNodeResult (``model.preflight.PredictionRecord``)."""
    return prediction.record(disagreement).to_status()


def _flag(value: bool | None) -> str:
    return {True: "y", False: "not set", None: "unknown"}[value]


def _path_text(path: PathOutcome) -> str:
    rule = f" by {path.rule}" if path.rule else ""
    return f"{path.path} ({path.fstype or '?'}) {path.verdict.value}{rule}"


def _config_disagreement(prediction: NodePrediction, result: AgentResult) -> str | None:
    kernel = prediction.kernel
    predicted, found = prediction.config.read_only_thp, result.read_only_thp_for_fs
    source = result.config_source or ""
    if (predicted is None or found is None or predicted == found or not source
            or source.startswith("distro:") or kernel is None or kernel.branch >= PURGE_REMOVED):
        return None
    row = prediction.distro.row.id if prediction.distro else "?"
    return (f"the distro table ({row}) says CONFIG_READ_ONLY_THP_FOR_FS {_flag(predicted)} but "
            f"the node's {source} says {_flag(found)}")


def disagreement(prediction: NodePrediction, result: AgentResult,
                 node_kernel: str) -> str | None:
    """Why the agent's result contradicts the prediction (None: it does not; see above)."""
    if not result.kernel_release or result.kernel_release != node_kernel:
        return None
    found = [text] if (text := _config_disagreement(prediction, result)) else []
    safe = {f.prediction.rule for f in prediction.ruled_out}
    expected = safe | FILESYSTEM_FACT_RULES
    head = f"predicted {prediction.verdict.value} ({prediction.rule})"
    for path in result.paths:
        if path.verdict in _NO_EVIDENCE:
            continue
        if prediction.verdict is Verdict.NOT_AFFECTED:
            if path.verdict in _AT_RISK:
                found.append(f"{head} but the agent found {_path_text(path)}")
        elif prediction.verdict is Verdict.SUSCEPTIBLE:
            if path.verdict is Verdict.NOT_AFFECTED and path.rule not in expected:
                found.append(f"{head} but the agent proved {_path_text(path)}")
            elif path.verdict is Verdict.AFFECTED and path.rule in safe:
                found.append(f"{head} with {path.fstype or '?'} safe by {path.rule}, but data "
                             f"was lost on {path.path}")
    if not found:
        return None
    return clip("; ".join(dict.fromkeys(found)), DISAGREEMENT_LIMIT)

