"""``torchrobust cifar10 PRESET``: the CIFAR-10 presets of the three papers (reprogram, forge, psat), resumable and
torchrun-able (:mod:`torchrobust.presets.cifar10`; projected GPU times in docs/cifar10.md)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import options as opt

#: the preset options (flag, value type, help); each is the Cifar10Config field of the same name, None when not given
_OPTIONS: tuple[tuple[str, Any, str], ...] = (
    ("--width", opt.positive_int, "ResNet-18 width (default: reprogram 8, the paper code's; psat 64)"),
    ("--epochs", opt.positive_int, "epochs of training from scratch (default 100)"),
    ("--finetune-epochs", opt.positive_int, "reprogram: Paradigm 2/3 fine-tuning epochs (default 10)"),
    ("--n-train", opt.positive_int, "first N training images (default all)"),
    ("--n-test", opt.positive_int, "first N test images (default 1000)"),
    ("--lr", opt.finite_number, "learning rate of training from scratch (default 0.1)"),
    ("--train-steps", opt.positive_int, "PGD steps of adversarial training (default 10)"),
    ("--eval-steps", opt.positive_int, "PGD steps of the evaluation (default 20)"),
    ("--apgd-steps", opt.positive_int, "APGD-CE/APGD-T iterations (default 100)"),
    ("--backbones", opt.name_list, "reprogram: backbone training modes (default standard,pgd,trades,mart,pgd-awp)"),
    ("--lam-grid", opt.float_list, "reprogram: Paradigm 1 λ values (default 0.9,0.7,0.5,0.3)"),
    ("--K", opt.nonnegative_int, "reprogram: IRLS iterations (default 3)"),
    ("--irls-eps", opt.finite_number, "reprogram: ε inside the IRLS weights (default 1e-3)"),
    ("--weights", str, "forge: the RobustBench WideResNet checkpoint (required)"),
    ("--grid", opt.float_list, "forge: c_r grid (default 2**-10,...,2**-4)"),
    ("--n-calib", opt.positive_int, "forge: calibration images from the training split (default 10000)"),
    ("--n-val", opt.positive_int, "forge: validation images from the training split (default 1000)"),
    ("--baselines", opt.name_list, "psat: multi-norm baselines (default max,avg,msd)"),
    ("--eval-restarts", opt.positive_int, "psat: PGD restarts of the evaluation (default 1)"),
    ("--psat-eval-steps", opt.positive_int, "psat: PGD steps per norm (default 50 ℓ∞, 100 ℓ2, 50 ℓ1)"),
    ("--max-batches", opt.positive_int, "at most N batches per epoch (smoke tests)"),
    ("--checkpoint-every", opt.positive_int, "also keep the resume state every N optimiser steps (default: per epoch)"),
)


def cmd_cifar10(args: argparse.Namespace) -> int:
    from ..presets.cifar10 import Cifar10Config, run

    names = [flag[2:].replace("-", "_") for flag, _, _ in _OPTIONS] + ["backend", "batch_size"]
    given: dict[str, Any] = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    for k in ("backbones", "lam_grid", "grid", "baselines"):
        if k in given:
            given[k] = tuple(given[k])
    cfg = replace(Cifar10Config(), precision=args.precision, channels_last=args.channels_last, seed=args.seed,
                  **given)
    res = run(args.preset, args.out, cfg, root=args.data_root, device=args.device)
    sys.stdout.write((Path(args.out) / f"{args.preset}.md").read_text(encoding="utf-8"))
    sys.stdout.write(f"\nwrote {args.out}/ in {res['wall_seconds']:.0f} s\n")
    return 0


def register(sub: Any) -> None:
    from ..presets.cifar10 import PRESETS

    sp = sub.add_parser("cifar10", help="the papers' CIFAR-10 presets (reprogram, forge, psat): resumable, "
                                        "torchrun-able, mixed precision; docs/cifar10.md")
    sp.add_argument("preset", choices=sorted(PRESETS), help="; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    opt.add_out(sp, "output folder (rerun the same command to resume an interrupted run)", required=True)
    opt.add_data_root(sp)
    opt.add_batch_size(sp, None)
    for flag, kind, text in _OPTIONS:
        sp.add_argument(flag, type=kind, default=None, help=text)
    sp.add_argument("--backend", default=None, choices=["auto", "eager", "compiled"],
                    help="reprogram: NRPM kernels (default auto)")
    opt.add_precision(sp)
    opt.add_seed(sp)
    opt.add_device(sp)
    opt.add_common(sp)
    sp.set_defaults(fn=cmd_cifar10)
