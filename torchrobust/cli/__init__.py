"""The ``torchrobust`` command line: one parser (:func:`build_parser`), one error format, one library call per
command.

* :mod:`~torchrobust.cli.app` — :func:`build_parser`, :func:`main` (errors: ``torchrobust: error: <one line>`` on
  stderr, exit 2, never a traceback).
* :mod:`~torchrobust.cli.options` — the parser class, value types and the options several commands share.
* one module per command group: :mod:`~torchrobust.cli.info`, :mod:`~torchrobust.cli.train`,
  :mod:`~torchrobust.cli.evaluate` (``evaluate``, ``certify``), :mod:`~torchrobust.cli.demo`,
  :mod:`~torchrobust.cli.report`, :mod:`~torchrobust.cli.defences` (``reprogram``, ``forge``),
  :mod:`~torchrobust.cli.experiments` (``paper``, ``psat``).
"""

from __future__ import annotations

from .app import build_parser, main

__all__ = ["build_parser", "main"]
