"""The data-driven Lipschitz paper's ε sweeps (Tables 8/9) and C&W-ℓ∞ table (Table 6), forged vs plain, on MNIST.

Chen, Chen, Chung & Lee, *Data-Driven Lipschitz Continuity: A Cost-Effective Approach to Improve Adversarial
Robustness* (arXiv 2406.19622), Appendix B: Tables 8/9 report FGSM and PGD accuracy of forged RobustBench models at
ε ∈ {1, 2, 4, 8, 16, 32, 64}/255; Table 6 reports C&W-ℓ∞ accuracy, forged vs the original. Both were measured
through the threshold's own (zero) gradient only. Here, on a PGD-AT LeNet (docs/forge.md's model A recipe), every
ε of that grid gets

* the library's default strong evaluation (:data:`torchrobust.evaluate.sweeps.DEFAULT_ATTACKS`: FGSM, APGD-CE and
  APGD-T on the survivors) plus C&W-ℓ∞ (:class:`torchrobust.attacks.CWLinf`), on the plain model and on the forged
  one through autograd (the paper's protocol);
* the same attacks crafted through :class:`torchrobust.attacks.BPDA` of the forged model (identity backward of the
  threshold; the forward is unchanged), since Eq. 9 is non-differentiable at its kinks.

Each of the three is one :func:`torchrobust.evaluate.sweeps.sweep` (one plan of the evaluation engine, resumable
under ``out``); training is :func:`torchrobust.train.fit`, forging :func:`torchrobust.forging.forge`. Writes
``table8_9_eps_sweep`` and ``table6_cw_linf`` (:class:`torchrobust.tables.Table`, md/csv/json) and ``results.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TorchRobustError
from ..io import atomic_write_bytes
from ..tables import Column, ColumnKind, Table
from ..validation import check_eps, check_positive_int

__all__ = ["PAPER_EPS", "ATTACKS", "ForgeTablesConfig", "load_mnist", "run_forge_tables"]

log = logging.getLogger(__name__)

#: the paper's ε grid of Tables 8/9 (k/255)
PAPER_EPS: tuple[float, ...] = tuple(k / 255 for k in (1, 2, 4, 8, 16, 32, 64))
#: the default attack set (FGSM, APGD-CE, APGD-T on survivors) and C&W-ℓ∞ (PGD on the C&W margin, 100 steps)
ATTACKS: tuple[str, ...] = ("fgsm", "apgd-ce", "apgd-t", "cw_linf")
MODEL_FILE = "model.safetensors"
TABLE_SWEEP = "table8_9_eps_sweep"
TABLE_CW = "table6_cw_linf"
TABLE_CERTIFY = "fig3_certified_accuracy"
#: ℓ2 radii of the Fig. 3 analogue's columns
RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class ForgeTablesConfig:
    """The experiment's settings; defaults: docs/forge.md's model A (1 standard warm-up epoch, then 3 PGD-AT
    epochs at ε = 0.3, 5 steps, Adam 1e-3, batch 128), calibration on training images 0–58,999, c_r = 2^-7 (the
    paper's and :func:`~torchrobust.forging.forge`'s default), the first 1,000 test images, the paper's ε grid."""

    epochs: int = 3
    warmup_epochs: int = 1
    max_batches: int | None = None
    n_test: int = 1000
    n_calib: int = 59000
    c_r: float = 2.0**-7
    eps: tuple[float, ...] = field(default=PAPER_EPS)
    seed: int = 0
    batch_size: int = 500
    certify: bool = False
    sigma: float = 0.25
    n_smooth: int = 10_000

    def validate(self) -> ForgeTablesConfig:
        """Check every field before any work; one-line :class:`TorchRobustError` naming the fix."""
        for name in ("epochs", "n_test", "n_calib", "batch_size", "n_smooth"):
            check_positive_int(getattr(self, name), name)
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise TorchRobustError(f"warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}")
        if self.max_batches is not None:
            check_positive_int(self.max_batches, "max_batches")
        if not isinstance(self.c_r, (int, float)) or isinstance(self.c_r, bool) or not math.isfinite(self.c_r) \
                or not 0 < self.c_r <= 1:
            raise TorchRobustError(f"c_r must be a finite number in (0, 1], e.g. 2**-7; got {self.c_r!r}")
        if not isinstance(self.sigma, (int, float)) or isinstance(self.sigma, bool) or not math.isfinite(self.sigma) \
                or self.sigma <= 0:
            raise TorchRobustError(f"sigma must be a finite number > 0, e.g. 0.25; got {self.sigma!r}")
        self.eps = tuple(float(e) for e in self.eps)
        if not self.eps:
            raise TorchRobustError("no eps given; pass at least one budget, e.g. 8/255")
        for e in self.eps:
            check_eps(e)
            if not 0 < e <= 1:
                raise TorchRobustError(f"every eps must be in (0, 1] for [0, 1] images (the clean column is always "
                                       f"there), got {e!r}; e.g. 8/255 = 0.0314")
        if len(set(self.eps)) != len(self.eps):
            raise TorchRobustError(f"eps values repeat: {list(self.eps)}; give each budget once")
        return self


