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

``--mode apgd`` instead compares ``torchrobust.attacks`` APGD-CE / APGD-DLR / APGD-T with the reference
implementation (``pyautoattack``'s ``APGDAttack`` / ``APGDAttack_targeted``, the same ε, steps, restarts, target
classes and large-ε schedule, seed 0) on briefly trained MNIST models — a 784-100-10 MLP and the zoo LeNet, plain and
NRPM-reprogrammed (λ = 0.5, K = 3) — for ℓ∞ / ℓ2 / ℓ1: robust accuracy of each, the per-example agreement of the
robust flags, and this thread's CPU seconds of each (one run each; use one thread)::

    OMP_NUM_THREADS=1 python benchmarks/attacks.py --mode apgd --n 300 --n-nrpm 40

``--mode default`` checks the library's default evaluation against the reference: for the same models (trained the
same way) and ε, it runs ``torchrobust.evaluate.sweep`` with its default attacks (FGSM, APGD-CE, and APGD-T on
APGD-CE's survivors; the per-example worst case) and the reference APGD-CE-100 (``APGDAttack``, the restarts and
large-ε schedule of our APGD-CE: ℓ1 5 restarts with 3ε → 2ε → ε), and prints a Markdown table: n images, clean
accuracy, our worst case (``SweepResult.accuracy()``), each column of ours, the reference's robust accuracy, the
difference default − reference (target ≤ +1.0 point) and CPU seconds of this thread for each (the engine's per-job
clock is switched to this thread's CPU clock for the run, see :func:`engine_cpu_clock`)::

    OMP_NUM_THREADS=1 python benchmarks/attacks.py --mode default --n 300 --n-nrpm 200 --n-nrpm-lenet 100

It took 15 min 10 s wall on 2 shared cores at commit 1a381d2, training included (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from types import SimpleNamespace

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


# ------------------------------------------------------------------------------------------- APGD vs reference
APGD_EPS = {"Linf": 0.1, "L2": 1.0, "L1": 10.0}


def train_mnist(name: str, n_train: int, epochs: int) -> nn.Module:
    """A briefly trained MNIST model (Adam, batch 128, seed 0) in eval mode: ``"mlp"`` is 784-100-10 with ReLU (the
    model of ``tests/conftest.py``), ``"lenet"`` the zoo LeNet."""
    from torchrobust import data
    from torchrobust.models import create

    x, y = data.as_tensors(data.load("mnist", "train"), n_train)
    torch.manual_seed(0)
    if name == "mlp":
        model: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    else:
        model = create(name)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
        p.requires_grad_(False)
    return model


def apgd_pair(kind: str, model: nn.Module, norm: str, eps: float, steps: int,
              seed: int = 0) -> tuple[Callable, Callable]:
    """``(ours, reference)`` as ``fn(x, y) -> x_adv`` for ``kind`` in ce / dlr / t, with the same settings and
    ``seed``."""
    from torchrobust.attacks import APGD, APGDT

    try:
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    except ImportError:
        from autoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    if kind == "t":
        ours: APGD = APGDT(norm, eps=eps, steps=steps, seed=seed)
        ref = APGDAttack_targeted(model, n_iter=steps, norm=norm, eps=eps, seed=seed, device="cpu",
                                  n_restarts=ours.restarts, n_target_classes=ours.n_target_classes,
                                  use_largereps=ours.large_eps)
    else:
        ours = APGD(norm, eps=eps, steps=steps, loss=kind, seed=seed)
        ref = APGDAttack(model, n_iter=steps, norm=norm, eps=eps, seed=seed, loss=kind, device="cpu",
                         n_restarts=ours.restarts, use_largereps=ours.large_eps)
    return partial(ours, model), ref.perturb


def warm_up(model: nn.Module, x: torch.Tensor) -> None:
    """One forward and backward pass at a few batch sizes, so that one-off costs (the NRPM layers' ``torch.compile``,
    which specialises batch size 1) are not charged to whichever attack runs first."""
    for b in sorted({len(x), max(len(x) // 2, 2), 2, 1}, reverse=True):
        xb = x[:b].clone().requires_grad_(True)
        torch.autograd.grad(model(xb).logsumexp(1).sum(), xb)


def main_apgd(args: argparse.Namespace) -> None:
    import warnings

    from torchrobust import data, reprogram

    warnings.filterwarnings("ignore", message=".*zero gradient.*")  # the reference warns per run on flat DLR points
    torch.set_num_threads(args.threads)
    x_all, y_all = data.as_tensors(data.load("mnist", "test"), max(args.n, args.n_nrpm))
    print(f"APGD (torchrobust) vs pyautoattack APGD: steps={args.steps}, seed 0, threads={args.threads}, "
          f"torch={torch.__version__}; eps {APGD_EPS}; CPU seconds of this thread, one run each")
    head = (f"{'model':<12}{'norm':<6}{'attack':<10}{'n':>5}{'clean':>7}{'ours':>7}{'ref':>7}{'diff':>7}"
            f"{'agree':>7}{'CPU ours':>10}{'CPU ref':>9}{'ratio':>7}")
    print(head)
    total = {"ours": 0.0, "ref": 0.0}
    for name in args.models:
        base = train_mnist(name, args.train_images, args.epochs)
        variants = [(name, base, args.n)]
        if args.n_nrpm > 0:
            variants.append((f"nrpm-{name}", reprogram(base, lam=0.5, K=3).eval(), args.n_nrpm))
        for label, model, n in variants:
            x, y = x_all[:n], y_all[:n]
            with torch.no_grad():
                clean = model(x).argmax(1) == y
            warm_up(model, x)
            for norm in args.norms:
                for kind in args.attacks:
                    ours, ref = apgd_pair(kind, model, norm, APGD_EPS[norm], args.steps)
                    c0 = time.thread_time()
                    x_ours = ours(x, y)
                    c1 = time.thread_time()
                    x_ref = ref(x.clone(), y.clone())
                    c2 = time.thread_time()
                    with torch.no_grad():
                        r_ours = model(x_ours).argmax(1) == y
                        r_ref = model(x_ref).argmax(1) == y
                    a_ours, a_ref = 100 * r_ours.float().mean().item(), 100 * r_ref.float().mean().item()
                    agree = 100 * (r_ours == r_ref).float().mean().item()
                    total["ours"] += c1 - c0
                    total["ref"] += c2 - c1
                    print(f"{label:<12}{norm:<6}{'apgd-' + kind:<10}{n:>5}{100 * clean.float().mean().item():>7.1f}"
                          f"{a_ours:>7.1f}{a_ref:>7.1f}{a_ours - a_ref:>+7.1f}{agree:>7.1f}{c1 - c0:>10.2f}"
                          f"{c2 - c1:>9.2f}{(c1 - c0) / (c2 - c1):>7.2f}", flush=True)
    print(f"total CPU seconds: ours {total['ours']:.1f}, reference {total['ref']:.1f}, "
          f"ratio {total['ours'] / total['ref']:.2f}")


# ------------------------------------------------------------------------------- default evaluation vs reference
@contextmanager
def engine_cpu_clock() -> Iterator[None]:
    """While active, the evaluation engine times its jobs (``SweepResult.seconds``) with this thread's CPU clock
    instead of the wall clock: on a shared machine with one thread, CPU seconds are the stable number."""
    from torchrobust.evaluate import engine

    saved = engine.time
    engine.time = SimpleNamespace(perf_counter=time.thread_time)  # type: ignore[assignment]
    try:
        yield
    finally:
        engine.time = saved


def main_default(args: argparse.Namespace) -> None:
    import warnings

    from torchrobust import data, reprogram
    from torchrobust.evaluate import sweep
    from torchrobust.evaluate.sweeps import DEFAULT_ATTACKS

    warnings.filterwarnings("ignore", message=".*zero gradient.*")  # the reference warns per run on flat DLR points
    torch.set_num_threads(args.threads)
    n_lenet = args.n_nrpm if args.n_nrpm_lenet is None else args.n_nrpm_lenet
    x_all, y_all = data.as_tensors(data.load("mnist", "test"), max(args.n, args.n_nrpm, n_lenet))
    print(f"Default evaluation (torchrobust.evaluate.sweep: {', '.join(DEFAULT_ATTACKS)}; APGD-T on the survivors; "
          f"per-example worst case) vs pyautoattack APGD-CE-{args.steps}, seed 0, threads={args.threads}, "
          f"torch={torch.__version__}; accuracy in %, CPU seconds of this thread, one run each\n")
    cols = ["model", "norm", "ε", "n", "clean", "**default**", *DEFAULT_ATTACKS, "ref APGD-CE", "**diff**",
            "CPU default", *(f"CPU {a}" for a in DEFAULT_ATTACKS), "CPU ref"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join(["---"] * 2 + ["--:"] * (len(cols) - 2)) + "|", flush=True)
    total = {"ours": 0.0, "ref": 0.0}
    worst_diff = -float("inf")
    for name in args.models:
        base = train_mnist(name, args.train_images, args.epochs)
        variants = [(name, base, args.n)]
        n_nrpm = n_lenet if name == "lenet" else args.n_nrpm
        if n_nrpm > 0:
            variants.append((f"nrpm-{name}", reprogram(base, lam=0.5, K=3).eval(), n_nrpm))
        for label, model, n in variants:
            x, y = x_all[:n], y_all[:n]
            warm_up(model, x)
            for norm in args.norms:
                eps = APGD_EPS[norm]
                c0 = time.thread_time()
                with engine_cpu_clock():
                    res = sweep(model, x, y, eps=[eps], threat=norm)
                c1 = time.thread_time()
                _, ref = apgd_pair("ce", model, norm, eps, args.steps)
                x_ref = ref(x.clone(), y.clone())
                c2 = time.thread_time()
                with torch.no_grad():
                    a_ref = 100 * (model(x_ref).argmax(1) == y).float().mean().item()
                ours = 100 * res.accuracy()[0]
                diff = ours - a_ref
                worst_diff = max(worst_diff, diff)
                total["ours"] += c1 - c0
                total["ref"] += c2 - c1
                cells = [label, norm, f"{eps:g}", str(n), f"{100 * res.clean.float().mean().item():.1f}",
                         f"**{ours:.1f}**", *(f"{100 * res.accuracy(a)[0]:.1f}" for a in res.attacks),
                         f"{a_ref:.1f}", f"**{diff:+.1f}**", f"{c1 - c0:.1f}",
                         *(f"{res.seconds[a]:.1f}" for a in res.attacks), f"{c2 - c1:.1f}"]
                print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\ntotal CPU seconds: default {total['ours']:.1f}, reference APGD-CE {total['ref']:.1f}; "
          f"largest diff (default − reference) {worst_diff:+.1f} points (target ≤ +1.0)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="pgd", choices=["pgd", "apgd", "default"],
                        help="pgd: PGD speed vs torchattacks; apgd: APGD vs pyautoattack (accuracy and CPU time); "
                             "default: the default evaluation (sweep) vs the reference APGD-CE")
    parser.add_argument("--n", type=int, default=300, help="apgd/default: test images per plain model")
    parser.add_argument("--n-nrpm", type=int, default=40,
                        help="apgd/default: test images per NRPM model (0: skip NRPM)")
    parser.add_argument("--n-nrpm-lenet", type=int, default=None,
                        help="default: test images for NRPM-LeNet (default: --n-nrpm)")
    parser.add_argument("--norms", nargs="+", default=["Linf", "L2", "L1"], choices=["Linf", "L2", "L1"])
    parser.add_argument("--attacks", nargs="+", default=["ce", "dlr", "t"], choices=["ce", "dlr", "t"])
    parser.add_argument("--train-images", type=int, default=12000, help="apgd: training images")
    parser.add_argument("--epochs", type=int, default=2, help="apgd: training epochs")
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet"], choices=["mlp", "lenet"])
    parser.add_argument("--batch", type=int, default=256, help="batch size (the task suggests 128-1000)")
    parser.add_argument("--steps", type=int, default=None, help="default: 20 (pgd), 100 (apgd)")
    parser.add_argument("--threat", default="Linf", choices=["Linf", "L2"], help="torchattacks has PGD and PGDL2")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.mode in ("apgd", "default"):
        args.steps = 100 if args.steps is None else args.steps
        (main_apgd if args.mode == "apgd" else main_default)(args)
        return

    args.steps = 20 if args.steps is None else args.steps
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
