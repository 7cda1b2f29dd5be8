"""Zero-privilege preflight: predict a node from ``status.nodeInfo`` alone.

The API server knows each node's ``kernelVersion`` (``uname -r``), ``osImage`` (os-release
``PRETTY_NAME``) and ``architecture``, and nothing about its filesystems or THP knobs. The
prediction therefore runs the same model as the agent (``predict()`` over ``RULES``) in two
steps:

1. **Kernel and config** (``predict(..., node_only=True)``): the distro table (``lookup()``)
   gives the config knowledge, then the node-level gates decide: config off (G1), kernel
   unparsable (G0), pre-5.4 (G2, or G2b for a vendor backport with the option on), 7.2+ (G3),
   fixed stable release (G4), or config unknown (G18). A vendor release that hides its stable
   sublevel (``6.12.0-107.el9uek``) is never called fixed: ``parse_release`` records the
   sublevel as unknown and G4 needs it.
2. **Filesystem classes**, only when step 1 leaves the node at risk: each class in
   ``FILESYSTEM_CLASSES`` is run through ``predict()`` with that kernel and config, as if a
   path lived there. The node prediction is the **worst case** across the classes: it is
   ``susceptible`` when any class is at risk, and it lists every at-risk class with its rule
   (e.g. "ext4, xfs, btrfs, f2fs" on UEK7 5.15; "btrfs, f2fs, ext4 data=journal" on 6.16+) and
   the classes the model rules out (e.g. "xfs" on 6.12). The headline ``rule`` is the first
   at-risk class in ``FILESYSTEM_CLASSES`` order (ext4 first, as the most common root fs);
   the full list is in ``filesystems``. The grade (§3.2) assumes the distro's build-default
   THP policy (``enabled``), which a boot parameter or sysfs write can change: the agent
   (``thpcheck check``) reads the real knobs and filesystems.

Verdicts are the agent's words: ``susceptible`` (at risk on some filesystem class),
``not-affected``, ``unknown``. ``affected`` needs the reproducer and never appears here.

``confidence`` says how the verdict is known:

- ``config-known``: from a verified distro row (a shipped config was read), or from a verified
  kernel gate that makes the config irrelevant (7.2+, a verified fixed stable release).
- ``inferred``: from an inferred distro row, an inferred gate (6.18.39 / 7.1.4 as the first
  fixed releases), or a pre-5.4 kernel whose distribution is not in the table (a vendor
  backport cannot be excluded).
- ``unknown``: the verdict itself is unknown.

Pure: no I/O; the CLI (and later the operator) feed it node fields and print its documents.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from thpcheck import __version__
from thpcheck.model.distro import DistroMatch, lookup
from thpcheck.model.facts import ThpKnobs
from thpcheck.model.kernel import KernelVersion, parse_release
from thpcheck.model.mounts import Mount
from thpcheck.model.predict import ConfigKnowledge, Prediction, knowledge_from_distro, predict
from thpcheck.model.rules import FIXED_STABLE, Evidence, Outcome, fixed_stable, rule_by_id
from thpcheck.model.text import clip
from thpcheck.model.verdict import CheckExit, Verdict, exit_code
from thpcheck.model.wire import STATUS, to_wire, wired

SCHEMA = "thpcheck.io/preflight/v1"

CONFIG_KNOWN = "config-known"
INFERRED = "inferred"
UNKNOWN = "unknown"
CONFIDENCES = (CONFIG_KNOWN, INFERRED, UNKNOWN)
VERDICTS = (Verdict.SUSCEPTIBLE, Verdict.NOT_AFFECTED, Verdict.UNKNOWN)
# Branches with a stable fix: a vendor release hiding its sublevel there may carry it unseen.
_FIXED_BRANCHES = tuple(f.branch for f in FIXED_STABLE)


def _journalled_ext4() -> Mount:
    """A synthetic mount standing for ext4 inodes that keep small folios on 6.16+ (G9)."""
    return Mount(mount_id=0, parent_id=0, device="0:0", root="/", mount_point="/",
                 mount_options=("rw",), fstype="ext4", source="preflight",
                 super_options=("rw", "data=journal"))


@dataclass(frozen=True)
class FilesystemClass:
    """A filesystem a node's writable data may live on, as the model distinguishes them."""

    label: str
    fstype: str
    mount: Mount | None = None
    # Reported only when this class is at risk and ``covered_by`` is not (ext4 data=journal is
    # the same rule as ext4 before 6.16, and worth a line of its own only from 6.16 on).
    covered_by: str | None = None


