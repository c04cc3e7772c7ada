"""The README's main job (``torchrobust demo``): train, reprogram, attack, report — on the bundled MNIST.

1. Train the robustness-reprogramming paper's MNIST MLP (784-256-64-10, no activation: a linear classifier
   under LPM) with standard training.
2. Reprogram it with NRPM (paradigm 1: the same weights, λ and K fixed, no training).
3. Attack both with FGSM and PGD (ℓ∞, white-box through the IRLS iterations) over ε ∈ {0, .05, …, .3} on the
   first ``n_test`` test images, keeping the per-example worst case over the two attacks.
4. Write the results folder: both checkpoints, ``results.{json,csv,md}`` and ``accuracy_vs_eps.png``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_bytes, save
from ..evaluate import SweepResult, plot_accuracy_vs_eps, sweep, write_table_files

__all__ = ["run_demo", "comparison_rows"]

log = logging.getLogger(__name__)

EPS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


def comparison_rows(results: dict[str, SweepResult]) -> list[dict[str, Any]]:
    """One row per ε; one column per (model, attack) plus each model's worst case."""
    first = next(iter(results.values()))
    rows = []
    for j, e in enumerate(first.eps):
        row: dict[str, Any] = {"eps": e}
        for label, res in results.items():
            for a in res.attacks:
                row[f"{label} {a}"] = res.accuracy(a)[j]
            row[f"{label} worst"] = res.accuracy()[j]
        rows.append(row)
    return rows


def run_demo(out_dir: str | Path, epochs: int = 3, n_test: int = 1000, pgd_steps: int = 20, seed: int = 0,
             lam: float = 0.8, K: int = 3, data_root: str | None = None, progress: bool = True) -> dict[str, Path]:
    import torch

    from .. import data, models
    from ..reprogram import reprogram
    from ..train import TrainConfig, fit

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    train = data.load("mnist", "train", root=data_root)
    x, y = data.as_tensors(data.load("mnist", "test", root=data_root), n_test)

    torch.manual_seed(seed)
    model = models.create("mlp", widths=[256, 64], activation=None)
    cfg = TrainConfig(epochs=epochs, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9, seed=seed,
                      progress=progress)
    tr = fit(model, train, cfg)
    save(model, out / "mlp.safetensors", training=cfg.to_dict(), history=tr.history, train_seconds=tr.seconds)

    robust = reprogram(model, lam=lam, K=K)
    save(robust, out / "mlp_nrpm.safetensors", reprogram={"lam": lam, "K": K, "paradigm": 1})

    label_plain, label_nrpm = "LPM", f"NRPM(λ={lam:g},K={K})"
    results: dict[str, SweepResult] = {}
    for label, m in ((label_plain, model), (label_nrpm, robust)):
        t0 = time.perf_counter()
        results[label] = sweep(m, x, y, attacks=["fgsm", "pgd"], eps=EPS, threat="Linf",
                               attack_kwargs={"pgd": {"steps": pgd_steps, "early_stop": True}}, seed=seed,
                               progress=progress)
        log.info("%s evaluated in %.1fs", label, time.perf_counter() - t0)

    rows = comparison_rows(results)
    title = (f"MNIST, 784-256-64-10 linear MLP, first {len(x)} test images, ℓ∞ FGSM and PGD-{pgd_steps} "
             f"(white-box through NRPM)")
    paths = write_table_files(out / "results", rows, title=title)
    doc = {"title": title, "table": rows, "seconds_total": time.perf_counter() - t_all,
           "train": {"config": cfg.to_dict(), "history": tr.history, "seconds": tr.seconds},
           "models": {k: v.to_dict() for k, v in results.items()}}
    atomic_write_bytes(out / "results.json", (json.dumps(doc, indent=1) + "\n").encode())
    paths["json"] = out / "results.json"
    paths["png"] = plot_accuracy_vs_eps(results, out / "accuracy_vs_eps.png", title=title)
    paths["ckpt_plain"] = out / "mlp.safetensors"
    paths["ckpt_nrpm"] = out / "mlp_nrpm.safetensors"
    return paths
