"""Per-step cost of the CIFAR-10 presets (torchrobust.presets.cifar10) at full width, for docs/cifar10.md.

For every kind of step a preset runs, at the preset's full width:

* **training steps** (one optimiser step of :func:`torchrobust.train.fit` in the preset's mode: standard, PGD-10,
  TRADES-10, MART-10, PGD-AWP-10 on the width-8 ResNet-18; PGD-10 fine-tuning of its NRPM version (K = 3,
  Paradigm 3); the PSAT members (hyper ResNet-18, PGD-10) and the AT_max / AT_avg / AT_msd baselines (ResNet-18,
  width 64, ℓ∞/ℓ2/ℓ1 PGD-10 each)): CPU seconds per step measured with fit on random 32×32 images (``--steps``
  timed steps after one warm-up step, one thread), FLOPs per step counted with ``torch.utils.flop_counter``'s
  formulas (matmul and convolution FLOPs, forward and backward; elementwise operations are not counted) and the
  number of ATen operator calls per step (a proxy for GPU kernel launches);
* **attack passes** (one forward + input-gradient backward pass, what every PGD/APGD iteration costs) per image on
  the evaluated models: ResNet-18 width 8 plain and NRPM (K = 3), WideResNet-28-10 (RobustBench), hyper and plain
  ResNet-18 width 64.

Steps are timed at ``--batch`` images (128 for the width-8 models; ``--nrpm-batch`` for the NRPM model and
``--big-batch`` for the width-64/WRN ones, whose CPU time is scaled linearly to batch 128: per-image CPU cost is
flat in the batch size at these sizes, an assumption); FLOPs are counted at batches 2 and 4 and extrapolated
linearly to 128 (a step) or 500 (an evaluation batch, per image); operator counts are taken at batch 2. Times are
CPU seconds of this process (``time.process_time``), which a busy machine disturbs less than wall time. Prints one
JSON line per kind (and writes them all with ``--out``; with ``--only`` an existing ``--out`` file keeps its other
kinds).

``--project JSON`` turns such a JSON into the projected GPU hours per preset (:data:`PLAN`, :func:`project`).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/cifar10_steps.py --out runs/cifar10_steps.json
    python benchmarks/cifar10_steps.py --project runs/cifar10_steps.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from torchrobust import models
from torchrobust.psat import models as psat_models
from torchrobust.psat.adversary import CIFAR10_BUDGETS, TrainingAdversary
from torchrobust.reprogramming import reprogram, set_paradigm
from torchrobust.train import TrainConfig, fit

EPS = 8 / 255
#: images per evaluation batch (the presets' eval_batch_size)
EVAL_BATCH = 500


class _Count(TorchDispatchMode):
    """Counts ATen operator calls (each is roughly one GPU kernel launch) and their matmul/convolution FLOPs with
    ``torch.utils.flop_counter``'s formulas (FlopCounterMode itself installs module hooks that autograd.grad with
    respect to an input refuses, so the attacks could not run under it)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.n += 1
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _flops_and_ops(step: Callable[[int], Any], batch: int) -> tuple[float, int]:
    """FLOPs of ``step`` at ``batch`` images, extrapolated linearly from batches 2 and 4 (so per-call costs that do
    not grow with the batch, e.g. a hypernetwork generating its weights, are not multiplied), and its ATen operator
    calls at batch 2."""
    counts = []
    for b in (2, 4):
        count = _Count()
        with count:
            step(b)
        counts.append(count)
    slope = (counts[1].flops - counts[0].flops) / 2
    return counts[0].flops + slope * (batch - 2), counts[0].n


def train_step(name: str, make: Callable[[], torch.nn.Module], mode: str, batch: int, steps: int,
               adversary: Any = None, params: Callable[[torch.nn.Module], list] | None = None,
               count_make: Callable[[], torch.nn.Module] | None = None) -> dict[str, Any]:
    """CPU s/step (scaled to batch 128), FLOPs/step at batch 128 and ATen ops/step of one fit step (counted on
    ``count_make``'s model when given: the eager NRPM kernels, since compiled code cannot run under the counter)."""

    def run(b: int, n_steps: int, build: Callable[[], torch.nn.Module] = make) -> float:
        torch.manual_seed(0)
        m = build()
        p = params(m) if params else None
        cfg = TrainConfig(epochs=1, batch_size=b, mode=mode, eps=EPS, steps=10, alpha=2 / 255, lr=0.01,
                          max_batches=n_steps)
        x, y = _data(b * n_steps)
        t0 = time.process_time()
        fit(m, (x, y), cfg, params=p, adversary=adversary)
        return time.process_time() - t0

    run(batch, 1)  # warm-up (allocator, oneDNN primitive caches)
    t1 = run(batch, 1)
    tn = run(batch, steps + 1)
    per_step = (tn - t1) / steps  # subtracts fit's fixed cost (model checks, set-up)
    flops, ops = _flops_and_ops(lambda b: run(b, 1, count_make or make), 128)
    return {"name": name, "mode": mode, "batch_timed": batch, "cpu_s_per_step_b128": per_step * 128 / batch,
            "flops_per_step_b128": flops, "aten_ops_per_step": ops}


