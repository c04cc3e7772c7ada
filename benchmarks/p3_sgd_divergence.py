"""Why Paradigm 3 diverges at the paper's training budget (docs/reprogramming.md, *Table 1 at the paper's training
budget*): is it our NRPM layer, or the recipe?

The full profile fine-tunes every weight and λ of the reprogrammed 784-256-64-10 MLP (λ from 0.5, K = 1, IRLS
ε = 5e-5) with the paper code's SGD (lr 1e-3, momentum 0.9, batch 64) on FGSM ε = 0.3 examples, mixed loss. The
training loop's NaN guard stops it in the first epoch. This script trains, from the same standard-trained backbone
and through the same loop (:func:`torchrobust.train.fit`, whose guard reports the batch where the loss became
NaN/Inf):

* ``library`` - the preset's own code path (``_learn`` of the full profile, Paradigm 3: weights and λ);
* ``paper-literal`` - the paper code's NRPM computation written out with autograd
  (``PaperLiteralMLP`` of ``benchmarks/reprogramming_gaps.py``; weights trained, λ fixed at 0.5), same TrainConfig.

If both diverge, the divergence belongs to the recipe on this backbone, not to our kernels. Results go to
``OUT/p3_sgd_divergence.json`` and are printed.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/p3_sgd_divergence.py --out results/p3-sgd \
        --backbone results/adv-train-gap/models/standard.safetensors
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from torchrobust import checkpoint
from torchrobust.errors import TrainingDiverged
from torchrobust.experiments.reprogramming import _learn
from torchrobust.experiments.reprogramming_protocol import PROFILES, PresetContext, load_mnist
from torchrobust.io import atomic_write_bytes
from torchrobust.train import TrainConfig, fit


def _paper_literal_cls() -> type:
    path = Path(__file__).with_name("reprogramming_gaps.py")
    spec = importlib.util.spec_from_file_location("reprogramming_gaps", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault("reprogramming_gaps", mod)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.PaperLiteralMLP


def _outcome(train) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        train()
    except TrainingDiverged as err:
        return {"diverged": True, "epoch": err.epoch, "batch": err.batch, "seconds": round(time.perf_counter() - t0, 1)}
    return {"diverged": False, "seconds": round(time.perf_counter() - t0, 1)}


def run(out: Path, backbone_path: Path, *, n_train: int | None = None, max_batches: int | None = None,
        epochs: int = 1) -> dict[str, Any]:
    torch.set_num_threads(1)
    prof = PROFILES["full"]
    prof = replace(prof, n_train=n_train, reprogram_epochs=epochs, reprogram_steps=max_batches)
    x_tr, y_tr, *_ = load_mnist(prof, 0)
    backbone = checkpoint.load(backbone_path).eval()
    ctx = PresetContext(profile=prof, seed=0, progress=False, x_train=x_tr, y_train=y_tr, x_test=x_tr[:0],
                        y_test=y_tr[:0], device=torch.device("cpu"))
    res: dict[str, Any] = {"backbone": str(backbone_path), "n_train": len(x_tr), "epochs": epochs}
    res["library"] = _outcome(lambda: _learn(ctx, backbone, 3, eps_train=0.3, K=1, tag="library"))
    lit = _paper_literal_cls()(copy.deepcopy(backbone), 0.5, 1, prof.nrpm_eps_mlp)
    cfg = TrainConfig(epochs=epochs, batch_size=prof.batch_size, optimizer=prof.reprogram_optimizer,
                      lr=prof.reprogram_lr_p3, mode="fgsm", eps=0.3, mixed=True, seed=0, max_batches=max_batches)
    res["paper-literal"] = _outcome(lambda: fit(lit, (x_tr, y_tr), cfg))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "p3_sgd_divergence.json", (json.dumps(res, indent=1) + "\n").encode())
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--backbone", required=True, type=Path, help="checkpoint of the standard-trained MLP")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.out, args.backbone), indent=1))  # noqa: T201 - a benchmark's result on stdout
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
