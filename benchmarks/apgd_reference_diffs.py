"""The measured differences between our APGD and the reference (``pyautoattack``'s ``autopgd_base``), listed in
docs/evaluation.md (*Differences from the reference code, measured*), re-measured.

Models and images are those of ``benchmarks/attacks.py --mode apgd`` (imported from it): the 784-100-10 ReLU MLP
trained for 2 Adam epochs on 12,000 MNIST training images (seed 0), its NRPM version
(``torchrobust.reprogram(mlp, lam=0.5, K=3)``), and the first MNIST test images. APGD-CE, 100 steps. Checks
(``--checks``, all by default):

* ``same-start`` — ℓ∞ ε = 0.1 and ℓ2 ε = 1 on ``--n`` images: one run of ours (``APGD._run``) and of the reference
  (``attack_single_run(x_init=...)``) from the same start (our threat model's random start, seed 0). Reported: how
  many best losses are bitwise equal, the largest |difference| of best losses and of best points, how many of our
  best losses are higher, and the agreement of the robust flags (a run that stops an example at its first
  misclassified iterate, as APGD does, against the reference's per-iterate accuracy).
* ``nrpm-l2`` — NRPM MLP, ℓ2 ε = 1, ``--n-nrpm`` images, seed 0: robust accuracy with our exact ℓ2 ∩ box
  projection, with the reference's scale-then-clip in our loop (``L2(1.0, exact_projection=False)``), and of the
  reference.
* ``l1-residues`` — one reference ℓ1 run (ε = 5, no large-ε schedule, ``torch.manual_seed(0)``) on the clean-correct
  examples among the first ``--n``: of the coordinates where its best point differs from the clean image (what its
  ‖x_best − x‖₀ counts), the share that differ by at most 1e-6 (rounding residues).
* ``l1-budget`` — the reference's standard ℓ1 APGD-CE (ε = 10, 5 restarts, 3ε → 2ε → ε schedule) and ours, on
  ``--n-budget`` images for each seed in ``--budget-seeds``: points whose ℓ1 distance (summed in float64) exceeds
  ε, the largest relative excess, and whether every point is in [0, 1]; plus the reference's
  ``x + δ + L1_projection`` on the synthetic case of
  ``tests/test_apgd.py::test_l1_iterates_are_formed_like_the_reference_and_stay_in_budget``.
* ``l1-iterate`` — ℓ1 ε = 5, 1 restart, with and without the schedule, ``--n-iterate`` images, each seed in
  ``--seeds``: robust accuracy of ours, of ours with the exactly projected float64 iterate (``apgd._project`` replaced
  by ``threat.project``, the code before ``eb438b4``) and of the reference, and the per-example agreement with the
  reference.
* ``l1-start`` — standard ℓ1 APGD-CE (ε = 10, 5 restarts, schedule), ``--n-iterate`` images, each seed in
  ``--start-seeds``: robust accuracy with our ℓ1 start (the reference's: Gaussian noise projected onto ball ∩ box)
  and with the threat model's sparse start of radius ε·u (``apgd._start`` replaced by ``L1.random_init``).

Run with one thread (the CPU seconds of this thread are printed per check)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/apgd_reference_diffs.py --out results/apgd_reference_diffs.json

It took 5 min 3 s wall (121 s of CPU) on 2 cores shared with two other long jobs at commit a4f031e
(docs/evaluation.md, *Differences from the reference code, measured*).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

CHECKS = ("same-start", "nrpm-l2", "l1-residues", "l1-budget", "l1-iterate", "l1-start")


def bench_attacks():
    """``benchmarks/attacks.py`` (models, the reference pair, the NRPM warm-up)."""
    if "benchmarks_attacks" not in sys.modules:  # a script, not a package: loaded from its path once
        spec = importlib.util.spec_from_file_location("benchmarks_attacks", Path(__file__).with_name("attacks.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks_attacks"] = module
        spec.loader.exec_module(module)
    return sys.modules["benchmarks_attacks"]


def reference_apgd(model: nn.Module, norm: str, eps: float, seed: int, steps: int = 100, **kw: Any):
    from pyautoattack.autopgd_base import APGDAttack

    return APGDAttack(model, n_iter=steps, norm=norm, eps=eps, seed=seed, loss="ce", device="cpu", **kw)


def robust(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def pct(flags: Tensor) -> float:
    return round(100 * flags.float().mean().item(), 2)


@contextmanager
def patched(name: str, fn: Callable) -> Iterator[None]:
    """``torchrobust.attacks.apgd.<name>`` replaced by ``fn`` while active (module globals are looked up per call)."""
    from torchrobust.attacks import apgd

    saved = getattr(apgd, name)
    setattr(apgd, name, fn)
    try:
        yield
    finally:
        setattr(apgd, name, saved)


def exact_l1_iterates() -> AbstractContextManager[None]:
    """Our ℓ1 iterates before ``eb438b4``: the exact ℓ1 ∩ box projection in float64 (no rounding residues)."""
    return patched("_project", lambda threat, x_u, x: threat.project(x_u, x))


def sparse_l1_start() -> AbstractContextManager[None]:
    """Our ℓ1 start before the reference's was adopted: the threat model's sparse start of radius ε·u."""
    from torchrobust.attacks.apgd import _start

    def start(threat, x, generator):
        from torchrobust.attacks.threat import L1

        return threat.random_init(x, generator) if isinstance(threat, L1) else _start(threat, x, generator)

    return patched("_start", start)


def same_start(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, steps: int = 100) -> dict[str, Any]:
    """One run of ours and of the reference from the same start; see the module docstring."""
    from torchrobust.attacks import APGD

    ours = APGD(norm, eps=eps, steps=steps, restarts=1)
    x0 = ours.threat.random_init(x, torch.Generator().manual_seed(0))
    ref = reference_apgd(model, norm, eps, seed=0, steps=steps)
    ref.init_hyperparam(x)
    r_best, r_acc, r_loss, _ = ref.attack_single_run(x.clone(), y.clone(), x_init=x0.clone())
    o_best, _, o_loss = ours._run(model, x, y, y, ours.threat, steps, x0.clone(), None, final=False)
    _, o_ok, _ = ours._run(model, x, y, y, ours.threat, steps, x0.clone(), None, final=True, examples=len(x))
    return {"norm": norm, "eps": eps, "n": len(x), "losses_equal": int((o_loss == r_loss).sum()),
            "max_loss_diff": float((o_loss - r_loss).abs().max()),
            "max_point_diff": float((o_best - r_best).abs().max()),
            "ours_loss_higher": int((o_loss > r_loss).sum()), "ours_loss_lower": int((o_loss < r_loss).sum()),
            "robust_ours": pct(~o_ok), "robust_ref": pct(r_acc), "flags_agree": pct(~o_ok == r_acc)}


def nrpm_l2(model: nn.Module, x: Tensor, y: Tensor, seed: int = 0) -> dict[str, Any]:
    from torchrobust.attacks import APGD, L2

    exact = APGD("L2", eps=1.0, seed=seed)(model, x, y)
    scaled = APGD(L2(1.0, exact_projection=False), seed=seed)(model, x, y)
    ref = reference_apgd(model, "L2", 1.0, seed=seed).perturb(x.clone(), y.clone())
    return {"n": len(x), "seed": seed, "clean": pct(robust(model, x, y)), "exact": pct(robust(model, exact, y)),
            "scale_then_clip_in_ours": pct(robust(model, scaled, y)), "reference": pct(robust(model, ref, y))}


def l1_residues(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    keep = robust(model, x, y)
    xs, ys = x[keep], y[keep]
    ref = reference_apgd(model, "L1", 5.0, seed=0)
    ref.init_hyperparam(xs)
    torch.manual_seed(0)
    best = ref.attack_single_run(xs.clone(), ys.clone())[0]
    d = (best - xs).abs()
    counted = int((d != 0).sum())
    residues = int(((d != 0) & (d <= 1e-6)).sum())
    return {"examples": len(xs), "counted": counted, "residues": residues,
            "residue_share": round(100 * residues / max(counted, 1), 2)}


def _budget(x_adv: Tensor, x: Tensor, eps: float) -> tuple[int, float, bool]:
    n = (x_adv.detach().double() - x.double()).flatten(1).abs().sum(1)  # in float64: no rounding of the sum
    rel = (n - eps) / eps
    return int((n > eps).sum()), max(float(rel.max()), 0.0), bool(((x_adv >= 0) & (x_adv <= 1)).all())


def l1_budget(model: nn.Module, x: Tensor, y: Tensor, seeds: list[int]) -> dict[str, Any]:
    from pyautoattack.autopgd_base import L1_projection

    from torchrobust.attacks import APGD

    out: dict[str, Any] = {"n": len(x), "eps": 10.0, "seeds": seeds}
    for label in ("reference", "ours"):
        over, worst, box = 0, 0.0, True
        for s in seeds:
            if label == "reference":
                x_adv = reference_apgd(model, "L1", 10.0, seed=s, n_restarts=5, use_largereps=True).perturb(
                    x.clone(), y.clone())
            else:
                x_adv = APGD("L1", eps=10.0, seed=s)(model, x, y)
            o, w, b = _budget(x_adv, x, 10.0)
            over, worst, box = over + o, max(worst, w), box and b
        out[label] = {"points_over_eps": over, "max_relative_excess": worst, "in_box": box}
    g = torch.Generator().manual_seed(0)  # the synthetic case of tests/test_apgd.py
    xs = 0.1 + 0.9 * torch.rand(50, 1, 28, 28, generator=g)
    x_u = (xs + 0.3 * torch.randn(xs.shape, generator=g)).clamp(0, 1)
    theirs = xs + (x_u - xs) + L1_projection(xs, x_u - xs, 5.0)
    o, w, b = _budget(theirs, xs, 5.0)
    out["synthetic_reference"] = {"points_over_eps": o, "max_relative_excess": w, "in_box": b}
    return out


def l1_iterate(model: nn.Module, x: Tensor, y: Tensor, seeds: list[int]) -> dict[str, Any]:
    from torchrobust.attacks import APGD

    out: dict[str, Any] = {"n": len(x), "eps": 5.0, "restarts": 1}
    for schedule in (True, False):
        rows = []
        for s in seeds:
            attack = APGD("L1", eps=5.0, restarts=1, large_eps=schedule, seed=s)
            r_ours = robust(model, attack(model, x, y), y)
            with exact_l1_iterates():
                r_exact = robust(model, attack(model, x, y), y)
            ref = reference_apgd(model, "L1", 5.0, seed=s, n_restarts=1, use_largereps=schedule)
            r_ref = robust(model, ref.perturb(x.clone(), y.clone()), y)
            rows.append({"seed": s, "ours": pct(r_ours), "exact_float64": pct(r_exact), "reference": pct(r_ref),
                         "agree_ours_ref": pct(r_ours == r_ref), "agree_exact_ref": pct(r_exact == r_ref)})
            print(f"  l1-iterate schedule={schedule} {rows[-1]}", flush=True)
        mean = {k: round(sum(r[k] for r in rows) / len(rows), 3) for k in ("ours", "exact_float64", "reference")}
        out["schedule" if schedule else "no_schedule"] = {"rows": rows, "mean": mean}
    return out


def l1_start(model: nn.Module, x: Tensor, y: Tensor, seeds: list[int]) -> dict[str, Any]:
    from torchrobust.attacks import APGD

    rows = []
    for s in seeds:
        attack = APGD("L1", eps=10.0, seed=s)
        r_ref_start = robust(model, attack(model, x, y), y)
        with sparse_l1_start():
            r_sparse = robust(model, attack(model, x, y), y)
        rows.append({"seed": s, "reference_start": pct(r_ref_start), "sparse_start": pct(r_sparse)})
        print(f"  l1-start {rows[-1]}", flush=True)
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 3) for k in ("reference_start", "sparse_start")}
    return {"n": len(x), "eps": 10.0, "restarts": 5, "rows": rows, "mean": mean}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS)
    ap.add_argument("--n", type=int, default=100, help="images for same-start and l1-residues")
    ap.add_argument("--n-nrpm", type=int, default=40, help="images for nrpm-l2")
    ap.add_argument("--n-budget", type=int, default=200, help="images for l1-budget")
    ap.add_argument("--budget-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n-iterate", type=int, default=400, help="images for l1-iterate and l1-start")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="seeds of l1-iterate")
    ap.add_argument("--start-seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="seeds of l1-start")
    ap.add_argument("--train-images", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    args = ap.parse_args(argv)

    from torchrobust import data, reprogram

    warnings.filterwarnings("ignore", message=".*zero gradient.*")
    torch.set_num_threads(args.threads)
    bench = bench_attacks()
    n_max = max(args.n, args.n_nrpm, args.n_budget, args.n_iterate)
    x_all, y_all = data.as_tensors(data.load("mnist", "test"), n_max)
    model = bench.train_mnist("mlp", args.train_images, args.epochs)
    results: dict[str, Any] = {"torch": torch.__version__, "threads": args.threads, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    x, y = x_all[:args.n], y_all[:args.n]
    for check in args.checks:
        c0, w0 = time.thread_time(), time.perf_counter()
        if check == "same-start":
            res: Any = [same_start(model, x, y, "Linf", 0.1), same_start(model, x, y, "L2", 1.0)]
        elif check == "nrpm-l2":
            nrpm = reprogram(model, lam=0.5, K=3).eval()
            xn, yn = x_all[:args.n_nrpm], y_all[:args.n_nrpm]
            bench.warm_up(nrpm, xn)
            res = nrpm_l2(nrpm, xn, yn)
        elif check == "l1-residues":
            res = l1_residues(model, x, y)
        elif check == "l1-budget":
            res = l1_budget(model, x_all[:args.n_budget], y_all[:args.n_budget], args.budget_seeds)
        elif check == "l1-iterate":
            res = l1_iterate(model, x_all[:args.n_iterate], y_all[:args.n_iterate], args.seeds)
        else:
            res = l1_start(model, x_all[:args.n_iterate], y_all[:args.n_iterate], args.start_seeds)
        results[check] = {"result": res, "cpu_s": round(time.thread_time() - c0, 1),
                          "wall_s": round(time.perf_counter() - w0, 1)}
        print(f"{check}: {json.dumps(results[check])}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    return results


if __name__ == "__main__":
    main()
