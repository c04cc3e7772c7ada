"""PSAT training: one single-perturbation member per ℓp threat model, plus the multi-norm baselines.

* **Members** (PSAT Eqs. 9–10): each member — hypernetwork, embeddings, and the ordinary stem / BN / fc — is
  adversarially trained against *its own* threat model only (PGD; ℓ1 with the sparse step and the exact
  ℓ1-ball ∩ box projection of :mod:`torchrobust.attacks.threat`). :func:`train_members` writes one checkpoint
  per member; :func:`load_ensemble` rebuilds the aggregate.
* **Baselines** on a plain backbone (:func:`train_baselines`): ``"max"`` (AT_max, worst case over norms per
  example, Eq. 5), ``"avg"`` (AT_avg, Tramèr & Boneh 2019, mean loss over norms, Eq. 6 — one optimiser step on
  the averaged loss; robust_union's ``triple_adv`` instead takes three optimiser steps per batch), ``"msd"``
  (AT_msd, Maini et al. 2020, Eq. 7), ``"eat"`` (E-AT, Croce & Hein 2022: ℓ∞ or ℓ1 at random per batch),
  ``"ramp"`` (RAMP, Jiang & Singh 2024, with its gradient projection unless ``ramp_gp=False``;
  :mod:`~torchrobust.psat.multinorm`, :mod:`~torchrobust.psat.ramp_gp`), and
  the single-norm ``"Linf"``/``"L2"``/``"L1"`` (AT_p).

Members and baselines go through the same loop — the library's :func:`torchrobust.train.fit`, with the PSAT
adversary as its ``adversary`` hook (:func:`train_model`) — and the same optimiser and schedule, so the
comparison is fair. The default recipe is robust_union's MNIST one (Adam, lr_max 1e-3, triangular schedule
``interp([0, 2e/5, e], [0, lr_max, 0])`` stepped per batch, batch 100); PSAT's own optimiser settings are in its
unavailable supplementary material (docs/paper-code-facts.md#psat-training-settings).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from torchrobust import checkpoint
from torchrobust.attacks.threat import THREAT_NAMES
from torchrobust.errors import TorchRobustError
from torchrobust.psat import models as psat_models
from torchrobust.psat.adversary import MNIST_BUDGETS, STRATEGIES, MultiAdversary, TrainingAdversary
from torchrobust.psat.aggregate import PSATEnsemble, Strategy, canonical_threat
from torchrobust.psat.multinorm import ramp_objective
from torchrobust.train.loop import OptimizerName, ScheduleName

if TYPE_CHECKING:
    from torchrobust.train.objectives import Objective

__all__ = ["PSATTrainConfig", "data_settings", "train_model", "train_members", "train_baselines", "train_to_dir",
           "load_member", "load_ensemble", "member_path"]

log = logging.getLogger(__name__)
Data = Dataset | tuple[Tensor, Tensor]
#: The learning-rate schedules of PSAT training (those of :class:`~torchrobust.train.ScheduleName` that need no
#: milestones or step sizes).
SCHEDULES = (ScheduleName.TRIANGULAR, ScheduleName.COSINE, ScheduleName.NONE)


@dataclass
class PSATTrainConfig:
    """Optimiser / schedule / batching for one member or baseline (saved in the checkpoint metadata).

    ``optimizer``: an :class:`~torchrobust.train.OptimizerName` (``"adam"``, ``"sgd"``; plain strings accepted).
    ``schedule``: one of :data:`SCHEDULES` (a :class:`~torchrobust.train.ScheduleName` or its string):
    ``"triangular"`` (robust_union MNIST: linear 0 → lr at 2/5 of training → 0), ``"cosine"`` or ``"none"``.
    :meth:`validate` stores both as the plain strings (so the checkpoint metadata is unchanged).
    ``max_batches`` caps batches per epoch (quick runs).
    """

    epochs: int = 1
    batch_size: int = 100
    optimizer: OptimizerName | str = OptimizerName.ADAM
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: ScheduleName | str = ScheduleName.TRIANGULAR
    seed: int = 0
    max_batches: int | None = None
    progress: bool = False

    def validate(self) -> PSATTrainConfig:
        if self.epochs < 1 or self.batch_size < 1:
            raise TorchRobustError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        try:
            self.optimizer = OptimizerName(self.optimizer).value
        except ValueError:
            raise TorchRobustError(f"unknown optimizer {str(self.optimizer)!r}; valid: "
                                   f"{', '.join(sorted(o.value for o in OptimizerName))}") from None
        try:
            schedule = ScheduleName(self.schedule)
        except ValueError:
            schedule = None
        if schedule not in SCHEDULES:
            raise TorchRobustError(f"unknown schedule {str(self.schedule)!r}; valid: "
                                   f"{', '.join(sorted(s.value for s in SCHEDULES))}")
        self.schedule = schedule.value
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TorchRobustError(f"learning rate must be a positive number, got {self.lr}")
        return self


def data_tensors(data: Data) -> tuple[Tensor, Tensor]:
    """``data`` (an ``(x, y)`` pair, a ``TensorDataset`` or any dataset of ``(x, y)`` items) as two tensors."""
    if isinstance(data, tuple) and len(data) == 2:
        return data[0], torch.as_tensor(data[1])
    if isinstance(data, TensorDataset):
        return data.tensors[0], data.tensors[1]
    xs, ys = zip(*(data[i] for i in range(len(data))), strict=True)  # type: ignore[arg-type]
    return torch.stack(list(xs)), torch.as_tensor(ys)


def train_model(model: nn.Module, data: Data, adversary: MultiAdversary, config: PSATTrainConfig | None = None,
                device: str | torch.device | None = None, objective: Objective | None = None
                ) -> list[dict[str, float]]:
    """Train ``model`` in place with :func:`torchrobust.train.fit`: per batch, ``adversary(model, x, y)`` (eval
    mode) gives a list of inputs and the loss is the mean cross-entropy over them (train mode). Returns the
    per-epoch history (``train_acc`` is the accuracy on the adversarial inputs). ``objective`` (e.g. RAMP's)
    replaces that loss and the adversary (:func:`torchrobust.train.fit`'s ``objective``)."""
    from torchrobust.train.loop import TrainConfig, fit

    cfg = (config or PSATTrainConfig()).validate()
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr,
                       momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule=cfg.schedule, seed=cfg.seed,
                       max_batches=cfg.max_batches, progress=cfg.progress)
    return fit(model, data, tcfg, device=device, adversary=None if objective is not None else adversary,
               objective=objective).history


def data_settings(data: Data) -> dict[str, Any]:
    """Number of training images and SHA-256 of their bytes and labels (recorded in every checkpoint's metadata, so
    a rerun can tell whether a checkpoint was trained on the same data)."""
    x, y = data_tensors(data)
    h = hashlib.sha256(x.contiguous().cpu().numpy().tobytes())
    h.update(y.contiguous().cpu().numpy().tobytes())
    return {"n_train": len(x), "train_data_sha256": h.hexdigest()}


def member_path(out_dir: str | os.PathLike[str], name: str) -> Path:
    """Checkpoint path of member / baseline ``name`` in ``out_dir``."""
    return Path(out_dir) / f"{name}.safetensors"


@dataclass
class _RunSpec:
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    eps: dict[str, float] = field(default_factory=lambda: dict(MNIST_BUDGETS))
    steps: dict[str, int] = field(default_factory=lambda: {"Linf": 10, "L2": 10, "L1": 10})
    alpha: dict[str, float] = field(default_factory=dict)


def _train_named(out_dir: str | os.PathLike[str], data: Data, names: Sequence[tuple[str, str]], run: _RunSpec,
                 config: PSATTrainConfig, device: str | torch.device | None, msd_alpha: Mapping[str, float],
                 msd_steps: int | None, role: str, ramp_gp: bool = True) -> dict[str, Path]:
    out: dict[str, Path] = {}
    recorded = data_settings(data)
    for name, strategy in names:
        torch.manual_seed(config.seed)
        model = psat_models.create(run.arch, **run.arch_kwargs)
        adv = TrainingAdversary(strategy, eps=run.eps, steps=run.steps, alpha=run.alpha, msd_alpha=msd_alpha,
                                msd_steps=msd_steps)
        t0, c0 = time.perf_counter(), time.process_time()
        objective = ramp_objective(adv, gp=ramp_gp)
        extra = {} if objective is None else {"ramp_gp": objective.gp, "ramp_lambda": objective.lam}
        history = train_model(model, data, adv, config, device, objective=objective)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        path = checkpoint.save(model.cpu(), member_path(out_dir, name), role=role, strategy=strategy,
                               eps=run.eps, steps=run.steps, alpha=run.alpha, train_config=asdict(config),
                               train_seconds=seconds, train_cpu_seconds=cpu_seconds, history=history,
                               parameters=psat_models.count_parameters(model), **recorded, **extra)
        log.info("trained %s %s in %.1fs -> %s", role, name, seconds, path)
        out[name] = path
    return out


def train_members(out_dir: str | os.PathLike[str], data: Data, threats: Sequence[str] = THREAT_NAMES,
                  epochs: int = 1, arch: str = "hyper_msd_cnn", arch_kwargs: Mapping[str, Any] | None = None,
                  eps: Mapping[str, float] | None = None, steps: Mapping[str, int] | None = None,
                  alpha: Mapping[str, float] | None = None, config: PSATTrainConfig | None = None,
                  device: str | torch.device | None = None, **config_kw: Any) -> dict[str, Path]:
    """Train one PSAT member per threat model (``"natural"`` = standard training) and save each to
    ``out_dir/<threat>.safetensors``. ``config_kw`` overrides :class:`PSATTrainConfig` fields. Returns the paths.
    """
    if not threats:
        raise TorchRobustError("no threat models given; pass threats=['Linf', 'L2', 'L1']")
    names = [canonical_threat(t) for t in threats]
    cfg = config or PSATTrainConfig(epochs=epochs, **config_kw)
    run = _RunSpec(arch, dict(arch_kwargs or {}), dict(eps or MNIST_BUDGETS),
                   dict(steps or {"Linf": 10, "L2": 10, "L1": 10}), dict(alpha or {}))
    return _train_named(out_dir, data, [(n, n) for n in names], run, cfg, device, {}, None, "psat_member")


def train_baselines(out_dir: str | os.PathLike[str], data: Data, strategies: Sequence[str] = ("max", "avg", "msd"),
                    epochs: int = 1, arch: str = "msd_cnn", arch_kwargs: Mapping[str, Any] | None = None,
                    eps: Mapping[str, float] | None = None, steps: Mapping[str, int] | None = None,
                    alpha: Mapping[str, float] | None = None, msd_alpha: Mapping[str, float] | None = None,
                    msd_steps: int | None = None, config: PSATTrainConfig | None = None,
                    device: str | torch.device | None = None, ramp_gp: bool = True,
                    **config_kw: Any) -> dict[str, Path]:
    """Train the multi-norm baselines AT_max / AT_avg / AT_msd / AT_eat / AT_ramp (and single-norm AT_p with
    ``"Linf"`` etc.) on the plain backbone ``arch``; saved as ``out_dir/AT_<strategy>.safetensors``. ``ramp_gp``:
    RAMP with its gradient projection (default) or without ("RAMP w/o GP"); recorded in AT_ramp's metadata."""
    for s in strategies:
        if s not in STRATEGIES:
            raise TorchRobustError(f"unknown baseline {s!r}; valid: {', '.join(STRATEGIES)}")
    cfg = config or PSATTrainConfig(epochs=epochs, **config_kw)
    run = _RunSpec(arch, dict(arch_kwargs or {}), dict(eps or MNIST_BUDGETS),
                   dict(steps or {"Linf": 10, "L2": 10, "L1": 10}), dict(alpha or {}))
    return _train_named(out_dir, data, [(f"AT_{s}", s) for s in strategies], run, cfg, device,
                        dict(msd_alpha or {}), msd_steps, "baseline", ramp_gp)


def train_to_dir(out_dir: str | os.PathLike[str], members: Sequence[str] = THREAT_NAMES,
                 baselines: Sequence[str] = (), arch: str = "hyper_msd_cnn", dataset: str = "mnist",
                 root: str | os.PathLike[str] | None = None, n_train: int | None = None, epochs: int = 1,
                 steps: int = 10, lr: float = 1e-3, seed: int = 0, overwrite: bool = False,
                 ramp_gp: bool = True) -> dict[str, Path]:
    """``torchrobust psat train``: PSAT members (:func:`train_members`, one per threat model in ``members``) and
    multi-norm baselines (:func:`train_baselines`, ``AT_<strategy>`` for each of ``baselines``) trained on the first
    ``n_train`` (all when ``None``) training examples of ``dataset``, every adversary with ``steps`` PGD steps;
    ``ramp_gp``: the RAMP baseline with gradient projection (default) or without.

    Checks before any work that there is something to train and that ``out_dir`` holds none of the checkpoints
    (unless ``overwrite``); seeds torch with ``seed``. Returns name -> written checkpoint path, members first.
    """
    from torchrobust import data as trdata
    from torchrobust.validation import check_output_dir

    names = [*members, *(f"AT_{b}" for b in baselines)]
    if not names:
        raise TorchRobustError("nothing to train: --members and --baselines are both empty; name at least one")
    check_output_dir(out_dir, [f"{n}.safetensors" for n in names], overwrite=overwrite)
    torch.manual_seed(seed)
    x, y = trdata.as_tensors(trdata.load(dataset, "train", root=root), n_train)
    kw: dict[str, Any] = {"epochs": epochs, "lr": lr, "seed": seed}
    steps_per_threat = {t: steps for t in THREAT_NAMES}
    paths = train_members(out_dir, (x, y), threats=members, arch=arch, steps=steps_per_threat, **kw) \
        if members else {}
    if baselines:
        paths.update(train_baselines(out_dir, (x, y), strategies=baselines, steps=steps_per_threat,
                                     ramp_gp=ramp_gp, **kw))
    return paths


def load_member(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`train_members` / :func:`train_baselines` (eval mode)."""
    doc = checkpoint.load_metadata(path)
    spec = doc.get("model") or {}
    model = psat_models.create(spec.get("name", "?"), **dict(spec.get("kwargs") or {}))
    checkpoint.load_weights(model, path)
    return model.to(map_location).eval()


def load_ensemble(source: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
                  threats: Sequence[str] = THREAT_NAMES, strategy: Strategy = "entropy",
                  map_location: str | torch.device = "cpu") -> PSATEnsemble:
    """The PSAT aggregate from a directory written by :func:`train_members` (members ``threats``) or from an
    explicit mapping threat → checkpoint path."""
    if isinstance(source, Mapping):
        paths = {canonical_threat(k): Path(v) for k, v in source.items()}
    else:
        paths = {canonical_threat(t): member_path(source, canonical_threat(t)) for t in threats}
    return PSATEnsemble({k: load_member(p, map_location) for k, p in paths.items()}, strategy=strategy).eval()
