"""``torchrobust forge-tables``: the data-driven Lipschitz paper's Tables 8/9 (ε sweeps) and Table 6 (C&W-ℓ∞),
forged vs plain, on MNIST (:func:`torchrobust.experiments.forge_tables.run_forge_tables`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .options import add_common, add_data_root, add_out, add_seed, finite_number, float_list, positive_int


def cmd_forge_tables(args: argparse.Namespace) -> int:
    from ..experiments.forge_tables import PAPER_EPS, run_forge_tables

    res = run_forge_tables(args.out, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                           max_batches=args.max_batches, n_test=args.n_test, n_calib=args.n_calib, c_r=args.c_r,
                           eps=args.eps or PAPER_EPS, seed=args.seed, certify=args.certify, sigma=args.sigma,
                           n_smooth=args.n_smooth, root=args.data_root, progress=not args.quiet)
    for table in res["tables"].values():
        sys.stdout.write(table.to_markdown() + "\n\n")
    sys.stdout.write(f"wrote {args.out}/\n")
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("forge-tables", help="data-driven Lipschitz Tables 8/9 + 6 on MNIST: forged vs plain, "
                        "default attacks and BPDA over the paper's ε grid")
    add_out(sp, "output folder (tables, engine state, trained model; a rerun resumes)", required=True)
    sp.add_argument("--epochs", type=positive_int, default=3, help="PGD-AT epochs (docs/forge.md model A: 3)")
    sp.add_argument("--warmup-epochs", type=int, default=1, help="standard warm-up epochs before PGD-AT (0: none)")
    sp.add_argument("--max-batches", type=positive_int, default=None, help="batches per training epoch (tests)")
    sp.add_argument("--n-test", type=positive_int, default=1000, help="first N test images (default 1000)")
    sp.add_argument("--n-calib", type=positive_int, default=59000, help="calibration images (training 0..N-1)")
    sp.add_argument("--c-r", type=finite_number, default=2.0**-7, help="threshold ratio c_r (default 2**-7)")
    sp.add_argument("--eps", type=float_list, default=None, help="ε grid (default the paper's 1,2,4,...,64/255)")
    sp.add_argument("--certify", action="store_true", help="also Fig. 3: randomized-smoothing certified accuracy")
    sp.add_argument("--sigma", type=finite_number, default=0.25, help="noise σ of --certify (default 0.25)")
    sp.add_argument("--n-smooth", type=positive_int, default=10_000, help="noise samples per image of --certify")
    add_data_root(sp)
    add_seed(sp)
    add_common(sp)
    sp.set_defaults(fn=cmd_forge_tables)
