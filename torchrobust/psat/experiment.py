"""The PSAT MNIST experiment (docs/psat.md): three hyper-CNN members vs AT_max / AT_avg / AT_msd on the MSD CNN.

Budgets ε = (ℓ∞ 0.3, ℓ2 2.0, ℓ1 10) (Maini et al. 2020). Run in stages so they can share a machine::

    python -m torchrobust.psat.experiment members   --out runs/psat_mnist --n-train 10000 --epochs 1
    python -m torchrobust.psat.experiment baselines --out runs/psat_mnist --n-train 10000 --epochs 1
    python -m torchrobust.psat.experiment evaluate  --out runs/psat_mnist --n-test 1000 --steps 10 --restarts 1

The stages log to stderr; ``evaluate`` writes ``psat_table.{md,csv,tex,json}`` and ``train_times.json`` into
``--out``. On a shared machine every stage takes ``--only NAME ...`` (members: ``Linf L2 L1``; baselines:
``max avg msd``; evaluate: ``psat`` for the aggregate, ``members`` for the member rows, or ``AT_max`` etc.), so
the work can be split over processes; ``evaluate --only X`` writes ``part_X.json`` and the ``table`` stage merges
all parts into ``psat_table.*``. ``evaluate --autoattack apgd-ce apgd-t`` adds the reference AutoAttack per norm
on the examples PGD did not fool. ``routing`` writes ``routing.{md,json}``: where the entropy gate sends clean
inputs and each member's own PGD examples.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from torchrobust import checkpoint
from torchrobust.psat.adversary import MNIST_BUDGETS
from torchrobust.psat.evaluation import evaluate, write_tables
from torchrobust.psat.metrics import MultiNormRow, format_table
from torchrobust.psat.train import PSATTrainConfig, train_baselines, train_members

log = logging.getLogger(__name__)


def _train_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchrobust import data

    ds = data.load("mnist", "train")
    x, y = ds.tensors
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m torchrobust.psat.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["members", "baselines", "evaluate", "routing", "table"])
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--z-dim", type=int, default=32)
    p.add_argument("--unit", type=int, default=32)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--start", type=int, default=0, help="first test index (split evaluation over processes)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--autoattack", nargs="*", default=None, metavar="SUBATTACK",
                   help="evaluate: also run the reference AutoAttack per norm with these sub-attacks (e.g. apgd-ce "
                        "apgd-t; no names = full standard version); rows report the per-example worst case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    steps = {k: a.train_steps for k in MNIST_BUDGETS}
    cfg = PSATTrainConfig(epochs=a.epochs, batch_size=100, lr=a.lr, seed=a.seed)
    out = Path(a.out)
    if a.stage == "members":
        train_members(out, _train_set(a.n_train, a.seed), threats=a.only or ("Linf", "L2", "L1"),
                      arch="hyper_msd_cnn", arch_kwargs={"z_dim": a.z_dim, "unit": a.unit}, steps=steps, config=cfg)
    elif a.stage == "baselines":
        train_baselines(out, _train_set(a.n_train, a.seed), strategies=a.only or ("max", "avg", "msd"),
                        arch="msd_cnn", steps=steps, config=cfg)
    elif a.stage == "routing":
        from torchrobust import data
        from torchrobust.psat.evaluation import format_routing, pgd_attacks, routing
        from torchrobust.psat.train import load_ensemble

        xt, yt = data.load("mnist", "test").tensors
        sl = slice(a.start, a.start + a.n_test)
        atk = pgd_attacks(MNIST_BUDGETS, {k: a.steps for k in MNIST_BUDGETS}, {}, a.restarts)
        rows = routing(load_ensemble(out), xt[sl], yt[sl], atk)
        md = format_routing(rows)
        checkpoint.write_texts(out, "routing", {"json": json.dumps(rows, indent=2) + "\n", "md": md})
        log.info("routing\n%s", md)
    elif a.stage == "evaluate":
        from torchrobust import data

        xt, yt = data.load("mnist", "test").tensors
        kw = {"data": (xt[a.start:a.start + a.n_test], yt[a.start:a.start + a.n_test]), "n_test": a.n_test,
              "steps": {k: a.steps for k in MNIST_BUDGETS}, "alpha": {}, "restarts": a.restarts,
              "autoattack": a.autoattack}
        if not a.only:
            rows = evaluate(out, strategies=("entropy", "average"), **kw)
            write_tables(rows, out)
        else:
            rows = []
            members = {t: out / f"{t}.safetensors" for t in ("Linf", "L2", "L1")}
            for part in a.only:
                if part == "psat":
                    rows += evaluate(members, members=False, strategies=("entropy",), **kw)
                elif part == "members":
                    for t, pth in members.items():
                        rows += evaluate({t: pth}, **kw)
                else:
                    rows += evaluate({part: out / f"{part}.safetensors"}, **kw)
            (out / f"part_{'_'.join(a.only)}_{a.start}.json").write_text(
                json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        log.info("results\n%s", format_table(rows))
    else:
        merged: dict[str, MultiNormRow] = {}
        for part in sorted(out.glob("part_*.json")):
            for d in json.loads(part.read_text()):
                r = MultiNormRow(d["name"], d["clean"], d["per_norm"], d["max_loss"], d["union"], d["n"],
                                 d["params"], d["saving"], d.get("extra", {}))
                if r.name in merged:  # same row evaluated on disjoint test slices: n-weighted means
                    m = merged[r.name]
                    n = m.n + r.n

                    def w(u: float, v: float, m: MultiNormRow = m, r: MultiNormRow = r, n: int = n) -> float:
                        return (u * m.n + v * r.n) / n

                    r = MultiNormRow(r.name, w(m.clean, r.clean), {k: w(m.per_norm[k], r.per_norm[k]) for k in
                                     r.per_norm}, w(m.max_loss, r.max_loss), w(m.union, r.union), n, r.params,
                                     r.saving, {k: w(m.extra[k], r.extra[k]) for k in r.extra if k in m.extra})
                merged[r.name] = r
        rows = list(merged.values())
        order = {"H_Linf": 0, "H_L2": 1, "H_L1": 2, "PSAT (entropy)": 3}
        rows.sort(key=lambda r: (order.get(r.name, 9), r.name))
        write_tables(rows, out)
        times = {}
        for pth in sorted(out.glob("*.safetensors")):
            meta = checkpoint.load_metadata(pth)["metadata"]
            times[pth.stem] = {"train_seconds": meta.get("train_seconds"),
                               "train_cpu_seconds": meta.get("train_cpu_seconds")}
        checkpoint.write_texts(out, "train_times", {"json": json.dumps(times, indent=2) + "\n"})
        log.info("results\n%s", format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
