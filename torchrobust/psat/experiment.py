"""The PSAT MNIST experiment (docs/psat.md): three hyper-CNN members vs AT_max / AT_avg / AT_msd on the MSD CNN.

Budgets ε = (ℓ∞ 0.3, ℓ2 2.0, ℓ1 10) (Maini et al. 2020). Run in stages so they can share a machine::

    torchrobust psat experiment members   --out runs/psat_mnist --n-train 10000 --epochs 1
    torchrobust psat experiment baselines --out runs/psat_mnist --n-train 10000 --epochs 1
    torchrobust psat experiment evaluate  --out runs/psat_mnist --n-test 1000 --steps 10 --restarts 1

or from Python ``run_stage("members", "runs/psat_mnist", n_train=10000)``. The stages log; ``evaluate`` writes
``psat_table.{md,csv,tex,json}`` and ``table`` also ``train_times.json`` into the run folder. On a shared machine
every stage takes ``only`` (``--only NAME,...``; members: ``Linf L2 L1``; baselines: ``max avg msd``; evaluate:
``psat`` for the aggregate, ``members`` for the member rows, or ``AT_max`` etc.), so the work can be split over
processes; ``evaluate`` with ``only`` writes ``part_X_<start>.json`` and the ``table`` stage merges all parts into
``psat_table.*``. ``autoattack=["apgd-ce", "apgd-t"]`` adds the reference AutoAttack per norm on the examples PGD
did not fool (``[]``: its full standard version). ``routing`` writes ``routing.{md,json}``: where the entropy gate
sends clean inputs and each member's own PGD examples. ``tables`` (:mod:`torchrobust.psat.analysis`) reproduces PSAT
Tables 3, 4 and 6 in one command (``--only table3`` etc. for one of them)::

    torchrobust psat experiment tables --out runs/psat_mnist   # 60,000 images, 5 epochs, 10-step attacks
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from torchrobust import checkpoint
from torchrobust.attacks.threat import ThreatName
from torchrobust.errors import TorchRobustError, unknown_name
from torchrobust.models.lightweight import SMALL_IMAGE_STEM_STRIDE
from torchrobust.psat.adversary import MNIST_BUDGETS
from torchrobust.psat.evaluation import evaluate, read_table_json, write_tables
from torchrobust.psat.metrics import MultiNormRow, format_table
from torchrobust.psat.train import PSATTrainConfig, train_baselines, train_members

log = logging.getLogger(__name__)

NORMS = tuple(t.value for t in ThreatName)  # one member per threat model


def _train_set(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchrobust import data

    ds = data.load("mnist", "train")
    x, y = ds.tensors
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


STAGES = ("members", "baselines", "evaluate", "routing", "table", "lightweight", "tables")
#: Budgets of each stage when not given: ``tables`` (PSAT Tables 3, 4 and 6) takes the issue's budget (all training
#: images, 5 epochs, 10-step training attacks; 50-step PGD with 3 restarts), the others the Table 1 run's first
#: settings.
STAGE_DEFAULTS: dict[str, dict[str, int]] = {
    s: ({"n_train": 60000, "epochs": 5, "train_steps": 10, "steps": 50, "restarts": 3} if s == "tables" else
        {"n_train": 10000, "epochs": 1, "train_steps": 5, "steps": 10, "restarts": 1}) for s in STAGES}


def run_stage(stage: str, out_dir: str | os.PathLike[str], *, only: Sequence[str] | None = None,
              n_train: int | None = None, epochs: int | None = None, train_steps: int | None = None,
              lr: float = 1e-3, z_dim: int = 32, unit: int = 32, n_test: int = 1000, start: int = 0,
              steps: int | None = None, restarts: int | None = None,
              autoattack: Sequence[str] | None = None, seed: int = 0,
              strategy: str = "stochastic", stem_stride: int | None = SMALL_IMAGE_STEM_STRIDE,
              input_size: int | None = None) -> list[Path]:
    """Run one stage of the experiment in the run folder ``out_dir`` (see the module docstring); returns the paths
    of the files it wrote.

    ``members``/``baselines``: train (``n_train`` random training images, ``epochs``, ``train_steps``-step training
    adversaries, Adam ``lr``, batch 100; members' hypernetwork ``z_dim``/``unit``). ``evaluate``/``routing``: test
    images ``start .. start + n_test``, PGD with ``steps`` steps and ``restarts`` restarts per norm (``autoattack``:
    also the reference AutoAttack). ``table``: merge the ``part_*.json`` of split evaluations. ``lightweight``:
    PSAT Table 5 (:func:`torchrobust.psat.lightweight.run_table5`): train the timm networks ``only`` (default
    MobileNetV1, MobileNetV3-S/-L, GhostNet) with the multi-norm ``strategy`` and the training settings above,
    evaluate them like ``evaluate`` and write ``table5/table5.{md,csv,json}`` with parameter savings against
    the hyper ResNet-50; ``stem_stride`` / ``input_size``: the networks' stem stride (``None``: timm's) and
    input resize (:mod:`torchrobust.models.lightweight`). ``tables``: PSAT Tables 3, 4 and 6
    (:func:`torchrobust.psat.analysis.run_tables`; ``only``: any of ``table3``, ``table4``, ``table6``): train
    the H_NAT member and the plain per-norm models (reusing checkpoints already in ``out_dir``), evaluate every
    row like ``evaluate`` and write ``psat_table3/4/6.{md,csv,json}``. Budgets left ``None`` take
    :data:`STAGE_DEFAULTS`.
    """
    if stage not in STAGES:
        raise unknown_name("stage", stage, STAGES)
    d = STAGE_DEFAULTS[stage]
    n_train = d["n_train"] if n_train is None else n_train
    epochs = d["epochs"] if epochs is None else epochs
    train_steps = d["train_steps"] if train_steps is None else train_steps
    steps = d["steps"] if steps is None else steps
    restarts = d["restarts"] if restarts is None else restarts
    parts = list(only) if only else None
    aa = None if autoattack is None else list(autoattack)
    written: list[Path] = []
    train_budget = {k: train_steps for k in MNIST_BUDGETS}
    cfg = PSATTrainConfig(epochs=epochs, batch_size=100, lr=lr, seed=seed)
    out = Path(out_dir)
    if stage == "tables":
        from torchrobust import data
        from torchrobust.psat.analysis import check_tables, run_tables

        tables = check_tables(parts or ())
        n_pool = len(data.load("mnist", "train"))
        xt, yt = data.load("mnist", "test").tensors
        if n_train > n_pool or start + n_test > len(xt):
            raise TorchRobustError(f"MNIST has {n_pool} training and {len(xt)} test images; got --n-train {n_train} "
                                   f"and test images {start}..{start + n_test}: lower --n-train/--n-test/--start")
        written += run_tables(out, _train_set(n_train, seed), (xt[start:start + n_test], yt[start:start + n_test]),
                              tables, cfg, train_steps, steps, restarts, aa, {"z_dim": z_dim, "unit": unit}, seed)
    elif stage == "lightweight":
        from torchrobust import data
        from torchrobust.psat.lightweight import TABLE5_BACKBONES, check_table5, run_table5

        check_table5(parts or TABLE5_BACKBONES, strategy)
        xt, yt = data.load("mnist", "test").tensors
        written += run_table5(out, _train_set(n_train, seed), (xt[start:start + n_test], yt[start:start + n_test]),
                              parts or TABLE5_BACKBONES, strategy, cfg, train_steps, steps, restarts, aa,
                              model_kw={"stem_stride": stem_stride, "input_size": input_size})
    elif stage == "members":
        written += train_members(out, _train_set(n_train, seed), threats=parts or NORMS,
                                 arch="hyper_msd_cnn", arch_kwargs={"z_dim": z_dim, "unit": unit}, steps=train_budget,
                                 config=cfg).values()
    elif stage == "baselines":
        written += train_baselines(out, _train_set(n_train, seed), strategies=parts or ("max", "avg", "msd"),
                                   arch="msd_cnn", steps=train_budget, config=cfg).values()
    elif stage == "routing":
        from torchrobust import data
        from torchrobust.psat.evaluation import format_routing, pgd_attacks, routing, routing_json
        from torchrobust.psat.train import load_ensemble

        xt, yt = data.load("mnist", "test").tensors
        sl = slice(start, start + n_test)
        atk = pgd_attacks(MNIST_BUDGETS, {k: steps for k in MNIST_BUDGETS}, {}, restarts)
        rows = routing(load_ensemble(out), xt[sl], yt[sl], atk)
        md = format_routing(rows)
        texts = {"json": routing_json(rows), "md": md}
        written += checkpoint.write_texts(out, "routing", texts).values()
        log.info("routing\n%s", md)
    elif stage == "evaluate":
        from torchrobust import data

        xt, yt = data.load("mnist", "test").tensors
        kw = {"data": (xt[start:start + n_test], yt[start:start + n_test]), "n_test": n_test,
              "steps": {k: steps for k in MNIST_BUDGETS}, "alpha": {}, "restarts": restarts,
              "autoattack": aa}
        if not parts:
            rows = evaluate(out, strategies=("entropy", "average"), **kw)
            written += write_tables(rows, out).values()
        else:
            rows = []
            members = {t: out / f"{t}.safetensors" for t in NORMS}
            for part in parts:
                if part == "psat":
                    rows += evaluate(members, members=False, strategies=("entropy",), **kw)
                elif part == "members":
                    for t, pth in members.items():
                        rows += evaluate({t: pth}, **kw)
                else:
                    rows += evaluate({part: out / f"{part}.safetensors"}, **kw)
            written += checkpoint.write_texts(out, f"part_{'_'.join(parts)}_{start}",
                                              {"json": json.dumps([r.as_dict() for r in rows], indent=2) + "\n"}
                                              ).values()
        log.info("results\n%s", format_table(rows))
    else:
        merged: dict[str, MultiNormRow] = {}
        for part in sorted(out.glob("part_*.json")):
            for d in read_table_json(part.read_text()):
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
        written += write_tables(rows, out).values()
        times = {}
        for pth in sorted(out.glob("*.safetensors")):
            meta = checkpoint.load_metadata(pth)["metadata"]
            times[pth.stem] = {"train_seconds": meta.get("train_seconds"),
                               "train_cpu_seconds": meta.get("train_cpu_seconds")}
        written += checkpoint.write_texts(out, "train_times", {"json": json.dumps(times, indent=2) + "\n"}).values()
        log.info("results\n%s", format_table(rows))
    return written
