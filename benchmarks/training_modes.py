"""Every training mode on MNIST, side by side: clean accuracy, ℓ∞ / ℓ2 / ℓ1 accuracy under the library's default
evaluation, their union, and the training time (docs/training.md).

Modes: the single-threat modes of :func:`torchrobust.train.fit` (``standard``, ``fgsm``, ``pgd``, ``trades``,
``mart``, ``pgd-awp``, ``trades-awp``, ``gaussian``; ℓ∞, ε = 0.3) and the multi-norm baselines of
:mod:`torchrobust.psat` (``max``, ``avg``, ``msd``, ``eat``, ``ramp``; ε = 0.3 / 2 / 10; ``ramp`` is the library's
RAMP (gradient projection, λ = 5), ``ramp-nogp`` the authors' "RAMP w/o GP" at their code's default λ = 1.5),
all on the same model (``--model``: the MLP 784-256-64-10 with ReLU, or the zoo's LeNet), the same data order and
the same optimiser and schedule (Adam, lr 1e-3, triangular, batch 100; PSAT's MNIST recipe), PGD with
``--train-steps`` steps inside training.

Evaluation: per norm, :func:`torchrobust.evaluate.sweep` with its default attacks (FGSM, APGD-CE, then APGD-T on
APGD-CE's survivors; the per-example worst case) at the MNIST budgets ℓ∞ 0.3, ℓ2 2, ℓ1 10; ``union`` counts the
test images robust under all three. Time: wall-clock seconds and this process's CPU seconds of training and of
evaluation (the machine may be shared: CPU seconds are the stable number). The last epoch's training loss and
accuracy are reported too, so a mode that diverged or collapsed shows it.

``--results F.json``: every mode's row is written there (atomically) as soon as that mode is evaluated; a rerun
with the same settings skips the modes already in it, so a killed run loses at most the mode in progress.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/training_modes.py --n-train 60000 --epochs 3 --n-test 500 \\
        --out table.md --results runs/training_modes.json      # docs/training.md's table
    python benchmarks/training_modes.py --modes pgd,mart,eat --n-train 2000 --n-test 200   # a subset
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrobust import data, models
from torchrobust.errors import TorchRobustError
from torchrobust.evaluate import sweep
from torchrobust.io import atomic_write_bytes
from torchrobust.psat.adversary import MNIST_BUDGETS, TrainingAdversary
from torchrobust.psat.multinorm import ramp_objective
from torchrobust.train import MODES, TrainConfig, fit

MULTI_NORM = ("max", "avg", "msd", "eat", "ramp", "ramp-nogp")
#: "RAMP w/o GP" (Jiang & Singh 2024) at the authors' code default λ (their fine-tuning runs, no GP)
RAMP_NOGP_LAMBDA = 1.5
PAPERS = {"standard": "—", "fgsm": "Goodfellow et al. 2015", "pgd": "Madry et al. 2018", "trades": "Zhang et al. 2019",
          "mart": "Wang et al. 2020", "pgd-awp": "Wu et al. 2020", "trades-awp": "Wu et al. 2020",
          "gaussian": "Cohen et al. 2019", "max": "Tramèr & Boneh 2019", "avg": "Tramèr & Boneh 2019",
          "msd": "Maini et al. 2020", "eat": "Croce & Hein 2022", "ramp": "Jiang & Singh 2024 (GP, λ 5)",
          "ramp-nogp": "Jiang & Singh 2024 (w/o GP, λ 1.5)"}
#: ``--model`` choices: zoo name, its keyword arguments, and the description printed above the table.
MODELS: dict[str, tuple[str, dict[str, Any], str]] = {
    "mlp": ("mlp", {"widths": [256, 64], "activation": "relu"}, "MLP 784-256-64-10 (ReLU)"),
    "lenet": ("lenet", {}, "LeNet (conv 1→10→20 5×5, fc 320→50→10, dropout 0.5)"),
}
ACC_KEYS = ("clean", "Linf", "L2", "L1", "union")


def _model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    zoo_name, kwargs, _ = MODELS[name]
    return models.create(zoo_name, **kwargs)


def train(mode: str, x: torch.Tensor, y: torch.Tensor,
          args: argparse.Namespace) -> tuple[nn.Module, dict[str, float], float, float]:
    """Train a fresh model with ``mode``; returns it, the last epoch's record, wall and CPU seconds."""
    model = _model(args.model, args.seed)
    common = dict(epochs=args.epochs, batch_size=100, optimizer="adam", lr=1e-3, schedule="triangular", seed=args.seed)
    steps = {k: args.train_steps for k in MNIST_BUDGETS}
    t0, c0 = time.perf_counter(), time.process_time()
    if mode in MULTI_NORM:
        if mode == "ramp-nogp":
            adv = TrainingAdversary("ramp", steps=steps, ramp_lambda=RAMP_NOGP_LAMBDA)
            objective = ramp_objective(adv, gp=False)
        else:
            adv = TrainingAdversary(mode, steps=steps)
            objective = ramp_objective(adv)
        res = fit(model, (x, y), TrainConfig(**common), adversary=None if objective else adv, objective=objective)
    else:
        res = fit(model, (x, y), TrainConfig(mode=mode, threat="Linf", eps=MNIST_BUDGETS["Linf"],
                                             steps=args.train_steps, noise_sigma=0.3, **common))
    return model.eval(), res.final, time.perf_counter() - t0, time.process_time() - c0


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    robust = []
    out: dict[str, float] = {}
    for threat, eps in MNIST_BUDGETS.items():
        res = sweep(model, x, y, eps=(eps,), threat=threat)
        out["clean"] = float(res.clean.float().mean())
        robust.append(res.worst[0])
        out[threat] = float(res.worst[0].float().mean())
    out["union"] = float(torch.stack(robust).all(0).float().mean())
    return out


