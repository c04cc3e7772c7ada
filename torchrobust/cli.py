"""The ``torchrobust`` command line: argument parsing only; the work is done by the library functions.

Every user mistake ends with one line on stderr (``torchrobust: error: ...``) and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .cli_options import float_list, name_list, positive_int
from .errors import TorchRobustError

log = logging.getLogger("torchrobust")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"torchrobust: error: {message} (see `{self.prog} --help`)\n")


def check_device(s: str) -> None:
    """``--device`` must name a device that exists on this machine (cpu, cuda, cuda:N, mps)."""
    import torch

    try:
        dev = torch.device(s)
    except (RuntimeError, ValueError):
        raise TorchRobustError(f"unknown --device {s!r}; valid: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise TorchRobustError(f"--device {s}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise TorchRobustError(f"--device {s}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise TorchRobustError(f"--device {s}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise TorchRobustError(f"unsupported --device {s!r}; valid: cpu, cuda, cuda:N, mps")


def _kv(s: str) -> tuple[str, Any]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (VALUE in JSON, e.g. widths=[256,64]), got {s!r}")
    k, v = s.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


def _setup(args: argparse.Namespace) -> None:
    import torch

    device = getattr(args, "device", None)
    if device is not None:  # every sub-command with --device: checked before any work
        check_device(device)
    logging.basicConfig(level=logging.INFO if not getattr(args, "quiet", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)


def _load_split(name: str, split: str, root: str | None, n: int | None):
    from . import data

    ds = data.load(name, split, root=root)
    return data.as_tensors(ds, n)


# ----------------------------------------------------------------------------------------------- commands
def cmd_info(args: argparse.Namespace) -> int:
    from . import attacks, data, models

    out = {"datasets": data.list_datasets(), "models": models.list_models(), "attacks": attacks.list_attacks(),
           "threat_models": ["Linf", "L2", "L1"], "training_modes": _train_modes()}
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        for k, v in out.items():
            sys.stdout.write(f"{k}: {', '.join(v)}\n")
    return 0


def _train_modes() -> list[str]:
    from .train import MODES

    return list(MODES)


def cmd_train(args: argparse.Namespace) -> int:
    """Train; a resume state is kept in ``--checkpoint-dir`` (default ``<out>.resume/``) after every epoch and
    every ``--checkpoint-every`` steps, so ``--resume`` continues a killed run bit for bit."""
    from . import models
    from .checkpoint import save
    from .train import TrainConfig, distributed, fit, resume
    from .validation import check_output_dir, check_output_file

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                      mode=args.mode, threat=args.threat, eps=args.eps, steps=args.steps, alpha=args.alpha,
                      trades_beta=args.trades_beta, noise_sigma=args.sigma, seed=args.seed,
                      max_batches=args.max_batches, progress=not args.quiet,
                      checkpoint_every=args.checkpoint_every).validate()
    out = check_output_file(args.out, overwrite=args.overwrite)
    ckdir = check_output_dir(args.checkpoint_dir or out.with_name(out.name + ".resume"), flag="--checkpoint-dir")
    if args.resume and not resume.has_state(ckdir):
        raise TorchRobustError(f"--resume: no resume state in {ckdir}; run without --resume to start training "
                               "(or pass the --checkpoint-dir of the interrupted run)")
    if not args.resume and resume.has_state(ckdir):
        raise TorchRobustError(f"{ckdir} holds the resume state of an interrupted run; add --resume to continue "
                               "it, or delete that folder to start over")
    distributed.init_from_env(args.device)
    dev = distributed.device_for_rank(args.device)
    x, y = _load_split(args.data, "train", args.data_root, args.n_train)
    import torch

    torch.manual_seed(args.seed)
    model = models.create(args.model, **dict(args.model_arg or []))
    val = _load_split(args.data, "test", args.data_root, 1000) if not args.no_val else None
    result = fit(model, (x, y), cfg, val_set=val, device=dev, checkpoint_dir=ckdir,
                 resume_from=ckdir if args.resume else None)
    if distributed.is_main():
        path = save(model, out, training=cfg.to_dict(), data=args.data, history=result.history,
                    train_seconds=result.seconds)
        sys.stdout.write(f"saved {path} (final: {json.dumps(result.final)})\n")
    distributed.barrier()  # the final model is on disk before any rank drops its resume state
    resume.clear_state(ckdir)
    distributed.cleanup()
    return 0


def _attack_kwargs(names: Sequence[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-attack keyword arguments: --steps/--restarts where the attack takes them, then --attack-arg."""
    import inspect

    from . import attacks

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