def attack_pass(name: str, make: Callable[[], torch.nn.Module], batch: int, reps: int,
                count_make: Callable[[], torch.nn.Module] | None = None) -> dict[str, Any]:
    """CPU s, FLOPs per image and ATen ops per batch of one forward + input-gradient pass (eval mode)."""
    torch.manual_seed(0)
    m = make().eval()
    x, y = _data(batch)

    def one(xb: torch.Tensor, yb: torch.Tensor) -> None:
        xa = xb.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(m(xa), yb), xa)

    one(x, y)
    t0 = time.process_time()
    for _ in range(reps):
        one(x, y)
    cpu = (time.process_time() - t0) / reps / batch
    if count_make is not None:
        m = count_make().eval()
    xs, ys = _data(4)
    flops, ops = _flops_and_ops(lambda b: one(xs[:b], ys[:b]), EVAL_BATCH)
    return {"name": name, "batch_timed": batch, "cpu_s_per_image": cpu, "flops_per_image": flops / EVAL_BATCH,
            "aten_ops_per_pass": ops}


# ------------------------------------------------------------------------------------------- projection
#: Steps per epoch of the presets' defaults: ceil(50,000 / 128).
STEPS_PER_EPOCH = 391
#: Attack passes per evaluated image: reprogram rows (PGD-20 + APGD-CE 100 + APGD-T 9 × 100, the upper bound where
#: every image survives APGD-CE), the forge search (validation: PGD-20 at c_r = 0, autograd and BPDA at 7 c_r;
#: test: APGD-CE 100 likewise), PSAT (per norm 50 / 100 / 50 PGD steps; members, the adaptive aggregate = end to end
#: through 3 members + each member alone = 6 member passes per step, baselines).
PASSES = {"reprogram": 20 + 100 + 900, "forge val": 15 * 20, "forge test": 15 * 100, "psat norms": 50 + 100 + 50}

#: preset -> [(component, measured kind, how many steps or image-passes, "train"/"eval")] for the default full run
PLAN: dict[str, list[tuple[str, str, float, str]]] = {
    "reprogram": [
        *((f"backbone {m} (100 epochs)", f"r18w8 {m}", 100 * STEPS_PER_EPOCH, "train")
          for m in ("standard", "pgd", "trades", "mart", "pgd-awp")),
        ("Paradigms 2+3 fine-tuning (5 backbones x 2 x 10 epochs)", "r18w8 nrpm p3 pgd", 100 * STEPS_PER_EPOCH,
         "train"),
        ("evaluation, 5 LPM rows x 1000 images", "pass r18w8", 5 * 1000 * PASSES["reprogram"], "eval"),
        ("evaluation, 30 NRPM rows x 1000 images", "pass r18w8 nrpm", 30 * 1000 * PASSES["reprogram"], "eval"),
    ],
    "forge": [
        ("calibration (10,000 forwards) + c_r search on 1000 validation images", "pass wrn28_10",
         5000 + 1000 * PASSES["forge val"], "eval"),
        ("c_r grid on 1000 test images (APGD-CE, autograd + BPDA)", "pass wrn28_10", 1000 * PASSES["forge test"],
         "eval"),
    ],
    "psat": [
        ("3 members (100 epochs each)", "psat member Linf", 3 * 100 * STEPS_PER_EPOCH, "train"),
        *((f"AT_{b} (100 epochs)", f"AT_{b}", 100 * STEPS_PER_EPOCH, "train") for b in ("max", "avg", "msd")),
        ("evaluation, members + aggregate x 1000 images", "pass hyper r18w64", 1000 * 9 * PASSES["psat norms"],
         "eval"),
        ("evaluation, 3 baselines x 1000 images", "pass r18w64", 1000 * 3 * PASSES["psat norms"], "eval"),
    ],
}

#: GPU assumptions (H100 SXM datasheet, dense): bf16 training (--precision bf16), TF32 convolutions in the fp32
#: evaluation (cuDNN's default); a utilisation of the peak for the matmul/convolution FLOPs; a cost per ATen operator
#: call (launch plus a small or memory-bound kernel: elementwise, BatchNorm, the NRPM reweighting). A component's time
#: is the sum of the two (no overlap assumed).
PEAK = {"train": 989e12, "eval": 495e12}
UTILISATION = 0.30
SECONDS_PER_OP = 10e-6


