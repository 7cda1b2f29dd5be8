"""The reproducer's result as plain data (the work itself is in ``host.repro``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

# The reproducer's defaults, the one definition: ``thpcheck repro``/``check`` options, the
# ThpCheck spec's defaults (contract.checkspec) and the agent (host.repro) import these; the CRD's
# schema defaults are checked against them (tests/operator/test_crds_and_settings.py).
DEFAULT_ITERATIONS = 200
DEFAULT_BASE_SIZE = 64 << 20  # 64 MiB
DEFAULT_APPEND_SIZE = 16 << 10  # 16 KiB


class ReproOutcome(StrEnum):
    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "not_reproduced"
    COLLAPSE_UNSUPPORTED = "collapse_unsupported"
    SKIPPED = "skipped"
    ERROR = "error"


class ReproExit(IntEnum):
    """``thpcheck repro`` exit codes."""

    NOT_REPRODUCED = 0
    REPRODUCED = 1
    BAD_INPUT = 2
    COLLAPSE_UNSUPPORTED = 3
    ERROR = 4


@dataclass(frozen=True)
class Loss:
    """What one lossy iteration read back instead of the appended bytes."""

    iteration: int
    bad_bytes: int
    first_bad: int
    zero_count: int
    append_off: int
    got_head: bytes
    want_head: bytes


@dataclass
class ReproResult:
    """Outcome of one reproducer run on one scratch path."""

    outcome: ReproOutcome
    iterations_run: int = 0
    skipped_iterations: int = 0
    losses: list[Loss] = field(default_factory=list)
    mapping: str | None = None  # "read" or "read-exec": the mapping that collapsed
    madv_collapse_known: bool | None = None
    errno: str | None = None
    step: int | None = None
    message: str | None = None
    duration_s: float = 0.0
    bytes_written: int = 0

    @property
    def first_loss(self) -> Loss | None:
        return self.losses[0] if self.losses else None

    @property
    def exit_code(self) -> ReproExit:
        return {
            ReproOutcome.REPRODUCED: ReproExit.REPRODUCED,
            ReproOutcome.NOT_REPRODUCED: ReproExit.NOT_REPRODUCED,
            ReproOutcome.COLLAPSE_UNSUPPORTED: ReproExit.COLLAPSE_UNSUPPORTED,
            ReproOutcome.SKIPPED: ReproExit.NOT_REPRODUCED,
            ReproOutcome.ERROR: ReproExit.ERROR,
        }[self.outcome]

    def to_dict(self) -> dict[str, object]:
        """The report's ``repro`` object."""
        loss = self.first_loss
        return {
            "outcome": self.outcome.value,
            "iteration": loss.iteration if loss else None,
            "bad_bytes": loss.bad_bytes if loss else 0,
            "lost_iterations": len(self.losses),
            "iterations_run": self.iterations_run,
            "skipped_iterations": self.skipped_iterations,
            "mapping": self.mapping,
            "madv_collapse_known": self.madv_collapse_known,
            "errno": self.errno,
            "step": self.step,
            "message": self.message,
            "duration_s": round(self.duration_s, 3),
            "bytes_written": self.bytes_written,
        }