def load_mnist(root: str | os.PathLike[str] | None = None) -> tuple[torch.Tensor, ...]:
    """MNIST ``(x_train, y_train, x_test, y_test)`` in [0, 1] (tests replace this with synthetic data)."""
    from .. import data as trdata

    xtr, ytr = trdata.load("mnist", "train", root=root).tensors
    xte, yte = trdata.load("mnist", "test", root=root).tensors
    return xtr, ytr, xte, yte


def _eps_label(e: float) -> str:
    k = e * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{e:g}"


def _train(cfg: ForgeTablesConfig, xtr: torch.Tensor, ytr: torch.Tensor, path: Path) -> tuple[nn.Module, float]:
    """docs/forge.md's model A through :func:`torchrobust.train.fit`, or the one saved in ``path`` by an earlier
    run with the same recipe (resumption)."""
    from .. import checkpoint
    from .. import models as trmodels
    from ..train import TrainConfig, fit

    warm = TrainConfig(epochs=max(cfg.warmup_epochs, 1), batch_size=128, optimizer="adam", lr=1e-3,
                       mode="standard", seed=cfg.seed, max_batches=cfg.max_batches)
    pgd = TrainConfig(epochs=cfg.epochs, batch_size=128, optimizer="adam", lr=1e-3, mode="pgd", threat="Linf",
                      eps=0.3, steps=5, seed=cfg.seed + 1, max_batches=cfg.max_batches)
    recipe = {"warmup": {**asdict(warm), "epochs": cfg.warmup_epochs}, "pgd_at": asdict(pgd),
              "n_train": int(xtr.shape[0]), "init_seed": cfg.seed}
    if path.exists():
        meta = checkpoint.load_metadata(path).get("metadata", {})
        if meta.get("recipe") == json.loads(json.dumps(recipe)):
            log.info("reusing the model trained by an earlier run: %s", path)
            return checkpoint.load(path).eval(), float(meta.get("train_wall_s", 0.0))
        raise TorchRobustError(f"{path} was trained with another recipe; use another --out or delete it")
    train_set = torch.utils.data.TensorDataset(xtr, ytr)
    # fit seeds the data order and the attacks, not the initial weights; the global generator's state at this
    # point differs from process to process (torch.initial_seed()), so seed the initialisation here
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = trmodels.create("lenet")
    t0 = time.perf_counter()
    if cfg.warmup_epochs:
        fit(model, train_set, warm)
    fit(model, train_set, pgd)
    wall = time.perf_counter() - t0
    model.eval()
    checkpoint.save(model, path, recipe=recipe, train_wall_s=wall)
    return model, wall


def _cr_label(c: float) -> str:
    """``2^-7`` for a power of two, else the number (0 for the plain model)."""
    if c > 0 and math.log2(c).is_integer():
        return f"2^{int(math.log2(c))}"
    return f"{c:g}"


def _pct(t: torch.Tensor) -> float:
    """The fraction of True entries (a PERCENT column's value)."""
    return float(t.float().mean().item())