def _ramp_recipe() -> dict[str, Any]:
    """The library's default RAMP recipe (gradient projection on or off, λ): part of the results' settings, so a
    results file written with another default is refused rather than mixed."""
    adv = TrainingAdversary("ramp")
    return {"gp": bool(getattr(ramp_objective(adv), "gp", False)), "lambda": float(adv.ramp_lambda)}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("model", "n_train", "epochs", "n_test", "train_steps", "seed")
    return {**{k: getattr(args, k) for k in keys}, "ramp": _ramp_recipe()}


def _load_results(path: Path | None, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows already in ``path`` (none if it does not exist); refused if written with other settings."""
    if path is None or not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
        rows, old = saved["rows"], saved["settings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TorchRobustError(f"--results {path} is not a results file of this script ({exc}); delete it or "
                               "choose another path") from None
    if old != settings:
        raise TorchRobustError(f"--results {path} was written with other settings ({old}); delete it or choose "
                               "another path")
    return dict(rows)


def _paper(mode: str) -> str:
    return PAPERS[mode]


def _row(mode: str, r: dict[str, Any]) -> str:
    return (f"| {mode} | {_paper(mode)} | " + " | ".join(f"{100 * r[k]:.1f}" for k in ACC_KEYS)
            + f" | {r['train_loss']:.3f} / {100 * r['train_acc']:.1f} | {r['train_wall']:.0f} | "
            f"{r['train_cpu']:.0f} | {r['eval_cpu']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default=",".join([m for m in MODES] + list(MULTI_NORM)))
    p.add_argument("--model", default="mlp", choices=sorted(MODELS))
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--train-steps", type=int, default=10, help="PGD steps inside training (every norm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the Markdown table there")
    p.add_argument("--results", default=None, help="JSON file of the finished modes' rows (written after each "
                                                   "mode; a rerun with the same settings skips them)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in (*MODES, *MULTI_NORM)]
    if bad:
        raise TorchRobustError(f"unknown mode(s) {bad}; valid: {', '.join((*MODES, *MULTI_NORM))}")
    from torchrobust.validation import check_output_file

    for flag in ("out", "results"):
        if getattr(args, flag) is not None:
            check_output_file(getattr(args, flag), overwrite=True, flag=f"--{flag}")
    settings = _settings(args)
    results_path = Path(args.results) if args.results is not None else None
    rows = _load_results(results_path, settings)
    x, y = data.as_tensors(data.load("mnist", "train"), args.n_train)
    xt, yt = data.as_tensors(data.load("mnist", "test"), args.n_test)
    lines = [f"MNIST, {MODELS[args.model][2]}, {args.n_train} training images, {args.epochs} epoch(s), Adam 1e-3 "
             f"triangular, batch 100, PGD-{args.train_steps} in training; {args.n_test} test images, default "
             "evaluation (FGSM + APGD-CE + APGD-T) at ℓ∞ 0.3 / ℓ2 2 / ℓ1 10.", "",
             "| mode | paper | clean | ℓ∞ | ℓ2 | ℓ1 | union | last-epoch train loss / acc | train s (wall) | "
             "train s (CPU) | eval s (CPU) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    if any(m not in rows for m in modes):  # warm-up: one-time imports, kept out of the first mode's time
        fit(_model(args.model, args.seed), (x[:10], y[:10]), TrainConfig(epochs=1, batch_size=10))
    for mode in modes:
        if mode not in rows:
            model, last, wall, cpu = train(mode, x, y, args)
            c0 = time.process_time()
            acc = evaluate(model, xt, yt)
            rows[mode] = {**acc, "train_loss": last["loss"], "train_acc": last["train_acc"], "train_wall": wall,
                          "train_cpu": cpu, "eval_cpu": time.process_time() - c0}
            if results_path is not None:
                atomic_write_bytes(results_path, json.dumps({"settings": settings, "rows": rows}, indent=1).encode())
        lines.append(_row(mode, rows[mode]))
        sys.stdout.write(lines[-1] + "\n")
        sys.stdout.flush()
    text = "\n".join(lines) + "\n"
    sys.stdout.write("\n" + text)
    if args.out is not None:
        atomic_write_bytes(Path(args.out), text.encode())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TorchRobustError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
