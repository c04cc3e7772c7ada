"""``torchrobust demo``: the main job (train on MNIST, reprogram with NRPM, evaluate; ``experiments.demo``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .options import add_common, add_data_root, add_out, add_overwrite, add_seed, positive_int

# the demo's results.json is written last too; an interrupted demo reruns its (deterministic) training and resumes
# the evaluation states, whose fingerprints match the retrained models bit for bit
DEMO_FILES = ("results.json",)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..experiments.demo import run_demo
    from ..validation import check_output_dir

    check_output_dir(args.out, DEMO_FILES, overwrite=args.overwrite)
    out = run_demo(args.out, epochs=args.epochs, n_test=args.n_test, steps=args.steps, seed=args.seed,
                   p3_steps=args.p3_steps, data_root=args.data_root, progress=not args.quiet)
    sys.stdout.write(Path(out["md"]).read_text())
    sys.stdout.write(f"\nwrote {args.out}/: " + ", ".join(sorted(Path(p).name for p in out.values())) + "\n")
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("demo", help="the main job: train on MNIST, reprogram with NRPM (paradigms 1 and 3), "
                        "evaluate with FGSM, APGD-CE and APGD-T (per-example worst case)")
    add_out(sp, "output folder (refused if it already holds results)", default="torchrobust-demo")
    add_overwrite(sp, "replace results and checkpoints already in --out")
    sp.add_argument("--epochs", type=positive_int, default=3)
    sp.add_argument("--n-test", type=positive_int, default=200, help="first N test images (default 200)")
    sp.add_argument("--steps", type=positive_int, default=None,
                    help="APGD iterations (default 100, the reference's; fewer is weaker and labelled so)")
    sp.add_argument("--p3-steps", type=positive_int, default=100, help="paradigm-3 fine-tuning steps (batch 64), >= 1")
    add_seed(sp)
    add_data_root(sp)
    add_common(sp)
    sp.set_defaults(fn=cmd_demo, threads=1)
