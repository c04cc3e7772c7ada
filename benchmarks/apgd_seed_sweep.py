"""Seed-to-seed spread of our APGD-CE and of the reference (``pyautoattack``'s ``APGDAttack``), as quoted in
docs/evaluation.md (*Reading the tables*).

Models and images are those of ``benchmarks/attacks.py --mode apgd`` (imported from it: the 784-100-10 ReLU MLP
trained for 2 Adam epochs on 12,000 MNIST training images, seed 0, its NRPM version
``torchrobust.reprogram(mlp, lam=0.5, K=3)``, the first MNIST test images), and so are the attacks
(``attacks.apgd_pair``: the same ε, steps, restarts and large-ε schedule for ours and the reference, here with the
seed of the sweep). Two sweeps:

* ``l1`` — the MLP, ℓ1 ε = 10 APGD-CE (standard: 5 restarts, 3ε → 2ε → ε schedule) on ``--n`` images, for each seed
  in ``--l1-seeds``: robust accuracy of ours and of the reference, their difference and per-example agreement.
* ``nrpm-l2`` — the NRPM MLP, ℓ2 ε = 1 APGD-CE (1 restart) on ``--n-nrpm`` images, for each seed in
  ``--nrpm-seeds``: robust accuracy of each implementation, and each one's agreement with itself across the first
  two seeds (and with the other at the same seed).

Run with one thread::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/apgd_seed_sweep.py --out results/apgd_seed_sweep.json

It took 1 min 54 s wall on 2 cores shared with two other long jobs at commit a4f031e (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

SWEEPS = ("l1", "nrpm-l2")


def bench_attacks():
    """``benchmarks/attacks.py`` (models, the attack pair, the NRPM warm-up)."""
    if "benchmarks_attacks" not in sys.modules:  # a script, not a package: loaded from its path once
        spec = importlib.util.spec_from_file_location("benchmarks_attacks", Path(__file__).with_name("attacks.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks_attacks"] = module
        spec.loader.exec_module(module)
    return sys.modules["benchmarks_attacks"]


def robust_flags(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, seeds: list[int], steps: int = 100
                 ) -> dict[str, dict[int, Tensor]]:
    """Per implementation (``"ours"``, ``"ref"``) and seed, the per-example robust flags after APGD-CE."""
    pair = bench_attacks().apgd_pair
    flags: dict[str, dict[int, Tensor]] = {"ours": {}, "ref": {}}
    for s in seeds:
        ours, ref = pair("ce", model, norm, eps, steps, seed=s)
        for name, x_adv in (("ours", ours(x, y)), ("ref", ref(x.clone(), y.clone()))):
            with torch.no_grad():
                flags[name][s] = model(x_adv.detach()).argmax(1) == y
    return flags


def pct(t: Tensor) -> float:
    return round(100 * t.float().mean().item(), 2)


def summarise(flags: dict[str, dict[int, Tensor]]) -> dict[str, Any]:
    """Per-seed accuracies, ours − reference, agreement; each implementation's agreement with itself across the
    first two seeds; means over the seeds."""
    seeds = list(flags["ours"])
    rows = [{"seed": s, "ours": pct(flags["ours"][s]), "ref": pct(flags["ref"][s]),
             "diff": round(pct(flags["ours"][s]) - pct(flags["ref"][s]), 2),
             "agree": pct(flags["ours"][s] == flags["ref"][s])} for s in seeds]
    out: dict[str, Any] = {"rows": rows,
                           "mean": {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in ("ours", "ref")}}
    if len(seeds) >= 2:
        a, b = seeds[:2]
        out["self_agree"] = {k: pct(flags[k][a] == flags[k][b]) for k in ("ours", "ref")}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=SWEEPS)
    ap.add_argument("--n", type=int, default=400, help="images for the l1 sweep")
    ap.add_argument("--l1-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--n-nrpm", type=int, default=100, help="images for the nrpm-l2 sweep")
    ap.add_argument("--nrpm-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--train-images", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    args = ap.parse_args(argv)

    from torchrobust import data, reprogram

    warnings.filterwarnings("ignore", message=".*zero gradient.*")
    torch.set_num_threads(args.threads)
    bench = bench_attacks()
    x_all, y_all = data.as_tensors(data.load("mnist", "test"), max(args.n, args.n_nrpm))
    model = bench.train_mnist("mlp", args.train_images, args.epochs)
    results: dict[str, Any] = {"torch": torch.__version__, "threads": args.threads, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    for sweep in args.sweeps:
        c0, w0 = time.thread_time(), time.perf_counter()
        if sweep == "l1":
            x, y = x_all[:args.n], y_all[:args.n]
            res = summarise(robust_flags(model, x, y, "L1", 10.0, args.l1_seeds))
        else:
            x, y = x_all[:args.n_nrpm], y_all[:args.n_nrpm]
            nrpm = reprogram(model, lam=0.5, K=3).eval()
            bench.warm_up(nrpm, x)
            res = summarise(robust_flags(nrpm, x, y, "L2", 1.0, args.nrpm_seeds))
        results[sweep] = {"n": len(x), **res, "cpu_s": round(time.thread_time() - c0, 1),
                          "wall_s": round(time.perf_counter() - w0, 1)}
        print(f"{sweep}: {json.dumps(results[sweep])}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    return results


if __name__ == "__main__":
    main()
