"""Model surgery for the data-driven Lipschitz defence: insert, calibrate, tune and remove forged thresholds.

Chen, Chen, Chung & Lee, arXiv 2406.19622, Sec. 3.3. The forged function :class:`~torchrobust.nn.forged.Forged`
(Eq. 9) is inserted *before* selected linear maps (``nn.Linear`` / ``nn.Conv2d``); its per-layer threshold is
``c_th = c_r * b`` with ``b`` the largest activation seen on a calibration set (Eq. 13), obtained with one
no-gradient pass in Algorithm 1's tracking mode.

Insertion points (``where``)
    ``None``: ``model.forge_insertion_points()`` when the model defines it (zoo models: the convs inside
    residual blocks, Mixer MLP linears, hidden layers of MLP / LeNet; see ``docs/architecture.md``), otherwise
    every ``nn.Linear`` / ``nn.Conv2d`` except the first one in ``named_modules()`` order (it sees the raw
    input). A list of qualified module names selects exactly those; a string is a glob (``fnmatch``) over the
    qualified names of the model's Linear/Conv2d layers; a callable ``(name, module) -> bool`` filters them.

State-dict keys
    Each target layer ``name`` is replaced by a :class:`~torchrobust.nn.forged.PreForged` wrapper that keeps
    the original layer object: ``name.weight`` becomes ``name.layer.weight`` and the new buffers are
    ``name.forged.b``, ``name.forged.c_r`` and ``name.forged.n_tracked``. :func:`unforge` restores the original
    keys and objects. A model built by :func:`torchrobust.models.create` records the transform in
    ``model.torchrobust_spec["transforms"]`` so :func:`torchrobust.checkpoint.load` can rebuild it
    (``forge(model, None, **kwargs)`` followed by loading ``b`` from the state dict).

Calibration
    One pass over the calibration data with the model in eval mode (BatchNorm on running statistics), all forged
    modules tracking and returning their input unchanged, so every ``b`` is measured on the *unmodified*
    network (Algorithm 1: "feeding all images in the set S once in track mode"). ``b`` is reset first, which
    makes calibration idempotent. The paper uses the full training set without augmentation for CIFAR and
    ~5,000 random training images for ImageNet (``max_batches`` / a subset). A NaN/inf input value (one would make
    every ``b``, hence every threshold, NaN) or a non-finite resulting ``b`` (overflowing activations) is refused
    with a :class:`~torchrobust.errors.TorchRobustError`, and a failed calibration leaves the previous ``b``.

c_r search (:func:`search_c_r`)
    ``b`` does not depend on ``c_r``, so the model is calibrated once and only ``c_r`` changes along the grid.
    Robust accuracy is measured with the attack as given and, with ``bpda=True`` (default), also with the
    attack run through :func:`~torchrobust.nn.forged.bpda_mode` (identity backward of Eq. 9); the choice uses the
    per-sample worst case of the two. The paper reports only non-adaptive AutoAttack numbers.
"""

from __future__ import annotations

import copy
import csv
import fnmatch
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from torchrobust.errors import TorchRobustError
from torchrobust.nn.forged import Forged, PreForged, bpda_mode, check_c_r
from torchrobust.validation import check_images, check_labels, check_output_file

__all__ = [
    "forge",
    "unforge",
    "calibrate",
    "set_c_r",
    "forged_modules",
    "is_forged",
    "insertion_points",
    "DEFAULT_GRID",
    "CrSearchResult",
    "search_c_r",
    "forge_checkpoint",
    "search_checkpoint",
]

log = logging.getLogger(__name__)

#: The c_r grid of :func:`search_c_r`: 2**-10 .. 2**-4 (the paper's candidates are 2**-8, 2**-7, 2**-6).
DEFAULT_GRID: tuple[float, ...] = tuple(2.0**k for k in range(-10, -3))

