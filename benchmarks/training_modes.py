"""Every training mode on MNIST, side by side: clean accuracy, ℓ∞ / ℓ2 / ℓ1 accuracy under the library's default
evaluation, their union, and the training time (docs/training.md).

Modes: the single-threat modes of :func:`torchrobust.train.fit` (``standard``, ``fgsm``, ``pgd``, ``trades``,
``mart``, ``pgd-awp``, ``trades-awp``, ``gaussian``; ℓ∞, ε = 0.3) and the multi-norm baselines of
:mod:`torchrobust.psat` (``max``, ``avg``, ``msd``, ``eat``, ``ramp``; ε = 0.3 / 2 / 10), all on the same MLP
(784-256-64-10, ReLU), the same data order and the same optimiser and schedule (Adam, lr 1e-3, triangular, batch
100; PSAT's MNIST recipe), PGD with ``--train-steps`` steps inside training.

Evaluation: per norm, :func:`torchrobust.evaluate.sweep` with its default attacks (FGSM, APGD-CE, then APGD-T on
APGD-CE's survivors; the per-example worst case) at the MNIST budgets ℓ∞ 0.3, ℓ2 2, ℓ1 10; ``union`` counts the
test images robust under all three norms. Time: wall-clock seconds and this process's CPU seconds of training
(the machine may be shared: CPU seconds are the stable number).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/training_modes.py --n-train 10000 --epochs 1 --n-test 500 \\
        --out docs/training_modes.md
    python benchmarks/training_modes.py --modes pgd,mart,eat --n-train 2000 --n-test 200   # a subset
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn

from torchrobust import data, models
from torchrobust.checkpoint import atomic_write_bytes
from torchrobust.errors import TorchRobustError
from torchrobust.evaluate import sweep
from torchrobust.psat.adversary import MNIST_BUDGETS, TrainingAdversary
from torchrobust.psat.multinorm import ramp_objective
from torchrobust.train import MODES, TrainConfig, fit

MULTI_NORM = ("max", "avg", "msd", "eat", "ramp")
PAPERS = {"standard": "—", "fgsm": "Goodfellow et al. 2015", "pgd": "Madry et al. 2018", "trades": "Zhang et al. 2019",
          "mart": "Wang et al. 2020", "pgd-awp": "Wu et al. 2020", "trades-awp": "Wu et al. 2020",
          "gaussian": "Cohen et al. 2019", "max": "Tramèr & Boneh 2019", "avg": "Tramèr & Boneh 2019",
          "msd": "Maini et al. 2020", "eat": "Croce & Hein 2022", "ramp": "Jiang & Singh 2024 (no GP)"}


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("mlp", widths=[256, 64], activation="relu")


def train(mode: str, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> tuple[nn.Module, float, float]:
    model = _model(args.seed)
    common = dict(epochs=args.epochs, batch_size=100, optimizer="adam", lr=1e-3, schedule="triangular", seed=args.seed)
    steps = {k: args.train_steps for k in MNIST_BUDGETS}
    t0, c0 = time.perf_counter(), time.process_time()
    if mode in MULTI_NORM:
        adv = TrainingAdversary(mode, steps=steps)
        objective = ramp_objective(adv)
        fit(model, (x, y), TrainConfig(**common), adversary=None if objective else adv, objective=objective)
    else:
        fit(model, (x, y), TrainConfig(mode=mode, threat="Linf", eps=MNIST_BUDGETS["Linf"], steps=args.train_steps,
                                       noise_sigma=0.3, **common))
    return model.eval(), time.perf_counter() - t0, time.process_time() - c0


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default=",".join([m for m in MODES] + list(MULTI_NORM)))
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--train-steps", type=int, default=10, help="PGD steps inside training (every norm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the Markdown table there")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in (*MODES, *MULTI_NORM)]
    if bad:
        raise TorchRobustError(f"unknown mode(s) {bad}; valid: {', '.join((*MODES, *MULTI_NORM))}")
    if args.out is not None:
        from torchrobust.validation import check_output_file

        check_output_file(args.out, overwrite=True)
    x, y = data.as_tensors(data.load("mnist", "train"), args.n_train)
    xt, yt = data.as_tensors(data.load("mnist", "test"), args.n_test)
    lines = [f"MNIST, MLP 784-256-64-10 (ReLU), {args.n_train} training images, {args.epochs} epoch(s), Adam 1e-3 "
             f"triangular, batch 100, PGD-{args.train_steps} in training; {args.n_test} test images, default "
             "evaluation (FGSM + APGD-CE + APGD-T) at ℓ∞ 0.3 / ℓ2 2 / ℓ1 10.", "",
             "| mode | paper | clean | ℓ∞ | ℓ2 | ℓ1 | union | train s (wall) | train s (CPU) |",
             "|---|---|---|---|---|---|---|---|---|"]
    fit(_model(args.seed), (x[:10], y[:10]), TrainConfig(epochs=1, batch_size=10))  # warm-up: one-time imports
    for mode in modes:
        model, wall, cpu = train(mode, x, y, args)
        acc = evaluate(model, xt, yt)
        row = (f"| {mode} | {PAPERS[mode]} | " + " | ".join(f"{100 * acc[k]:.1f}" for k in
                                                            ("clean", "Linf", "L2", "L1", "union"))
               + f" | {wall:.0f} | {cpu:.0f} |")
        lines.append(row)
        sys.stdout.write(row + "\n")
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
