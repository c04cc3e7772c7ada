"""``torchrobust report``: one self-contained HTML page + Markdown/CSV/LaTeX tables of a run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import TorchRobustError
from .options import add_common, add_out


def cmd_report(args: argparse.Namespace) -> int:
    from ..evaluate.report import build_report
    from ..validation import check_output_dir

    if not Path(args.run_dir).is_dir():
        raise TorchRobustError(f"run folder not found: {args.run_dir} (give a folder written by torchrobust "
                               "evaluate, demo, certify, paper or forge --search)")
    check_output_dir(args.out if args.out is not None else args.run_dir)  # a report is regenerated, never refused
    paths = build_report(args.run_dir, title=args.title, out_dir=args.out)
    sys.stdout.write(f"wrote {paths['html']}, {paths['md']} and tables in {paths['tables']}/\n")
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("report", help="one self-contained HTML page + Markdown/CSV/LaTeX tables of a run folder")
    sp.add_argument("run_dir")
    sp.add_argument("--title", default=None)
    add_out(sp, "folder for report.html, report.md and report/ (default: RUN_DIR); a previous report there is "
                "regenerated")
    add_common(sp)
    sp.set_defaults(fn=cmd_report)
