"""User-facing errors.

Every mistake a user can make with their input (names, shapes, ranges, budgets, files) raises
:class:`TorchRobustError` with a single-line message that names the problem and the fix. The CLI prints that
line and exits with status 2; library callers can catch it as a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable


class TorchRobustError(ValueError):
    """A problem with the user's input; the message is one line: the problem, then the fix."""


class TrainingDiverged(TorchRobustError):
    """Training stopped by :func:`torchrobust.train.fit`'s NaN/Inf guard at ``epoch``, ``batch`` (1-based); the
    model holds the weights before that step. Callers that can go on without the model (a preset's other rows)
    catch this type, not the message."""

    def __init__(self, message: str, *, epoch: int, batch: int) -> None:
        super().__init__(message)
        self.epoch, self.batch = epoch, batch


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> TorchRobustError:
    """The error for an unknown registry name, listing the valid ones."""
    return TorchRobustError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