FILESYSTEM_CLASSES: tuple[FilesystemClass, ...] = (
    FilesystemClass("ext4", "ext4"),
    FilesystemClass("xfs", "xfs"),
    FilesystemClass("btrfs", "btrfs"),
    FilesystemClass("f2fs", "f2fs"),
    FilesystemClass("ext4 data=journal/verity/encrypt", "ext4", _journalled_ext4(),
                    covered_by="ext4"),
)


@dataclass(frozen=True)
class FilesystemPrediction:
    """The model's answer for one filesystem class on this node."""

    filesystem: str
    prediction: Prediction

    def to_dict(self) -> dict[str, Any]:
        fields = self.prediction.to_dict()
        del fields["grade"]  # the node's grade is the headline's (NodePrediction.grade)
        return {"filesystem": self.filesystem, **fields}


@dataclass(frozen=True)
class NodeInfo:
    """The ``status.nodeInfo`` fields the prediction reads, plus the node's name."""

    name: str
    kernel_version: str
    os_image: str
    architecture: str | None = None


def node_info(node: Mapping[str, Any]) -> NodeInfo:
    """The prediction's input from a Node object (the API's, or a saved one)."""
    info = (node.get("status") or {}).get("nodeInfo") or {}
    return NodeInfo(
        name=str((node.get("metadata") or {}).get("name", "")),
        kernel_version=str(info.get("kernelVersion") or ""),
        os_image=str(info.get("osImage") or ""),
        architecture=str(info["architecture"]) if info.get("architecture") else None,
    )


class NodesDocumentError(ValueError):
    """Saved input that is not ``kubectl get nodes`` output; the message names the problem."""


LIST_KINDS = ("List", "NodeList")


def _saved_node(item: Any, where: str) -> NodeInfo:
    if not isinstance(item, Mapping):
        raise NodesDocumentError(f"{where} is not an object")
    kind = item.get("kind")
    if kind not in (None, "Node"):  # items of an API NodeList carry no kind
        raise NodesDocumentError(f"{where} is a {kind}, not a Node")
    metadata = item.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise NodesDocumentError(f"{where} has no metadata.name")
    if not isinstance(item.get("status") or {}, Mapping):
        raise NodesDocumentError(f"{where} ({name}) has a status that is not an object")
    return node_info(item)


def nodes_from_documents(documents: Sequence[Any]) -> list[NodeInfo]:
    """The nodes of saved ``kubectl get nodes -o json|yaml`` output, already parsed: a List (or
    the API's NodeList) of Nodes, a single Node, or several YAML documents of those."""
    present = [d for d in documents if d is not None]  # a trailing "---" is no document
    if not present:
        raise NodesDocumentError("nothing in it")
    nodes: list[NodeInfo] = []
    for number, document in enumerate(present, 1):
        where = f"document {number}" if len(present) > 1 else "the document"
        kind = document.get("kind") if isinstance(document, Mapping) else None
        if kind in LIST_KINDS:
            items = document.get("items")
            if not isinstance(items, list):
                raise NodesDocumentError(f"{where} is a {kind} without an items list")
            nodes += [_saved_node(item, f"item {i} of {where}" if len(present) > 1 else
                                  f"item {i}") for i, item in enumerate(items, 1)]
        elif kind == "Node":
            nodes.append(_saved_node(document, where))
        else:
            what = f"a {kind}" if isinstance(kind, str) else (
                "an object without a kind" if isinstance(document, Mapping)
                else f"a {type(document).__name__}")
            raise NodesDocumentError(f"{where} is {what}, not a Node or a List of Nodes")
    return nodes


