"""The PSAT MNIST experiment (docs/psat.md): three hyper-CNN members vs AT_max / AT_avg / AT_msd on the MSD CNN.

Budgets ε = (ℓ∞ 0.3, ℓ2 2.0, ℓ1 10) (Maini et al. 2020). Run in stages so they can share a machine::

    python -m torchrobust.psat.experiment members   --out runs/psat_mnist --n-train 10000 --epochs 1
    python -m torchrobust.psat.experiment baselines --out runs/psat_mnist --n-train 10000 --epochs 1
    python -m torchrobust.psat.experiment evaluate  --out runs/psat_mnist --n-test 1000 --steps 10 --restarts 1

The stages log to stderr; ``evaluate`` writes ``psat_table.{md,csv,tex,json}`` and ``train_times.json`` into
``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from torchrobust import checkpoint
from torchrobust.psat.adversary import MNIST_BUDGETS
from torchrobust.psat.evaluation import evaluate, write_tables
from torchrobust.psat.metrics import format_table
from torchrobust.psat.train import PSATTrainConfig, train_baselines, train_members

log = logging.getLogger(__name__)


def _train_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchrobust import data

    ds = data.load("mnist", "train")
    x, y = ds.tensors
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m torchrobust.psat.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["members", "baselines", "evaluate"])
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--z-dim", type=int, default=32)
    p.add_argument("--unit", type=int, default=32)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    steps = {k: a.train_steps for k in MNIST_BUDGETS}
    cfg = PSATTrainConfig(epochs=a.epochs, batch_size=100, lr=a.lr, seed=a.seed)
    if a.stage == "members":
        train_members(a.out, _train_set(a.n_train, a.seed), arch="hyper_msd_cnn",
                      arch_kwargs={"z_dim": a.z_dim, "unit": a.unit}, steps=steps, config=cfg)
    elif a.stage == "baselines":
        train_baselines(a.out, _train_set(a.n_train, a.seed), arch="msd_cnn", steps=steps, config=cfg)
    else:
        rows = evaluate(a.out, n_test=a.n_test, steps={k: a.steps for k in MNIST_BUDGETS},
                        alpha={}, restarts=a.restarts, strategies=("entropy", "average"))
        write_tables(rows, a.out)
        times = {pth.stem: checkpoint.load_metadata(pth)["metadata"].get("train_seconds")
                 for pth in sorted(Path(a.out).glob("*.safetensors"))}
        (Path(a.out) / "train_times.json").write_text(json.dumps(times, indent=2) + "\n")
        log.info("results\n%s", format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
