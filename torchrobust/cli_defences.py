"""CLI sub-commands of the defences, the papers' experiments and certification (parsing only).

``torchrobust paper NAME``      one reproduced table/figure of the reprogramming paper (Tables 1, 2, 3, 7, 8, LeNet)
``torchrobust reprogram CKPT``  NRPM-reprogram a checkpoint (paradigm 1) and save it
``torchrobust forge CKPT``      forge a checkpoint (data-driven Lipschitz), or ``--search`` over c_r
``torchrobust certify CKPT``    randomized-smoothing certification (Cohen et al. CERTIFY) + curve
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .cli_options import finite_number, float_list, name_list, nonnegative_int, positive_int
from .errors import TorchRobustError
from .validation import check_output_dir, check_output_file

CERTIFY_FILES = ("certify.json", "certified_accuracy.png")
SEARCH_FILES = ("cr_search.json", "cr_search.csv", "cr_search.md", "cr_search.png", "forged.safetensors")
PSAT_TABLE_FILES = ("psat_table.md", "psat_table.csv", "psat_table.tex", "psat_table.json", "psat_table_attacks.md")


# ----------------------------------------------------------------------------------------------- commands
def cmd_paper(args: argparse.Namespace) -> int:
    from .experiments.reprogramming import run

    check_output_dir(args.out)  # paper runs resume their finished cells, so existing results are not refused
    if args.name == "adaptive":  # the full adaptive evaluation (torchrobust.experiments.adaptive_reprogramming)
        from .experiments import adaptive_reprogramming as ar

        res = ar.run(args.out, n_test=args.n_test or 100, seed=args.seed, threads=args.threads,
                     progress=not args.quiet, profile=args.profile, device=args.device)
        sys.stdout.write((Path(args.out) / "adaptive_reprogramming.md").read_text())
        sys.stdout.write(f"\nwrote {args.out}/ in {res.get('wall_seconds', 0):.0f} s\n")
        return 0
    res = run(args.name, args.out, n_test=args.n_test, profile=args.profile, seed=args.seed, n_pgd=args.n_pgd,
              device=args.device, progress=not args.quiet, threads=args.threads)
    md = Path(args.out) / f"{args.name}.md"
    if md.is_file():
        sys.stdout.write(md.read_text())
    sys.stdout.write(f"\nwrote {args.out}/ in {res.get('wall_seconds', 0):.0f} s\n")
    return 0


def cmd_reprogram(args: argparse.Namespace) -> int:
    from .checkpoint import load, save
    from .reprogram import reprogram

    check_output_file(args.out, overwrite=args.overwrite)
    model = load(args.checkpoint)
    layers: Any = args.layers.split(",") if args.layers and "," in args.layers else args.layers
    robust = reprogram(model, lam=args.lam, K=args.K, eps=args.irls_eps, layers=layers, inplace=True)
    path = save(robust, args.out, reprogrammed_from=str(args.checkpoint), paradigm=1)
    sys.stdout.write(f"saved {path}\n")
    return 0


def cmd_forge(args: argparse.Namespace) -> int:
    from .forge import forge_checkpoint, search_checkpoint

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


def cmd_certify(args: argparse.Namespace) -> int:
    import torch

    from . import data
    from .checkpoint import atomic_write_bytes, load
    from .evaluate.certify import Smooth, certified_accuracy_curve, certify_dataset, plot_certified_accuracy
    from .validation import probe_logits

    out = check_output_dir(args.out, CERTIFY_FILES, overwrite=args.overwrite)
    model = load(args.checkpoint)
    x, y = data.as_tensors(data.load(args.data, args.split, root=args.data_root), args.n_examples)
    smooth = Smooth(model, num_classes=probe_logits(model, x), sigma=args.sigma)
    g = torch.Generator().manual_seed(args.seed)
    results = certify_dataset(smooth, x, y, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size,
                              generator=g, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    radii = [i * 0.25 for i in range(0, 17)]
    curve = certified_accuracy_curve(results, radii)
    doc = {"checkpoint": str(args.checkpoint), "sigma": args.sigma, "n0": args.n0, "n": args.n, "alpha": args.alpha,
           "seed": args.seed, "n_examples": len(results), "radii": radii, "certified_accuracy": curve.tolist(),
           "per_example": [r.to_dict() for r in results]}
    atomic_write_bytes(out / "certify.json", (json.dumps(doc, indent=1) + "\n").encode())
    plot_certified_accuracy(results, out / "certified_accuracy.png")
    for r, a in zip(radii, curve.tolist(), strict=True):
        sys.stdout.write(f"radius {r:5.2f}: certified accuracy {100 * a:5.1f} %\n")
    sys.stdout.write(f"wrote {out}/certify.json, certified_accuracy.png\n")
    return 0


def cmd_psat(args: argparse.Namespace) -> int:
    import torch

    from . import data, psat

    if args.psat_command == "train":
        names = [*(args.members or []), *(f"AT_{b}" for b in args.baselines or [])]
        if not names:
            raise TorchRobustError("nothing to train: --members and --baselines are both empty; name at least one")
        check_output_dir(args.out, [f"{n}.safetensors" for n in names], overwrite=args.overwrite)
    else:
        from .attacks.autoattack import AA_ATTACKS

        bad = [a for a in args.autoattack or () if a not in (*AA_ATTACKS, "standard")]
        if bad:
            raise TorchRobustError(f"unknown AutoAttack sub-attack(s) {bad}; valid: standard, {', '.join(AA_ATTACKS)}")
        if not Path(args.run_dir).is_dir():
            raise TorchRobustError(f"PSAT run folder not found: {args.run_dir} (give the --out of psat train)")
        check_output_dir(args.out or args.run_dir, PSAT_TABLE_FILES, overwrite=args.overwrite)
    torch.manual_seed(args.seed)
    if args.psat_command == "train":
        x, y = data.as_tensors(data.load(args.data, "train", root=args.data_root), args.n_train)
        kw: dict[str, Any] = {"epochs": args.epochs, "lr": args.lr, "seed": args.seed}
        steps = {t: args.steps for t in ("Linf", "L2", "L1")}
        if args.members:
            paths = psat.train_members(args.out, (x, y), threats=args.members, arch=args.arch, steps=steps, **kw)
        else:
            paths = {}
        if args.baselines:
            paths.update(psat.train_baselines(args.out, (x, y), strategies=args.baselines, steps=steps, **kw))
        for name, p in paths.items():
            sys.stdout.write(f"saved {name}: {p}\n")
        return 0
    steps = None if args.steps is None else {t: args.steps for t in ("Linf", "L2", "L1")}
    rows = psat.evaluate(args.run_dir, n_test=args.n_examples, restarts=args.restarts, steps=steps,
                         strategies=args.strategies, dataset=args.data,
                         autoattack=None if args.autoattack is None else
                         ([] if args.autoattack == ["standard"] else args.autoattack))
    paths = psat.write_tables(rows, args.out or args.run_dir)
    sys.stdout.write(Path(paths["md"]).read_text())
    sys.stdout.write(f"\nwrote {', '.join(str(p) for p in paths.values())}\n")
    return 0


# ----------------------------------------------------------------------------------------------- parsers
def register(sub: Any, common: Any) -> None:
    from .experiments.reprogramming import PRESETS, PROFILES

    sp = sub.add_parser("paper", help="reproduce a table/figure of the reprogramming paper on bundled MNIST")
    sp.add_argument("name", choices=sorted([*PRESETS, "adaptive"]),
                    help="; ".join(f"{k}: {v}" for k, v in PRESETS.items())
                    + "; adaptive: FGSM, PGD-20 and the adaptive suite on the MLP/LeNet paradigms 1-3 (resumable)")
    sp.add_argument("--out", default="paper-results")
    sp.add_argument("--profile", default="fast", choices=sorted(PROFILES))
    sp.add_argument("--n-test", type=positive_int, default=None,
                    help="FGSM evaluation size (default: profile's, 10000)")
    sp.add_argument("--n-pgd", type=positive_int, default=None,
                    help="PGD-20 evaluation size (default: profile's, 1000)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default=None)
    common(sp)
    sp.set_defaults(fn=cmd_paper, threads=1)

    sp = sub.add_parser("reprogram", help="NRPM-reprogram a checkpoint (paradigm 1: fixed λ, K) and save it")
    sp.add_argument("checkpoint")
    sp.add_argument("--lam", type=finite_number, default=0.5, help="λ, the weight of the linear (LPM) part, in [0, 1]")
    sp.add_argument("--K", type=nonnegative_int, default=3, help="IRLS iterations")
    sp.add_argument("--irls-eps", type=finite_number, default=1e-3, help="ε inside the IRLS weights 1/(|r|+ε)")
    sp.add_argument("--layers", default=None, help="layer names (comma-separated) or a glob; default: paper's")
    sp.add_argument("--out", required=True, help="reprogrammed checkpoint path (refused if it exists)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    common(sp)
    sp.set_defaults(fn=cmd_reprogram)

    sp = sub.add_parser("forge", help="insert calibrated forged thresholds (data-driven Lipschitz) into a checkpoint")
    sp.add_argument("checkpoint")
    sp.add_argument("--out", required=True, help="forged checkpoint path, or the output folder with --search "
                    "(refused if it already holds results)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing --out checkpoint / search results")
    sp.add_argument("--c-r", type=finite_number, default=None, help="threshold ratio c_r, e.g. 2**-7")
    sp.add_argument("--search", action="store_true", help="search c_r over a grid on held-out training data")
    sp.add_argument("--grid", type=float_list, default=None, help="c_r grid for --search (default 2**-10..2**-4)")
    sp.add_argument("--data", default="mnist")
    sp.add_argument("--data-root", default=None)
    sp.add_argument("--n-calib", type=positive_int, default=None, help="calibration examples from the training split")
    sp.add_argument("--n-val", type=positive_int, default=1000)
    sp.add_argument("--eps", type=finite_number, default=0.3)
    sp.add_argument("--steps", type=positive_int, default=20)
    sp.add_argument("--no-bpda", action="store_true", help="skip the BPDA-adaptive column of --search")
    sp.add_argument("--seed", type=int, default=0)
    common(sp)
    sp.set_defaults(fn=cmd_forge)

    sp = sub.add_parser("psat", help="PSAT: train hypernetwork members per threat model / multi-norm baselines; "
                                     "evaluate the lowest-entropy aggregate")
    psub = sp.add_subparsers(dest="psat_command", required=True, parser_class=type(sp))
    tp = psub.add_parser("train", help="train PSAT members (one per threat model) and/or the baselines")
    tp.add_argument("--out", required=True, help="run folder (one checkpoint per member/baseline)")
    tp.add_argument("--overwrite", action="store_true", help="replace member/baseline checkpoints already in --out")
    tp.add_argument("--members", type=name_list, default=["Linf", "L2", "L1"], help="threat models, comma-separated")
    tp.add_argument("--baselines", type=name_list, default=[], help="any of max,avg,msd (AT_max, AT_avg, AT_msd)")
    tp.add_argument("--arch", default="hyper_msd_cnn")
    tp.add_argument("--data", default="mnist")
    tp.add_argument("--data-root", default=None)
    tp.add_argument("--n-train", type=positive_int, default=None)
    tp.add_argument("--epochs", type=positive_int, default=1)
    tp.add_argument("--steps", type=positive_int, default=10, help="PGD steps of the training adversaries")
    tp.add_argument("--lr", type=finite_number, default=1e-3)
    tp.add_argument("--seed", type=int, default=0)
    common(tp)
    tp.set_defaults(fn=cmd_psat)
    ep = psub.add_parser("evaluate", help="ℓ∞/ℓ2/ℓ1 PGD with restarts on members, aggregate and baselines")
    ep.add_argument("run_dir")
    ep.add_argument("--n-examples", type=positive_int, default=1000)
    ep.add_argument("--restarts", type=positive_int, default=10)
    ep.add_argument("--steps", type=positive_int, default=None,
                    help="PGD steps per norm (default: 50 ℓ∞, 100 ℓ2, 50 ℓ1)")
    ep.add_argument("--strategies", type=name_list, default=["entropy"], help="entropy, average")
    ep.add_argument("--autoattack", type=name_list, default=None, metavar="SUBATTACKS",
                    help="also run the reference AutoAttack per norm, e.g. apgd-ce,apgd-t (or 'standard' for all "
                         "of it); each row is then the per-example worst case over PGD and AutoAttack")
    ep.add_argument("--data", default="mnist")
    ep.add_argument("--data-root", default=None)
    ep.add_argument("--out", default=None, help="folder for the tables (default: the run folder; refused if it "
                    "already holds them)")
    ep.add_argument("--overwrite", action="store_true", help="replace tables already in the output folder")
    ep.add_argument("--seed", type=int, default=0)
    common(ep)
    ep.set_defaults(fn=cmd_psat)

    sp = sub.add_parser("certify", help="randomized-smoothing certification (Cohen et al. 2019) of a checkpoint")
    sp.add_argument("checkpoint")
    sp.add_argument("--sigma", type=finite_number, default=0.25)
    sp.add_argument("--n0", type=positive_int, default=100)
    sp.add_argument("--n", type=positive_int, default=10000)
    sp.add_argument("--alpha", type=finite_number, default=0.001)
    sp.add_argument("--batch-size", type=positive_int, default=1000)
    sp.add_argument("--data", default="mnist")
    sp.add_argument("--data-root", default=None)
    sp.add_argument("--split", default="test")
    sp.add_argument("--n-examples", type=positive_int, default=100)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default="certify-results", help="results folder (refused if it already holds results)")
    sp.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    common(sp)
    sp.set_defaults(fn=cmd_certify)
