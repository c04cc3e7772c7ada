"""The one ``torchrobust`` parser and its entry point.

Every user mistake ends with one line on stderr (``torchrobust: error: ...``) and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import TorchRobustError
from . import cifar10, defences, demo, evaluate, experiments, forge_tables, info, report, train
from .options import ERROR_PREFIX, Parser, check_device

__all__ = ["build_parser", "main"]

# the order of `torchrobust --help`
_GROUPS = (info, train, evaluate, demo, report, defences, forge_tables, experiments, cifar10)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``torchrobust`` sub-command (the only argparse parser in torchrobust)."""
    p = Parser(prog="torchrobust", description="Make a pretrained classifier robust and measure it honestly.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in _GROUPS:
        group.register(sub)
    return p


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


def _one_line(msg: str) -> str:
    """An error message on one line (a library message that spans lines is joined, never printed as several)."""
    return " ".join(part.strip() for part in msg.splitlines() if part.strip()) or "unknown error"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``torchrobust ARGV``; returns the exit status (0 done, 2 user error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2; its one line is already on stderr)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        _setup(args)
        return int(args.fn(args) or 0)
    except TorchRobustError as exc:
        sys.stderr.write(f"{ERROR_PREFIX}{_one_line(str(exc))}\n")
        return 2
    except OSError as exc:  # the filesystem refused (disk full, permissions changed mid-run): one line, no traceback
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"{ERROR_PREFIX}cannot access{where}: {exc.strerror or exc}; check the path, its "
                         "permissions and the free disk space\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("torchrobust: interrupted\n")
        return 130