def project(doc: dict[str, Any]) -> str:
    """The Markdown table of projected H100 hours per preset component (see PLAN and the assumptions above)."""
    rows = {r["name"]: r for r in doc["rows"]}
    lines = ["| preset | component | measured kind | count | CPU s each (1 core) | CPU h (1 core) | GFLOP each | "
             "ATen ops each | GPU h: FLOPs | GPU h: ops | **GPU h** |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for preset, plan in PLAN.items():
        total = cpu_total = 0.0
        for what, kind, count, phase in plan:
            r = rows.get(kind)
            if r is None:
                lines.append(f"| {preset} | {what} | {kind} | {count:,.0f} | not measured | | | | | | |")
                continue
            if "cpu_s_per_step_b128" in r:
                cpu, flops, ops = r["cpu_s_per_step_b128"], r["flops_per_step_b128"], r["aten_ops_per_step"]
            else:  # an image-pass: operators are launched once per batch of EVAL_BATCH images
                cpu, flops, ops = r["cpu_s_per_image"], r["flops_per_image"], r["aten_ops_per_pass"] / EVAL_BATCH
            flop_h = count * flops / (PEAK[phase] * UTILISATION) / 3600
            launch_h = count * ops * SECONDS_PER_OP / 3600
            total += flop_h + launch_h
            cpu_total += count * cpu / 3600
            lines.append(f"| {preset} | {what} | {kind} | {count:,.0f} | {cpu:.3g} | {count * cpu / 3600:,.0f} | "
                         f"{flops / 1e9:.3g} | {ops:.3g} | {flop_h:.2g} | {launch_h:.2g} | {flop_h + launch_h:.2g} |")
        lines.append(f"| **{preset}** | **total** | | | | {cpu_total:,.0f} | | | | | **{total:.2g}** |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per kind (after one warm-up)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--big-batch", type=int, default=16, help="timed batch of the width-64 / WRN models")
    ap.add_argument("--nrpm-batch", type=int, default=32, help="timed batch of the NRPM model")
    ap.add_argument("--only", default=None, help="comma-separated names to run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--project", default=None, metavar="JSON",
                    help="measure nothing: print the projected GPU hours from a JSON this script wrote")
    args = ap.parse_args()
    if args.project:
        print(project(json.loads(Path(args.project).read_text())), end="")
        return
    torch.set_num_threads(1)
    only = set(args.only.split(",")) if args.only else None

    def r18(w: int) -> Callable[[], torch.nn.Module]:
        return lambda: models.create("resnet18", width=w)

    def nrpm_w8(backend: str = "auto") -> torch.nn.Module:
        return reprogram(models.create("resnet18", width=8), lam=0.5, K=3, irls_eps=1e-3, learn_lam=True,
                         inplace=True, backend=backend)

    def nrpm_w8_eager() -> torch.nn.Module:
        return nrpm_w8("eager")

    def hyper64() -> torch.nn.Module:
        return psat_models.create("hyper_resnet18", width=64, unit=64, z_dim=64)

    def plain64() -> torch.nn.Module:
        return psat_models.create("plain_resnet18", width=64)

    steps_t = {t: 10 for t in ("Linf", "L2", "L1")}
    alpha = {"Linf": 2 / 255, "L2": CIFAR10_BUDGETS["L2"] / 4}

    def adv(strategy: str) -> TrainingAdversary:
        return TrainingAdversary(strategy, eps=dict(CIFAR10_BUDGETS), steps=steps_t, alpha=alpha)

    jobs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        *((f"r18w8 {m}", (lambda m=m: train_step(f"r18w8 {m}", r18(8), m, args.batch, args.steps)))
          for m in ("standard", "pgd", "trades", "mart", "pgd-awp")),
        ("r18w8 nrpm p3 pgd", lambda: train_step("r18w8 nrpm p3 pgd", nrpm_w8, "pgd", args.nrpm_batch, args.steps,
                                                 params=lambda m: set_paradigm(m, 3), count_make=nrpm_w8_eager)),
        ("psat member Linf", lambda: train_step("psat member Linf", hyper64, "standard", args.big_batch, args.steps,
                                                adversary=adv("Linf"))),
        *((f"AT_{s}", (lambda s=s: train_step(f"AT_{s}", plain64, "standard", args.big_batch, args.steps,
                                             adversary=adv(s)))) for s in ("max", "avg", "msd")),
        ("pass r18w8", lambda: attack_pass("pass r18w8", r18(8), 128, 3)),
        ("pass r18w8 nrpm", lambda: attack_pass("pass r18w8 nrpm", nrpm_w8, args.nrpm_batch, 2, nrpm_w8_eager)),
        ("pass wrn28_10", lambda: attack_pass("pass wrn28_10", lambda: models.create("wrn28_10"), 4, 2)),
        ("pass hyper r18w64", lambda: attack_pass("pass hyper r18w64", hyper64, args.big_batch, 2)),
        ("pass r18w64", lambda: attack_pass("pass r18w64", plain64, args.big_batch, 2)),
    ]
    out: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": []}
    if args.out and Path(args.out).is_file():  # --only updates those kinds in an earlier file, keeps the others
        kept = json.loads(Path(args.out).read_text())["rows"]
        out["rows"] = [r for r in kept if not only or r["name"] not in only]
    for name, job in jobs:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        row = job()
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        row["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
