"""Benchmark: NRPM layers next to the plain layers they replace (time and peak memory, forward and fwd+bwd).

Robustness Reprogramming (Hou et al., ICLR 2025), Algorithm 1 with K IRLS steps. Measured in one process, one
thread, fp32, on the layer shapes the paper's models use:

* MLP 784→256 (MNIST MLP first layer), batch 128;
* LeNet conv2: 10→20, 5×5 on 12×12, batch 128;
* ResNet-18 block conv, narrow (width 8, as the paper's ``TinyRobNet``): 8→8 3×3 on 32×32, batch 32;
* ResNet-18 block conv, full width: 64→64 3×3 on 32×32, batch 32.

Time is the CPU time of the (single) computing thread, best of ``--reps`` calls after a warm-up call. CPU time,
not wall time, because the benchmark machine is shared: under load, wall time charges other processes' time
slices to long calls far more than to short ones, which inflates exactly the ratios measured here.

Peak memory is the high-water mark of bytes allocated through PyTorch's CPU allocator during one call, above
the already-allocated inputs and parameters (from the profiler's memory events). fwd+bwd computes gradients
for the input and all parameters, as in training.

Usage::

    python benchmarks/nrpm.py [--backend auto|compiled|eager] [--K 3] [--reps 3] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from torchrobust.nn import NRPMConv2d, NRPMLinear


@dataclass
class Case:
    name: str
    make: Callable[[], tuple[nn.Module, torch.Tensor]]


def _cases() -> list[Case]:
    def mlp() -> tuple[nn.Module, torch.Tensor]:
        return nn.Linear(784, 256), torch.rand(128, 784)

    def lenet2() -> tuple[nn.Module, torch.Tensor]:
        return nn.Conv2d(10, 20, 5), torch.randn(128, 10, 12, 12)

    def narrow() -> tuple[nn.Module, torch.Tensor]:
        return nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.randn(32, 8, 32, 32)

    def full() -> tuple[nn.Module, torch.Tensor]:
        return nn.Conv2d(64, 64, 3, padding=1, bias=False), torch.randn(32, 64, 32, 32)

    return [
        Case("mlp-784-256-b128", mlp),
        Case("lenet-conv2-b128", lenet2),
        Case("resnet18-narrow-8x8-b32", narrow),
        Case("resnet18-full-64x64-b32", full),
    ]


def _peak_bytes(fn: Callable[[], object]) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def _best_time(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up (compilation, allocator)
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def _measure(layer: nn.Module, x: torch.Tensor, reps: int) -> dict[str, float]:
    xg = x.clone().requires_grad_(True)

    def fwd() -> object:
        with torch.no_grad():
            return layer(x)

    def fwdbwd() -> object:
        layer.zero_grad(set_to_none=True)
        xg.grad = None
        layer(xg).sum().backward()
        return None

    out = {"fwd_s": _best_time(fwd, reps), "fwdbwd_s": _best_time(fwdbwd, reps)}
    out["fwd_mb"] = _peak_bytes(fwd) / 2**20
    layer.zero_grad(set_to_none=True)
    xg.grad = None
    out["fwdbwd_mb"] = _peak_bytes(fwdbwd) / 2**20
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", choices=["auto", "compiled", "eager"])
    ap.add_argument("--K", type=int, default=3)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="case names to run (default: all)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32, K={args.K}, lam={args.lam}, "
          f"backend={args.backend}, best of {args.reps}")
    header = ("| case | plain fwd ms | NRPM fwd ms | ratio | plain fwd+bwd ms | NRPM fwd+bwd ms | ratio "
              "| plain fwd MB | NRPM fwd MB | ratio | plain fwd+bwd MB | NRPM fwd+bwd MB | ratio |")
    print(header)
    print("|" + "---|" * 13)
    for case in _cases():
        if args.only and case.name not in args.only:
            continue
        plain, x = case.make()
        wrap = NRPMLinear.from_module if isinstance(plain, nn.Linear) else NRPMConv2d.from_module
        robust = wrap(plain, lam=args.lam, K=args.K, backend=args.backend)
        p = _measure(plain, x, args.reps)
        r = _measure(robust, x, args.reps)

        def ratio(key: str, r: dict[str, float] = r, p: dict[str, float] = p) -> str:
            return f"{r[key] / max(p[key], 1e-12):.1f}x"

        print(
            f"| {case.name} | {p['fwd_s'] * 1e3:.2f} | {r['fwd_s'] * 1e3:.1f} | {ratio('fwd_s')} "
            f"| {p['fwdbwd_s'] * 1e3:.2f} | {r['fwdbwd_s'] * 1e3:.1f} | {ratio('fwdbwd_s')} "
            f"| {p['fwd_mb']:.2f} | {r['fwd_mb']:.2f} | {ratio('fwd_mb')} "
            f"| {p['fwdbwd_mb']:.2f} | {r['fwdbwd_mb']:.2f} | {ratio('fwdbwd_mb')} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
