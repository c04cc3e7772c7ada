"""What the reprogramming presets' default strong robust evaluation costs against the earlier PGD-20 column on one
NRPM row (docs/reprogramming.md: "The strong evaluation costs about … × PGD-20 on an NRPM row").

The row is Table 1's Paradigm-1 λ = 0.5 MLP of the fast profile, built by the presets' own recipe
(``torchrobust.experiments.reprogramming.train_paper_model``: the 784-256-64-10 linear MLP standard-trained with
the fast profile's budget, seed 0, then reprogrammed with λ = 0.5, K = 1, IRLS ε = 5e-5, eager backend). Both
evaluations run through the presets' code (``PresetContext.strong`` — ``torchrobust.evaluate.sweep`` with its
default attacks, FGSM, APGD-CE and APGD-T on the survivors — and ``PresetContext.pgd``, ``robust_eval="pgd20"``) on
the first ``--n`` MNIST test images at the fast profile's ε = 0.1, 0.2, 0.3, seed 0. Reported: wall and CPU seconds
(this thread) of each, their ratio, and the accuracies (so the row can be checked against the preset's tables).
Training time is reported apart and not counted.

Run with one thread::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/strong_vs_pgd20_cost.py --out results/strong_vs_pgd20_cost.json

It took 57 s wall (28 s of it training the backbone) on 2 cores shared with two other long jobs at commit a4f031e.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch


def timed(fn) -> tuple[Any, float, float]:
    """``(fn(), wall seconds, CPU seconds of this thread)``."""
    w0, c0 = time.perf_counter(), time.thread_time()
    out = fn()
    return out, time.perf_counter() - w0, time.thread_time() - c0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="test images of the robust evaluation")
    ap.add_argument("--lam", type=float, default=0.5, help="Paradigm-1 λ")
    ap.add_argument("--K", type=int, default=1, help="Paradigm-1 IRLS steps (Table 1: 1)")
    ap.add_argument("--profile", default="fast", help="training profile of the backbone")
    ap.add_argument("--order", choices=["pgd20-first", "strong-first"], default="pgd20-first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    args = ap.parse_args(argv)

    from torchrobust.experiments.reprogramming import train_paper_model
    from torchrobust.experiments.reprogramming_protocol import PROFILES, PresetContext, load_mnist

    torch.set_num_threads(args.threads)
    prof = replace(PROFILES[args.profile], n_pgd=args.n)
    x_tr, y_tr, x_te, y_te = load_mnist(prof, 0)
    (backbone, train_wall, train_cpu) = timed(lambda: train_paper_model(
        "mlp", 0, train_data=(x_tr, y_tr), profile=args.profile, seed=0))
    model = train_paper_model("mlp", 1, backbone=backbone, profile=args.profile, seed=0, lam=args.lam, K=args.K)
    ctx = PresetContext(profile=prof, seed=0, progress=False, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                        device=torch.device("cpu"))
    with torch.no_grad():  # one forward pass first, so that no one-off cost is charged to either evaluation
        model(x_te[:args.n])
    runs: dict[str, Any] = {}
    order = ["pgd20", "strong"] if args.order == "pgd20-first" else ["strong", "pgd20"]
    for name in order:
        res, wall, cpu = timed(partial(ctx.pgd if name == "pgd20" else ctx.strong, model))
        runs[name] = {"accuracy": res if name == "pgd20" else {"worst": res[0], "per_attack": res[1],
                                                                "flags": res[2]},
                      "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
        print(f"{name}: {json.dumps(runs[name])}", flush=True)
    results = {"torch": torch.__version__, "threads": args.threads, "n": args.n, "eps": list(prof.pgd_eps),
               "row": f"P1 λ={args.lam:g} K={args.K} ({args.profile} profile backbone)",
               "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1), **runs,
               "ratio_wall": round(runs["strong"]["wall_s"] / runs["pgd20"]["wall_s"], 1),
               "ratio_cpu": round(runs["strong"]["cpu_s"] / runs["pgd20"]["cpu_s"], 1)}
    print(f"strong / pgd20: wall {results['ratio_wall']}x, CPU {results['ratio_cpu']}x", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    return results


if __name__ == "__main__":
    main()