# results.json is written last: it marks a finished run. Without it the folder holds an interrupted run, which the
# same command resumes from its fingerprinted state (state.safetensors), rewriting the other result files.
SWEEP_FILES = ("results.json",)
# adaptive.json is written last: it marks a finished run. Without it the folder holds an interrupted run, which
# resumes from its fingerprinted per-ε state (torchrobust.resume) and rewrites adaptive.csv/.md.
ADAPTIVE_FILES = ("adaptive.json",)


def _check_evaluate_args(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Everything about ``evaluate``'s arguments that can be checked before loading anything; returns the
    per-attack keyword arguments of a sweep."""
    from .attacks import get_threat
    from .validation import check_output_dir

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
        from .evaluate.sweep import DEFAULT_ATTACKS

        args.attacks = list(DEFAULT_ATTACKS)
    if not args.attacks:
        raise TorchRobustError("--attacks is empty; name at least one attack, e.g. --attacks fgsm,apgd-ce,apgd-t")
    kw = _attack_kwargs(args.attacks, args)
    check_output_dir(args.out, SWEEP_FILES, overwrite=args.overwrite)
    return kw


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import distributed
    from .checkpoint import load
    from .evaluate import sweep

    attack_kwargs = _check_evaluate_args(args)
    distributed.init_from_env(args.device)
    dev = distributed.device_for_rank(args.device)
    model = load(args.checkpoint, map_location=dev)
    x, y = _load_split(args.data, args.split, args.data_root, args.n_examples)
    if args.suite == "adaptive":
        return _evaluate_adaptive(model, x.to(dev), y.to(dev), args)
    t0 = time.perf_counter()
    res = sweep(model, x.to(dev), y.to(dev), attacks=args.attacks, eps=args.eps, threat=args.threat,
                attack_kwargs=attack_kwargs, batch_size=args.batch_size, seed=args.seed,
                progress=not args.quiet, state=Path(args.out) / "state")
    res.config.update(checkpoint=str(args.checkpoint), data=args.data, split=args.split,
                      seconds=time.perf_counter() - t0)
    if args.checks:
        from .evaluate.checks import run_checks

        res.flags = [f.to_dict() for f in run_checks(res, model=model, x=x[:32].to(dev), y=y[:32].to(dev))]
        res.config["checks"] = True
    if distributed.is_main():
        paths = res.write(args.out)
        sys.stdout.write(Path(paths["md"]).read_text())
        sys.stdout.write(f"\nwrote {args.out}/ (results.json, results.csv, results.md, accuracy_vs_eps.png)\n")
    distributed.cleanup()
    return 0


def _evaluate_adaptive(model: Any, x: Any, y: Any, args: argparse.Namespace) -> int:
    """``--suite adaptive``: the adaptive suite at every ε > 0; per-example worst case; resumable per ε."""
    from .evaluate.adaptive import evaluate_adaptive, undefended_base
    from .evaluate.sweep import write_table_files
    from .io import atomic_write_bytes

    out = Path(args.out)
    base = undefended_base(model)
    rows, docs = [], []
    for e in args.eps:
        if e == 0:
            continue
        budget = {k: v for k, v in (("steps", args.steps), ("restarts", args.restarts)) if v is not None}
        res = evaluate_adaptive(model, x, y, threat=args.threat, eps=e, base_model=base, seed=args.seed,
                                batch_size=args.batch_size, state_path=out / f"state_{args.threat}_{e:g}",
                                progress=not args.quiet, **budget)
        row: dict[str, Any] = {"eps": e, "clean": res.clean_accuracy}
        row.update({a: res.accuracy(a) for a in res.correct})
        row["worst_case"] = res.robust_accuracy
        row["reliable"] = "yes" if res.reliable else "no"
        rows.append(row)
        docs.append(res.to_dict())
    flags = [f for d in docs for f in d["flags"]]
    note = ("Black-box attacks (square, spsa) run only on the white-box survivors; their columns count the other "
            "points as not broken.")
    if flags:
        note = "**UNRELIABLE**: flags " + ", ".join(sorted({str(f["code"]) for f in flags})) + ". " + note
    paths = write_table_files(out / "adaptive", rows, title=f"Adaptive evaluation ({args.threat}, n={len(x)})",
                              note=note)
    doc = {"title": f"Adaptive evaluation of {args.checkpoint}", "table": rows, "flags": flags, "checks_run": True,
           "per_eps": docs, "checkpoint": str(args.checkpoint)}
    atomic_write_bytes(out / "adaptive.json", (json.dumps(doc, indent=1) + "\n").encode())
    sys.stdout.write(Path(paths["md"]).read_text())
    sys.stdout.write(f"\nwrote {out}/adaptive.json, adaptive.csv, adaptive.md\n")
    return 0


# the demo's results.json is written last too; an interrupted demo reruns its (deterministic) training and resumes
# the evaluation states, whose fingerprints match the retrained models bit for bit
DEMO_FILES = SWEEP_FILES


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo
    from .validation import check_output_dir

    check_output_dir(args.out, DEMO_FILES, overwrite=args.overwrite)
    out = run_demo(args.out, epochs=args.epochs, n_test=args.n_test, steps=args.steps, seed=args.seed,
                   p3_steps=args.p3_steps, data_root=args.data_root, progress=not args.quiet)
    sys.stdout.write(Path(out["md"]).read_text())
    sys.stdout.write(f"\nwrote {args.out}/: " + ", ".join(sorted(Path(p).name for p in out.values())) + "\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .evaluate.report import build_report
    from .validation import check_output_dir

    if not Path(args.run_dir).is_dir():
        raise TorchRobustError(f"run folder not found: {args.run_dir} (give a folder written by torchrobust "
                               "evaluate, demo, certify, paper or forge --search)")
    check_output_dir(args.out if args.out is not None else args.run_dir)  # a report is regenerated, never refused
    paths = build_report(args.run_dir, title=args.title, out_dir=args.out)
    sys.stdout.write(f"wrote {paths['html']}, {paths['md']} and tables in {paths['tables']}/\n")
    return 0


# ----------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="torchrobust", description="Make a pretrained classifier robust and measure it honestly.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads (on small CPUs 1 is often fastest)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    sp = sub.add_parser("info", help="list datasets, models, attacks, training modes")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_info)

    sp = sub.add_parser("train", help="train a zoo model (standard, FGSM/PGD-AT, TRADES, gaussian); torchrun-able")
    sp.add_argument("--model", required=True, help="zoo model name (see `torchrobust info`)")
    sp.add_argument("--model-arg", type=_kv, action="append", metavar="KEY=JSON",
                    help="model keyword argument, e.g. --model-arg widths=[256,64] --model-arg activation=null")
    sp.add_argument("--data", default="mnist")
    sp.add_argument("--data-root", default=None)
    sp.add_argument("--n-train", type=int, default=None, help="use only the first N training examples")
    sp.add_argument("--out", required=True, help="checkpoint path (.safetensors)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    sp.add_argument("--checkpoint-dir", default=None,
                    help="where the resume state is kept during training (default: <out>.resume/; removed once "
                         "--out is saved)")
    sp.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="N",
                    help="also write the resume state every N optimiser steps (default: after every epoch only)")
    sp.add_argument("--resume", action="store_true",
                    help="continue the interrupted run in --checkpoint-dir (same options; bitwise-identical result)")
    sp.add_argument("--epochs", type=positive_int, default=5)
    sp.add_argument("--batch-size", type=positive_int, default=128)
    sp.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    sp.add_argument("--lr", type=float, default=0.01)
    sp.add_argument("--momentum", type=float, default=0.9)
    sp.add_argument("--weight-decay", type=float, default=0.0)
    sp.add_argument("--schedule", default="none")
    sp.add_argument("--mode", default="standard", help="standard, fgsm, pgd, trades, gaussian")
    sp.add_argument("--threat", default="Linf")
    sp.add_argument("--eps", type=float, default=0.3)
    sp.add_argument("--steps", type=int, default=10)
    sp.add_argument("--alpha", type=float, default=None)
    sp.add_argument("--trades-beta", type=float, default=6.0)
    sp.add_argument("--sigma", type=float, default=0.25, help="noise σ for --mode gaussian")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--max-batches", type=positive_int, default=None, help="at most N batches per epoch")
    sp.add_argument("--no-val", action="store_true", help="skip the per-epoch validation accuracy")
    sp.add_argument("--device", default=None)
    common(sp)
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("evaluate", help="clean + robust accuracy over an ε sweep; torchrun-able")
    sp.add_argument("checkpoint")
    sp.add_argument("--data", default="mnist")
    sp.add_argument("--data-root", default=None)
    sp.add_argument("--split", default="test")
    sp.add_argument("--n-examples", type=positive_int, default=1000,
                    help="first N examples of the split (papers' protocol)")
    sp.add_argument("--attacks", type=name_list, default=None,
                    help="comma-separated (default fgsm,apgd-ce,apgd-t: the per-example worst case over APGD-CE and "
                         "APGD-T on its survivors, plus FGSM as the papers' column); --suite sweep")
    sp.add_argument("--threat", default="Linf")
    sp.add_argument("--eps", type=float_list, default=[0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
    sp.add_argument("--steps", type=positive_int, default=None,
                    help="iterations of every attack that takes them (default: each attack's own; APGD 100)")
    sp.add_argument("--restarts", type=positive_int, default=None, help="restarts (default: each attack's own)")
    sp.add_argument("--attack-arg", type=_kv, action="append", metavar="ATTACK.PARAM=JSON",
                    help="attack keyword argument, e.g. --attack-arg square.n_queries=1000 (--suite sweep)")
    sp.add_argument("--suite", choices=["sweep", "adaptive"], default="sweep",
                    help="sweep: the given attacks over ε; adaptive: AutoAttack/BPDA/EOT/transfer/black-box, "
                         "per-example worst case (resumable)")
    sp.add_argument("--checks", action="store_true", help="run the gradient-masking checks on the sweep")
    sp.add_argument("--batch-size", type=positive_int, default=500)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default="results",
                    help="results folder (refused if it already holds results). The evaluation state is saved there "
                         "after every batch (state.safetensors + state.json, fingerprinted by model, data and "
                         "configuration): after an interruption (even kill -9) rerun the same command and it resumes; "
                         "a state of another checkpoint, split or configuration is recomputed, never reused")
    sp.add_argument("--overwrite", action="store_true",
                    help="replace results already in --out (a matching resume state is reused either way)")
    sp.add_argument("--device", default=None)
    common(sp)
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("demo", help="the main job: train on MNIST, reprogram with NRPM (paradigms 1 and 3), "
                        "evaluate with FGSM, APGD-CE and APGD-T (per-example worst case)")
    sp.add_argument("--out", default="torchrobust-demo", help="output folder (refused if it already holds results)")
    sp.add_argument("--overwrite", action="store_true", help="replace results and checkpoints already in --out")
    sp.add_argument("--epochs", type=positive_int, default=3)
    sp.add_argument("--n-test", type=positive_int, default=500, help="first N test images (default 500)")
    sp.add_argument("--steps", type=positive_int, default=None,
                    help="APGD iterations (default 100, the reference's; fewer is weaker and labelled so)")
    sp.add_argument("--p3-steps", type=positive_int, default=100, help="paradigm-3 fine-tuning steps (batch 64), >= 1")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--data-root", default=None)
    common(sp)
    sp.set_defaults(fn=cmd_demo, threads=1)

    sp = sub.add_parser("report", help="one self-contained HTML page + Markdown/CSV/LaTeX tables of a run folder")
    sp.add_argument("run_dir")
    sp.add_argument("--title", default=None)
    sp.add_argument("--out", default=None, help="folder for report.html, report.md and report/ (default: RUN_DIR); "
                    "a previous report there is regenerated")
    common(sp)
    sp.set_defaults(fn=cmd_report)

    _register_extensions(sub, common)
    return p


def _register_extensions(sub: Any, common: Any) -> None:
    """Sub-commands of the defences, experiments and certification (:mod:`torchrobust.cli_defences`)."""
    from .cli_defences import register

    register(sub, common)


def _one_line(msg: str) -> str:
    """An error message on one line (a library message that spans lines is joined, never printed as several)."""
    return " ".join(part.strip() for part in msg.splitlines() if part.strip()) or "unknown error"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2; its one line is already on stderr)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        _setup(args)
        return int(args.fn(args) or 0)
    except TorchRobustError as exc:
        sys.stderr.write(f"torchrobust: error: {_one_line(str(exc))}\n")
        return 2
    except OSError as exc:  # the filesystem refused (disk full, permissions changed mid-run): one line, no traceback
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"torchrobust: error: cannot access{where}: {exc.strerror or exc}; check the path, its "
                         "permissions and the free disk space\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("torchrobust: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
