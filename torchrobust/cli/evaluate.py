"""``torchrobust evaluate`` (an ε sweep or the adaptive suite; torchrun-able) and ``torchrobust certify``
(randomized smoothing, Cohen et al. 2019)."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import TorchRobustError
from . import options as opt

# results.json is written last: it marks a finished run. Without it the folder holds an interrupted run, which the
# same command resumes from its fingerprinted state (state.safetensors), rewriting the other result files.
SWEEP_FILES = ("results.json",)
# adaptive.json is written last: it marks a finished run. Without it the folder holds an interrupted run, which
# resumes from its fingerprinted per-ε state (torchrobust.resume) and rewrites adaptive.csv/.md.
ADAPTIVE_FILES = ("adaptive.json",)
CERTIFY_FILES = ("certify.json", "certified_accuracy.png")


def _attack_kwargs(names: Sequence[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-attack keyword arguments: --steps/--restarts where the attack takes them, then --attack-arg."""
    from .. import attacks

    kw: dict[str, dict[str, Any]] = {}
    for a in names:
        params = inspect.signature(attacks.attack_class(a).__init__).parameters
        kw[a] = {k: v for k, v in (("steps", args.steps), ("restarts", args.restarts))
                 if k in params and v is not None}  # not given: each attack's own default (APGD: 100 steps)
        if "early_stop" in params:
            kw[a]["early_stop"] = True  # changes no result (successes are kept), saves compute
    for (key, value) in args.attack_arg or []:
        name, _, param = key.partition(".")
        if not param or name not in names:
            raise TorchRobustError(f"--attack-arg {key}=...: expected ATTACK.PARAM with ATTACK one of "
                                   f"{', '.join(names)}, e.g. --attack-arg pgd.alpha=0.01")
        kw[name][param] = value
    return kw


