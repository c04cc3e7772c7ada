"""User-facing errors.

Every mistake a user can make with their input (names, shapes, ranges, budgets, files) raises
:class:`TorchRobustError` with a single-line message that names the problem and the fix. The CLI prints that
line and exits with status 2; library callers can catch it as a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable


class TorchRobustError(ValueError):
    """A problem with the user's input; the message is one line: the problem, then the fix."""


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> TorchRobustError:
    """The error for an unknown registry name, listing the valid ones."""
    return TorchRobustError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
