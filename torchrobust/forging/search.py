"""The c_r search of the forged-threshold defence (Chen, Chen, Chung & Lee, arXiv 2406.19622, Sec. 4.3 / App. A.1).

:func:`search_c_r` calibrates ``b`` once (it does not depend on ``c_r``, Eq. 13) and then, for the unforged
baseline (``c_r = 0``) and every ``c_r`` of the grid, measures clean and robust accuracy on held-out validation data;
:class:`CrSearchResult` renders the table (Markdown, CSV, JSON, PNG). The ``torchrobust forge CHECKPOINT --search``
workflow is :func:`torchrobust.forging.checkpoint.search_checkpoint`. All names are re-exported by
:mod:`torchrobust.forging`.

Every robust accuracy is one plan of the evaluation engine (:func:`torchrobust.evaluate.engine.run_plan`) per
``c_r``: a job ``"autograd"`` running the attack on the forged model, and (``bpda=True``, ``c_r > 0``) a job
``"bpda"`` running the same attack crafted on :class:`torchrobust.attacks.BPDA` of the forged model (every module
that declares ``bpda_surrogate`` straight-through: the identity backward of Eq. 9 for the thresholds; the forward
is unchanged). The engine owns eval mode, batching, the budget check of every ``x_adv`` and the per-example
booleans:

* ``robust`` / ``robust_bpda``: an example counts when it is classified correctly clean **and** after the attack
  (an example misclassified clean is not attacked and never counts, even if an attack would happen to fix it);
* ``robust_worst``: the per-example worst case over clean and both jobs (Carlini et al. 2019, Sec. 5.1).

The jobs' threat model and ε are the attack's own (``attack.threat``) when it is a torchrobust
:class:`~torchrobust.attacks.Attack`; any other callable is taken to be an ℓ∞ attack of radius ``eps`` and each of
its results must lie in that ball ∩ [0, 1] (a one-line :class:`~torchrobust.errors.TorchRobustError` otherwise).
The default attack is PGD (ℓ∞, ``eps``, ``steps``) seeded with ``seed``, so reruns give the same table.
The paper reports only non-adaptive AutoAttack numbers; the BPDA column is ours.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from torchrobust.errors import TorchRobustError
from torchrobust.forging.calibration import CalibrationData, calibrate, forged_modules, is_forged
from torchrobust.forging.surgery import Where, forge, set_c_r
from torchrobust.nn.forged import check_c_r
from torchrobust.tables import Column, ColumnKind, Table
from torchrobust.validation import check_images, check_labels, eval_mode, model_device

__all__ = ["DEFAULT_GRID", "CRITERIA", "CrSearchResult", "search_c_r"]

log = logging.getLogger(__name__)

#: The c_r grid of :func:`search_c_r`: 2**-10 .. 2**-4 (the paper's candidates are 2**-8, 2**-7, 2**-6).
DEFAULT_GRID: tuple[float, ...] = tuple(2.0**k for k in range(-10, -3))


# ---------------------------------------------------------------------------------------------- helpers
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = model_device(model)
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



# ---------------------------------------------------------------------------------------------- the table
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

    def table(self) -> Table:
        """The rows as a :class:`torchrobust.tables.Table`: accuracies are numbers in % (``FLOAT``, unit ``%``),
        ``zero_fraction`` a fraction (``PERCENT``)."""
        acc = {"clean": "clean %", "robust": "robust %", "robust_bpda": "robust BPDA %",
               "robust_worst": "robust worst %"}
        cols = [Column("c_r", ColumnKind.FLOAT), Column("log2_c_r", ColumnKind.FLOAT),
                *(Column(k, ColumnKind.FLOAT, unit="%", digits=2, label=label) for k, label in acc.items()),
                Column("zero_fraction", ColumnKind.PERCENT, label="zeroed %")]
        return Table(cols, self.rows, title=f"forged threshold c_r search (n={self.n_val})")

    def to_markdown(self) -> str:
        """The table as GitHub Markdown; the chosen c_r is marked with ``*``."""
        t = self.table()
        shown = Table([Column("c_r", ColumnKind.TEXT), *t.columns[2:]], [
            {**r, "c_r": ("0 (unforged)" if r["c_r"] == 0 else f"2^{r['log2_c_r']:g}")
             + (" *" if r["c_r"] == self.chosen else "")} for r in self.rows])
        return shown.markdown_grid() + (f"\nn = {self.n_val} validation examples; attack: {self.attack}; criterion: "
                                        f"{self.criterion}; chosen c_r = {self.chosen:g} (marked *).\n")

    def to_csv(self) -> str:
        """The table as CSV text (columns: c_r, log2_c_r, clean, robust, robust_bpda, robust_worst, zero_fraction;
        a missing value is an empty cell)."""
        return self.table().to_csv()

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable summary (rows with ``null`` for missing values; ``columns``: the table's schema)."""
        t = self.table().to_dict()
        return {
            "criterion": self.criterion, "chosen_c_r": self.chosen, "n_val": self.n_val, "attack": self.attack,
            "seconds": self.seconds, "rows": t["rows"], "columns": t["columns"],
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
        from torchrobust.io import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def write(self, out_dir: str | os.PathLike[str], stem: str = "cr_search") -> dict[str, Path]:
        """Write ``<stem>.md``, ``<stem>.csv``, ``<stem>.json`` and ``<stem>.png`` into ``out_dir``."""
        from torchrobust.io import write_texts

        paths = write_texts(out_dir, stem, {"md": self.to_markdown(), "csv": self.to_csv(),
                                            "json": json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n"})
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

def _attack_threat(attack: Callable[..., torch.Tensor], eps: float) -> tuple[str, float]:
    """The jobs' threat model and ε: the attack's own for a torchrobust Attack, else ℓ∞ with the search's ``eps``."""
    from torchrobust.attacks import Attack

    if isinstance(attack, Attack):
        return attack.threat.name, float(attack.threat.eps)
    return "Linf", float(eps)


def _robust_row(forged: nn.Module, attack: Callable[..., torch.Tensor], threat: str, eps: float, val_x: torch.Tensor,
                val_y: torch.Tensor, batch_size: int, seed: int, with_bpda: bool) -> dict[str, float]:
    """Clean, robust, robust-under-BPDA and worst-case accuracy (%) of ``forged`` at its current ``c_r``: one plan."""
    from torchrobust.attacks import BPDA
    from torchrobust.evaluate.engine import Job, run_plan

    jobs = [Job(attack, threat, eps, name="autograd")]
    sources: dict[str, nn.Module] = {}
    if with_bpda:
        jobs.append(Job(attack, threat, eps, name="bpda", source="bpda"))
        sources["bpda"] = BPDA(forged)
    res = run_plan(forged, val_x, val_y, jobs, sources=sources, batch_size=batch_size, seed=seed)

    def pct(ok: torch.Tensor) -> float:  # exact count / n, not a float32 mean
        return 100 * int(ok.sum()) / len(ok)

    return {"clean": pct(res.clean), "robust": pct(res.clean & res.correct[jobs[0].key]),
            "robust_bpda": pct(res.clean & res.correct[jobs[1].key]) if with_bpda else math.nan,
            "robust_worst": pct(res.worst(threat, eps))}


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
    seed: int = 0,
) -> CrSearchResult:
    """Grid search of ``c_r`` (paper Sec. 4.3 / A.1): clean and robust accuracy of the forged model per ``c_r``.

    Args:
        model: an unforged model (forged on a copy with ``calibration_data``) or an already forged one
            (``calibration_data=None`` keeps its ``b``; otherwise it is recalibrated).
        val_x, val_y: validation images in [0, 1] and labels (keep them disjoint from the test set).
        grid: positive c_r values; the unforged baseline (c_r = 0) is always evaluated as the first row.
        attack: ``attack(model, x, y) -> x_adv``; default ``torchrobust.attacks.PGD(threat="Linf", eps=eps,
            steps=steps, seed=seed)``. A torchrobust Attack brings its own threat model and ε (``eps`` is then
            unused); any other callable must keep its results in the ℓ∞ ball of radius ``eps`` (checked).
        criterion: ``"max_robust_clean_drop"`` (highest worst-case robust accuracy whose clean accuracy is at
            most ``max_clean_drop`` points below the baseline; ties go to the smaller c_r), ``"max_sum"``
            (highest clean + worst-case robust), or a callable ``rows -> c_r``.
        bpda: also attack through BPDA (identity backward of the threshold) and use the per-sample worst case.
        batch_size: examples per calibration batch and per attack call.
        out_dir: if given, the table is written there as Markdown, CSV, JSON and PNG.
        seed: the seed of the default attack's random start (and of the engine's attacks without their own).

    Returns:
        :class:`CrSearchResult`; ``result.model`` is the forged model set to the chosen ``c_r``.
    """
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TorchRobustError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if attack is None:
        from torchrobust import attacks as _attacks

        attack = _attacks.PGD(threat="Linf", eps=eps, steps=steps, seed=seed)
    elif not callable(attack):
        raise TorchRobustError(f"attack must be callable as attack(model, x, y) -> x_adv, got {type(attack).__name__}")
    threat, attack_eps = _attack_threat(attack, eps)
    if is_forged(model):
        forged = model
        if calibration_data is not None:
            calibrate(forged, calibration_data, max_batches=max_batches, batch_size=batch_size, progress=progress)
    else:
        if calibration_data is None:
            raise TorchRobustError("an unforged model needs calibration_data to compute the thresholds")
        forged = forge(model, calibration_data, c_r=grid[0], where=where, max_batches=max_batches,
                       batch_size=batch_size, progress=progress)
    attack_name = getattr(attack, "__name__", None) or repr(attack)
    rows: list[dict[str, float]] = []
    n = val_x.shape[0]
    with eval_mode(forged):  # every submodule's flag restored afterwards
        for c in tqdm([0.0, *grid], desc="c_r search", disable=not progress):
            set_c_r(forged, c)
            row = {"c_r": c, "log2_c_r": math.log2(c) if c > 0 else -math.inf,
                   **_robust_row(forged, attack, threat, attack_eps, val_x, val_y, batch_size, seed,
                                 with_bpda=bpda and c > 0),
                   "zero_fraction": _zero_fraction(forged, val_x, batch_size) if c > 0 else 0.0}
            if bpda and c == 0:
                row["robust_bpda"] = row["robust"]  # c_r = 0: the forged function is the identity
            rows.append(row)
            log.info("c_r=%g clean=%.2f robust=%.2f bpda=%.2f", c, row["clean"], row["robust"],
                     row["robust_bpda"])
        chosen = _choose(rows, criterion, max_clean_drop)
        set_c_r(forged, chosen)
    result = CrSearchResult(rows=rows, chosen=chosen, criterion=criterion if isinstance(criterion, str) else
                            getattr(criterion, "__name__", "callable"), n_val=n, attack=attack_name,
                            model=forged, seconds=time.perf_counter() - start)
    if out_dir is not None:
        result.write(out_dir)
    return result
