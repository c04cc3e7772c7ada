"""``torchrobust info``: the datasets, models, attacks, threat models and training modes there are."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .options import add_common


def cmd_info(args: argparse.Namespace) -> int:
    from .. import attacks, data, models
    from ..attacks.threat import ThreatName
    from ..train import MODES

    out = {"datasets": data.list_datasets(), "models": models.list_models(), "attacks": attacks.list_attacks(),
           "threat_models": [t.value for t in ThreatName], "training_modes": list(MODES)}
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        for k, v in out.items():
            sys.stdout.write(f"{k}: {', '.join(v)}\n")
    return 0


def register(sub: Any) -> None:
    sp = sub.add_parser("info", help="list datasets, models, attacks, training modes")
    sp.add_argument("--json", action="store_true")
    add_common(sp)
    sp.set_defaults(fn=cmd_info)
