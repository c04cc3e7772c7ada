"""The papers' experiments: ``torchrobust paper NAME`` (the reprogramming paper's tables and figures; ``adaptive``:
its models under the adaptive suite) and ``torchrobust psat train|evaluate|experiment`` (PSAT)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..attacks.threat import ThreatName
from ..errors import TorchRobustError
from ..models.lightweight import SMALL_IMAGE_STEM_STRIDE
from .options import (
    add_common,
    add_data,
    add_device,
    add_lightweight,
    add_out,
    add_overwrite,
    add_ramp_gp,
    add_seed,
    finite_number,
    float_list,
    name_list,
    nonnegative_int,
    positive_int,
)

THREATS = tuple(t.value for t in ThreatName)
# `paper adaptive` only (torchrobust.experiments.adaptive_reprogramming.run): option -> its value when not given
ADAPTIVE_ONLY = {"--eps": ("eps", None), "--models": ("models", None), "--paradigms": ("paradigms", None),
                 "--no-baseline": ("no_baseline", False),
                 "--budget": ("budget", None), "--steps": ("steps", None),
                 "--square-queries": ("square_queries", None), "--report-only": ("report_only", False)}


def paradigm_list(s: str) -> list[int | str]:
    """``--paradigms``: comma-separated integers (``1,2,3``); fig9/fig6 also take ``plain-adv`` (paradigm 3's
    adversarial fine-tuning without NRPM)."""
    from ..experiments.reprogramming_figures import PLAIN_ADV

    try:
        return [v if v == PLAIN_ADV else int(v) for v in name_list(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,2,3 (fig9/fig6 also take "
                                         f"{PLAIN_ADV}); got {s!r}") from None


# ----------------------------------------------------------------------------------------------- paper
def _paper_adaptive(args: argparse.Namespace) -> int:
    from ..experiments import adaptive_reprogramming as ar

    kw: dict[str, Any] = {k: v for k, v in (("eps", args.eps), ("models", args.models),
                                            ("paradigms", args.paradigms), ("state_dir", args.state_dir),
                                            ("budget", args.budget), ("steps", args.steps),
                                            ("square_queries", args.square_queries)) if v is not None}
    if args.no_baseline:
        kw["baseline"] = False
    if args.report_only:
        kw["report_only"] = True
    res = ar.run(args.out, n_test=args.n_test or 100, seed=args.seed, threads=args.threads, progress=not args.quiet,
                 profile=args.profile, device=args.device, **kw)
    sys.stdout.write((Path(args.out) / "adaptive_reprogramming.md").read_text())
    sys.stdout.write(f"\nwrote {args.out}/ in {res.get('wall_seconds', 0):.0f} s\n")
    return 0


def _paper_figure(args: argparse.Namespace) -> int:
    from ..experiments.reprogramming_figures import run_figure

    res = run_figure(args.name, args.out, n_test=args.n_test or 1000, profile=args.profile, seed=args.seed,
                     paradigms=tuple(args.paradigms or (1,)), device=args.device, progress=not args.quiet,
                     threads=args.threads)
    sys.stdout.write((Path(args.out) / f"{args.name}.md").read_text())
    sys.stdout.write(f"\nwrote {args.out}/ in {res['wall_seconds']:.0f} s\n")
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    from ..experiments.reprogramming import run
    from ..experiments.reprogramming_figures import FIGURES
    from ..validation import check_output_dir

    if args.name == "adaptive":  # the full adaptive evaluation (torchrobust.experiments.adaptive_reprogramming)
        if args.weights is not None:
            raise TorchRobustError("--weights applies to the paper presets (table1, table2, table3, table7, table8, "
                                   "lenet), not to 'adaptive'; drop --weights or pick a preset")
        if args.n_pgd is not None:
            raise TorchRobustError("--n-pgd sizes the robust evaluation of the other presets; `paper adaptive` runs "
                                   "PGD-20 on its --n-test images; drop --n-pgd")
        robust = [f for f, v in (("--robust", args.robust), ("--robust-eps", args.robust_eps),
                                 ("--robust-rows", args.robust_rows), ("--adaptive-budget", args.adaptive_budget))
                  if v is not None]
        if robust:
            verb = "applies" if len(robust) == 1 else "apply"
            raise TorchRobustError(f"{', '.join(robust)} {verb} to the paper presets (table1, table2, table3, "
                                   "table7, table8, lenet); `paper adaptive` runs FGSM, PGD-20 and its adaptive suite "
                                   f"(its budgets: --eps, --budget); drop {', '.join(robust)}")
        if args.no_resume:
            raise TorchRobustError("`paper adaptive` always keeps its finished cells (they are bound to the model "
                                   "and data by fingerprint); drop --no-resume, or pass a new --state-dir")
        check_output_dir(args.out)  # paper runs resume their finished cells, so existing results are not refused
        return _paper_adaptive(args)
    given = [flag for flag, (dest, unset) in ADAPTIVE_ONLY.items() if getattr(args, dest) != unset
             and not (flag == "--paradigms" and args.name in FIGURES)]
    preset_only = [f for f, v in (("--weights", args.weights), ("--n-pgd", args.n_pgd), ("--robust", args.robust),
                                  ("--robust-eps", args.robust_eps), ("--robust-rows", args.robust_rows),
                                  ("--adaptive-budget", args.adaptive_budget))
                   if v is not None]
    if args.name in FIGURES:
        preset_only += [f for f, v in (("--state-dir", args.state_dir), ("--no-resume", args.no_resume)) if v]
    if args.name in FIGURES and preset_only:
        raise TorchRobustError(f"`paper {args.name}` trains its own MLPs and evaluates --n-test images; drop "
                               f"{', '.join(preset_only)}")
    if given:
        raise TorchRobustError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for `paper adaptive` "
                               f"only; drop {'it' if len(given) == 1 else 'them'} for `paper {args.name}`")
    if args.adaptive_budget is not None and args.robust != "adaptive":
        raise TorchRobustError(f"--adaptive-budget is the budget of --robust adaptive (got --robust "
                               f"{args.robust or 'strong'}); add --robust adaptive or drop --adaptive-budget")
    check_output_dir(args.out)
    if args.name in FIGURES:
        return _paper_figure(args)
    res = run(args.name, args.out, n_test=args.n_test, profile=args.profile, seed=args.seed, n_pgd=args.n_pgd,
              device=args.device, progress=not args.quiet, threads=args.threads, weights=args.weights,
              robust_eval=args.robust or "strong", robust_eps=args.robust_eps, robust_rows=args.robust_rows,
              state_dir=args.state_dir, resume=not args.no_resume, adaptive_budget=args.adaptive_budget)
    md = Path(args.out) / f"{args.name}.md"
    if md.is_file():
        sys.stdout.write(md.read_text())
    sys.stdout.write(f"\nwrote {args.out}/ in {res.get('wall_seconds', 0):.0f} s\n")
    return 0


# ----------------------------------------------------------------------------------------------- psat
def _check_autoattack(names: list[str] | None) -> list[str] | None:
    """``--autoattack``: None (not run), ``[]`` (``standard``: the full reference version) or sub-attack names."""
    from ..attacks.autoattack import AA_ATTACKS

    bad = [a for a in names or () if a not in (*AA_ATTACKS, "standard")]
    if bad:
        raise TorchRobustError(f"unknown AutoAttack sub-attack(s) {bad}; valid: standard, {', '.join(AA_ATTACKS)}")
    return None if names is None else ([] if names == ["standard"] else names)


def cmd_psat_train(args: argparse.Namespace) -> int:
    from ..psat.train import train_to_dir

    # train_to_dir refuses an empty selection and existing checkpoints in --out before any work
    paths = train_to_dir(args.out, members=args.members or [], baselines=args.baselines or [], arch=args.arch,
                         dataset=args.data, root=args.data_root, n_train=args.n_train, epochs=args.epochs,
                         steps=args.steps, lr=args.lr, seed=args.seed, overwrite=args.overwrite,
                         ramp_gp=args.ramp_gp)
    for name, p in paths.items():
        sys.stdout.write(f"saved {name}: {p}\n")
    return 0


def cmd_psat_evaluate(args: argparse.Namespace) -> int:
    from ..psat.evaluation import evaluate_to_dir

    autoattack = _check_autoattack(args.autoattack)
    if not Path(args.run_dir).is_dir():
        raise TorchRobustError(f"PSAT run folder not found: {args.run_dir} (give the --out of psat train)")
    # evaluate_to_dir refuses tables already in the output folder before any work
    paths = evaluate_to_dir(args.run_dir, args.out, n_test=args.n_examples, restarts=args.restarts, steps=args.steps,
                            strategies=args.strategies, dataset=args.data, autoattack=autoattack, seed=args.seed,
                            overwrite=args.overwrite)
    sys.stdout.write(Path(paths["md"]).read_text())
    sys.stdout.write(f"\nwrote {', '.join(str(p) for p in paths.values())}\n")
    return 0


def cmd_psat_experiment(args: argparse.Namespace) -> int:
    from ..psat.experiment import STAGE_DEFAULTS, run_stage
    from ..validation import check_output_dir

    autoattack = _check_autoattack(args.autoattack)
    check_output_dir(args.out)  # stages add to one run folder; each refuses nothing already there
    budget = {k: v if (v := getattr(args, k)) is not None else default
              for k, default in STAGE_DEFAULTS[args.stage].items()}
    written = run_stage(args.stage, args.out, only=args.only, lr=args.lr, z_dim=args.z_dim, unit=args.unit,
                        n_test=args.n_test, start=args.start, **budget,
                        autoattack=autoattack, seed=args.seed, strategy=args.strategy,
                        stem_stride=args.stem_stride, input_size=args.input_size)
    sys.stdout.write(f"{args.stage}: wrote {', '.join(str(p) for p in written) or 'nothing'}\n")
    return 0


# ----------------------------------------------------------------------------------------------- parsers
def register(sub: Any) -> None:
    from ..experiments.adaptive_reprogramming import ARCHS, BUDGETS
    from ..experiments.reprogramming import PRESETS, PROFILES, ROBUST_EVALS, ROBUST_ROWS
    from ..experiments.reprogramming_figures import FIGURES
    from ..psat.experiment import STAGES

    sp = sub.add_parser("paper", help="reproduce a table/figure of the reprogramming paper on bundled MNIST")
    sp.add_argument("name", choices=sorted([*PRESETS, *FIGURES, "adaptive"]),
                    help="; ".join(f"{k}: {v}" for k, v in {**PRESETS, **FIGURES}.items())
                    + "; adaptive: FGSM, PGD-20 and the adaptive suite on the MLP/LeNet paradigms 1-3 (resumable)")
    add_out(sp, "output folder (finished cells of an earlier run are reused)", default="paper-results")
    sp.add_argument("--profile", default="fast", choices=sorted(PROFILES))
    sp.add_argument("--n-test", type=positive_int, default=None,
                    help="FGSM evaluation size (default: profile's, 10000; adaptive: 100)")
    sp.add_argument("--n-pgd", type=positive_int, default=None,
                    help="size of the robust evaluation (--robust: strong or PGD-20) (default: profile's, 1000)")
    sp.add_argument("--robust", default=None, choices=list(ROBUST_EVALS),
                    help="robust evaluation of the selected rows on the first --n-pgd images: strong (default: "
                    "per-example worst case over FGSM, APGD-CE, APGD-T), pgd20 (the earlier PGD-20 column, weak; "
                    "reproduces the numbers in the docs) or adaptive (FGSM, PGD-20, then BPDA, transfer and black-box "
                    "attacks on the survivors, as `paper adaptive`; resumable); presets only")
    sp.add_argument("--robust-eps", type=float_list, default=None, metavar="EPS",
                    help="ℓ∞ budgets of --robust, in (0, 1] (default: profile's; fast .1,.2,.3, full all six); presets "
                    "only")
    sp.add_argument("--adaptive-budget", default=None, choices=list(BUDGETS), metavar="NAME",
                    help="attack budget of --robust adaptive: " + ", ".join(BUDGETS) + " (default: default, "
                    "APGD-class white-box for MLP and LeNet; fast: LeNet with the earlier PGD-50 white-box, weak, "
                    "labelled so; reproduces the LeNet numbers documented before); presets only")
    sp.add_argument("--robust-rows", default=None, choices=list(ROBUST_ROWS),
                    help="rows that get --robust: selected (each preset's list) or all (default: profile's; fast "
                    "selected, full all); presets only")
    add_seed(sp)
    add_device(sp)
    sp.add_argument("--weights", default=None, metavar="PATH",
                    help="the paper code's released checkpoint (mlp3_mnist_model.pth or lenet_mnist_model.pth, "
                    "read with weights_only=True) as the backbone instead of training one")
    sp.add_argument("--state-dir", default=None,
                    help="where finished trainings and rows (presets) or cells (adaptive) are kept as they finish, so "
                    "rerunning the same command after an interruption resumes it (default OUT/state)")
    sp.add_argument("--no-resume", action="store_true",
                    help="presets: read and write no state (recompute every training and row)")
    ad = sp.add_argument_group("paper adaptive only (docs/adaptive-evaluation.md)")
    ad.add_argument("--eps", type=float_list, default=None, help="ℓ∞ budgets in (0, 1] (default 0.1,0.2,0.3)")
    ad.add_argument("--models", type=name_list, default=None, help=f"subset of {','.join(ARCHS)} (default: both)")
    ad.add_argument("--paradigms", type=paradigm_list, default=None,
                    help="subset of 1,2,3 (default: all; fig9/fig6 take it too, default 1, and also plain-adv: the "
                    "backbone fine-tuned with paradigm 3's recipe without NRPM)")
    ad.add_argument("--no-baseline", action="store_true", help="skip the undefended backbone rows")
    ad.add_argument("--budget", default=None, choices=sorted(BUDGETS), help="attack budgets (default: default)")
    ad.add_argument("--steps", type=positive_int, default=None, help="override the suite's PGD steps")
    ad.add_argument("--square-queries", type=positive_int, default=None, help="override Square's query budget")
    ad.add_argument("--report-only", action="store_true",
                    help="compute nothing: write the table of the cells finished so far")
    add_common(sp)
    sp.set_defaults(fn=cmd_paper, threads=1)

    sp = sub.add_parser("psat", help="PSAT: train hypernetwork members per threat model / multi-norm baselines; "
                                     "evaluate the lowest-entropy aggregate; the staged MNIST experiment")
    psub = sp.add_subparsers(dest="psat_command", required=True, parser_class=type(sp))
    tp = psub.add_parser("train", help="train PSAT members (one per threat model) and/or the baselines")
    add_out(tp, "run folder (one checkpoint per member/baseline)", required=True)
    add_overwrite(tp, "replace member/baseline checkpoints already in --out")
    tp.add_argument("--members", type=name_list, default=list(THREATS), help="threat models, comma-separated")
    tp.add_argument("--baselines", type=name_list, default=[], help="any of max,avg,msd,eat,ramp "
                    "(AT_max, AT_avg, AT_msd, E-AT, RAMP)")
    tp.add_argument("--arch", default="hyper_msd_cnn")
    add_data(tp)
    tp.add_argument("--n-train", type=positive_int, default=None)
    tp.add_argument("--epochs", type=positive_int, default=1)
    tp.add_argument("--steps", type=positive_int, default=10, help="PGD steps of the training adversaries")
    tp.add_argument("--lr", type=finite_number, default=1e-3)
    add_ramp_gp(tp)
    add_seed(tp)
    add_common(tp)
    tp.set_defaults(fn=cmd_psat_train)

    autoattack_help = ("also run the reference AutoAttack per norm, e.g. apgd-ce,apgd-t (or 'standard' for all of "
                       "it); each row is then the per-example worst case over PGD and AutoAttack")
    ep = psub.add_parser("evaluate", help="ℓ∞/ℓ2/ℓ1 PGD with restarts on members, aggregate and baselines")
    ep.add_argument("run_dir")
    ep.add_argument("--n-examples", type=positive_int, default=1000)
    ep.add_argument("--restarts", type=positive_int, default=10)
    ep.add_argument("--steps", type=positive_int, default=None,
                    help="PGD steps per norm (default: 50 ℓ∞, 100 ℓ2, 50 ℓ1)")
    ep.add_argument("--strategies", type=name_list, default=["entropy"], help="entropy, average")
    ep.add_argument("--autoattack", type=name_list, default=None, metavar="SUBATTACKS", help=autoattack_help)
    add_data(ep)
    add_out(ep, "folder for the tables (default: the run folder; refused if it already holds them)")
    add_overwrite(ep, "replace tables already in the output folder")
    add_seed(ep)
    add_common(ep)
    ep.set_defaults(fn=cmd_psat_evaluate)

    xp = psub.add_parser("experiment", help="one stage of the staged PSAT MNIST experiment (docs/psat.md): members, "
                                            "baselines, evaluate, routing, table; lightweight (Table 5); tables "
                                            "(Tables 3, 4 and 6)")
    xp.add_argument("stage", choices=STAGES)
    add_out(xp, "run folder shared by the stages", required=True)
    xp.add_argument("--only", type=name_list, default=None,
                    help="members: Linf,L2,L1; baselines: max,avg,msd; evaluate: psat, members, AT_max, ... "
                         "(writes part_*.json for the table stage); lightweight: timm names (default "
                         "mobilenetv1_100,mobilenetv3_small_100,mobilenetv3_large_100,ghostnet_100); tables: "
                         "table3,table4,table6 (default all)")
    xp.add_argument("--strategy", default="stochastic",
                    help="lightweight: multi-norm training, stochastic (one random norm per batch, PSAT Table 5) "
                         "or max, avg, msd, eat, ramp")
    add_lightweight(xp, SMALL_IMAGE_STEM_STRIDE)
    xp.add_argument("--n-train", type=positive_int, default=None,
                    help="random training images (default 10000; tables: 60000)")
    xp.add_argument("--epochs", type=positive_int, default=None, help="default 1; tables: 5")
    xp.add_argument("--train-steps", type=positive_int, default=None,
                    help="PGD steps of the training adversaries (default 5; tables: 10)")
    xp.add_argument("--lr", type=finite_number, default=1e-3)
    xp.add_argument("--z-dim", type=positive_int, default=32, help="members' hypernetwork latent size")
    xp.add_argument("--unit", type=positive_int, default=32, help="members' hypernetwork unit size")
    xp.add_argument("--n-test", type=positive_int, default=1000, help="test images from --start (default 1000)")
    xp.add_argument("--start", type=nonnegative_int, default=0, help="first test index (split the evaluation)")
    xp.add_argument("--steps", type=positive_int, default=None,
                    help="PGD steps per norm of evaluate/routing/tables (default 10; tables: 50)")
    xp.add_argument("--restarts", type=positive_int, default=None, help="PGD restarts (default 1; tables: 3)")
    xp.add_argument("--autoattack", type=name_list, default=None, metavar="SUBATTACKS", help=autoattack_help)
    add_seed(xp)
    add_common(xp)
    xp.set_defaults(fn=cmd_psat_experiment, threads=1)
