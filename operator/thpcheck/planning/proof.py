"""Sticky protection: a node proven ``affected`` stays protected on the kernel it was proven on.

A proof is the reproducer losing data on a node: it is a fact about that node's kernel (its
release and boot ID), not about the latest run. A later run that cannot tell (``error``,
``unknown``, a killed or timed-out run) or that only says ``susceptible`` does not undo it;
only these do:

- a completed run on the same kernel that says ``not-affected``;
- a new kernel (another release or boot ID) followed by a result from it that decides
  (``not-affected`` or ``susceptible``; an ``affected`` one is a new proof);

and, outside this module (the remediation planner): the node leaving the selection or getting
the exclude label, remediation turned off in the spec, the ThpCheck deleted.

The proof is recorded on the ThpNodeResult (``status.proof``) beside the latest run, so it
survives restarts; ``standing_proof`` says which proof stands after a run, and
``effective_verdict`` the verdict labels and remediation act on. A node condition or taint
(the same planner) reads the same verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from thpcheck.contract.proof import Proof
from thpcheck.model.verdict import Verdict

# On another kernel, these verdicts decide what the node is now (error and unknown do not).
DECIDING = frozenset({Verdict.AFFECTED, Verdict.NOT_AFFECTED, Verdict.SUSCEPTIBLE})


@dataclass(frozen=True)
class Run:
    """What a run (or, with ``predicted``, a preflight prediction) says about a node."""

    verdict: Verdict
    kernel_release: str
    boot_id: str
    at: str
    predicted: bool = False  # a prediction from nodeInfo: never a proof, never lifts one


def recorded_proof(proof: Proof | None, verdict: str | None, *, predicted: bool,
                   kernel_release: str, boot_id: str, checked_at: str) -> Proof | None:
    """The proof a stored result stands for: its ``status.proof``, or, for a result written
    before proofs were recorded, its own ``affected`` verdict."""
    if proof is not None:
        return proof
    if verdict == Verdict.AFFECTED.value and not predicted:
        return Proof(checked_at, kernel_release, boot_id)
    return None


def same_kernel(proof: Proof, run: Run) -> bool:
    """The run saw the kernel the proof is about (what either side does not know matches)."""
    if run.kernel_release and proof.kernel_release and run.kernel_release != proof.kernel_release:
        return False
    return not (run.boot_id and proof.boot_id and run.boot_id != proof.boot_id)


def standing_proof(proof: Proof | None, run: Run | None) -> Proof | None:
    """The proof that stands once ``run`` (None: no newer run) is taken into account."""
    if run is None:
        return proof
    if proof is not None and same_kernel(proof, run):
        lifted = run.verdict is Verdict.NOT_AFFECTED and not run.predicted
        return None if lifted else proof
    if run.verdict is Verdict.AFFECTED and not run.predicted:
        return Proof(run.at, run.kernel_release, run.boot_id)
    if proof is not None and run.verdict not in DECIDING:
        return proof  # a new kernel, but nothing known about it yet
    return None


def effective_verdict(latest: Verdict | None, proof: Proof | None) -> Verdict | None:
    """What labels, counts and remediation act on: the proof while it stands."""
    return proof.verdict if proof is not None else latest
