"""Benchmark: NRPM layers next to the plain layers they replace, and next to the paper's algorithm as its code
computes it (time and peak memory, forward and fwd+bwd), plus a correctness check against the float64 reference.

Robustness Reprogramming (Hou et al., ICLR 2025), Algorithm 1 with K IRLS steps (ε of Algorithm 2). Measured in
one process, one thread, on the layer shapes the paper's models use:

* MLP 784→256 (MNIST MLP first layer), batch 128;
* LeNet conv2: 10→20, 5×5 on 12×12, batch 128;
* ResNet-18 block conv, narrow (width 8, as the paper's ``TinyRobNet``): 8→8 3×3 on 32×32, batch 32;
* ResNet-18 block conv, full width: 64→64 3×3 on 32×32, batch 32.

Time on CPU is the CPU time of the computing thread (``time.thread_time``), best of ``--reps`` calls after a
warm-up call: the benchmark machine is shared, and wall time charges other processes' time slices to long calls
far more than to short ones. On CUDA it is wall time between synchronisations. The warm-up call of the first
compiled case includes compilation; that time is reported on its own (``compile s``: wall seconds of the kernels'
first calls in this process; the kernels are shape-dynamic, so later layer shapes reuse them and show ~0). Run
with ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` to measure a cold compile (inductor otherwise caches on disk).

Peak memory is the high-water mark of bytes allocated during one call above the already-allocated inputs and
parameters (CPU: the profiler's memory events; CUDA: ``torch.cuda.max_memory_allocated``).

``paper``: the paper's algorithm as its code computes it — the full (rows × outputs × fan-in) product tensor,
the K reweighting steps with normalised weights, and autograd through the loop (written here, independent of
``torchrobust``). It is timed only where that tensor fits (``--paper-max-elems``).

Usage::

    python benchmarks/nrpm.py [--device cpu|cuda] [--backend auto|compiled|eager] [--K 3] [--reps 5]
                              [--only NAME ...] [--check] [--probe]

``--probe`` times single forward IRLS steps as compiled kernels (G products/s, best of ``--reps``), for the MLP
shape and one batch block of the narrow conv: the step as the library runs it, a pairwise-reciprocal variant
(``1/a = b·1/(ab)``: one division per two products), a timing-only variant without any division (wrong values:
the ceiling a faster reciprocal could reach), and the column layout with and without row padding.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from torchrobust.nn import NRPMConv2d, NRPMLinear, nrpm_compiled, nrpm_conv2d, nrpm_linear


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


class PaperNRPM(nn.Module):
    """The paper code's robust layer: unfold / broadcast to the full product tensor, K IRLS steps with
    normalised weights, autograd through the loop (the bias is added, as in ``torchrobust``)."""

    def __init__(self, plain: nn.Module, lam: float, K: int, eps: float) -> None:
        super().__init__()
        self.plain, self.lam, self.K, self.eps = plain, lam, K, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.plain
        if isinstance(m, nn.Linear):
            rows, w = x, m.weight
        else:
            cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
            rows, w = cols.transpose(1, 2).reshape(-1, cols.shape[1]), m.weight.reshape(m.weight.shape[0], -1)
        D = rows.shape[1]
        p = rows[:, None, :] * w[None, :, :]
        z0 = p.sum(-1)
        z = z0
        for _ in range(self.K):
            u = 1.0 / ((p - z[..., None] / D).abs() + self.eps)
            u = u / u.sum(-1, keepdim=True)
            z = D * (u * p).sum(-1)
        out = self.lam * z0 + (1 - self.lam) * z
        if m.bias is not None:
            out = out + m.bias
        if isinstance(m, nn.Conv2d):
            B = x.shape[0]
            Ho = (x.shape[2] + 2 * m.padding[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[0] + 1
            out = out.view(B, -1, out.shape[-1]).transpose(1, 2).reshape(B, out.shape[-1], Ho, -1)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def _best_time(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    clock = time.perf_counter if device.type == "cuda" else time.thread_time
    fn()  # warm-up (compilation, allocator)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = clock()
        fn()
        _sync(device)
        best = min(best, clock() - t0)
    return best


def _measure(layer: nn.Module, x: torch.Tensor, reps: int, device: torch.device, memory: bool = True
             ) -> dict[str, float]:
    xg = x.clone().requires_grad_(True)

    def fwd() -> object:
        with torch.no_grad():
            return layer(x)

    def fwdbwd() -> object:
        layer.zero_grad(set_to_none=True)
        xg.grad = None
        layer(xg).sum().backward()
        return None

    c0 = nrpm_compiled.compile_seconds()
    out = {"fwd_s": _best_time(fwd, reps, device), "fwdbwd_s": _best_time(fwdbwd, reps, device)}
    out["compile_s"] = nrpm_compiled.compile_seconds() - c0
    if memory:
        out["fwd_mb"] = _peak_bytes(fwd, device) / 2**20
        layer.zero_grad(set_to_none=True)
        xg.grad = None
        out["fwdbwd_mb"] = _peak_bytes(fwdbwd, device) / 2**20
    return out


def _product_elems(plain: nn.Module, x: torch.Tensor) -> int:
    if isinstance(plain, nn.Linear):
        return x.shape[0] * plain.weight.numel()
    with torch.no_grad():
        L = plain(x[:1]).shape[-2:].numel()
    return x.shape[0] * L * plain.weight.numel()


#: (stride, padding, dilation, groups) of the convolutions in :func:`check`.
_CONV_CFGS = [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 2), (2, 1, 1, 3)]


def _run(kind: str, K: int, backend: str, a: list[torch.Tensor], lam: object) -> torch.Tensor:
    if kind == "linear":
        return nrpm_linear(a[0], a[1], a[2], lam, K, 1e-3, backend=backend)  # type: ignore[arg-type]
    s, p, d, gr = _CONV_CFGS[int(kind[4:])]
    return nrpm_conv2d(a[0], a[1], a[2], lam, K, 1e-3, s, p, d, gr, backend=backend)  # type: ignore[arg-type]


def check(device: torch.device, K_values: tuple[int, ...] = (0, 1, 2, 3, 4)) -> int:
    """Every backend against the float64 reference on ``device``: outputs to 1e-6 relative in float64 and 1e-4 in
    float32, gradients (x, W, b, λ) to 1e-6 relative in float64. Returns the number of failures."""
    g = torch.Generator().manual_seed(0)
    fails = 0
    conv_cfgs = _CONV_CFGS
    backends = ["eager"] + (["compiled"] if nrpm_compiled.compiler_available(device) else [])
    for K in K_values:
        for kind in ["linear"] + [f"conv{i}" for i in range(len(conv_cfgs))]:
            if kind == "linear":
                args = [torch.randn(20, 29, generator=g), torch.randn(53, 29, generator=g),
                        torch.randn(53, generator=g)]
            else:
                gr = conv_cfgs[int(kind[4:])][3]
                args = [torch.randn(3, 3 * gr, 9, 8, generator=g), torch.randn(2 * gr, 3, 3, 2, generator=g),
                        torch.randn(2 * gr, generator=g)]
            for lam in (0.3, "tensor"):
                ref_args = [a.to(device, torch.float64).requires_grad_(True) for a in args]
                lam64 = torch.tensor(0.3, dtype=torch.float64, device=device, requires_grad=True)

                lam_ref = lam64 if lam == "tensor" else lam
                ref = _run(kind, K, "reference", ref_args, lam_ref)
                cot = torch.randn(ref.shape, generator=g, dtype=torch.float64).to(device)
                inputs = ref_args + ([lam64] if lam == "tensor" else [])
                gref = torch.autograd.grad(ref, inputs, cot, materialize_grads=True)
                for be in backends:
                    for dt, tol in ((torch.float64, 1e-6), (torch.float32, 1e-4)):
                        a = [t.detach().to(dt).requires_grad_(True) for t in ref_args]
                        lt = lam64.detach().to(dt).requires_grad_(True) if lam == "tensor" else lam
                        out = _run(kind, K, be, a, lt)
                        err = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
                        ok = err <= tol
                        if dt == torch.float64:
                            grads = torch.autograd.grad(out, a + ([lt] if lam == "tensor" else []), cot.to(dt),
                                                        materialize_grads=True)
                            for gg, gr_ in zip(grads, gref, strict=True):
                                gerr = ((gg - gr_).norm() / gr_.norm().clamp_min(1e-30)).item()
                                ok = ok and gerr <= 1e-6
                        if not ok:
                            fails += 1
                            print(f"FAIL {kind} K={K} lam={lam} backend={be} dtype={dt}: output rel err {err:.2e}")
    print(f"check on {device}: backends {backends}, K={list(K_values)}, {'OK' if not fails else f'{fails} FAILED'}")
    return fails


def _step_rows(x: torch.Tensor, w: torch.Tensor, m: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    r = x[:, None, :] * w - m[..., None]
    u = 1 / (r.abs() + eps)
    return u.sum(-1), (u * r).sum(-1)


def _step_pairwise(x: torch.Tensor, w: torch.Tensor, m: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    h = x.shape[1] // 2  # (even fan-in here) products d and d + h share one division
    ra = x[:, None, :h] * w[:, :h] - m[..., None]
    rb = x[:, None, h : 2 * h] * w[:, h : 2 * h] - m[..., None]
    a, b = ra.abs() + eps, rb.abs() + eps
    q = 1 / (a * b)
    return (q * (a + b)).sum(-1), (q * (b * ra + a * rb)).sum(-1)


def _step_no_division(x: torch.Tensor, w: torch.Tensor, m: torch.Tensor, eps: torch.Tensor
                      ) -> tuple[torch.Tensor, ...]:
    r = x[:, None, :] * w - m[..., None]
    u = (r.abs() + eps) * eps  # timing probe only: a multiply where the step divides
    return u.sum(-1), (u * r).sum(-1)


def _step_cols(c: torch.Tensor, w: torch.Tensor, m: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    r = c[:, None] * w[:, :, None] - m[:, :, None]
    u = 1 / (r.abs() + eps)
    return u.sum(2), (u * r).sum(2)


def probe(reps: int) -> None:
    """Forward-step kernel variants in G products/s (see the module docstring)."""
    g = torch.Generator().manual_seed(0)
    eps = torch.tensor(1e-3)
    comp = {f.__name__: torch.compile(f, dynamic=True, fullgraph=True)
            for f in (_step_rows, _step_pairwise, _step_no_division, _step_cols)}
    dev = torch.device("cpu")
    for name, (n, d, o) in (("mlp 128x784 -> 256", (128, 784, 256)), ("narrow conv block 7x1024 rows, D=72 -> 8",
                                                                      (7 * 1024, 72, 8))):
        x, w = torch.randn(n, d, generator=g), torch.randn(o, d, generator=g) / d**0.5
        m = x @ w.T / d
        args = (x, w, m, eps)
        res = [f"{k[6:]} {n * d * o / _best_time(lambda f=f, a=args: f(*a), reps, dev) / 1e9:.1f}"
               for k, f in comp.items() if k != "_step_cols"]
        if d == 72:  # the same block as columns (b, D, L) = (7, 72, 1024), rows of 1024 and of 1040 floats
            for lp in (1024, 1040):
                c = torch.zeros(7, d, lp)
                c[..., :1024] = x.view(7, 1024, d).transpose(1, 2)
                mc = torch.zeros(7, o, lp)
                mc[..., :1024] = m.view(7, 1024, o).transpose(1, 2)
                cargs = (c, w, mc, eps)
                t = _best_time(lambda a=cargs: comp["_step_cols"](*a), reps, dev)
                res.append(f"cols(L={lp}) {n * d * o / t / 1e9:.1f}")
        print(f"{name}: G products/s: " + ", ".join(res), flush=True)
    _probe_library(reps)


def _probe_library(reps: int) -> None:
    """The library's compiled forward and reverse kernels (``nrpm_compiled``) in G products/s."""
    g = torch.Generator().manual_seed(1)
    eps = torch.tensor(1e-3)
    dev = torch.device("cpu")

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    for name, (n, d, o) in (("mlp 128x784 -> 256", (128, 784, 256)),
                            ("full-width conv block 1024 rows, D=576 -> 64", (1024, 576, 64))):
        x, w = rnd(n, d), rnd(o, d) / d**0.5
        m, a, b, z = x @ w.T / d, rnd(n, o), rnd(n, o), rnd(n, o)
        t = [m.T.contiguous(), a.T.contiguous(), b.T.contiguous(), z.T.contiguous()]
        kernels = {"fwd": (x, w, m, eps), "bwd_z": (x, w, m, a, b, eps), "bwd_x": (x, w, m, a, b, z, eps),
                   "bwd_x_t": (x, w.T.contiguous(), m, a, b, z, eps), "bwd_w_t": (w, x.T.contiguous(), *t, eps)}
        res = [f"{k} {n * d * o / _best_time(lambda k=k, v=v: nrpm_compiled._call(k, *v), reps, dev) / 1e9:.1f}"
               for k, v in kernels.items()]
        print(f"library kernels, {name}: G products/s: " + ", ".join(res), flush=True)
    nb, d, lp, o = 7, 72, 1040, 8
    c, w = rnd(nb, d, lp), rnd(o, d) / d**0.5
    m, a, b, z = torch.matmul(w, c) / d, rnd(nb, o, lp), rnd(nb, o, lp), rnd(nb, o, lp)
    kernels = {"fwd_c": (c, w, m, eps), "bwd_z_c": (c, w, m, a, b, eps), "bwd_x_c": (c, w, m, a, b, z, eps),
               "bwd_w_c": (c, w, m, a, b, z, eps)}
    res = [f"{k} {nb * d * lp * o / _best_time(lambda k=k, v=v: nrpm_compiled._call(k, *v), reps, dev) / 1e9:.1f}"
           for k, v in kernels.items()]
    print("library kernels, narrow conv block as columns (7, 72, 1040) -> 8: G products/s: " + ", ".join(res),
          flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (any torch device)")
    ap.add_argument("--backend", default="auto", choices=["auto", "compiled", "eager"])
    ap.add_argument("--K", type=int, default=3)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="case names to run (default: all)")
    ap.add_argument("--paper-max-elems", type=float, default=5e7,
                    help="time the paper's algorithm only where its product tensor has at most this many elements")
    ap.add_argument("--check", action="store_true", help="only run the correctness check against float64")
    ap.add_argument("--probe", action="store_true", help="only time forward-step kernel variants (CPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but CUDA is not available here", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.check:
        return 1 if check(device) else 0
    if args.probe:
        probe(args.reps)
        return 0

    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s), fp32, K={args.K}, "
          f"lam={args.lam}, backend={args.backend}, best of {args.reps}")
    print("| case | plain fwd ms | NRPM fwd ms | ratio | plain fwd+bwd ms | NRPM fwd+bwd ms | ratio "
          "| plain fwd MB | NRPM fwd MB | ratio | plain fwd+bwd MB | NRPM fwd+bwd MB | ratio "
          "| paper fwd+bwd ms | speed-up vs paper | compile s |")
    print("|" + "---|" * 16)
    for case in _cases():
        if args.only and case.name not in args.only:
            continue
        plain, x = case.make()
        plain, x = plain.to(device), x.to(device)
        wrap = NRPMLinear.from_module if isinstance(plain, nn.Linear) else NRPMConv2d.from_module
        robust = wrap(plain, lam=args.lam, K=args.K, backend=args.backend)
        r = _measure(robust, x, args.reps, device)
        p = _measure(plain, x, args.reps, device)
        paper = "—"
        speedup = "—"
        if _product_elems(plain, x) <= args.paper_max_elems:
            pp = _measure(PaperNRPM(plain, args.lam, args.K, 1e-3), x, max(2, args.reps // 2), device, memory=False)
            paper = f"{pp['fwdbwd_s'] * 1e3:.0f}"
            speedup = f"{pp['fwdbwd_s'] / r['fwdbwd_s']:.0f}x"

        def ratio(key: str, r: dict[str, float] = r, p: dict[str, float] = p) -> str:
            return f"{r[key] / max(p[key], 1e-12):.1f}x"

        print(
            f"| {case.name} | {p['fwd_s'] * 1e3:.2f} | {r['fwd_s'] * 1e3:.1f} | {ratio('fwd_s')} "
            f"| {p['fwdbwd_s'] * 1e3:.2f} | {r['fwdbwd_s'] * 1e3:.1f} | {ratio('fwdbwd_s')} "
            f"| {p['fwd_mb']:.2f} | {r['fwd_mb']:.2f} | {ratio('fwd_mb')} "
            f"| {p['fwdbwd_mb']:.2f} | {r['fwdbwd_mb']:.2f} | {ratio('fwdbwd_mb')} "
            f"| {paper} | {speedup} | {r['compile_s']:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
