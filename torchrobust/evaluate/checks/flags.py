"""The :class:`Flag` a check raises, the flag codes and :func:`is_reliable`.

Every flag ``code`` has a section in ``torchrobust/evaluate/checks/flags.md`` (what it means, what to do); a number
with any flag raised is *unreliable* (RobustBench's ``unreliable`` field). The pattern is AutoAttack's
``autoattack/checks.py`` + ``flags_doc.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torchrobust.errors import TorchRobustError

__all__ = ["Flag", "FLAG_CODES", "FLAGS_DOC", "Severity", "is_reliable"]

Severity = Literal["error", "warning"]

#: Every flag code with the section of ``flags.md`` that documents it.
FLAG_CODES: tuple[str, ...] = (
    "INPUT_RANGE",
    "TRAIN_MODE",
    "PROBABILITY_OUTPUT",
    "RANDOMIZED_OUTPUT",
    "ZERO_GRADIENTS",
    "NONFINITE_GRADIENTS",
    "BUDGET_VIOLATION",
    "SINGLE_STEP_STRONGER",
    "NON_MONOTONE_EPS",
    "LARGE_EPS_ABOVE_CHANCE",
    "NOT_CONVERGED",
    "BLACKBOX_STRONGER",
    "TRANSFER_STRONGER",
    "BPDA_STRONGER",
    "NOISE_STRONGER",
    "MISSING_BPDA_SURROGATE",
    "BPDA_NOT_EVALUATED",
    "BASE_NOT_BROKEN",
    "NONFINITE",
)

#: Where the flags are documented, one section per code (this package's ``flags.md``).
FLAGS_DOC = "torchrobust/evaluate/checks/flags.md"


@dataclass(frozen=True)
class Flag:
    """One raised check. ``severity`` is ``"error"`` (the number is invalid: the contract or the budget was
    broken) or ``"warning"`` (the number may overstate robustness). Either makes the result unreliable.
    ``details`` holds the measured quantities (JSON-serialisable)."""

    code: str
    severity: Severity
    message: str
    advice: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in FLAG_CODES:
            raise TorchRobustError(f"unknown flag code {self.code!r}; valid: {', '.join(FLAG_CODES)}")

    @property
    def doc(self) -> str:
        """Where the flag is documented (``flags.md`` and the anchor of its section)."""
        return f"{FLAGS_DOC}#{self.code.lower().replace('_', '-')}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the shape stored in ``SweepResult.flags`` and ``results.json``)."""
        return {**asdict(self), "doc": self.doc}

    def __str__(self) -> str:
        return f"[{self.severity}] {self.code}: {self.message} -> {self.advice} (see {self.doc})"


def is_reliable(flags: Sequence[Flag | Mapping[str, Any] | None]) -> bool:
    """True iff no flag was raised (``None`` entries, as returned by silent checks, are ignored)."""
    return not any(f is not None for f in flags)
