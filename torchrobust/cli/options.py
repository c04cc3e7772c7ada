"""What every ``torchrobust`` sub-command shares: the parser class with the one error format, the argparse value
types, the options several commands take (declared here once) and the ``--device`` check.

A value type raises :class:`argparse.ArgumentTypeError`, which argparse turns into the CLI's one-line error (exit 2).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, NoReturn

from ..errors import TorchRobustError

__all__ = ["Parser", "parse_number", "float_list", "finite_number", "int_at_least", "positive_int",
           "nonnegative_int", "name_list", "key_value", "check_device", "add_common", "add_data", "add_seed",
           "add_device", "add_out", "add_overwrite", "add_batch_size", "add_precision"]

ERROR_PREFIX = "torchrobust: error: "


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``torchrobust: error: ...``, exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{ERROR_PREFIX}{message} (see `{self.prog} --help`)\n")


# ----------------------------------------------------------------------------------------------- value types
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


def key_value(s: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as JSON when it is JSON (``widths=[256,64]``), else kept as a string."""
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (VALUE in JSON, e.g. widths=[256,64]), got {s!r}")
    k, v = s.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


def check_device(s: str) -> None:
    """``--device`` must name a device that exists on this machine (cpu, cuda, cuda:N, mps)."""
    import torch

    try:
        dev = torch.device(s)
    except (RuntimeError, ValueError):
        raise TorchRobustError(f"unknown --device {s!r}; valid: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise TorchRobustError(f"--device {s}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise TorchRobustError(f"--device {s}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise TorchRobustError(f"--device {s}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise TorchRobustError(f"unsupported --device {s!r}; valid: cpu, cuda, cuda:N, mps")


# ----------------------------------------------------------------------------------------------- shared options
def add_common(sp: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--quiet``: every sub-command takes them."""
    sp.add_argument("--threads", type=positive_int, default=None,
                    help="torch intra-op threads (on small CPUs 1 is often fastest)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars or info logs")


def add_data(sp: argparse.ArgumentParser, *, root: bool = True) -> None:
    """``--data`` (a dataset of :mod:`torchrobust.data`, default mnist) and, with ``root``, ``--data-root``."""
    sp.add_argument("--data", default="mnist", help="dataset name (see `torchrobust info`; default mnist)")
    if root:
        add_data_root(sp)


def add_data_root(sp: argparse.ArgumentParser) -> None:
    """``--data-root``: where the dataset files are (default: the bundled data / torchrobust's cache)."""
    sp.add_argument("--data-root", default=None, help="folder of the dataset files (default: bundled/cache)")


def add_seed(sp: argparse.ArgumentParser) -> None:
    """``--seed`` (default 0): every random choice of the command derives from it."""
    sp.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")


def add_device(sp: argparse.ArgumentParser) -> None:
    """``--device``: checked (:func:`check_device`) before any work."""
    sp.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cpu, or the torchrun rank's)")


def add_out(sp: argparse.ArgumentParser, help: str, *, default: str | None = None, required: bool = False) -> None:
    """``--out``: the output file or folder (its meaning per command in ``help``)."""
    sp.add_argument("--out", default=default, required=required, help=help)


def add_overwrite(sp: argparse.ArgumentParser, help: str = "replace results already in --out") -> None:
    """``--overwrite``: without it, existing results in ``--out`` are refused before any work."""
    sp.add_argument("--overwrite", action="store_true", help=help)


def add_batch_size(sp: argparse.ArgumentParser, default: int | None) -> None:
    """``--batch-size`` (an integer >= 1; ``default=None``: the command's own default applies)."""
    sp.add_argument("--batch-size", type=positive_int, default=default)


def add_ramp_gp(sp: argparse.ArgumentParser) -> None:
    """``--ramp-gp/--no-ramp-gp``: RAMP's gradient projection (Jiang & Singh 2024; :mod:`torchrobust.psat.ramp_gp`)
    on the RAMP baseline; ``--no-ramp-gp`` is the paper's "RAMP w/o GP" ablation."""
    sp.add_argument("--ramp-gp", action=argparse.BooleanOptionalAction, default=True,
                    help="RAMP baseline with its gradient projection (default) or, with --no-ramp-gp, without it "
                         "(the paper's 'RAMP w/o GP')")


def stem_stride_arg(s: str) -> int | None:
    """``--stem-stride``: a positive integer, or ``timm`` (keep timm's own stem stride: ``None``)."""
    if s.strip().lower() == "timm":
        return None
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'timm', got {s!r}")
    return v


def add_lightweight(sp: argparse.ArgumentParser, stem_stride: int | None) -> None:
    """``--stem-stride`` / ``--input-size`` of PSAT Table 5's timm networks (:mod:`torchrobust.models.lightweight`;
    default stem stride ``stem_stride``: :data:`torchrobust.psat.lightweight.TABLE5_STEM_STRIDE`)."""
    sp.add_argument("--stem-stride", type=stem_stride_arg, default=stem_stride,
                    help=f"lightweight: stride of the stem conv (default {stem_stride}; 'timm' keeps timm's)")
    sp.add_argument("--input-size", type=int_at_least(8), default=None,
                    help="lightweight: resize the input to this square size inside the model (default: keep 28)")


def add_precision(sp: argparse.ArgumentParser) -> None:
    """``--precision`` (training autocast: fp32, bf16, fp16 with loss scaling on CUDA) and ``--channels-last``
    (:mod:`torchrobust.train.precision`; evaluation always runs in fp32)."""
    sp.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="training precision: fp32, bf16 autocast (CPU/CUDA) or fp16 autocast with loss scaling "
                         "(CUDA only); evaluation stays fp32")
    sp.add_argument("--channels-last", action="store_true", help="train with channels_last (NHWC) weights")
