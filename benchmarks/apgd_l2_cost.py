"""The cost of our ℓ2 APGD against the reference's (``pyautoattack``), as quoted in docs/evaluation.md (*CPU time*):
the ℓ2 ∩ box projection alone, and repeated runs of the 400-image MLP ℓ2 APGD-T row.

``projection`` — per-call time of projecting ``--rows`` MNIST test images' perturbed points onto the ℓ2 ball
(ε = ``--eps``) ∩ [0, 1]: ``x_u = x + δ`` with Gaussian ``δ`` scaled to ℓ2 norm ``--radius`` (default 2ε, APGD's first
step size; seed 0), so most points are outside the ball and many coordinates leave the box. Timed, each as a loop of
``--calls`` calls, interleaved, median of ``--repeats`` rounds after a warm-up (wall and this thread's CPU clock):

* ``newton`` — ours, ``L2(eps).projector(x)`` (exact; Newton's method in ``t = s²``, what APGD uses since
  ``f500650``);
* ``newton-s`` — the lean exact projector as it was before ``f500650`` (the iteration in ``s``; copied below from
  that commit's parent, for this timing only);
* ``exact-general`` — ours, ``L2(eps).project`` (the general exact projection, ``project_l2_box``);
* ``scale-clip`` — ours, ``L2(eps, exact_projection=False).projector(x)`` (the reference's rule);
* ``reference`` — the reference's own expression (``autopgd_base.attack_single_run``, ℓ2 branch: scale into the ball
  with its ``normalize`` and ``L2_norm``, then clamp).

``apgd-t`` — ``--runs`` repetitions of one row of ``benchmarks/attacks.py --mode apgd`` (imported from it: its MLP,
``apgd_pair``): the MLP, ℓ2 ε = 1 APGD-T (9 target classes, 100 steps, seed 0) on ``--n`` images, ours then the
reference in each repetition: CPU seconds of each, their ratio and robust accuracies.

Run with one thread::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/apgd_l2_cost.py --out results/apgd_l2_cost.json

It took 57 s wall on 2 cores shared with two other long jobs at commit a4f031e (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

PARTS = ("projection", "apgd-t")


def bench_attacks():
    """``benchmarks/attacks.py`` (the model, the attack pair, ``measure``)."""
    if "benchmarks_attacks" not in sys.modules:  # a script, not a package: loaded from its path once
        spec = importlib.util.spec_from_file_location("benchmarks_attacks", Path(__file__).with_name("attacks.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks_attacks"] = module
        spec.loader.exec_module(module)
    return sys.modules["benchmarks_attacks"]


def _lean_in_s(d: Tensor, lo: Tensor, hi: Tensor, half: Tensor, eps: float, max_iter: int = 100) -> Tensor | None:
    """``torchrobust.attacks.threat._project_l2_box_lean`` as of ``f500650^`` (the active-set iteration in ``s``),
    kept here only to time it against its successor."""
    acc = torch.float64
    b2 = d.sign().mul_(half).add_(0.5).square_()
    a2 = d.square()
    tiny = torch.finfo(acc).tiny
    total = a2.sum(1, keepdim=True, dtype=acc)
    s = (eps / total.sqrt().clamp_min(tiny)).clamp_(max=1.0)
    sat, prod = torch.empty_like(d), torch.empty_like(d)
    for _ in range(max_iter):
        torch.mul(a2, (s * s).to(d.dtype), out=sat).sub_(b2).sign_().clamp_(min=0.0)
        free = total - torch.mul(a2, sat, out=prod).sum(1, keepdim=True, dtype=acc)
        fixed = torch.mul(b2, sat, out=prod).sum(1, keepdim=True, dtype=acc)
        s_new = ((eps * eps - fixed).clamp_min(0) / free.clamp_min(tiny)).sqrt().clamp_(max=1.0)
        s_new = torch.maximum(torch.where(free > tiny, s_new, 1.0), s)
        if not bool((s_new > s).any()):
            return d.mul_(s.to(d.dtype)).clamp_(lo, hi)
        s = s_new
    return None


def projections(x: Tensor, eps: float) -> dict[str, Callable[[Tensor], Tensor]]:
    """The projections onto the ℓ2 ball ∩ box around ``x`` that ``projection`` times, as ``fn(x_u) -> point``."""
    from pyautoattack.autopgd_base import APGDAttack
    from pyautoattack.other_utils import L2_norm

    from torchrobust.attacks import L2

    shape, xf = x.shape, x.flatten(1)
    lo, hi, half = -xf, 1.0 - xf, 0.5 - xf

    def newton_s(x_u: Tensor) -> Tensor:
        v = _lean_in_s(x_u.flatten(1) - xf, lo, hi, half, eps)
        assert v is not None
        return v.add_(xf).clamp_(0.0, 1.0).view(shape)

    ref = APGDAttack(lambda t: t, norm="L2", eps=eps, device="cpu")
    ref.init_hyperparam(x)
    cap = eps * torch.ones_like(x)

    def reference(x_u: Tensor) -> Tensor:
        return torch.clamp(x + ref.normalize(x_u - x) * torch.min(cap, L2_norm(x_u - x, keepdim=True)), 0.0, 1.0)

    exact = L2(eps)
    return {"newton": exact.projector(x), "newton-s": newton_s, "exact-general": lambda x_u: exact.project(x_u, x),
            "scale-clip": L2(eps, exact_projection=False).projector(x), "reference": reference}


def time_projection(x: Tensor, eps: float, radius: float, calls: int, repeats: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(x.shape, generator=g)
    x_u = x + delta * (radius / delta.flatten(1).norm(dim=1)).view(-1, *([1] * (x.dim() - 1)))
    fns = projections(x, eps)
    exact = fns["exact-general"](x_u)
    check = {k: float((fn(x_u) - exact).abs().max()) for k, fn in fns.items()}

    def loop(fn: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                fn(x_u)
        return run

    timed = bench_attacks().measure({k: loop(fn) for k, fn in fns.items()}, torch.device("cpu"), repeats)
    us = {k: {"wall_us": round(1e6 * w / calls, 1), "cpu_us": round(1e6 * c / calls, 1)} for k, (w, c) in timed.items()}
    return {"rows": len(x), "eps": eps, "radius": radius, "calls": calls, "repeats": repeats, "per_call": us,
            "max_abs_diff_from_exact": check,
            "cpu_ratio_newton_s_over_newton": round(us["newton-s"]["cpu_us"] / us["newton"]["cpu_us"], 2),
            "cpu_ratio_newton_over_reference": round(us["newton"]["cpu_us"] / us["reference"]["cpu_us"], 2)}


def time_apgd_t(model, x: Tensor, y: Tensor, runs: int) -> dict[str, Any]:
    pair = bench_attacks().apgd_pair
    rows = []
    for r in range(runs):
        ours, ref = pair("t", model, "L2", 1.0, 100)
        c0 = time.thread_time()
        x_ours = ours(x, y)
        c1 = time.thread_time()
        x_ref = ref(x.clone(), y.clone())
        c2 = time.thread_time()
        with torch.no_grad():
            acc = [round(100 * (model(a.detach()).argmax(1) == y).float().mean().item(), 2) for a in (x_ours, x_ref)]
        rows.append({"run": r, "cpu_ours": round(c1 - c0, 2), "cpu_ref": round(c2 - c1, 2),
                     "ratio": round((c1 - c0) / (c2 - c1), 2), "robust_ours": acc[0], "robust_ref": acc[1]})
        print(f"  apgd-t {rows[-1]}", flush=True)
    ratios = [r["ratio"] for r in rows]
    return {"n": len(x), "rows": rows, "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_median": statistics.median(ratios)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--rows", type=int, default=40, help="projection: MNIST rows")
    ap.add_argument("--eps", type=float, default=1.0, help="projection: ℓ2 radius")
    ap.add_argument("--radius", type=float, default=None, help="projection: ‖δ‖ of the points (default 2·eps)")
    ap.add_argument("--calls", type=int, default=200, help="projection: calls per timed loop")
    ap.add_argument("--repeats", type=int, default=7, help="projection: interleaved rounds (median)")
    ap.add_argument("--n", type=int, default=400, help="apgd-t: images")
    ap.add_argument("--runs", type=int, default=3, help="apgd-t: repetitions")
    ap.add_argument("--train-images", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    args = ap.parse_args(argv)

    from torchrobust import data

    warnings.filterwarnings("ignore", message=".*zero gradient.*")
    torch.set_num_threads(args.threads)
    x_all, y_all = data.as_tensors(data.load("mnist", "test"), max(args.rows, args.n))
    results: dict[str, Any] = {"torch": torch.__version__, "threads": args.threads, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    for part in args.parts:
        c0, w0 = time.thread_time(), time.perf_counter()
        if part == "projection":
            radius = 2 * args.eps if args.radius is None else args.radius
            res = time_projection(x_all[:args.rows], args.eps, radius, args.calls, args.repeats)
        else:
            model = bench_attacks().train_mnist("mlp", args.train_images, args.epochs)
            res = time_apgd_t(model, x_all[:args.n], y_all[:args.n], args.runs)
        results[part] = {**res, "cpu_s": round(time.thread_time() - c0, 1),
                         "wall_s": round(time.perf_counter() - w0, 1)}
        print(f"{part}: {json.dumps(results[part])}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    return results


if __name__ == "__main__":
    main()