def _sweep_rows(cfg: ForgeTablesConfig, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the Tables 8/9 analogue: (model, gradients, attack) × ε (ε = 0 is the clean column)."""
    rows: list[dict[str, Any]] = []
    named = (("fgsm", "FGSM"), ("apgd-ce", "APGD-CE (the paper's PGD row)"),
             ("apgd-t", "default worst (FGSM+APGD-CE+APGD-T)"))
    for key, model, grads in (("plain", "plain", "autograd"), ("forged", "forged", "autograd"),
                              ("bpda", "forged", "BPDA")):
        res = results[key]
        for attack, label in named:
            row: dict[str, Any] = {"model": model, "c_r": _cr_label(0.0 if key == "plain" else cfg.c_r),
                                   "gradients": grads, "attack": label, "clean": _pct(res.clean)}
            for i, e in enumerate(cfg.eps):
                row[_eps_label(e)] = _pct(res.robust[attack][i + 1])
            rows.append(row)
    worst = {"model": "forged", "c_r": _cr_label(cfg.c_r), "gradients": "autograd ∪ BPDA",
             "attack": "worst case (all 4 attacks, both gradients)", "clean": _pct(results["forged"].clean)}
    for i, e in enumerate(cfg.eps):
        ok = torch.ones_like(results["forged"].clean, dtype=torch.bool)
        for key in ("forged", "bpda"):
            for a in ATTACKS:
                ok &= results[key].robust[a][i + 1].bool()
        worst[_eps_label(e)] = _pct(ok)
    rows.append(worst)
    return rows


def _cw_rows(cfg: ForgeTablesConfig, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the Table 6 analogue: C&W-ℓ∞ accuracy per ε, plain vs forged (autograd, BPDA, their worst case)."""
    rows = []
    for i, e in enumerate(cfg.eps):
        plain = results["plain"].robust["cw_linf"][i + 1].bool()
        auto = results["forged"].robust["cw_linf"][i + 1].bool()
        bpda = results["bpda"].robust["cw_linf"][i + 1].bool()
        rows.append({"eps": _eps_label(e), "plain": _pct(plain), "forged_autograd": _pct(auto),
                     "forged_bpda": _pct(bpda), "forged_worst": _pct(auto & bpda),
                     "gain_autograd": 100 * (_pct(auto) - _pct(plain)),
                     "gain_worst": 100 * (_pct(auto & bpda) - _pct(plain))})
    return rows


def _tables(cfg: ForgeTablesConfig, results: dict[str, Any], n: int) -> tuple[Table, Table]:
    """The Tables 8/9 and Table 6 analogues."""
    pct = ColumnKind.PERCENT
    cols = [Column("model", ColumnKind.TEXT), Column("c_r", ColumnKind.TEXT),
            Column("gradients", ColumnKind.TEXT), Column("attack", ColumnKind.TEXT), Column("clean", pct),
            *[Column(_eps_label(e), pct, label=f"ε={_eps_label(e)}") for e in cfg.eps]]
    note = (f"LeNet PGD-AT (MNIST), first {n} test images, accuracy %. Rows 'BPDA': the same attacks crafted "
            "through BPDA of the forged model (identity backward of Eq. 9). APGD-T runs on FGSM+APGD-CE's survivors, "
            "so its row is the default set's per-example worst case.")
    sweep_t = Table(cols, _sweep_rows(cfg, results), title="Data-driven Lipschitz Tables 8/9 on MNIST: accuracy "
                    "over the paper's ε grid, forged vs plain", notes=(note,))
    cw_cols = [Column("eps", ColumnKind.TEXT, label="ε"), Column("plain", pct, label="plain"),
               Column("forged_autograd", pct, label=f"forged c_r={_cr_label(cfg.c_r)} (autograd)"),
               Column("forged_bpda", pct, label="forged (BPDA)"),
               Column("forged_worst", pct, label="forged worst (autograd ∪ BPDA)"),
               Column("gain_autograd", ColumnKind.FLOAT, digits=1, label="gain autograd (points)"),
               Column("gain_worst", ColumnKind.FLOAT, digits=1, label="gain worst (points)")]
    cw_t = Table(cw_cols, _cw_rows(cfg, results), title="Data-driven Lipschitz Table 6 on MNIST: C&W-ℓ∞ "
                 "accuracy, forged vs plain", notes=(f"C&W-ℓ∞ = PGD-100 on the C&W margin loss, random start, "
                                                     f"seed {cfg.seed}; first {n} test images.",))
    return sweep_t, cw_t


def _certify_table(cfg: ForgeTablesConfig, docs: dict[str, dict[str, Any]], n: int) -> Table:
    """Fig. 3's analogue: certified accuracy of the Gaussian-smoothed plain and forged models at :data:`RADII`."""
    cols = [Column("model", ColumnKind.TEXT), Column("c_r", ColumnKind.TEXT),
            *[Column(f"r={r:g}", ColumnKind.PERCENT, label=f"ℓ2 radius {r:g}") for r in RADII]]
    rows = []
    for key, doc in docs.items():
        acc = dict(zip(doc["radii"], doc["certified_accuracy"], strict=True))
        rows.append({"model": key, "c_r": _cr_label(0.0 if key == "plain" else cfg.c_r),
                     **{f"r={r:g}": acc[r] for r in RADII}})
    return Table(cols, rows, title="Data-driven Lipschitz Fig. 3 on MNIST: randomized-smoothing certified accuracy, "
                 "forged vs plain", notes=(f"Cohen et al.'s CERTIFY, σ = {cfg.sigma:g}, n0 = 100, n = {cfg.n_smooth}, "
                                           f"α = 0.001, seed {cfg.seed}; first {n} test images; base models are "
                                           "the PGD-AT LeNet (not noise-trained) and its forged copy.",))


def run_forge_tables(out: str | os.PathLike[str], *, epochs: int = 3, warmup_epochs: int = 1,
                     max_batches: int | None = None, n_test: int = 1000, n_calib: int = 59000, c_r: float = 2.0**-7,
                     eps: Sequence[float] = PAPER_EPS, seed: int = 0, batch_size: int = 500,
                     certify: bool = False, sigma: float = 0.25, n_smooth: int = 10_000,
                     root: str | os.PathLike[str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Train (or reuse) the PGD-AT LeNet, forge it at ``c_r``, run the three sweeps and write the two tables into
    ``out``; returns ``{"tables": {stem: Table}, "seconds": {...}, "config": {...}}``. Finished sweeps resume from
    their engine state in ``out``. With ``certify``, also Fig. 3's analogue: randomized-smoothing certification
    (:func:`torchrobust.evaluate.certify.certify_to_dir`, σ = ``sigma``, ``n_smooth`` noise samples) of both
    models."""
    from ..attacks import BPDA
    from ..evaluate.certify import certify_to_dir
    from ..evaluate.sweeps import sweep
    from ..forging.surgery import forge

    cfg = ForgeTablesConfig(epochs=epochs, warmup_epochs=warmup_epochs, max_batches=max_batches, n_test=n_test,
                            n_calib=n_calib, c_r=c_r, eps=tuple(eps), seed=seed, batch_size=batch_size,
                            certify=certify, sigma=sigma, n_smooth=n_smooth).validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = load_mnist(root)
    if cfg.n_calib > xtr.shape[0]:
        raise TorchRobustError(f"n_calib = {cfg.n_calib} exceeds the {xtr.shape[0]} training images; lower it")
    if cfg.n_test > xte.shape[0]:
        raise TorchRobustError(f"n_test = {cfg.n_test} exceeds the {xte.shape[0]} test images; lower it")
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    model, seconds["train"] = _train(cfg, xtr, ytr, out / MODEL_FILE)
    t = time.perf_counter()
    forged = forge(model, xtr[:cfg.n_calib], c_r=cfg.c_r, batch_size=1000)
    seconds["calibration"] = time.perf_counter() - t
    x, y = xte[:cfg.n_test], yte[:cfg.n_test]
    results: dict[str, Any] = {}
    for key, target in (("plain", model), ("forged", forged), ("bpda", BPDA(forged))):
        t = time.perf_counter()
        results[key] = sweep(target, x, y, attacks=ATTACKS, eps=(0.0, *cfg.eps), batch_size=cfg.batch_size,
                             seed=cfg.seed, progress=progress, state=out / f"state_{key}")
        seconds[f"sweep_{key}"] = time.perf_counter() - t
        log.info("sweep %s done in %.0f s", key, seconds[f"sweep_{key}"])
    tables: dict[str, Table] = {}
    tables[TABLE_SWEEP], tables[TABLE_CW] = _tables(cfg, results, int(x.shape[0]))
    if cfg.certify:
        docs = {}
        for key, target in (("plain", model), ("forged", forged)):
            t = time.perf_counter()
            docs[key] = certify_to_dir(target, x, y, out / f"certify_{key}", sigma=cfg.sigma, n=cfg.n_smooth,
                                       seed=cfg.seed, progress=progress, radii=RADII)
            seconds[f"certify_{key}"] = time.perf_counter() - t
        tables[TABLE_CERTIFY] = _certify_table(cfg, docs, int(x.shape[0]))
    seconds["total_this_run"] = time.perf_counter() - t_all
    for stem, table in tables.items():
        table.write(out, stem)
    config = {**asdict(cfg), "eps": list(cfg.eps), "attacks": list(ATTACKS), "model": "lenet"}
    doc = {"config": config, "seconds": seconds,
           "counts": {k: r.config.get("counts") for k, r in results.items()}}
    atomic_write_bytes(out / "results.json", json.dumps(doc, indent=1).encode())
    return {"tables": tables, "seconds": seconds, "config": config}
