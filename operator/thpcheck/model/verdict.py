"""Verdicts: reproduction beats prediction, and a disagreement between them is loud."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from thpcheck.model.predict import Prediction
from thpcheck.model.repro import ReproOutcome, ReproResult
from thpcheck.model.rules import SOURCES, Evidence, Outcome


class Verdict(StrEnum):
    AFFECTED = "affected"  # the reproducer lost data here: proof
    SUSCEPTIBLE = "susceptible"  # the rules say at risk, no loss seen
    NOT_AFFECTED = "not-affected"  # a rule rules it out and the reproducer agrees
    UNKNOWN = "unknown"  # inputs missing
    ERROR = "error"  # the check could not run


# Node verdict = worst path verdict, in this order.
SEVERITY: dict[Verdict, int] = {
    Verdict.NOT_AFFECTED: 0,
    Verdict.UNKNOWN: 1,
    Verdict.ERROR: 2,
    Verdict.SUSCEPTIBLE: 3,
    Verdict.AFFECTED: 4,
}


class CheckExit(IntEnum):
    """``thpcheck check`` / ``preflight`` exit codes."""

    CLEAN = 0
    AT_RISK = 1
    BAD_INPUT = 2
    INCONCLUSIVE = 3


# The runtime rule: the kernel refused file collapse on the most permissive mapping.
RUNTIME_RULE = "RT1"
RUNTIME_REASON = (
    "MADV_COLLAPSE is known to this kernel but refused a touched read-only file mapping "
    "(PROT_READ and PROT_READ|PROT_EXEC): no read-only file THP can be made here"
)


# The runtime rule for a PMD above the page-cache limit whose stable backport the kernel carries.
PAGECACHE_RUNTIME_RULE = "RT2"
PAGECACHE_REFUSED_REASON = (
    "MADV_COLLAPSE refused a touched read-only file mapping of one PMD while anonymous collapse "
    "works: this kernel carries the stable backport of 'mm/huge_memory: avoid PMD-size page "
    "cache if needed' (its PMD is above the page-cache limit), so no file THP can arm the purge"
)


@dataclass(frozen=True)
class PathVerdict:
    """The final answer for one path, with the rule behind it and any disagreement."""

    verdict: Verdict
    reason: str
    rule: str | None
    disagreement: str | None = None


def _not_reproduced_text(repro: ReproResult) -> str:
    skipped = f", {repro.skipped_iterations} skipped" if repro.skipped_iterations else ""
    return f"no loss in {repro.iterations_run} iterations{skipped}"


def combine(prediction: Prediction | None, repro: ReproResult | None) -> PathVerdict:
    """Combine the static prediction with the reproducer's outcome for one path."""
    if prediction is None:
        message = repro.message if repro and repro.message else "no prediction"
        return PathVerdict(Verdict.ERROR, message, None)
    outcome = repro.outcome if repro else ReproOutcome.SKIPPED
    rule, reason = prediction.rule, prediction.reason
    at_risk = prediction.outcome is Outcome.AT_RISK
    ruled_out = prediction.outcome is Outcome.NOT_AFFECTED

    if outcome is ReproOutcome.REPRODUCED and repro is not None:
        loss = repro.first_loss
        lost = f"{loss.bad_bytes} appended bytes lost at iteration {loss.iteration}" if loss else ""
        text = f"reproduced: {lost}"
        if ruled_out:
            return PathVerdict(Verdict.AFFECTED, text, rule, disagreement=(
                f"the model said not-affected by {rule} ({reason}) but data was lost: the model "
                "or its inputs are wrong for this node"))
        return PathVerdict(Verdict.AFFECTED, text, rule)

    if outcome is ReproOutcome.COLLAPSE_UNSUPPORTED and repro is not None:
        file_refused = repro.madv_collapse_known is True
        if ruled_out:
            return PathVerdict(Verdict.NOT_AFFECTED, reason, rule)
        if at_risk:
            if file_refused and prediction.backport_may_refuse:
                return PathVerdict(Verdict.NOT_AFFECTED, PAGECACHE_REFUSED_REASON,
                                   PAGECACHE_RUNTIME_RULE)
            if file_refused:
                return PathVerdict(Verdict.SUSCEPTIBLE, reason, rule, disagreement=(
                    f"the model says at risk by {rule} but the kernel refused file collapse: "
                    "check the kernel config source and THP restrictions (prctl, cgroup)"))
            return PathVerdict(Verdict.SUSCEPTIBLE, f"{reason}; MADV_COLLAPSE unavailable, so "
                               "only khugepaged can arm the purge and the reproducer cannot run",
                               rule)
        if file_refused:
            return PathVerdict(Verdict.NOT_AFFECTED, RUNTIME_REASON, RUNTIME_RULE)
        return PathVerdict(Verdict.UNKNOWN, f"{reason}; MADV_COLLAPSE unavailable", rule)

    if outcome is ReproOutcome.ERROR and repro is not None:
        if at_risk:
            return PathVerdict(Verdict.SUSCEPTIBLE,
                               f"{reason}; the reproducer failed: {repro.message}", rule)
        return PathVerdict(Verdict.ERROR, f"reproducer failed: {repro.message}", rule)

    # not reproduced, or skipped (--no-repro; a base smaller than one PMD says so)
    if repro and repro.iterations_run:
        seen = _not_reproduced_text(repro)
    else:
        seen = repro.message if repro and repro.message else "reproducer not run"
    if at_risk:
        return PathVerdict(Verdict.SUSCEPTIBLE, f"{reason}; {seen}", rule)
    if ruled_out:
        # A reproducer skipped for a reason (a memory-backed path) says so beside the rule.
        why = repro.message if repro and outcome is ReproOutcome.SKIPPED else None
        return PathVerdict(Verdict.NOT_AFFECTED, f"{reason}; {why}" if why else reason, rule)
    return PathVerdict(Verdict.UNKNOWN, f"{reason}; {seen}", rule)


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The node verdict: the most severe path verdict (not-affected for no paths)."""
    return max(verdicts, key=SEVERITY.__getitem__, default=Verdict.NOT_AFFECTED)


def exit_code(verdicts: Iterable[Verdict]) -> CheckExit:
    """1 when anything is affected or susceptible, else 3 when unknown or error, else 0."""
    seen = set(verdicts)
    if seen & {Verdict.AFFECTED, Verdict.SUSCEPTIBLE}:
        return CheckExit.AT_RISK
    if seen & {Verdict.UNKNOWN, Verdict.ERROR}:
        return CheckExit.INCONCLUSIVE
    return CheckExit.CLEAN


def describe_sources(ids: Iterable[str]) -> list[str]:
    """Source ids expanded to their citations, for reports and ``facts``."""
    return [f"{i}: {SOURCES[i]}" for i in ids if i in SOURCES]


__all__ = ["Evidence", "PathVerdict", "Verdict", "combine", "exit_code", "worst"]