def _check_evaluate_args(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Everything about ``evaluate``'s arguments that can be checked before loading anything; returns the
    per-attack keyword arguments of a sweep."""
    from ..attacks import get_threat
    from ..validation import check_output_dir

    get_threat(args.threat, 0.0)
    if args.suite == "adaptive":
        ignored = [flag for flag, given in (("--attacks", args.attacks is not None),
                                            ("--attack-arg", bool(args.attack_arg))) if given]
        if ignored:
            raise TorchRobustError(f"--suite adaptive runs its own fixed attack suite and cannot take "
                                   f"{' or '.join(ignored)}; drop {'them' if len(ignored) > 1 else 'it'} or use "
                                   "--suite sweep")
        if not any(e > 0 for e in args.eps):
            raise TorchRobustError("--suite adaptive needs at least one eps > 0, e.g. --eps 0.1,0.3")
        check_output_dir(args.out, ADAPTIVE_FILES, overwrite=args.overwrite)
        return {}
    if args.attacks is None:
        from ..evaluate.sweeps import DEFAULT_ATTACKS

        args.attacks = list(DEFAULT_ATTACKS)
    if not args.attacks:
        raise TorchRobustError("--attacks is empty; name at least one attack, e.g. --attacks fgsm,apgd-ce,apgd-t")
    kw = _attack_kwargs(args.attacks, args)
    check_output_dir(args.out, SWEEP_FILES, overwrite=args.overwrite)
    return kw


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..experiments.evaluation import evaluate_checkpoint

    attack_kwargs = _check_evaluate_args(args)
    paths = evaluate_checkpoint(args.checkpoint, args.out, args.suite, data=args.data, split=args.split,
                                data_root=args.data_root, n_examples=args.n_examples, device=args.device,
                                threat=args.threat, eps=args.eps, attacks=args.attacks or (),
                                attack_kwargs=attack_kwargs, steps=args.steps, restarts=args.restarts,
                                batch_size=args.batch_size, seed=args.seed, checks=args.checks,
                                progress=not args.quiet)
    if paths is not None:  # the main process
        sys.stdout.write(Path(paths["md"]).read_text())
        if args.suite == "adaptive":
            sys.stdout.write(f"\nwrote {Path(args.out)}/adaptive.json, adaptive.csv, adaptive.md\n")
        else:
            sys.stdout.write(f"\nwrote {args.out}/ (results.json, results.csv, results.md, accuracy_vs_eps.png)\n")
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    from ..experiments.evaluation import certify_checkpoint
    from ..validation import check_output_dir

    out = check_output_dir(args.out, CERTIFY_FILES, overwrite=args.overwrite)
    doc = certify_checkpoint(args.checkpoint, out, data=args.data, split=args.split, data_root=args.data_root,
                             n_examples=args.n_examples, sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha,
                             batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    for r, a in zip(doc["radii"], doc["certified_accuracy"], strict=True):
        sys.stdout.write(f"radius {r:5.2f}: certified accuracy {100 * a:5.1f} %\n")
    sys.stdout.write(f"wrote {out}/certify.json, certified_accuracy.png\n")
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("evaluate", help="clean + robust accuracy over an ε sweep; torchrun-able")
    sp.add_argument("checkpoint")
    opt.add_data(sp)
    sp.add_argument("--split", default="test")
    sp.add_argument("--n-examples", type=opt.positive_int, default=1000,
                    help="first N examples of the split (papers' protocol)")
    sp.add_argument("--attacks", type=opt.name_list, default=None,
                    help="comma-separated (default fgsm,apgd-ce,apgd-t: the per-example worst case over APGD-CE and "
                         "APGD-T on its survivors, plus FGSM as the papers' column); --suite sweep")
    sp.add_argument("--threat", default="Linf")
    sp.add_argument("--eps", type=opt.float_list, default=[0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
    sp.add_argument("--steps", type=opt.positive_int, default=None,
                    help="iterations of every attack that takes them (default: each attack's own; APGD 100)")
    sp.add_argument("--restarts", type=opt.positive_int, default=None, help="restarts (default: each attack's own)")
    sp.add_argument("--attack-arg", type=opt.key_value, action="append", metavar="ATTACK.PARAM=JSON",
                    help="attack keyword argument, e.g. --attack-arg square.n_queries=1000 (--suite sweep)")
    sp.add_argument("--suite", choices=["sweep", "adaptive"], default="sweep",
                    help="sweep: the given attacks over ε; adaptive: AutoAttack/BPDA/EOT/transfer/black-box, "
                         "per-example worst case (resumable)")
    sp.add_argument("--checks", action="store_true", help="run the gradient-masking checks on the sweep")
    opt.add_batch_size(sp, 500)
    opt.add_seed(sp)
    opt.add_out(sp, "results folder (refused if it already holds results). The evaluation state is saved there "
                "after every batch (state.safetensors + state.json, fingerprinted by model, data and "
                "configuration): after an interruption (even kill -9) rerun the same command and it resumes; "
                "a state of another checkpoint, split or configuration is recomputed, never reused",
            default="results")
    opt.add_overwrite(sp, "replace results already in --out (a matching resume state is reused either way)")
    opt.add_device(sp)
    opt.add_common(sp)
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("certify", help="randomized-smoothing certification (Cohen et al. 2019) of a checkpoint")
    sp.add_argument("checkpoint")
    sp.add_argument("--sigma", type=opt.finite_number, default=0.25)
    sp.add_argument("--n0", type=opt.positive_int, default=100)
    sp.add_argument("--n", type=opt.positive_int, default=10000)
    sp.add_argument("--alpha", type=opt.finite_number, default=0.001)
    opt.add_batch_size(sp, 1000)
    opt.add_data(sp)
    sp.add_argument("--split", default="test")
    sp.add_argument("--n-examples", type=opt.positive_int, default=100)
    opt.add_seed(sp)
    opt.add_out(sp, "results folder (refused if it already holds results)", default="certify-results")
    opt.add_overwrite(sp)
    opt.add_common(sp)
    sp.set_defaults(fn=cmd_certify)
