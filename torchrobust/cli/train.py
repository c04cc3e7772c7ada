"""``torchrobust train``: train a zoo model (standard, FGSM/PGD-AT, TRADES, gaussian); torchrun-able."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import options as opt


def cmd_train(args: argparse.Namespace) -> int:
    """Train; a resume state is kept in ``--checkpoint-dir`` (default ``<out>.resume/``) after every epoch and
    every ``--checkpoint-every`` steps, so ``--resume`` continues a killed run bit for bit."""
    from ..train import TrainConfig, train_checkpoint

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                      mode=args.mode, threat=args.threat, eps=args.eps, steps=args.steps, alpha=args.alpha,
                      trades_beta=args.trades_beta, mart_beta=args.mart_beta,
                      awp_gamma=args.awp_gamma, noise_sigma=args.sigma, seed=args.seed,
                      max_batches=args.max_batches, progress=not args.quiet,
                      checkpoint_every=args.checkpoint_every, precision=args.precision,
                      channels_last=args.channels_last)
    res = train_checkpoint(args.model, args.out, cfg, model_kwargs=dict(args.model_arg or []), data=args.data,
                           root=args.data_root, n_train=args.n_train, validate=not args.no_val,
                           checkpoint_dir=args.checkpoint_dir, resume_run=args.resume, overwrite=args.overwrite,
                           device=args.device)
    if res is not None:  # the main process
        sys.stdout.write(f"saved {res.path} (final: {json.dumps(res.final)})\n")
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("train", help="train a zoo model (standard, FGSM/PGD-AT, TRADES, MART, AWP, gaussian); "
                        "torchrun-able")
    sp.add_argument("--model", required=True, help="zoo model name (see `torchrobust info`)")
    sp.add_argument("--model-arg", type=opt.key_value, action="append", metavar="KEY=JSON",
                    help="model keyword argument, e.g. --model-arg widths=[256,64] --model-arg activation=null")
    opt.add_data(sp)
    sp.add_argument("--n-train", type=int, default=None, help="use only the first N training examples")
    opt.add_out(sp, "checkpoint path (.safetensors)", required=True)
    opt.add_overwrite(sp, "replace an existing --out")
    sp.add_argument("--checkpoint-dir", default=None,
                    help="where the resume state is kept during training (default: <out>.resume/; removed once "
                         "--out is saved)")
    sp.add_argument("--checkpoint-every", type=opt.positive_int, default=None, metavar="N",
                    help="also write the resume state every N optimiser steps (default: after every epoch only)")
    sp.add_argument("--resume", action="store_true",
                    help="continue the interrupted run in --checkpoint-dir (same options; bitwise-identical result)")
    sp.add_argument("--epochs", type=opt.positive_int, default=5)
    opt.add_batch_size(sp, 128)
    sp.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    sp.add_argument("--lr", type=float, default=0.01)
    sp.add_argument("--momentum", type=float, default=0.9)
    sp.add_argument("--weight-decay", type=float, default=0.0)
    sp.add_argument("--schedule", default="none")
    sp.add_argument("--mode", default="standard", help="standard, fgsm, pgd, trades, gaussian, mart, pgd-awp, "
                    "trades-awp (docs/training.md)")
    sp.add_argument("--threat", default="Linf")
    sp.add_argument("--eps", type=float, default=0.3)
    sp.add_argument("--steps", type=int, default=10)
    sp.add_argument("--alpha", type=float, default=None)
    sp.add_argument("--trades-beta", type=float, default=6.0)
    sp.add_argument("--mart-beta", type=float, default=6.0, help="β of --mode mart (Wang et al. 2020)")
    sp.add_argument("--awp-gamma", type=float, default=5e-3,
                    help="relative weight perturbation γ of --mode pgd-awp/trades-awp (Wu et al. 2020)")
    sp.add_argument("--sigma", type=float, default=0.25, help="noise σ for --mode gaussian")
    opt.add_seed(sp)
    sp.add_argument("--max-batches", type=opt.positive_int, default=None, help="at most N batches per epoch")
    sp.add_argument("--no-val", action="store_true", help="skip the per-epoch validation accuracy")
    opt.add_device(sp)
    opt.add_precision(sp)
    opt.add_common(sp)
    sp.set_defaults(fn=cmd_train)