REASON_LIMIT = 512  # the CRD's maxLength for status.prediction.reason


@dataclass(frozen=True, kw_only=True)
class PredictionRecord:
    """A node's prediction as a ThpNodeResult records it (``status.prediction``): beside the
    agent's result in ``mode: full``, as the result itself in ``mode: preflight``."""

    verdict: Verdict
    rule: str
    reason: str
    confidence: str
    kernel_version: str
    os_image: str
    at_risk: tuple[str, ...]  # filesystem classes
    not_at_risk: tuple[str, ...]
    grade: str | None = wired(omit_empty=True)
    distro: str | None = None  # the distro table's row id
    disagreement: str | None = wired(omit_empty=True)  # the agent contradicts it (why)

    def to_status(self) -> dict[str, Any]:
        return to_wire(self, STATUS)


@dataclass(frozen=True)
class NodePrediction:
    """A node's predicted verdict, from kernel release and OS image alone."""

    node: NodeInfo
    verdict: Verdict
    rule: str
    reason: str
    confidence: str
    evidence: Evidence
    sources: tuple[str, ...]
    kernel: KernelVersion | None
    config: ConfigKnowledge
    distro: DistroMatch | None
    grade: str | None = None
    at_risk: tuple[FilesystemPrediction, ...] = ()
    ruled_out: tuple[FilesystemPrediction, ...] = ()

    @property
    def thp_default(self) -> str | None:
        return self.distro.row.thp_default if self.distro else None

    def record(self, disagreement: str | None = None) -> PredictionRecord:
        """What a ThpNodeResult records of this prediction (``status.prediction``)."""
        return PredictionRecord(
            verdict=self.verdict, rule=self.rule, reason=clip(self.reason, REASON_LIMIT),
            confidence=self.confidence, kernel_version=self.node.kernel_version,
            os_image=self.node.os_image, at_risk=tuple(f.filesystem for f in self.at_risk),
            not_at_risk=tuple(f.filesystem for f in self.ruled_out), grade=self.grade,
            distro=self.distro.row.id if self.distro else None, disagreement=disagreement)

    def to_dict(self) -> dict[str, Any]:
        """One node of the ``thpcheck preflight --json`` document."""
        row = self.distro.row if self.distro else None
        return {
            "node": self.node.name,
            "os_image": self.node.os_image,
            "kernel_version": self.node.kernel_version,
            "architecture": self.node.architecture,
            "predicted": True,
            "verdict": self.verdict.value,
            "rule": self.rule,
            "reason": self.reason,
            "confidence": self.confidence,
            "evidence": self.evidence.value,
            "sources": list(self.sources),
            "grade": self.grade,
            "kernel": {
                "version": str(self.kernel) if self.kernel else None,
                "read_only_thp_for_fs": self.config.read_only_thp,
                "config_source": self.config.source,
            },
            "distro": {
                "id": row.id,
                "name": row.name,
                "evidence": row.evidence.value,
                "sources": row.sources,
                "thp_default": row.thp_default,
            } if row else None,
            "filesystems": {
                "at_risk": [f.to_dict() for f in self.at_risk],
                "not_at_risk": [f.to_dict() for f in self.ruled_out],
            },
        }


def _confidence_of(evidence: Evidence | None) -> str:
    return CONFIG_KNOWN if evidence is Evidence.VERIFIED else INFERRED


def _gate_confidence(rule: str, kernel: KernelVersion | None, config: ConfigKnowledge) -> str:
    """Confidence of a node-level verdict (see the module docstring)."""
    if rule in ("G0", "G2b", "G18"):
        return UNKNOWN
    if rule == "G1":
        return config.confidence
    if rule == "G2":
        # Reached only when the config is unknown (G1/G2b come first): a distribution outside
        # the table may have backported the option (§3.1 G2, Alibaba Cloud Linux 2).
        return INFERRED
    if rule == "G4":
        fixed = fixed_stable(kernel) if kernel else None
        return _confidence_of(fixed.evidence if fixed else None)
    return _confidence_of(rule_by_id(rule).evidence)


