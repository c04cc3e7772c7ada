"""PGD speed: images per second of ``torchrobust.attacks.PGD`` (and ``torchattacks.PGD`` when installed).

Models: the reprogramming paper's MNIST MLP (784-256-64-10, no activation) and LeNet (conv 1→10 5×5, conv 10→20
5×5, fc 320→50→10), randomly initialised (speed does not depend on the weights), on random inputs in [0, 1].
Both attacks run the same number of gradient steps with the same ε and α; torchrobust's PGD additionally scores every
iterate (one extra forward pass at the end) to return the best point rather than the last one, and validates its
input and output. Reported: images/s by wall clock and by this thread's CPU time (the stable number on a shared
machine; run with ``nice`` or on an idle machine for wall-clock numbers).

Usage::

    python benchmarks/attacks.py                    # 1 thread, batch 256, PGD-20, ℓ∞ ε = 0.3
    python benchmarks/attacks.py --batch 1000 --threads 2 --device cuda --threat L2 --eps 2.0
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from torchrobust.attacks import PGD


def build(name: str) -> nn.Module:
    """The zoo model when ``torchrobust.models`` provides it, else an equivalent inline definition."""
    try:
        from torchrobust.models import create

        return create(name)
    except ImportError:
        pass
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.Linear(256, 64), nn.Linear(64, 10))
    return nn.Sequential(
        nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(10, 20, 5), nn.Dropout2d(), nn.MaxPool2d(2),
        nn.ReLU(), nn.Flatten(), nn.Linear(320, 50), nn.ReLU(), nn.Dropout(), nn.Linear(50, 10),
    )  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall seconds, CPU seconds of this thread) per function over ``repeats`` interleaved rounds, after one
    warm-up call each. Interleaving spreads machine-load noise evenly; CPU time is the stable number on a shared
    machine with one thread (on CUDA only wall time is meaningful)."""
    for fn in fns.values():
        fn()
    _sync(device)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            _sync(device)
            wall[key].append(time.perf_counter() - t0)
            cpu[key].append(time.thread_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet"], choices=["mlp", "lenet"])
    parser.add_argument("--batch", type=int, default=256, help="batch size (the task suggests 128-1000)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threat", default="Linf", choices=["Linf", "L2"], help="torchattacks has PGD and PGDL2")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    alpha = 2.5 * args.eps / args.steps
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
        print("torchattacks is not installed (pip install --no-deps torchattacks); timing torchrobust only")

    print(
        f"PGD-{args.steps} {args.threat} eps={args.eps:g} alpha={alpha:g} batch={args.batch} threads={args.threads} "
        f"device={device} torch={torch.__version__}; medians of {args.repeats} interleaved runs"
    )
    print(f"{'model':<8}{'attack':<30}{'images/s (wall)':>17}{'images/s (CPU)':>16}{'ms/batch':>10}")
    for name in args.models:
        model = build(name).to(device).eval()
        x = torch.rand(args.batch, 1, 28, 28, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        ours = PGD(args.threat, eps=args.eps, steps=args.steps, alpha=alpha, seed=0)
        fns: dict[str, Callable[[], object]] = {"torchrobust.PGD": partial(ours, model, x, y)}
        if torchattacks is not None:
            cls = torchattacks.PGD if args.threat == "Linf" else torchattacks.PGDL2
            theirs = cls(model, eps=args.eps, alpha=alpha, steps=args.steps, random_start=True)
            fns[f"torchattacks.{cls.__name__} {torchattacks.__version__}"] = partial(theirs, x, y)
        for label, (wall, cpu) in measure(fns, device, args.repeats).items():
            print(f"{name:<8}{label:<30}{args.batch / wall:>17.0f}{args.batch / cpu:>16.0f}{1000 * wall:>10.1f}")


if __name__ == "__main__":
    main()