Where = None | str | Sequence[str] | Callable[[str, nn.Module], bool]
CalibrationData = torch.Tensor | Dataset | DataLoader | Iterable[Any] | tuple[torch.Tensor, ...]

_LINEAR_TYPES = (nn.Linear, nn.Conv2d)


# ---------------------------------------------------------------------------------------------- helpers
def _linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _LINEAR_TYPES) and n]


def forged_modules(model: nn.Module) -> list[tuple[str, Forged]]:
    """All :class:`Forged` modules of ``model`` as ``(qualified name, module)``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Forged)]


def is_forged(model: nn.Module) -> bool:
    """Whether ``model`` contains at least one :class:`Forged` module."""
    return any(isinstance(m, Forged) for m in model.modules())


def insertion_points(model: nn.Module, where: Where = None) -> list[str]:
    """Resolve ``where`` (see the module docstring) into qualified names of Linear/Conv2d layers of ``model``."""
    layers = dict(_linear_layers(model))
    if where is None:
        hook = getattr(model, "forge_insertion_points", None)
        names = list(hook()) if callable(hook) else list(layers)[1:]
    elif isinstance(where, str):
        names = [n for n in layers if fnmatch.fnmatchcase(n, where)]
        if not names:
            raise TorchRobustError(
                f"where={where!r} matches none of the model's Linear/Conv2d layers; valid names include "
                f"{', '.join(list(layers)[:6]) or '(none)'}"
            )
    elif callable(where):
        names = [n for n, m in layers.items() if where(n, m)]
    else:
        names = list(where)
        unknown = [n for n in names if n not in layers]
        if unknown:
            raise TorchRobustError(
                f"unknown insertion point {unknown[0]!r}: not a Linear/Conv2d layer of the model; valid names "
                f"include {', '.join(list(layers)[:6]) or '(none)'}"
            )
    bad = [n for n in names if n not in layers]
    if bad:
        raise TorchRobustError(
            f"insertion point {bad[0]!r} is not a Linear/Conv2d layer of the model; fix forge_insertion_points() "
            "or pass where=[...]"
        )
    if not names:
        raise TorchRobustError(
            "the model has no insertion point for the forged function (it needs a Linear/Conv2d layer that does "
            "not see the raw input); pass where=[...] with layer names"
        )
    return list(dict.fromkeys(names))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _make_forged(layer: nn.Module, c_r: float, per_channel: bool, signed_max: bool) -> Forged:
    if isinstance(layer, nn.Conv2d):
        return Forged(c_r, per_channel=per_channel, num_channels=layer.in_channels, channel_dim=1,
                      signed_max=signed_max)
    return Forged(c_r, per_channel=per_channel, num_channels=layer.in_features, channel_dim=-1,
                  signed_max=signed_max)


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _batches(data: CalibrationData, batch_size: int, max_batches: int | None) -> tuple[Iterator[Any], int | None]:
    """Yield input tensors (labels dropped) from a tensor, ``(x, y)`` tuple, Dataset or DataLoader."""
    if batch_size < 1:
        raise TorchRobustError(f"batch_size must be >= 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise TorchRobustError(f"max_batches must be >= 1 or None, got {max_batches}")
    if isinstance(data, TensorDataset):
        data = data.tensors[0]
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor):
        data = data[0]
    if isinstance(data, torch.Tensor):
        tensor = data
        total = math.ceil(tensor.shape[0] / batch_size) if tensor.dim() > 0 else 1
        if max_batches is not None:
            total = min(total, max_batches)

        def gen_tensor() -> Iterator[torch.Tensor]:
            for i in range(total):
                yield tensor[i * batch_size:(i + 1) * batch_size]

        return gen_tensor(), total
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, Iterable):
        raise TorchRobustError(
            f"calibration data of type {type(data).__name__} is not supported; pass a tensor, (x, y), a Dataset "
            "or a DataLoader"
        )
    try:
        total: int | None = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)

    def gen() -> Iterator[Any]:
        for i, item in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            yield item[0] if isinstance(item, (tuple, list)) else item

    return gen(), total


def _expected_input(model: nn.Module) -> str:
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return f"(N, {', '.join(str(s) for s in shape)})"
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return f"(N, {m.in_channels}, H, W)"
        if isinstance(m, nn.Linear):
            return f"inputs that flatten to {m.in_features} features per example"
    return "the model's input shape"


def _check_batch(model: nn.Module, x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TorchRobustError(
            f"calibration batches must be tensors, got {type(x).__name__}; pass a tensor, (x, y), a Dataset or "
            "a DataLoader of (x, y)"
        )
    if not x.is_floating_point() or x.dim() < 2:
        raise TorchRobustError(
            f"calibration data must be float batches of shape {_expected_input(model)}, got dtype {x.dtype} and "
            f"shape {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):  # NaN fails every min/max comparison: test finiteness first
        raise TorchRobustError(
            f"calibration data contains {int((~torch.isfinite(x)).sum())} NaN/inf value(s); a single one makes "
            "every threshold NaN: clean or drop those examples"
        )
    if x.dim() == 4 and x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise TorchRobustError(
            f"calibration images must lie in [0, 1] (got min {float(x.min()):.3g}, max {float(x.max()):.3g}); "
            "pass unnormalised images, torchrobust models normalise inside"
        )
    return x


def _record(model: nn.Module, kwargs: dict[str, Any] | None) -> None:
    spec = getattr(model, "torchrobust_spec", None)
    if not isinstance(spec, dict):
        return
    transforms = [t for t in spec.get("transforms", []) if t.get("name") != "forge"]
    if kwargs is not None:
        transforms.append({"name": "forge", "kwargs": json.loads(json.dumps(kwargs))})
    spec["transforms"] = transforms


# ---------------------------------------------------------------------------------------------- public API
def forge(
    model: nn.Module,
    calibration_data: CalibrationData | None,
    c_r: float = 2**-7,
    where: Where = None,
    inplace: bool = False,
    per_channel: bool = False,
    max_batches: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
    signed_max: bool = False,
) -> nn.Module:
    """Insert forged thresholds (Eq. 9) before the insertion points and calibrate them (Eq. 13, Algorithm 1).

    Args:
        model: a classifier taking [0, 1] inputs. It is deep-copied unless ``inplace``.
        calibration_data: tensor, ``(x, y)``, Dataset or DataLoader of clean (unaugmented) training inputs;
            ``None`` inserts the modules uncalibrated (``b = 0``), e.g. before loading ``b`` from a state dict.
        c_r: the shared ratio of Eq. 13 (``>= 0``; 2**-7 is the paper's default for WRN-34-10 models).
        where: insertion points (see the module docstring); ``None`` uses the model's own hook.
        inplace: modify ``model`` itself instead of a copy.
        per_channel: one running maximum per channel (ablation; the paper uses one scalar per layer).
        max_batches: calibrate on the first ``max_batches`` batches only (the paper's ImageNet subset).
        batch_size: batch size when ``calibration_data`` is a tensor or a Dataset.
        progress: show a tqdm bar during calibration.
        signed_max: track the signed maximum of Algorithm 1 instead of ``max |x|``.

    Returns:
        The forged model (in the train/eval mode it had on entry), with the Forged modules in inference mode.
    """
    c_r = check_c_r(c_r)
    if is_forged(model):
        raise TorchRobustError("the model is already forged; use set_c_r(model, c_r) / calibrate(model, data), "
                               "or unforge(model) first")
    names = insertion_points(model, where)
    if not inplace:
        model = copy.deepcopy(model)
    for name in names:
        layer = model.get_submodule(name)
        _replace(model, name, PreForged(_make_forged(layer, c_r, per_channel, signed_max), layer))
    _record(model, {"c_r": c_r, "where": names, "per_channel": per_channel, "signed_max": signed_max})
    if calibration_data is not None:
        try:
            calibrate(model, calibration_data, max_batches=max_batches, batch_size=batch_size, progress=progress)
        except BaseException:
            if inplace:
                unforge(model, inplace=True)
            raise
    log.info("forged %d insertion points (c_r=%g)", len(names), c_r)
    return model


@torch.no_grad()
def calibrate(
    model: nn.Module,
    calibration_data: CalibrationData,
    max_batches: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
    reset: bool = True,
) -> nn.Module:
    """Measure ``b`` of every Forged module with one no-grad pass in eval mode (Algorithm 1 tracking mode).

    ``reset=True`` (default) forgets previous maxima first, so calibrating twice on the same data gives the
    same ``b``; ``reset=False`` accumulates (e.g. calibration in several chunks). Returns ``model``.
    """
    modules = [m for _, m in forged_modules(model)]
    if not modules:
        raise TorchRobustError("the model has no Forged modules; call forge(model, data) first")
    modes = [(m, m.training) for m in model.modules()]
    device = _device_of(model)
    batches, total = _batches(calibration_data, batch_size, max_batches)
    saved = [(m.b.clone(), m.n_tracked.clone(), m._has_tracked, m._warned_uncalibrated) for m in modules]
    if reset:
        for m in modules:
            m.reset()
    n_seen = 0
    model.eval()
    for m in modules:
        m.track()
    ok = False
    try:
        for x in tqdm(batches, total=total, desc="calibrating forged thresholds", disable=not progress):
            x = _check_batch(model, x).to(device)
            try:
                model(x)
            except RuntimeError as exc:
                if n_seen:
                    raise
                first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                raise TorchRobustError(
                    f"calibration data of shape {tuple(x.shape)} does not fit the model ({first}); the model "
                    f"expects {_expected_input(model)}"
                ) from None
            n_seen += x.shape[0]
        if n_seen == 0:
            raise TorchRobustError("calibration data is empty; pass at least one batch of training images")
        bad = [name for name, m in forged_modules(model) if not bool(torch.isfinite(m.b).all())]
        if bad:
            raise TorchRobustError(
                f"calibration gave a non-finite threshold at {bad[0]!r} ({len(bad)} of {len(modules)} layers): the "
                "model's activations overflow or are NaN on this data; check the model's weights and the inputs"
            )
        ok = True
    finally:
        for m in modules:
            m.freeze()
        for m, mode in modes:
            m.training = mode
        if not ok:  # never leave half-measured or non-finite thresholds behind
            for m, (b, n, has, warned) in zip(modules, saved, strict=True):
                m.b.copy_(b)
                m.n_tracked.copy_(n)
                m._has_tracked, m._warned_uncalibrated = has, warned
    log.info("calibrated %d forged modules on %d examples", len(modules), n_seen)
    return model


def unforge(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Remove every forged threshold: each wrapper is replaced by the original layer object it holds.

    On a model forged with ``forge(m, ..., inplace=True)`` this gives back exactly ``m`` (same layer objects,
    same parameters, same state-dict keys). The ``forge`` entry of ``torchrobust_spec["transforms"]`` is removed.
    """
    if not inplace:
        model = copy.deepcopy(model)
    wrappers = [n for n, m in model.named_modules() if isinstance(m, PreForged)]
    if not wrappers and not is_forged(model):
        raise TorchRobustError("the model is not forged; nothing to unforge")
    for name in sorted(wrappers, key=lambda n: -n.count(".")):
        wrapper = model.get_submodule(name)
        assert isinstance(wrapper, PreForged)
        _replace(model, name, wrapper.layer)
    _record(model, None)
    return model


def set_c_r(model: nn.Module, c_r: float) -> nn.Module:
    """Set ``c_r`` of every Forged module of ``model`` (no recalibration: ``b`` is kept); returns ``model``."""
    value = check_c_r(c_r)
    modules = forged_modules(model)
    if not modules:
        raise TorchRobustError("the model has no Forged modules; call forge(model, data) first")
    for _, m in modules:
        m.set_c_r(value)
    spec = getattr(model, "torchrobust_spec", None)
    if isinstance(spec, dict):
        for t in spec.get("transforms", []):
            if t.get("name") == "forge":
                t.setdefault("kwargs", {})["c_r"] = value
    return model


# ---------------------------------------------------------------------------------------------- c_r search
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = _device_of(model)
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            out.append(model(x[i:i + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _zero_fraction(model: nn.Module, x: torch.Tensor, batch_size: int) -> float:
    """Fraction of forged-module inputs set to zero by the threshold (excluding exact zeros), over ``x``."""
    counts = [0, 0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        inp = inputs[0]
        counts[0] += int(((output == 0) & (inp != 0)).sum())
        counts[1] += inp.numel()

    handles = [m.register_forward_hook(hook) for _, m in forged_modules(model)]
    try:
        _predict(model, x, batch_size)
    finally:
        for h in handles:
            h.remove()
    return counts[0] / max(counts[1], 1)


def _attack_correct(
    model: nn.Module, attack: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch_size: int,
    adaptive: bool,
) -> torch.Tensor:
    device = _device_of(model)
    correct = []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        with bpda_mode(model, enabled=adaptive):
            x_adv = attack(model, xb, yb)
        with torch.no_grad():
            correct.append((model(x_adv.detach()).argmax(1) == yb).cpu())
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)


@dataclass
class CrSearchResult:
    """Table of the c_r search (:func:`search_c_r`): one row per c_r, the first row is the unforged baseline.

    Row fields: ``c_r``, ``log2_c_r`` (``-inf`` for the baseline), ``clean``, ``robust`` (attack with autograd
    gradients), ``robust_bpda`` (attack through BPDA; ``nan`` if not run), ``robust_worst`` (per-sample minimum
    of the two), ``zero_fraction`` (fraction of forged inputs zeroed on the clean validation set). Accuracies
    are percentages.
    """

    rows: list[dict[str, float]]
    chosen: float
    criterion: str
    n_val: int
    attack: str
    model: nn.Module | None = field(default=None, repr=False)
    seconds: float = 0.0

    _COLUMNS = ("c_r", "log2_c_r", "clean", "robust", "robust_bpda", "robust_worst", "zero_fraction")

    def to_markdown(self) -> str:
        """The table as GitHub Markdown; the chosen c_r is marked with ``*``."""
        head = "| c_r | clean % | robust % | robust BPDA % | robust worst % | zeroed % |"
        lines = [head, "|---|---|---|---|---|---|"]
        for r in self.rows:
            name = "0 (unforged)" if r["c_r"] == 0 else f"2^{r['log2_c_r']:g}"
            mark = " *" if r["c_r"] == self.chosen else ""

            def f(v: float) -> str:
                return "n/a" if math.isnan(v) else f"{v:.2f}"

            lines.append(
                f"| {name}{mark} | {f(r['clean'])} | {f(r['robust'])} | {f(r['robust_bpda'])} | "
                f"{f(r['robust_worst'])} | {100 * r['zero_fraction']:.1f} |"
            )
        lines.append("")
        lines.append(f"n = {self.n_val} validation examples; attack: {self.attack}; criterion: {self.criterion}; "
                     f"chosen c_r = {self.chosen:g} (marked *).")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """The table as CSV text (columns: c_r, log2_c_r, clean, robust, robust_bpda, robust_worst, zero_fraction)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self._COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: r[k] for k in self._COLUMNS})
        return buf.getvalue()

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable summary (rows with ``null`` for missing values)."""

        def clean(v: float) -> float | None:
            return None if (isinstance(v, float) and not math.isfinite(v)) else v

        return {
            "criterion": self.criterion, "chosen_c_r": self.chosen, "n_val": self.n_val, "attack": self.attack,
            "seconds": self.seconds, "rows": [{k: clean(r[k]) for k in self._COLUMNS} for r in self.rows],
        }

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Save a PNG of clean / robust / BPDA accuracy against log2(c_r), baselines dashed."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        base, rest = self.rows[0], [r for r in self.rows if r["c_r"] > 0]
        xs = [r["log2_c_r"] for r in rest]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label, color in (("clean", "clean", "C0"), ("robust", "robust (autograd)", "C1"),
                                  ("robust_bpda", "robust (BPDA)", "C3")):
            ys = [r[key] for r in rest]
            if all(math.isnan(v) for v in ys):
                continue
            ax.plot(xs, ys, "o-", color=color, label=label)
            if not math.isnan(base[key]):
                ax.axhline(base[key], color=color, ls="--", lw=1)
        ax.axvline(math.log2(self.chosen) if self.chosen > 0 else min(xs), color="grey", ls=":", lw=1)
        ax.set_xlabel("log2 c_r  (dashed: unforged model)")
        ax.set_ylabel("accuracy %")
        ax.set_title(f"forged threshold c_r search (n={self.n_val})")
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        from torchrobust.checkpoint import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def write(self, out_dir: str | os.PathLike[str], stem: str = "cr_search") -> dict[str, Path]:
        """Write ``<stem>.md``, ``<stem>.csv``, ``<stem>.json`` and ``<stem>.png`` into ``out_dir``."""
        from torchrobust.checkpoint import write_texts

        paths = write_texts(out_dir, stem, {"md": self.to_markdown(), "csv": self.to_csv(),
                                            "json": json.dumps(self.to_json(), indent=2) + "\n"})
        paths["png"] = self.plot(Path(out_dir) / f"{stem}.png")
        return paths


CRITERIA = ("max_robust_clean_drop", "max_sum")


def _choose(rows: list[dict[str, float]], criterion: str | Callable[[list[dict[str, float]]], float],
            max_clean_drop: float) -> float:
    if callable(criterion):
        return float(criterion(rows))
    base = rows[0]
    candidates = rows
    if criterion == "max_robust_clean_drop":
        candidates = [r for r in rows if r["clean"] >= base["clean"] - max_clean_drop]
        best = max(candidates, key=lambda r: (r["robust_worst"], -r["c_r"]))
    elif criterion == "max_sum":
        best = max(candidates, key=lambda r: (r["clean"] + r["robust_worst"], -r["c_r"]))
    else:
        raise TorchRobustError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)} or a callable")
    return best["c_r"]


def search_c_r(
    model: nn.Module,
    calibration_data: CalibrationData | None,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    grid: Sequence[float] = DEFAULT_GRID,
    attack: Callable[..., torch.Tensor] | None = None,
    criterion: str | Callable[[list[dict[str, float]]], float] = "max_robust_clean_drop",
    max_clean_drop: float = 1.0,
    bpda: bool = True,
    eps: float = 8 / 255,
    steps: int = 10,
    where: Where = None,
    max_batches: int | None = None,
    batch_size: int = 256,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> CrSearchResult:
    """Grid search of ``c_r`` (paper Sec. 4.3 / A.1): clean and robust accuracy of the forged model per ``c_r``.

    Args:
        model: an unforged model (forged on a copy with ``calibration_data``) or an already forged one
            (``calibration_data=None`` keeps its ``b``; otherwise it is recalibrated).
        val_x, val_y: validation images in [0, 1] and labels (keep them disjoint from the test set).
        grid: positive c_r values; the unforged baseline (c_r = 0) is always evaluated as the first row.
        attack: ``attack(model, x, y) -> x_adv``; default ``torchrobust.attacks.PGD(threat="Linf", eps=eps,
            steps=steps)``.
        criterion: ``"max_robust_clean_drop"`` (highest worst-case robust accuracy whose clean accuracy is at
            most ``max_clean_drop`` points below the baseline; ties go to the smaller c_r), ``"max_sum"``
            (highest clean + worst-case robust), or a callable ``rows -> c_r``.
        bpda: also attack through BPDA (identity backward of the threshold) and use the per-sample worst case.
        out_dir: if given, the table is written there as Markdown, CSV, JSON and PNG.

    Returns:
        :class:`CrSearchResult`; ``result.model`` is the forged model set to the chosen ``c_r``.
    """
    import time

    start = time.perf_counter()
    grid = [check_c_r(c) for c in grid]
    if not grid or any(c == 0 for c in grid):
        raise TorchRobustError("grid must be a non-empty list of c_r > 0 (the c_r = 0 baseline is always added)")
    if not isinstance(val_x, torch.Tensor) or not isinstance(val_y, torch.Tensor) or val_x.shape[0] != val_y.shape[0]:
        raise TorchRobustError("val_x and val_y must be tensors with the same number of examples")
    if val_x.shape[0] == 0:
        raise TorchRobustError("the validation set is empty; pass at least one example")
    check_images(val_x, "val_x")
    check_labels(val_y, val_x.shape[0], name="val_y")
    if not callable(criterion) and criterion not in CRITERIA:
        raise TorchRobustError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)} or a callable")
    if is_forged(model):
        forged = model
        if calibration_data is not None:
            calibrate(forged, calibration_data, max_batches=max_batches, batch_size=batch_size, progress=progress)
    else:
        if calibration_data is None:
            raise TorchRobustError("an unforged model needs calibration_data to compute the thresholds")
        forged = forge(model, calibration_data, c_r=grid[0], where=where, max_batches=max_batches,
                       batch_size=batch_size, progress=progress)
    if attack is None:
        from torchrobust import attacks as _attacks

        attack = _attacks.PGD(threat="Linf", eps=eps, steps=steps)
    attack_name = getattr(attack, "__name__", None) or repr(attack)
    modes = [(m, m.training) for m in forged.modules()]  # restored per submodule afterwards
    forged.eval()
    rows: list[dict[str, float]] = []
    n = val_x.shape[0]
    try:
        for c in tqdm([0.0, *grid], desc="c_r search", disable=not progress):
            set_c_r(forged, c)
            clean = (_predict(forged, val_x, batch_size) == val_y.cpu()).float().mean().item() * 100
            ok = _attack_correct(forged, attack, val_x, val_y, batch_size, adaptive=False)
            row = {"c_r": c, "log2_c_r": math.log2(c) if c > 0 else -math.inf, "clean": clean,
                   "robust": ok.float().mean().item() * 100, "robust_bpda": math.nan,
                   "robust_worst": ok.float().mean().item() * 100,
                   "zero_fraction": _zero_fraction(forged, val_x, batch_size) if c > 0 else 0.0}
            if bpda and c > 0:
                ok_b = _attack_correct(forged, attack, val_x, val_y, batch_size, adaptive=True)
                row["robust_bpda"] = ok_b.float().mean().item() * 100
                row["robust_worst"] = (ok & ok_b).float().mean().item() * 100
            elif bpda:
                row["robust_bpda"] = row["robust"]  # c_r = 0: the forged function is the identity
            rows.append(row)
            log.info("c_r=%g clean=%.2f robust=%.2f bpda=%.2f", c, row["clean"], row["robust"],
                     row["robust_bpda"])
        chosen = _choose(rows, criterion, max_clean_drop)
        set_c_r(forged, chosen)
    finally:
        for m, mode in modes:
            m.training = mode
    result = CrSearchResult(rows=rows, chosen=chosen, criterion=criterion if isinstance(criterion, str) else
                            getattr(criterion, "__name__", "callable"), n_val=n, attack=attack_name,
                            model=forged, seconds=time.perf_counter() - start)
    if out_dir is not None:
        result.write(out_dir)
    return result


# ---------------------------------------------------------------------------------------------- CLI helpers
def _subset(dataset: Dataset, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[0], dataset.tensors[1]
    else:
        xs, ys = zip(*[dataset[i] for i in range(len(dataset))], strict=True)  # type: ignore[arg-type]
        x, y = torch.stack(list(xs)), torch.as_tensor(ys)
    if n is not None and n < x.shape[0]:
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[idx], y[idx]
    return x, y


def forge_checkpoint(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    data: str = "mnist",
    c_r: float = 2**-7,
    n_calib: int | None = None,
    where: Where = None,
    per_channel: bool = False,
    batch_size: int = 256,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Path:
    """``torchrobust forge CHECKPOINT``: load a torchrobust checkpoint, forge it, save the result.

    Calibrates on ``n_calib`` random (seeded) examples of the *training* split of ``data`` (all of it when
    ``None``), unaugmented, and saves with :func:`torchrobust.checkpoint.save`; the metadata records the
    calibration set. Returns the written path.
    """
    from torchrobust import checkpoint
    from torchrobust import data as trdata

    c_r = check_c_r(c_r)
    check_output_file(out_path, overwrite=True, flag="output")
    model = checkpoint.load(in_path, map_location=device)
    x, _ = _subset(trdata.load(data, "train", root=root), n_calib, seed)
    forged = forge(model, x, c_r=c_r, where=where, inplace=True, per_channel=per_channel, batch_size=batch_size,
                   progress=progress)
    return checkpoint.save(forged, out_path, forged_from=str(in_path), calibration={
        "dataset": data, "split": "train", "n": int(x.shape[0]), "seed": seed})


def search_checkpoint(
    in_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    data: str = "mnist",
    grid: Sequence[float] = DEFAULT_GRID,
    n_calib: int | None = 10000,
    n_val: int = 1000,
    eps: float = 0.3,
    steps: int = 20,
    criterion: str = "max_robust_clean_drop",
    max_clean_drop: float = 1.0,
    bpda: bool = True,
    batch_size: int = 256,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    save_forged: bool = True,
    progress: bool = False,
) -> CrSearchResult:
    """``torchrobust forge CHECKPOINT --search``: c_r search on a checkpoint, tables + plot into ``out_dir``.

    Calibration uses ``n_calib`` training examples; the validation set is ``n_val`` further training examples
    (disjoint from the calibration ones, never the test set). The default attack is L-inf PGD with ``eps`` and
    ``steps``. With ``save_forged`` the forged model at the chosen c_r is saved as ``out_dir/forged.safetensors``.
    """
    from torchrobust import checkpoint
    from torchrobust import data as trdata

    grid = [check_c_r(c) for c in grid]
    model = checkpoint.load(in_path, map_location=device)
    x, y = _subset(trdata.load(data, "train", root=root), None, seed)
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_cal = x.shape[0] - n_val if n_calib is None else n_calib
    if n_cal + n_val > x.shape[0]:
        raise TorchRobustError(f"n_calib + n_val = {n_cal + n_val} exceeds the {x.shape[0]} training examples; "
                               "lower them")
    cal, val = idx[:n_cal], idx[n_cal:n_cal + n_val]
    result = search_c_r(model, x[cal], x[val], y[val], grid=grid, criterion=criterion,
                        max_clean_drop=max_clean_drop, bpda=bpda, eps=eps, steps=steps, batch_size=batch_size,
                        out_dir=out_dir, progress=progress)
    if save_forged and result.model is not None:
        checkpoint.save(result.model, Path(out_dir) / "forged.safetensors", forged_from=str(in_path),
                        calibration={"dataset": data, "split": "train", "n": int(n_cal), "seed": seed},
                        c_r_search=result.to_json())
    return result