def _distro_text(distro: DistroMatch | None) -> str:
    return distro.row.name if distro else "no distro row"


def _node_level_reason(prediction: Prediction, kernel: KernelVersion | None,
                       distro: DistroMatch | None) -> str:
    """A one-line reason for verdicts decided by kernel and config alone."""
    row = distro.row if distro else None
    match prediction.rule:
        case "G1":
            return f"CONFIG_READ_ONLY_THP_FOR_FS is not set ({_distro_text(distro)})"
        case "G4":
            fixed = fixed_stable(kernel) if kernel else None
            if fixed is not None:
                first = f"{fixed.branch[0]}.{fixed.branch[1]}.{fixed.first_fixed}"
                return (f"fixed stable release (>= {first}, {fixed.commit}): collapse writes "
                        "back all dirty folios first")
        case "G18":
            # A row without a value says why no config was found (e.g. OrbStack's stub).
            where = (f"for {row.name} ({row.sources})" if row
                     else "(OS image and kernel not in the distro table)")
            return (f"CONFIG_READ_ONLY_THP_FOR_FS unknown {where}; run thpcheck check on the "
                    "node to read its config")
    return prediction.reason


def _at_risk_reason(kernel: KernelVersion, at_risk: Sequence[FilesystemPrediction],
                    ruled_out: Sequence[FilesystemPrediction], distro: DistroMatch | None,
                    grade: str | None) -> str:
    """E.g. "at risk on ext4, btrfs, f2fs; safe on xfs: unfixed 6.12 kernel, ..."."""
    parts = [f"at risk on {', '.join(f.filesystem for f in at_risk)}"]
    if ruled_out:
        parts.append(f"; safe on {', '.join(f.filesystem for f in ruled_out)}")
    parts.append(f": unfixed {kernel.major}.{kernel.minor} kernel, READ_ONLY_THP_FOR_FS=y")
    if kernel.sublevel is None and kernel.branch in _FIXED_BRANCHES:
        parts.append(", vendor release hides the stable sublevel (fix not visible)")
    if grade:
        thp = distro.row.thp_default if distro else None
        parts.append(f"; grade {grade}" + (f" (THP {thp} by default)" if thp else ""))
    return "".join(parts)




def predict_node(node: NodeInfo) -> NodePrediction:
    """Predict one node from its kernel release, OS image and architecture."""
    kernel = parse_release(node.kernel_version)
    distro = lookup(node.os_image, node.kernel_version, node.architecture or None)
    config = knowledge_from_distro(distro)
    gate = predict(kernel, config, node_only=True)

    if gate.outcome is not Outcome.AT_RISK or kernel is None:
        verdict = {Outcome.NOT_AFFECTED: Verdict.NOT_AFFECTED,
                   Outcome.UNKNOWN: Verdict.UNKNOWN}.get(gate.outcome, Verdict.UNKNOWN)
        return NodePrediction(
            node=node, verdict=verdict, rule=gate.rule,
            reason=_node_level_reason(gate, kernel, distro),
            confidence=_gate_confidence(gate.rule, kernel, config), evidence=gate.evidence,
            sources=gate.sources, kernel=kernel, config=config, distro=distro)

    knobs = ThpKnobs(enabled=distro.row.thp_default) if distro and distro.row.thp_default \
        else None
    at_risk: list[FilesystemPrediction] = []
    ruled_out: list[FilesystemPrediction] = []
    for fs in FILESYSTEM_CLASSES:
        result = FilesystemPrediction(fs.label, predict(kernel, config, fs.fstype, fs.mount, knobs))
        if result.prediction.outcome is Outcome.AT_RISK:
            if fs.covered_by is None or not any(a.filesystem == fs.covered_by for a in at_risk):
                at_risk.append(result)
        elif fs.covered_by is None:
            ruled_out.append(result)

    if not at_risk:
        # Not reachable with today's rules (btrfs is at risk on every unfixed kernel), but a
        # node is only susceptible if some filesystem is.
        return NodePrediction(
            node=node, verdict=Verdict.NOT_AFFECTED, rule=ruled_out[0].prediction.rule
            if ruled_out else gate.rule,
            reason="no filesystem class is at risk on this kernel: "
            + ", ".join(f"{f.filesystem} ({f.prediction.rule})" for f in ruled_out),
            confidence=config.confidence, evidence=gate.evidence, sources=gate.sources,
            kernel=kernel, config=config, distro=distro, ruled_out=tuple(ruled_out))

    headline = at_risk[0].prediction
    return NodePrediction(
        node=node, verdict=Verdict.SUSCEPTIBLE, rule=headline.rule,
        reason=_at_risk_reason(kernel, at_risk, ruled_out, distro, headline.grade),
        confidence=config.confidence, evidence=headline.evidence,
        sources=tuple(dict.fromkeys(s for f in at_risk for s in f.prediction.sources)),
        kernel=kernel, config=config, distro=distro, grade=headline.grade,
        at_risk=tuple(at_risk), ruled_out=tuple(ruled_out))


