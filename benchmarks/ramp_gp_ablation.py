"""RAMP on the MNIST MLP of benchmarks/training_modes.py: which of gradient projection (GP) and λ makes it collapse
(docs/training.md, footnote of the all-modes table). Same model, data, optimiser, schedule and evaluation as that
benchmark's ``ramp`` rows (60k images, 3 epochs, PGD-10 in training, 500 test images, default evaluation).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/ramp_gp_ablation.py --gp on --lam 1.5
    OMP_NUM_THREADS=1 python benchmarks/ramp_gp_ablation.py --gp off --lam 5

Prints one JSON line: the per-epoch training loss / accuracy, training CPU seconds and the accuracies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import training_modes as tm  # noqa: E402

from torchrobust import data  # noqa: E402
from torchrobust.psat.adversary import MNIST_BUDGETS, TrainingAdversary  # noqa: E402
from torchrobust.psat.multinorm import ramp_objective  # noqa: E402
from torchrobust.train import TrainConfig, fit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gp", choices=("on", "off"), required=True)
    p.add_argument("--lam", type=float, required=True)
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-test", type=int, default=500)
    args = p.parse_args(argv)
    x, y = data.as_tensors(data.load("mnist", "train"), args.n_train)
    xt, yt = data.as_tensors(data.load("mnist", "test"), args.n_test)
    model = tm._model("mlp", 0)
    cfg = TrainConfig(epochs=args.epochs, batch_size=100, optimizer="adam", lr=1e-3, schedule="triangular", seed=0)
    adv = TrainingAdversary("ramp", steps={k: 10 for k in MNIST_BUDGETS}, ramp_lambda=args.lam)
    c0 = time.process_time()
    res = fit(model, (x, y), cfg, adversary=None, objective=ramp_objective(adv, gp=args.gp == "on"))
    cpu = time.process_time() - c0
    epochs = [{k: e[k] for k in ("loss", "train_acc")} for e in res.history]
    sys.stdout.write(json.dumps({"gp": args.gp, "lambda": args.lam, "epochs": epochs, "train_cpu": cpu,
                                 **tm.evaluate(model.eval(), xt, yt)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
