"""``torchrobust reprogram`` (NRPM, paradigm 1: ``experiments.workflows.reprogram_checkpoint``) and
``torchrobust forge`` (forged thresholds, or ``--search`` c_r)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import TorchRobustError
from .options import (
    add_common,
    add_data,
    add_out,
    add_overwrite,
    add_seed,
    finite_number,
    float_list,
    nonnegative_int,
    positive_int,
)

SEARCH_FILES = ("cr_search.json", "cr_search.csv", "cr_search.md", "cr_search.png", "forged.safetensors")


def cmd_reprogram(args: argparse.Namespace) -> int:
    from ..experiments.workflows import reprogram_checkpoint
    from ..validation import check_output_file

    check_output_file(args.out, overwrite=args.overwrite)
    layers: Any = args.layers.split(",") if args.layers and "," in args.layers else args.layers
    path = reprogram_checkpoint(args.checkpoint, args.out, lam=args.lam, K=args.K, irls_eps=args.irls_eps,
                                layers=layers, overwrite=args.overwrite)
    sys.stdout.write(f"saved {path}\n")
    return 0


def cmd_forge(args: argparse.Namespace) -> int:
    from ..forging import forge_checkpoint, search_checkpoint
    from ..validation import check_output_dir, check_output_file

    if args.search:
        if args.c_r is not None:
            raise TorchRobustError("--c-r and --search exclude each other: --search chooses c_r on validation data; "
                                   "drop one of them")
        check_output_dir(args.out, SEARCH_FILES, overwrite=args.overwrite)
        kw: dict[str, Any] = {}
        if args.grid:
            kw["grid"] = args.grid
        res = search_checkpoint(args.checkpoint, args.out, data=args.data, n_calib=args.n_calib, n_val=args.n_val,
                                eps=args.eps, steps=args.steps, bpda=not args.no_bpda, seed=args.seed,
                                root=args.data_root, progress=not args.quiet, **kw)
        sys.stdout.write(json.dumps(res.to_json(), indent=1)[:4000] + "\n")
        sys.stdout.write(f"wrote {args.out}/\n")
        return 0
    if args.c_r is None:
        raise TorchRobustError("give --c-r VALUE (e.g. 2**-7) or --search to choose it on validation data")
    if args.grid is not None:
        raise TorchRobustError("--grid is the c_r grid of --search; with --c-r drop it (or use --search)")
    check_output_file(args.out, overwrite=args.overwrite)
    path = forge_checkpoint(args.checkpoint, args.out, data=args.data, c_r=args.c_r, n_calib=args.n_calib,
                            seed=args.seed, root=args.data_root, progress=not args.quiet)
    sys.stdout.write(f"saved {path}\n")
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("reprogram", help="NRPM-reprogram a checkpoint (paradigm 1: fixed λ, K) and save it")
    sp.add_argument("checkpoint")
    sp.add_argument("--lam", type=finite_number, default=0.5, help="λ, the weight of the linear (LPM) part, in [0, 1]")
    sp.add_argument("--K", type=nonnegative_int, default=3, help="IRLS iterations")
    sp.add_argument("--irls-eps", type=finite_number, default=1e-3, help="ε inside the IRLS weights 1/(|r|+ε)")
    sp.add_argument("--layers", default=None, help="layer names (comma-separated) or a glob; default: paper's")
    add_out(sp, "reprogrammed checkpoint path (refused if it exists)", required=True)
    add_overwrite(sp, "replace an existing --out")
    add_common(sp)
    sp.set_defaults(fn=cmd_reprogram)

    sp = sub.add_parser("forge", help="insert calibrated forged thresholds (data-driven Lipschitz) into a checkpoint")
    sp.add_argument("checkpoint")
    add_out(sp, "forged checkpoint path, or the output folder with --search (refused if it already holds results)",
            required=True)
    add_overwrite(sp, "replace an existing --out checkpoint / search results")
    sp.add_argument("--c-r", type=finite_number, default=None, help="threshold ratio c_r, e.g. 2**-7")
    sp.add_argument("--search", action="store_true", help="search c_r over a grid on held-out training data")
    sp.add_argument("--grid", type=float_list, default=None, help="c_r grid for --search (default 2**-10..2**-4)")
    add_data(sp)
    sp.add_argument("--n-calib", type=positive_int, default=None, help="calibration examples from the training split")
    sp.add_argument("--n-val", type=positive_int, default=1000)
    sp.add_argument("--eps", type=finite_number, default=0.3)
    sp.add_argument("--steps", type=positive_int, default=20)
    sp.add_argument("--no-bpda", action="store_true", help="skip the BPDA-adaptive column of --search")
    add_seed(sp)
    add_common(sp)
    sp.set_defaults(fn=cmd_forge)
