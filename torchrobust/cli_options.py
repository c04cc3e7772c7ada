"""argparse value types shared by the CLI modules (:mod:`torchrobust.cli`, :mod:`torchrobust.cli_defences`).

Each raises :class:`argparse.ArgumentTypeError`, which argparse turns into the CLI's one-line error (exit 2).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

__all__ = ["parse_number", "float_list", "finite_number", "int_at_least", "positive_int", "nonnegative_int",
           "name_list"]


def parse_number(v: str) -> float:
    """A number, also written as a power such as ``2**-7`` (the forged-threshold paper's c_r notation)."""
    v = v.strip()
    if "**" in v:
        base, exp = v.split("**", 1)
        try:
            return float(base) ** float(exp)
        except OverflowError:  # e.g. 10**400: too large for a float, like float("1e400"); callers reject inf
            return float("inf")
        except ZeroDivisionError:  # 0**-1
            raise ValueError(f"{v!r} divides by zero") from None
    return float(v)


def _finite(v: str) -> float:
    """:func:`parse_number`, rejecting results that are not finite real numbers (inf, nan, 2**10000, (-8)**0.5)."""
    x = parse_number(v)
    if not isinstance(x, float) or not math.isfinite(x):
        raise ValueError(v)
    return x


def float_list(s: str) -> list[float]:
    """Comma-separated finite numbers >= 0 (budgets ε, thresholds c_r), at least one."""
    try:
        vals = [_finite(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers (2**-7 allowed), got {s!r}") \
            from None
    if not vals:
        raise argparse.ArgumentTypeError(f"expected at least one number, e.g. 0,0.1,0.3; got {s!r}")
    if any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got {s!r}")
    return vals


def finite_number(s: str) -> float:
    """One finite number (2**-7 allowed)."""
    try:
        return _finite(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number such as 0.0078125 or 2**-7, got {s!r}") from None


def int_at_least(minimum: int) -> Any:
    """An argparse type: an integer >= ``minimum``."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {s!r}")
        return v
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def name_list(s: str) -> list[str]:
    """Comma-separated names, blanks dropped."""
    return [v.strip() for v in s.split(",") if v.strip()]
