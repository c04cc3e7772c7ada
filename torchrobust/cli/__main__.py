"""``python -m torchrobust.cli ...`` (and ``torchrun -m torchrobust.cli ...``): the ``torchrobust`` command."""

from __future__ import annotations

from .app import main

if __name__ == "__main__":
    raise SystemExit(main())
