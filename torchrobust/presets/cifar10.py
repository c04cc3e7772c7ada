"""CIFAR-10 presets, ready for a GPU: one call (``torchrobust cifar10 PRESET``) per experiment of the three papers.

=============  =====================================================================================================
``reprogram``  Robustness reprogramming (Hou et al., ICLR 2025, Sec. 5 Tables 4–6: the CIFAR-10 ResNet-18
               paradigms): ResNet-18 backbones (width 8 = the paper code's ``TinyRobNet``,
               docs/paper-code-facts.md#reprogramming-code) trained with each of ``backbones`` (``standard``, and
               the adversarial-training modes PGD-AT, TRADES, MART, PGD-AWP of its Table 5), then per backbone: the
               plain model (LPM), Paradigm 1 (fixed λ ∈ ``lam_grid``, nothing trained), Paradigm 2 (λ learned) and
               Paradigm 3 (everything learned), both by PGD-AT fine-tuning.
``forge``      Data-driven Lipschitz (Chen et al. 2024, Sec. 4.3): a local RobustBench WideResNet checkpoint
               (``weights``; :func:`torchrobust.robustbench.load_robustbench`, layout read off the file) forged over
               the c_r grid: the c_r search on held-out *training* images (:func:`torchrobust.forging.search_c_r`),
               then every c_r of the grid on the test images under APGD-CE with and without BPDA.
``psat``       PSAT (Gong et al. 2023) with hyper ResNet-18 members (ℓ∞, ℓ2, ℓ1 at the CIFAR-10 budgets 8/255,
               0.5, 12) and the AT_max/AT_avg/AT_msd baselines on the plain ResNet-18; the multi-norm table of
               :func:`torchrobust.psat.evaluation.evaluate`.
=============  =====================================================================================================

Everything goes through the library's own pieces: training is :func:`torchrobust.train.fit` (mixed precision and
channels_last through :class:`~torchrobust.train.TrainConfig`, :mod:`torchrobust.train.precision`; DDP under
torchrun), evaluation the engine (:func:`torchrobust.evaluate.sweep`, the c_r search, PSAT's evaluation), tables
:class:`torchrobust.tables.Table`. The robust columns of ``reprogram`` are the paper code's PGD-20 (ℓ∞ 8/255, α
2/255, random start) and the per-example worst case over PGD-20, APGD-CE and APGD-T (the number to trust); every
evaluation runs in fp32 whatever ``precision`` the training used.

**Resumable.** Each trained model is saved in ``OUT/models`` (``OUT/psat`` for PSAT) the moment it is done, and
while it trains ``fit`` keeps its resume state next to it (every epoch and every ``checkpoint_every`` steps); each
evaluated row is kept in ``OUT/rows``. Rerunning the same command after a crash or ``kill -9`` loads the finished
models and rows, continues the interrupted training bit for bit, and computes only what is missing. ``OUT/config.json``
records the configuration; a rerun with other options is refused (choose another ``--out``).

**torchrun.** Every rank runs the preset; ``fit`` trains on its shard of each epoch under DDP and the evaluation
engine attacks each rank's shard and gathers the rows, so all ranks hold the same results; rank 0 writes. Whether a
finished model or row can be reused is agreed between the ranks (all must see the file, else all recompute), so
a multi-node run needs ``OUT`` on a shared filesystem to resume. PSAT's evaluation is not sharded (each rank
computes it whole).

The recipes (epochs, learning rates, schedules) are ours, stated in :class:`Cifar10Config`; where the papers give
one it is used. Projected GPU times per preset: docs/cifar10.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrobust import distributed as D
from torchrobust.errors import TorchRobustError, unknown_name
from torchrobust.io import atomic_write_bytes
from torchrobust.tables import Column, ColumnKind, Table

__all__ = ["PRESETS", "Cifar10Config", "EPS", "run"]

log = logging.getLogger(__name__)

#: ℓ∞ budget of the CIFAR-10 evaluations (the reprogramming paper's code, RobustBench).
EPS = 8 / 255

PRESETS: dict[str, str] = {
    "reprogram": "Reprogramming (Hou et al. 2025, Tables 4-6): CIFAR-10 ResNet-18, LPM vs Paradigms 1/2/3 per backbone",
    "forge": "Forged thresholds (Chen et al. 2024): a RobustBench WideResNet over the c_r grid on CIFAR-10",
    "psat": "PSAT (Gong et al. 2023): hyper ResNet-18 members and multi-norm AT baselines on CIFAR-10",
}


@dataclass(frozen=True)
class Cifar10Config:
    """The budget and recipe of a preset run (recorded in ``OUT/config.json`` and every result).

    Defaults are the full run. Training: SGD (momentum 0.9, weight decay 5e-4), cosine schedule, batch 128, PGD-AT
    at ℓ∞ 8/255 with α 2/255 and ``train_steps`` steps (TRADES/MART β 6, AWP γ 5e-3: :mod:`torchrobust.train`).
    Reprogramming fine-tunes (Paradigms 2/3) use PGD-AT too: Adam at lr 0.02 for λ alone (Paradigm 2, as the MNIST
    presets), SGD at lr 0.01 for weights and λ (Paradigm 3); they always train in fp32 (the NRPM layers' custom
    IRLS autograd is not autocast-safe), ``precision`` applies to the backbones, PSAT members and baselines.
    PSAT trains members and baselines with the same SGD recipe (lr 0.1), ℓ2 α = ε/4, ℓ1 PSAT's default step.

    Attributes:
        width: ResNet-18 stem width (None: 8 for ``reprogram``, the paper code's narrow model; 64 for ``psat``).
        epochs: epochs of every model trained from scratch (backbones, PSAT members and baselines).
        finetune_epochs: epochs of the Paradigm 2 and 3 fine-tuning.
        n_train: training images used (None: all 50,000).
        n_test: the first ``n_test`` test images are evaluated (the reprogramming paper's code: 1000).
        batch_size: training batch size (per process under torchrun); ``eval_batch_size`` for the attacks.
        lr: learning rate of training from scratch.
        train_steps: PGD steps of adversarial training; ``eval_steps``: PGD steps of the evaluation (PGD-20);
            ``apgd_steps``: APGD-CE/APGD-T iterations.
        backbones: training modes of the ``reprogram`` backbones (any :data:`torchrobust.train.MODES`).
        lam_grid, K, irls_eps, backend: Paradigm 1's λ values, the IRLS iterations, ε inside the IRLS weights
            (the paper code's CIFAR training value 1e-3) and the NRPM kernels (``"auto"``: compiled where possible).
        weights: the RobustBench checkpoint of ``forge``; ``grid``: its c_r grid (default 2**-10 .. 2**-4);
            ``n_calib``/``n_val``: calibration and validation images (disjoint, from the training split).
        baselines: PSAT's multi-norm baselines; ``eval_restarts``/``psat_eval_steps``: PGD restarts and steps
            per norm of PSAT's evaluation (None: robust_union's 50 ℓ∞ / 100 ℓ2 / 50 ℓ1).
        precision, channels_last: :mod:`torchrobust.train.precision` (training only; evaluation is fp32).
        max_batches: batches per epoch cap (smoke tests); ``checkpoint_every``: resume state every N steps.
    """

    width: int | None = None
    epochs: int = 100
    finetune_epochs: int = 10
    n_train: int | None = None
    n_test: int = 1000
    batch_size: int = 128
    eval_batch_size: int = 500
    lr: float = 0.1
    train_steps: int = 10
    eval_steps: int = 20
    apgd_steps: int = 100
    backbones: tuple[str, ...] = ("standard", "pgd", "trades", "mart", "pgd-awp")
    lam_grid: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3)
    K: int = 3
    irls_eps: float = 1e-3
    backend: str = "auto"
    weights: str | None = None
    grid: tuple[float, ...] = tuple(2.0**k for k in range(-10, -3))
    n_calib: int = 10000
    n_val: int = 1000
    baselines: tuple[str, ...] = ("max", "avg", "msd")
    eval_restarts: int = 1
    psat_eval_steps: int | None = None
    precision: str = "fp32"
    channels_last: bool = False
    max_batches: int | None = None
    checkpoint_every: int | None = None
    seed: int = 0

    def validate(self, preset: str, device: torch.device) -> Cifar10Config:
        """Check the options that the preset uses, before any work (one-line errors naming the fix)."""
        from torchrobust.train import MODES
        from torchrobust.train.precision import check_precision

        for name in ("epochs", "finetune_epochs", "n_test", "batch_size", "eval_batch_size", "train_steps",
                     "eval_steps", "apgd_steps", "n_calib", "n_val", "eval_restarts", "psat_eval_steps", "K",
                     "n_train", "max_batches", "checkpoint_every"):
            v = getattr(self, name)
            if v is None and name in ("psat_eval_steps", "n_train", "max_batches", "checkpoint_every"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "K" else 1):
                raise TorchRobustError(f"{name} must be an integer >= {0 if name == 'K' else 1}, got {v!r}")
        if self.width is not None and (isinstance(self.width, bool) or not isinstance(self.width, int)
                                       or self.width < 1):
            raise TorchRobustError(f"width must be an integer >= 1, got {self.width!r}")
        bad = [m for m in self.backbones if m not in MODES]
        if bad or not self.backbones:
            raise TorchRobustError(f"unknown backbone training mode(s) {bad or '(none)'}; valid: {', '.join(MODES)}")
        if not all(0.0 <= lam <= 1.0 for lam in self.lam_grid):
            raise TorchRobustError(f"lam_grid values must lie in [0, 1], got {list(self.lam_grid)}")
        for name, fix in (("lr", "e.g. 0.1"), ("irls_eps", "the paper code uses 1e-3")):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise TorchRobustError(f"{name} must be a finite number > 0, got {v!r}; {fix}")
        if not self.grid or not all(math.isfinite(c) and c > 0 for c in self.grid):
            raise TorchRobustError(f"the c_r grid needs values > 0, got {list(self.grid)}; e.g. --grid 2**-8,2**-6")
        if preset == "forge":
            if self.weights is None:
                raise TorchRobustError("the forge preset needs a RobustBench checkpoint: pass --weights PATH (e.g. a "
                                       "WideResNet-28-10 .pt file from RobustBench's model zoo)")
            if not Path(self.weights).is_file():
                raise TorchRobustError(f"--weights {self.weights}: no such file; give the RobustBench checkpoint path")
            if self.precision != "fp32":
                raise TorchRobustError("the forge preset trains nothing and evaluates in fp32; drop --precision")
        elif self.weights is not None:
            raise TorchRobustError(f"--weights is the forge preset's RobustBench checkpoint; drop it for {preset}")
        check_precision(self.precision, device)
        return self


# ---------------------------------------------------------------------------------------------------- the run
def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


@dataclass
class _Run:
    """Data, device, output folder and the resumable bookkeeping shared by the presets."""

    out: Path
    cfg: Cifar10Config
    dev: torch.device
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)

    def everywhere(self, path: Path) -> bool:
        """``path`` exists for every rank (so all reuse it, or all recompute)."""
        return not D.any_rank(not path.exists())

    def write(self, path: Path, text: str) -> None:
        if D.is_main():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, text.encode("utf-8"))
        D.barrier()

    def train_config(self, **kw: Any) -> Any:
        from torchrobust.train import TrainConfig

        c = self.cfg
        base: dict[str, Any] = dict(epochs=c.epochs, batch_size=c.batch_size, optimizer="sgd", lr=c.lr, momentum=0.9,
                                    weight_decay=5e-4, schedule="cosine", threat="Linf", eps=EPS, steps=c.train_steps,
                                    alpha=2 / 255, seed=c.seed, max_batches=c.max_batches,
                                    checkpoint_every=c.checkpoint_every, precision=c.precision,
                                    channels_last=c.channels_last)
        return TrainConfig(**{**base, **kw})

    def fit(self, path: Path, model: nn.Module, tcfg: Any, *, params: list[nn.Parameter] | None = None,
            adversary: Callable[..., Any] | None = None, objective: Any = None, **meta: Any) -> nn.Module:
        """``model`` trained by :func:`torchrobust.train.fit` and saved at ``path``; a model already saved there is
        loaded instead, and an interrupted training resumes from its state in ``<path>.resume``."""
        from torchrobust import checkpoint
        from torchrobust.train import fit, resume
        from torchrobust.train.precision import to_memory_format

        model.to(self.dev)
        if self.everywhere(path):
            checkpoint.load_weights(model, path)
            self.timings[f"train {path.stem}"] = float(checkpoint.load_metadata(path)["metadata"].get(
                "train_seconds", 0.0))
            return to_memory_format(model, self.cfg.channels_last).eval()
        ckdir = path.with_name(path.name + ".resume")
        has = resume.has_state(ckdir)
        resumable = not D.any_rank(not has)
        if has and not resumable:  # another rank lost its state: every rank starts this model over
            resume.clear_state(ckdir)
        res = fit(model, self.train, tcfg, params=params, device=self.dev, adversary=adversary, objective=objective,
                  checkpoint_dir=ckdir, resume_from=ckdir if resumable else None)
        if D.is_main():
            checkpoint.save(model, path, training=tcfg.to_dict(), data="cifar10", history=res.history,
                            train_seconds=res.seconds, **meta)
        D.barrier()  # the model is on disk before any rank drops its resume state
        resume.clear_state(ckdir)
        self.timings[f"train {path.stem}"] = res.seconds
        log.info("trained %s in %.1f s", path.stem, res.seconds)
        return model.eval()

    def row(self, label: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The evaluated row ``label``: reloaded from ``OUT/rows`` when an earlier run finished it."""
        path = self.out / "rows" / f"{_slug(label)}.json"
        if self.everywhere(path):
            return json.loads(path.read_text(encoding="utf-8"))
        t0 = time.perf_counter()
        r = {"row": label, **compute()}
        r["eval_seconds"] = round(time.perf_counter() - t0, 2)
        self.write(path, json.dumps(r, indent=1) + "\n")
        log.info("%s: %s", label, {k: v for k, v in r.items() if k != "row"})
        return r

    def sweep(self, model: nn.Module) -> dict[str, Any]:
        """Clean, PGD-20, APGD-CE, APGD-T and their per-example worst case at ℓ∞ 8/255 on the test images."""
        from torchrobust.evaluate import sweep

        c = self.cfg
        x, y = self.test[0][: c.n_test], self.test[1][: c.n_test]
        res = sweep(model, x, y, attacks=["pgd", "apgd-ce", "apgd-t"], eps=[EPS], threat="Linf",
                    attack_kwargs={"pgd": {"steps": c.eval_steps, "alpha": 2 / 255},
                                   "apgd-ce": {"steps": c.apgd_steps}, "apgd-t": {"steps": c.apgd_steps}},
                    batch_size=c.eval_batch_size, seed=c.seed)
        return {"clean": float(res.clean.float().mean()), **{a: res.accuracy(a)[0] for a in res.attacks},
                "worst": res.accuracy()[0], "strength": res.strength, "flags": [f.get("name") for f in res.flags]}


# ---------------------------------------------------------------------------------------------------- presets
def _reprogram(run: _Run) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Hou et al. 2025, Tables 4–6 on CIFAR-10: per backbone the LPM row and Paradigms 1, 2, 3."""
    from torchrobust import models
    from torchrobust.reprogramming import learned_lams, reprogram, set_lam, set_paradigm

    c = run.cfg
    width = c.width or 8
    rows: list[dict[str, Any]] = []
    nrpm = {"K": c.K, "irls_eps": c.irls_eps, "backend": c.backend}
    for mode in c.backbones:
        torch.manual_seed(c.seed)
        net = run.fit(run.out / "models" / f"{mode}.safetensors", models.create("resnet18", width=width),
                      run.train_config(mode=mode), role="backbone")
        rows.append({**run.row(f"{mode} LPM", lambda net=net: run.sweep(net)), "backbone": mode, "paradigm": 0})
        p1 = reprogram(net, lam=1.0, **nrpm)  # shares the backbone's weights; Paradigm 1 trains nothing
        for lam in c.lam_grid:
            set_lam(p1, lam)
            rows.append({**run.row(f"{mode} P1 lam={lam:g}", lambda p1=p1: run.sweep(p1)), "backbone": mode,
                         "paradigm": 1, "lams": [lam]})
        for par in (2, 3):
            torch.manual_seed(c.seed)
            m = reprogram(copy.deepcopy(net), lam=0.5, learn_lam=True, inplace=True, **nrpm)
            params = set_paradigm(m, par)
            # fp32: the NRPM layers' custom autograd (IRLS) is not autocast-safe, so only backbones use --precision
            tcfg = run.train_config(mode="pgd", epochs=c.finetune_epochs, precision="fp32", **(
                {"optimizer": "adam", "lr": 0.02, "weight_decay": 0.0} if par == 2 else {"lr": 0.01}))
            m = run.fit(run.out / "models" / f"{mode}_p{par}.safetensors", m, tcfg, params=params,
                        role=f"paradigm {par}")
            lams = [round(v, 3) for v in learned_lams(m).values()]
            rows.append({**run.row(f"{mode} P{par}", lambda m=m: run.sweep(m)), "backbone": mode, "paradigm": par,
                         "lams": lams})
    return rows, {"width": width}


def _forge(run: _Run) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Chen et al. 2024 on a RobustBench WideResNet: c_r chosen on held-out training images, then the grid on test."""
    from torchrobust import attacks
    from torchrobust.forging import forge, search_c_r
    from torchrobust.robustbench import load_robustbench
    from torchrobust.train.precision import to_memory_format

    c = run.cfg
    model = to_memory_format(load_robustbench(c.weights, "auto", "cifar10", map_location=run.dev),  # type: ignore
                             c.channels_last)
    x_tr, y_tr = run.train
    if c.n_calib + c.n_val > len(x_tr):
        raise TorchRobustError(f"n_calib + n_val = {c.n_calib + c.n_val} exceeds the {len(x_tr)} training images; "
                               "lower --n-calib/--n-val")
    idx = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(c.seed))
    cal, val = x_tr[idx[: c.n_calib]], idx[c.n_calib: c.n_calib + c.n_val]
    search = run.row("c_r search (validation)", lambda: {"search": search_c_r(
        model, cal, x_tr[val], y_tr[val], grid=c.grid, eps=EPS, steps=c.eval_steps, bpda=True,
        batch_size=c.eval_batch_size, seed=c.seed).to_json()})
    chosen = float(search["search"]["chosen_c_r"])
    forged = forge(model, cal, c_r=c.grid[0], batch_size=c.eval_batch_size)
    apgd = attacks.create("apgd-ce", threat="Linf", eps=EPS, steps=c.apgd_steps, seed=c.seed)
    x, y = run.test[0][: c.n_test], run.test[1][: c.n_test]
    test = run.row("c_r grid (test)", lambda: {"search": search_c_r(
        forged, None, x, y, grid=c.grid, attack=apgd, bpda=True, batch_size=c.eval_batch_size,
        seed=c.seed).to_json()})
    pct = ("clean", "robust", "robust_bpda", "robust_worst")  # the search's rows are in %; ours are fractions
    rows = [{"row": f"c_r={r['c_r']:g}", "c_r": r["c_r"], **{k: r[k] / 100 for k in pct},
             "zero_fraction": r.get("zero_fraction"), "chosen": r["c_r"] == chosen} for r in test["search"]["rows"]]
    return rows, {"chosen_c_r": chosen, "validation": search["search"], "weights": str(c.weights)}


def _psat(run: _Run) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Gong et al. 2023 on CIFAR-10: hyper ResNet-18 members per norm, AT baselines, the multi-norm table."""
    from torchrobust.attacks.threat import THREAT_NAMES
    from torchrobust.psat import models as psat_models
    from torchrobust.psat.adversary import CIFAR10_BUDGETS, TrainingAdversary
    from torchrobust.psat.evaluation import EVAL_STEPS, evaluate
    from torchrobust.psat.multinorm import ramp_objective
    from torchrobust.psat.train import member_path

    c = run.cfg
    width = c.width or 64
    folder = run.out / "psat"
    steps = {t: c.train_steps for t in THREAT_NAMES}
    alpha = {"Linf": 2 / 255, "L2": CIFAR10_BUDGETS["L2"] / 4}
    hyper = {"width": width, "unit": min(64, width), "z_dim": 64}  # the unit must tile every channel count
    jobs = [(t, t, "hyper_resnet18", hyper, "psat_member") for t in THREAT_NAMES]
    jobs += [(f"AT_{b}", b, "plain_resnet18", {"width": width}, "baseline") for b in c.baselines]
    for name, strategy, arch, kw, role in jobs:
        torch.manual_seed(c.seed)
        model = psat_models.create(arch, **kw)
        n_params = psat_models.count_parameters(model)
        adv = TrainingAdversary(strategy, eps=dict(CIFAR10_BUDGETS), steps=steps, alpha=alpha)
        objective = ramp_objective(adv)
        run.fit(member_path(folder, name), model, run.train_config(), adversary=adv if objective is None else None,
                objective=objective, role=role, strategy=strategy, eps=dict(CIFAR10_BUDGETS), steps=steps,
                alpha=alpha, parameters=n_params)

    def table() -> dict[str, Any]:
        torch.manual_seed(c.seed)
        steps = EVAL_STEPS if c.psat_eval_steps is None else {t: c.psat_eval_steps for t in THREAT_NAMES}
        found = evaluate(folder, data=run.test, n_test=c.n_test, eps=CIFAR10_BUDGETS, steps=steps,
                         alpha={"Linf": 2 / 255, "L2": CIFAR10_BUDGETS["L2"] / 4}, restarts=c.eval_restarts,
                         baselines=[f"AT_{b}" for b in c.baselines], batch_size=c.eval_batch_size, device=run.dev,
                         dataset="cifar10")
        return {"rows": [asdict(r) if hasattr(r, "__dataclass_fields__") else dict(r) for r in found]}

    rows = run.row("multi-norm table", table)["rows"]
    return rows, {"width": width, "budgets": dict(CIFAR10_BUDGETS)}


_RUNNERS = {"reprogram": _reprogram, "forge": _forge, "psat": _psat}


# ---------------------------------------------------------------------------------------------------- output
def _pct(name: str, label: str | None = None) -> Column:
    return Column(name, ColumnKind.PERCENT, digits=1, label=label, missing="–")


def _lams(lams: Sequence[float] | None) -> str | None:
    """λ per layer as the table shows it: the values, or mean and range when there are more than four."""
    if not lams:
        return None
    if len(lams) <= 4:
        return ", ".join(f"{v:g}" for v in lams)
    return f"mean {sum(lams) / len(lams):.3f} ({min(lams):g}–{max(lams):g}, {len(lams)} layers)"


def _table(preset: str, rows: Sequence[dict[str, Any]], cfg: Cifar10Config) -> Table:
    """The flat result table of ``preset`` (accuracies as fractions, shown in %)."""
    if preset == "reprogram":
        cols = [Column("row", ColumnKind.TEXT), _pct("clean"), _pct("pgd", f"PGD-{cfg.eval_steps}"),
                _pct("apgd-ce", "APGD-CE"), _pct("apgd-t", "APGD-T"), _pct("worst"),
                Column("lams", ColumnKind.TEXT, label="λ", missing="")]
        return Table(cols, [{**r, "lams": _lams(r.get("lams"))} for r in rows], title=PRESETS[preset])
    if preset == "forge":
        cols = [Column("row", ColumnKind.TEXT), _pct("clean"), _pct("robust", "APGD-CE"),
                _pct("robust_bpda", "APGD-CE (BPDA)"), _pct("robust_worst", "worst"), _pct("zero_fraction", "zeroed"),
                Column("chosen", ColumnKind.BOOL, bools=("validation choice", ""))]
        return Table(cols, list(rows), title=PRESETS[preset])
    cols = [Column("name", ColumnKind.TEXT), _pct("clean"), _pct("Linf", "ℓ∞ 8/255"), _pct("L2", "ℓ2 0.5"),
            _pct("L1", "ℓ1 12"), _pct("union"), Column("params", ColumnKind.INT, missing="–")]
    return Table(cols, [{**r, **r.get("per_norm", {})} for r in rows], title=PRESETS[preset])


def _config_doc(preset: str, cfg: Cifar10Config) -> dict[str, Any]:
    doc = {"preset": preset, **asdict(cfg)}
    if cfg.weights is not None:  # the checkpoint's content, not its path, identifies the run
        doc["weights_sha256"] = hashlib.sha256(Path(cfg.weights).read_bytes()).hexdigest()
        doc["weights"] = os.path.basename(cfg.weights)
    return json.loads(json.dumps(doc))


def _check_same_run(out: Path, doc: dict[str, Any]) -> None:
    path = out / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TorchRobustError(f"{path} is unreadable ({e}); delete it or choose another --out") from None
    diff = sorted(k for k in set(old) | set(doc) if old.get(k) != doc.get(k) and k != "n_test_note")
    if diff:
        raise TorchRobustError(f"{out} holds a run with other options (differs in: {', '.join(diff)}); rerun with "
                               "the same options to resume it, or choose another --out")


def run(preset: str, out_dir: str | os.PathLike[str], config: Cifar10Config | None = None, *,
        root: str | os.PathLike[str] | None = None, device: str | None = None) -> dict[str, Any]:
    """Run CIFAR-10 preset ``preset`` (a key of :data:`PRESETS`) into ``out_dir``; returns the result dict.

    Reads CIFAR-10 from ``root`` (torchvision's ``cifar-10-batches-py`` python batches; a missing file is a
    one-line error before any work), trains and evaluates as the module docstring says, and writes
    ``<preset>.md``, ``<preset>.json`` and the flat ``<preset>_table.json`` (``torchrobust report``). Rerunning the
    same call resumes (module docstring). Under torchrun every rank returns the result; rank 0 writes.
    """
    from torchrobust import data

    if preset not in PRESETS:
        raise unknown_name("CIFAR-10 preset", preset, PRESETS)
    cfg = config or Cifar10Config()
    D.init_from_env(device)
    dev = D.device_for_rank(device)
    cfg.validate(preset, dev)
    out = Path(out_dir)
    doc = _config_doc(preset, cfg)
    _check_same_run(out, doc)
    x_te, y_te = data.as_tensors(data.load("cifar10", "test", root=root))
    x_tr, y_tr = data.as_tensors(data.load("cifar10", "train", root=root), cfg.n_train)
    r = _Run(out, cfg, dev, (x_tr, y_tr), (x_te, y_te))
    r.write(out / "config.json", json.dumps(doc, indent=1) + "\n")
    t0 = time.perf_counter()
    rows, extra = _RUNNERS[preset](r)
    result: dict[str, Any] = {"preset": preset, "title": PRESETS[preset], "config": doc, **extra, "rows": rows,
                              "n_train": len(x_tr), "n_test": min(cfg.n_test, len(x_te)), "device": str(dev),
                              "world_size": D.world_size(), "torch": torch.__version__,
                              "timings": {k: round(v, 2) for k, v in r.timings.items()},
                              "wall_seconds": round(time.perf_counter() - t0, 1)}
    table = _table(preset, rows, cfg)
    table.notes = (f"CIFAR-10, first {result['n_test']} test images, {result['n_train']} training images; "
                   f"ℓ∞ ε = 8/255 unless stated; training precision {cfg.precision}, evaluation fp32; "
                   f"wall time of this call {result['wall_seconds']:.0f} s (finished parts reused: see timings).",)
    r.write(out / f"{preset}_table.json", table.to_json())
    r.write(out / f"{preset}.md", table.to_markdown())
    r.write(out / f"{preset}.json", json.dumps(result, indent=1, default=str) + "\n")
    D.cleanup()  # the process group torchrun asked for (a no-op otherwise)
    return result


def quick_config(**overrides: Any) -> Cifar10Config:
    """A tiny configuration for smoke tests on fake CIFAR files (reduced width, a few steps), with ``overrides``."""
    base = Cifar10Config(width=2, epochs=1, finetune_epochs=1, n_test=8, batch_size=8, eval_batch_size=8,
                         train_steps=1, eval_steps=2, apgd_steps=2, backbones=("standard",), lam_grid=(0.5,), K=1,
                         backend="eager", grid=(2.0**-7, 2.0**-5), n_calib=16, n_val=8, baselines=("max",),
                         psat_eval_steps=2)
    return replace(base, **overrides)
