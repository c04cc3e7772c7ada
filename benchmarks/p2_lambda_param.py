"""Does the paper code's raw, unconstrained λ explain the Paradigm-2 gap? (docs/reprogramming-gaps.md)

At the paper's training budget our Paradigm 2 (learn only the λ of the NRPM layers, weights frozen) collapses
towards pure NRPM: λ = [0.171, 0, 0] and 49.5 % clean, where the paper's Table 1 reports 81.5 % clean and λ =
[0.459, 0.033, 0.131]. The paper code's ``--paradigm 1`` (the paper's Paradigm 2) uses λ *raw* (no sigmoid, no
clamp), while its logs print ``sigmoid(λ)`` (docs/paper-code-facts.md); so the paper's λ may be sigmoid of a raw λ
outside [0, 1]. This script trains Paradigm 2 from the full profile's standard backbone at the paper's budget
(``PROFILES["full"]``: 5 epochs over 60k, SGD lr 1e-3 momentum 0.9, batch 64, FGSM ε_train, mixed loss, λ init 0.5,
K = 1, IRLS ε 5e-5; the same recipe and training loop as the presets' ``_learn``, through
``PresetContext.train``) once per cell ``PARAM:EPS_TRAIN``, PARAM one of the NRPM layers' λ parametrisations:

* ``raw`` - λ used as-is, never projected (the paper code's ``--paradigm 1``);
* ``sigmoid`` - λ = sigmoid(θ), θ learned (the paper code's ``--paradigm 2``);
* ``clamp`` - λ projected into [0, 1] after every step (the library's default; Table 1's full-profile row).

Two evaluation-only cells (nothing trained; the backbone reprogrammed with Table 2's λ at EPS_TRAIN, K = 1) read the
paper's logged λ both ways: ``paper-direct:EPS`` uses them as λ, ``paper-logit:EPS`` as sigmoid(raw λ), i.e. λ =
logit(logged) (outside [0, 1]).

Per cell: the final λ of each layer (the stored Parameter - raw λ, or θ for sigmoid -, the λ the layer uses, and
sigmoid of the stored Parameter, which is what the paper code logs), the training loss and λ after every epoch, FGSM
accuracy (the paper's protocol, ``fgsm_sweep``) at ε ∈ {0, .05, …, .3} on the first 1000 test images (the paper
code's set) and on all ``--n-test``, and the wall time. A cell whose training diverges
(:class:`torchrobust.errors.TrainingDiverged`) is recorded as diverged. Each cell is written atomically to
``OUT/cells/<cell>.json`` as soon as it is done; a rerun skips finished cells (same configuration). The report is
``OUT/p2-lambda.md`` (the paper's rows beside ours), also printed.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/p2_lambda_param.py --out results/p2-lambda \\
        --backbone results/adv-train-gap/models/standard.safetensors --cells raw:0.3 sigmoid:0.3

``--lam0`` (λ's initial value; the paper code's ``--lmbd`` default is 0.6) and ``--epochs`` (the paper code's
script runs 10) change the recipe; a cell of another recipe is named after it (``raw-eps0.3-lam0.6-ep10``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrobust import checkpoint
from torchrobust.errors import TorchRobustError, TrainingDiverged
from torchrobust.experiments.paper_numbers import EPS_GRID, PAPER
from torchrobust.experiments.reprogramming import _learn
from torchrobust.experiments.reprogramming_protocol import PROFILES, PresetContext, fgsm_sweep, load_mnist
from torchrobust.io import atomic_write_bytes
from torchrobust.reprogramming import nrpm_layers, reprogram

logger = logging.getLogger("benchmarks.p2_lambda_param")

TRAINED = ("raw", "sigmoid", "clamp")
EVAL_ONLY = ("paper-direct", "paper-logit")
LAM0 = 0.5  # λ init of the presets' Paradigm 2 (0.5: θ = 0 for sigmoid)


def parse_cell(text: str) -> tuple[str, float]:
    """``"raw:0.3"`` -> ``("raw", 0.3)``; a one-line error for anything else."""
    kind, sep, eps = text.partition(":")
    try:
        e = float(eps)
    except ValueError:
        e = math.nan
    if not sep or kind not in TRAINED + EVAL_ONLY or not 0.0 <= e <= 1.0:
        raise TorchRobustError(f"cell {text!r} is not KIND:EPS_TRAIN with KIND one of {', '.join(TRAINED + EVAL_ONLY)} "
                               "and EPS_TRAIN in [0, 1]; pass e.g. raw:0.3")
    if kind in EVAL_ONLY and e not in PAPER["table2"]:
        raise TorchRobustError(f"cell {text!r}: the paper logs λ only at ε_train in {sorted(PAPER['table2'])}; "
                               "pass one of them")
    return kind, e


def cell_name(kind: str, eps_train: float, lam0: float = LAM0, epochs: int | None = None) -> str:
    """``clamp-eps0.3``; a λ init other than :data:`LAM0` or an explicit epoch count (``epochs`` not None; None is the
    full profile's) is part of the name (``clamp-eps0.3-lam0.6-ep10``), so cells of other recipes sit side by side,
    none overwritten."""
    return (f"{kind}-eps{eps_train:g}" + (f"-lam{lam0:g}" if lam0 != LAM0 else "")
            + (f"-ep{epochs}" if epochs is not None else ""))


def _lams(model: nn.Module) -> dict[str, list[float]]:
    """The stored λ Parameter of every NRPM layer, the λ it uses, and sigmoid(stored) (what the paper code logs)."""
    layers = list(nrpm_layers(model).values())
    stored = [float(m.lam_parameter.detach()) for m in layers]
    return {"parameter": [round(v, 6) for v in stored], "lam": [round(float(m.lam), 6) for m in layers],
            "sigmoid_of_parameter": [round(0.5 * (1 + math.tanh(v / 2)), 6) for v in stored]}  # no overflow


def _fgsm(model: nn.Module, ctx: PresetContext, n_test: int) -> dict[str, list[float]]:
    c = fgsm_sweep(model, ctx.x_test[:n_test], ctx.y_test[:n_test], EPS_GRID).float()
    return {"fgsm_first1000": [round(100 * float(v), 2) for v in c[:, :1000].mean(1)],
            "fgsm_all": [round(100 * float(v), 2) for v in c.mean(1)]}


def _run_cell(ctx: PresetContext, backbone: nn.Module, kind: str, eps_train: float, n_test: int,
              lam0: float = LAM0) -> dict[str, Any]:
    p = ctx.profile
    if kind in EVAL_ONLY:
        logged = PAPER["table2"][eps_train][1]
        lam = logged if kind == "paper-direct" else [math.log(v / (1 - v)) for v in logged]
        model = reprogram(copy.deepcopy(backbone), lam=lam, K=1, inplace=True, irls_eps=p.nrpm_eps_mlp,
                          backend=p.backend, lam_parametrization="raw")
        return {"diverged": False, **_lams(model), "epochs": [], **_fgsm(model.eval(), ctx, n_test)}
    epochs: list[dict[str, Any]] = []

    def on_epoch(rec: dict[str, float], model: nn.Module) -> None:
        epochs.append({"epoch": int(rec["epoch"]), "loss": round(rec["loss"], 5), "seconds": round(rec["seconds"], 1),
                       **_lams(model)})
        logger.info("%s ε_train=%g epoch %d: loss %.4f, λ %s", kind, eps_train, rec["epoch"], rec["loss"],
                    epochs[-1]["lam"])

    try:  # the presets' Paradigm-2 training (Table 1/2's recipe), with this cell's λ parametrisation
        model = _learn(ctx, backbone, 2, eps_train, K=1, lam0=lam0, tag=cell_name(kind, eps_train, lam0),
                       lam_parametrization=kind, on_epoch=on_epoch)
    except TrainingDiverged as err:
        return {"diverged": True, "reason": str(err), "epoch": err.epoch, "batch": err.batch, "epochs": epochs}
    return {"diverged": False, **_lams(model), "epochs": epochs, **_fgsm(model.eval(), ctx, n_test)}


def run(out: Path, backbone_path: Path, cells: list[str], *, n_test: int = 10000, n_train: int | None = None,
        max_batches: int | None = None, epochs: int | None = None, seed: int = 0,
        lam0: float = LAM0) -> dict[str, Any]:
    """Run each cell (skipping finished ones) and write the report; returns ``{cell name: cell}``.
    ``n_train``/``max_batches``/``epochs`` change the full profile's budget (``epochs``: the paper code's 10, or
    fewer in tests; given, it is part of the cell names, :func:`cell_name`); ``lam0`` is λ's initial value (the
    presets' 0.5; the paper code's ``--lmbd`` default is 0.6)."""
    if not 0.0 <= lam0 <= 1.0:
        raise TorchRobustError(f"lam0={lam0} is not in [0, 1]; pass e.g. --lam0 0.6")
    if epochs is not None and epochs < 1:
        raise TorchRobustError(f"epochs={epochs} is not a positive count; pass e.g. --epochs 10")
    torch.set_num_threads(1)
    parsed = [parse_cell(c) for c in cells]
    prof = PROFILES["full"]
    prof = replace(prof, n_train=n_train, reprogram_steps=max_batches,
                   reprogram_epochs=prof.reprogram_epochs if epochs is None else epochs)
    x_tr, y_tr, x_te, y_te = load_mnist(prof, seed)
    ctx = PresetContext(profile=prof, seed=seed, progress=False, x_train=x_tr, y_train=y_tr, x_test=x_te,
                        y_test=y_te, device=torch.device("cpu"))
    backbone = checkpoint.load(backbone_path).eval()
    (out / "cells").mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {}
    for kind, eps_train in parsed:
        name = cell_name(kind, eps_train, lam0, epochs)
        cfg = {"kind": kind, "eps_train": eps_train, "backbone": str(backbone_path), "n_train": len(x_tr),
               "n_test": min(n_test, len(x_te)), "seed": seed, "K": 1, "lam0": lam0, "irls_eps": prof.nrpm_eps_mlp,
               "epochs": prof.reprogram_epochs, "max_batches": prof.reprogram_steps, "lr": prof.reprogram_lr_p2,
               "optimizer": prof.reprogram_optimizer, "momentum": 0.9, "batch_size": prof.batch_size,
               "mixed": eps_train > 0}
        path = out / "cells" / f"{name}.json"
        if path.is_file():
            cell = json.loads(path.read_text())
            if cell.get("config") == cfg:
                done[name] = cell
                continue
        t0 = time.perf_counter()
        cell = {"config": cfg, **_run_cell(ctx, backbone, kind, eps_train, cfg["n_test"], lam0),
                "wall_seconds": round(time.perf_counter() - t0, 1)}
        atomic_write_bytes(path, (json.dumps(cell, indent=1) + "\n").encode())
        done[name] = cell
        logger.info("%s done in %.0f s: λ %s, FGSM all %s", name, cell["wall_seconds"], cell.get("lam"),
                    cell.get("fgsm_all"))
    atomic_write_bytes(out / "p2-lambda.md", report(done).encode())
    return done


def _fmt(values: list[float] | None, digits: int = 1) -> str:
    return " | ".join(f"{v:.{digits}f}" for v in values) if values else " | ".join("—" for _ in EPS_GRID)


def report(cells: dict[str, Any]) -> str:
    """Markdown: the paper's Paradigm-2 rows (Table 1 = Table 2 at ε_train 0.3) and each cell's FGSM accuracy on the
    first 1000 and on all test images, with its λ (used / stored Parameter / sigmoid of it)."""
    head = ("| row | set | " + " | ".join(f"ε={e:g}" for e in EPS_GRID)
            + " | λ used | stored parameter | sigmoid(parameter) | loss per epoch | wall s |")
    lines = [head, "|" + "---|" * (len(EPS_GRID) + 7)]
    for e in sorted({c["config"]["eps_train"] for c in cells.values()}):
        if e in PAPER["table2"]:
            acc, lams = PAPER["table2"][e]
            lines.append(f"| paper P2 ε_train={e:g} (Tables 1/2) | first 1000 | {_fmt(acc)} | | | {lams} (logged) | "
                         "| |")
    for name, cell in cells.items():
        if cell["diverged"]:
            lines.append(f"| {name} | diverged | {_fmt(None)} | | | | {cell['reason']} | {cell['wall_seconds']:.0f} |")
            continue
        losses = ", ".join(f"{ep['loss']:.3f}" for ep in cell["epochs"])
        n = cell["config"]["n_test"]
        for key, label in (("fgsm_first1000", f"first {min(n, 1000)}"), ("fgsm_all", f"all {n}")):
            lines.append(f"| {name} | {label} | {_fmt(cell[key])} | {[round(v, 3) for v in cell['lam']]} | "
                         f"{[round(v, 3) for v in cell['parameter']]} | "
                         f"{[round(v, 3) for v in cell['sigmoid_of_parameter']]} | {losses} | "
                         f"{cell['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--backbone", required=True, type=Path, help="checkpoint of the full profile's standard MLP")
    ap.add_argument("--cells", nargs="+", required=True, help="KIND:EPS_TRAIN, e.g. raw:0.3 sigmoid:0.3 clamp:0.3")
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--lam0", type=float, default=LAM0,
                    help=f"λ's initial value (default {LAM0}, the presets'; the paper code's --lmbd default is 0.6)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs over the 60k images (default: the full profile's 5; the paper code's 10)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        cells = run(args.out, args.backbone, args.cells, n_test=args.n_test, lam0=args.lam0, epochs=args.epochs)
    except TorchRobustError as exc:  # bad input (checked before any work): one line, exit 2, no traceback
        sys.stderr.write(f"p2_lambda_param: error: {exc}\n")
        return 2
    print(report(cells), end="")  # noqa: T201 - a benchmark's result table on stdout
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