def predict_nodes(nodes: Iterable[NodeInfo]) -> list[NodePrediction]:
    """Predictions for many nodes, sorted by node name."""
    return sorted((predict_node(n) for n in nodes), key=lambda p: p.node.name)


@dataclass(frozen=True)
class Summary:
    """Counts by predicted verdict and by confidence."""

    nodes: int
    verdicts: dict[str, int]
    confidence: dict[str, int]

    def line(self) -> str:
        verdicts = ", ".join(f"{n} {v}" for v, n in self.verdicts.items())
        confidence = ", ".join(f"{n} {c}" for c, n in self.confidence.items())
        plural = "node" if self.nodes == 1 else "nodes"
        return f"{self.nodes} {plural}: {verdicts}; confidence: {confidence}"


def summarize(predictions: Sequence[NodePrediction]) -> Summary:
    verdicts = Counter(p.verdict.value for p in predictions)
    confidence = Counter(p.confidence for p in predictions)
    return Summary(
        nodes=len(predictions),
        verdicts={v.value: verdicts.get(v.value, 0) for v in VERDICTS},
        confidence={c: confidence.get(c, 0) for c in CONFIDENCES},
    )


def preflight_exit_code(predictions: Sequence[NodePrediction]) -> CheckExit:
    """As ``thpcheck check``: 1 any susceptible, else 3 any unknown (or no node), else 0."""
    if not predictions:
        return CheckExit.INCONCLUSIVE
    return exit_code(p.verdict for p in predictions)


def to_document(predictions: Sequence[NodePrediction], generated_at: str,
                selector: str | None = None) -> dict[str, Any]:
    """The ``thpcheck preflight --json`` document."""
    summary = summarize(predictions)
    return {
        "schema": SCHEMA,
        "thpcheck_version": __version__,
        "generated_at": generated_at,
        "selector": selector,
        "summary": {"nodes": summary.nodes, "verdicts": summary.verdicts,
                    "confidence": summary.confidence},
        "nodes": [p.to_dict() for p in predictions],
    }


TABLE_HEADER = ("NODE", "OS IMAGE", "KERNEL", "PREDICTED", "REASON", "CONFIDENCE")


def table_rows(predictions: Sequence[NodePrediction]) -> list[tuple[str, ...]]:
    return [(p.node.name, p.node.os_image or "-", p.node.kernel_version or "-", p.verdict.value,
             p.reason, p.confidence) for p in predictions]


def render_table(predictions: Sequence[NodePrediction]) -> str:
    """The human table: one row per node in TABLE_HEADER order, then the summary line."""
    rows = [TABLE_HEADER, *table_rows(predictions)]
    last = len(TABLE_HEADER) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(last)]
    lines = ["  ".join([*(r[i].ljust(widths[i]) for i in range(last)), r[last]]) for r in rows]
    lines.append("")
    lines.append("summary: " + summarize(predictions).line())
    return "\n".join(lines)
