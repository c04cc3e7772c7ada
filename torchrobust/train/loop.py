"""Training loops: standard, FGSM/PGD adversarial training (Madry et al. 2018), TRADES (Zhang et al. 2019) and
Gaussian noise augmentation (the base classifiers of randomized smoothing, Cohen et al. 2019).

One loop serves every mode; a mode only changes which inputs the loss sees:

=============  ==========================================================================================
``standard``   cross-entropy on clean inputs
``fgsm``       cross-entropy on single-step examples (:class:`torchrobust.attacks.FGSM`)
``pgd``        cross-entropy on PGD examples (Madry): ``steps`` steps of size ``alpha``, random start
``trades``     CE(f(x), y) + β·KL(f(x_adv) ‖ f(x)), x_adv maximising the KL term (TRADES, Eq. 5 of the paper)
``mart``       MART (Wang et al. 2020): boosted CE on PGD examples + β·(1 − p_y(x))-weighted KL
``pgd-awp``    ``pgd`` trained at adversarially perturbed weights (AWP, Wu et al. 2020; :mod:`.awp`)
``trades-awp`` ``trades`` trained at adversarially perturbed weights (TRADES-AWP)
``gaussian``   cross-entropy on x + N(0, σ²) (not clipped to [0,1], as in Cohen et al.)
=============  ==========================================================================================

The losses live in :mod:`torchrobust.train.objectives` (equations there and in docs/training.md).

A custom ``adversary(model, x, y)`` may replace the mode's: it returns one input batch, or several (the loss is
then the mean cross-entropy over them — AT_avg of Tramèr & Boneh 2019, used by :mod:`torchrobust.psat`).

``precision="bf16"``/``"fp16"`` trains under autocast (fp16 with loss scaling, CUDA only) and ``channels_last=True``
uses the NHWC memory format (:mod:`.precision`); evaluation outside ``fit`` stays fp32.

``mixed=True`` adds the clean loss to the adversarial one (CE(x) + CE(x_adv)), as the robustness-reprogramming
paper's code does (it calls ``backward`` twice before one optimiser step).

Adversarial examples are crafted with the model in eval mode (the attacks' contract; BatchNorm statistics are
not updated by the attack's forward passes), then the model is trained on them in train mode.

After each optimiser step every module with a ``project_()`` method (e.g. NRPM layers keeping λ in [0, 1]) is
called, so constrained parameters stay feasible (projected gradient descent).

Under ``torchrun`` the model is wrapped in DistributedDataParallel and each process trains on its shard of
every epoch's permutation (same seed everywhere, so the union of the shards is the permutation).

**Divergence.** After every optimiser step the loss and every floating tensor of the model's state are checked;
a NaN/inf stops training with a one-line :class:`~torchrobust.errors.TorchRobustError` (lower the learning rate,
check the weight decay), the model is put back to its weights before that step, and no resume state is written
past the last good one. Hyper-parameters are validated before any work (finite, in range).

**Resume.** ``fit(..., checkpoint_dir=D)`` writes a resume state (:mod:`torchrobust.train.resume`: model,
optimiser, LR scheduler, RNG states, epoch, batch and the epoch's permutation; safetensors + JSON, atomic) after
every epoch and every ``checkpoint_every`` steps. ``fit(..., resume_from=D)`` on a freshly built model continues
from it: the data order depends only on ``(seed, epoch)`` and every RNG is restored, so the final weights are
bitwise identical to the uninterrupted run's (the AWP modes carry no state across steps, :mod:`.awp`). A state
from another configuration, model, data set or process count is refused. CLI: ``torchrobust train ...
--checkpoint-every N`` (state in ``<out>.resume/``), rerun with
``--resume`` after a crash or ``kill -9``.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum, auto
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import distributed as D
from ..errors import TorchRobustError, TrainingDiverged
from ..validation import eval_mode, model_device
from .objectives import Objective, batch_loss, mode_adversary
from .tensors import dataset_tensors

__all__ = ["TrainConfig", "TrainResult", "fit", "TrainMode", "OptimizerName", "ScheduleName", "MODES", "OPTIMIZERS",
           "SCHEDULES", "iterate_batches", "epoch_order", "triangular"]

log = logging.getLogger(__name__)



class TrainMode(str, Enum):
    """Training modes (``TrainConfig.mode``); a ``str`` enum, so ``mode="pgd"`` keeps working."""

    STANDARD = "standard"  #: clean inputs
    FGSM = "fgsm"  #: FGSM adversarial training (Goodfellow et al. 2015)
    PGD = "pgd"  #: PGD adversarial training, random start (Madry et al. 2018)
    TRADES = "trades"  #: CE(x) + β·KL(f(x') ‖ f(x)) (Zhang et al. 2019)
    GAUSSIAN = "gaussian"  #: Gaussian noise augmentation, σ = ``noise_sigma`` (Cohen et al. 2019)
    MART = "mart"  #: BCE(x') + β·KL(f(x) ‖ f(x'))·(1 − f_y(x)), β = ``mart_beta`` (Wang et al. 2020)
    PGD_AWP = "pgd-awp"  #: PGD-AT at weights w + v, ‖v_l‖ = ``awp_gamma``·‖w_l‖ (Wu et al. 2020)
    TRADES_AWP = "trades-awp"  #: TRADES at weights w + v (Wu et al. 2020)

    def __str__(self) -> str:
        return self.value


class OptimizerName(str, Enum):
    """Optimisers (``TrainConfig.optimizer``)."""

    SGD = "sgd"
    ADAM = "adam"

    def __str__(self) -> str:
        return self.value


class ScheduleName(str, Enum):
    """Learning-rate schedules (``TrainConfig.schedule``); each value is its member's name in lower case."""

    def _generate_next_value_(name: str, start: int, count: int, last_values: list[Any]) -> str:
        return name.lower()

    NONE = auto()
    COSINE = auto()
    STEP = auto()
    MULTISTEP = auto()
    ONECYCLE = auto()
    TRIANGULAR = auto()

    def __str__(self) -> str:
        return self.value


MODES = tuple(m.value for m in TrainMode)
OPTIMIZERS = tuple(o.value for o in OptimizerName)
SCHEDULES = tuple(s.value for s in ScheduleName)


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved verbatim in the checkpoint metadata)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    mode: str = "standard"
    threat: str = "Linf"
    eps: float = 0.3
    steps: int = 10
    alpha: float | None = None
    trades_beta: float = 6.0
    mart_beta: float = 6.0
    awp_gamma: float = 5e-3
    mixed: bool = False
    noise_sigma: float = 0.25
    seed: int = 0
    max_batches: int | None = None
    progress: bool = False
    checkpoint_every: int | None = None
    precision: str = "fp32"
    channels_last: bool = False

    def validate(self) -> TrainConfig:
        """Check every field (finite, in range) before any work; raises :class:`TorchRobustError`."""
        for name in ("epochs", "batch_size", "steps", "seed"):
            _check_int(name, getattr(self, name), 0 if name == "seed" else 1)
        for name in ("max_batches", "checkpoint_every"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        for name, fix in (("lr", "try 0.01 (SGD) or 1e-3 (Adam)"), ("momentum", "use 0 for none, 0.9 is usual"),
                          ("weight_decay", "use 0 for none, 5e-4 is usual"), ("gamma", "e.g. 0.1"),
                          ("eps", "e.g. 0.3 for MNIST Linf"), ("trades_beta", "TRADES uses 6"),
                          ("mart_beta", "MART uses 6"), ("awp_gamma", "AWP uses 5e-3"),
                          ("noise_sigma", "e.g. 0.25")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0 \
                    or v > _FLOAT32_MAX:
                label = "learning rate (lr)" if name == "lr" else name
                raise TorchRobustError(f"{label} must be a finite number >= 0, got {v!r}; {fix}")
        if self.alpha is not None and (isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real)
                                       or not math.isfinite(self.alpha) or self.alpha <= 0):
            raise TorchRobustError(f"alpha (attack step size) must be a finite number > 0 or None, got "
                                   f"{self.alpha!r}; leave it unset for the threat model's default")
        if not all(isinstance(m, numbers.Integral) and not isinstance(m, bool) and m >= 0 for m in self.milestones):
            raise TorchRobustError(f"milestones must be epoch numbers >= 0, got {self.milestones!r}")
        for name, kind in (("mode", TrainMode), ("optimizer", OptimizerName), ("schedule", ScheduleName)):
            value = getattr(self, name)
            if isinstance(value, kind):  # stored (and saved in checkpoint metadata) as the plain string
                setattr(self, name, value.value)
        if self.mode not in MODES:
            raise TorchRobustError(f"unknown training mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.optimizer not in OPTIMIZERS:
            raise TorchRobustError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise TorchRobustError(f"unknown LR schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.lr == 0:
            raise TorchRobustError("learning rate (lr) must be > 0, got 0; try 0.01 (SGD) or 1e-3 (Adam)")
        from .precision import PRECISIONS, Precision

        self.precision = self.precision.value if isinstance(self.precision, Precision) else self.precision
        if self.precision not in PRECISIONS:
            raise TorchRobustError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # larger values overflow inside the optimisers


def _check_int(name: str, v: Any, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise TorchRobustError(f"{name} must be an integer >= {lo}, got {v!r}")


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    seconds: float

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of ``n`` examples in ``epoch``: a function of ``(seed, epoch)`` only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def iterate_batches(data: Dataset | tuple[torch.Tensor, torch.Tensor], batch_size: int, *, shuffle: bool,
                    seed: int, epoch: int, device: torch.device, max_batches: int | None = None,
                    shard: bool = True, order: torch.Tensor | None = None,
                    start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches on ``device``; in-memory tensors are sliced directly (no DataLoader overhead).

    The permutation depends only on ``(seed, epoch)`` (or is ``order``, e.g. the one a resume state saved);
    under DDP each rank takes its contiguous shard of it. ``start`` skips the first batches (resuming).
    """
    tensors = dataset_tensors(data)
    n = len(tensors[0]) if tensors is not None else len(data)  # type: ignore[arg-type]
    if order is None:
        order = epoch_order(n, seed, epoch) if shuffle else torch.arange(n)
    if shard:
        a, b = D.shard_bounds(n)
        order = order[a:b]
    nb = math.ceil(len(order) / batch_size)
    if max_batches is not None:
        nb = min(nb, max_batches)
    order = order[start * batch_size:]
    nb -= start
    if tensors is not None:
        x_all, y_all = tensors
        for i in range(nb):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield x_all[idx].to(device, non_blocking=True), y_all[idx].to(device, non_blocking=True)
        return
    loader = DataLoader(torch.utils.data.Subset(data, order.tolist()), batch_size=batch_size, shuffle=False)
    for i, (x, y) in enumerate(loader):
        if i >= nb:
            break
        yield x.to(device), torch.as_tensor(y).to(device)


def _make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == OptimizerName.SGD:
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def triangular(t: float) -> float:
    """The triangular LR factor at training progress ``t`` ∈ [0, 1]: 0 → 1 linearly over the first 2/5, then
    back to 0 (robust_union's MNIST schedule, Maini et al. 2020)."""
    return t / 0.4 if t < 0.4 else max(0.0, (1 - t) / 0.6)


def _make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == ScheduleName.TRIANGULAR:  # per optimiser step; the first step has lr 0
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: triangular(k / total))
    if cfg.schedule == ScheduleName.COSINE:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == ScheduleName.ONECYCLE:
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    if cfg.schedule == ScheduleName.STEP:
        step = max(1, (cfg.milestones[0] if cfg.milestones else max(1, cfg.epochs // 3)) * steps_per_epoch)
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=cfg.gamma)
    if cfg.schedule == ScheduleName.MULTISTEP:
        ms = [m * steps_per_epoch for m in (cfg.milestones or [cfg.epochs // 2, 3 * cfg.epochs // 4])]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=cfg.gamma)
    return None


def _project_constraints(model: nn.Module) -> None:
    for m in model.modules():
        proj = getattr(m, "project_", None)
        if callable(proj):
            proj()


Data = Dataset | tuple[torch.Tensor, torch.Tensor]
Adversary = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor | Sequence[torch.Tensor]]


def _check_data(model: nn.Module, train_set: Data, dev: torch.device) -> None:
    """Before any work: in-memory training data is non-empty and finite, and its labels are classes the model
    outputs (one eval-mode forward pass on two examples)."""
    tensors = dataset_tensors(train_set)
    if tensors is None:
        if len(train_set) == 0:  # type: ignore[arg-type]
            raise TorchRobustError("the training set is empty; check the data folder or --n-train")
        return
    x, y = tensors
    if len(x) == 0 or len(x) != len(y):
        raise TorchRobustError(f"training data needs as many labels as inputs (>= 1), got {len(x)} inputs and "
                               f"{len(y)} labels")
    if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
        raise TorchRobustError(f"training labels must be a 1-D integer tensor of class indices, got {y.dtype} "
                               f"{tuple(y.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise TorchRobustError("the training inputs contain NaN or inf; clean the data")
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x[:2].to(dev))
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise TorchRobustError(f"training inputs of shape {tuple(x.shape[1:])} do not fit the model ({first}); "
                               "check the dataset's channels and image size") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise TorchRobustError("the model must return logits of shape (N, num_classes); got "
                               f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
    lo, hi, classes = int(y.min()), int(y.max()), int(out.shape[1])
    if lo < 0 or hi >= classes:
        raise TorchRobustError(f"the training labels go from {lo} to {hi} but the model outputs {classes} "
                               f"classes; build it with num_classes={hi + 1} (CLI: --model-arg "
                               f"num_classes={hi + 1})")


class _LastGood:
    """A copy of the model's state (parameters and buffers) after the last step whose loss and weights were
    finite; :meth:`restore` puts it back in place."""

    def __init__(self, model: nn.Module) -> None:
        unique = {id(t): t.detach() for t in [*model.parameters(), *model.buffers()]}  # shared weights once
        self.live = list(unique.values())
        self.saved = [t.clone() for t in self.live]
        self.floats = [t for t in self.live if t.is_floating_point() or t.is_complex()]

    def finite(self) -> bool:
        return not self.floats or bool(torch.stack([torch.isfinite(t).all() for t in self.floats]).all())

    def take(self) -> None:
        with torch.no_grad():
            for s, t in zip(self.saved, self.live, strict=True):
                s.copy_(t)

    def restore(self) -> None:
        with torch.no_grad():
            for s, t in zip(self.saved, self.live, strict=True):
                t.copy_(s)


def fit(model: nn.Module, train_set: Data, config: TrainConfig,
        params: Iterable[nn.Parameter] | None = None, val_set: Data | None = None,
        device: str | torch.device | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        adversary: Adversary | None = None,
        objective: Objective | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume_from: str | os.PathLike[str] | None = None) -> TrainResult:
    """Train ``model`` in place on ``train_set`` as ``config`` says; returns the per-epoch history.

    ``params``: the parameters to optimise (default: every parameter with ``requires_grad``) — e.g. only the
    NRPM λ's for reprogramming paradigm 2. ``val_set``: clean accuracy on it is logged after every epoch.
    ``adversary``: replaces the inputs of ``config.mode`` (not with ``"trades"``): ``adversary(model, x, y)`` is
    called with the model as it is (the attacks put it in eval mode themselves) and returns the training input,
    or a list of them whose cross-entropies are averaged; ``train_acc`` then counts over all of them.
    ``objective(net, model, x, y) -> (loss, logits)`` replaces the mode's loss altogether (``mode`` must be
    ``"standard"`` and ``adversary`` unset; e.g. RAMP in :mod:`torchrobust.psat`; :mod:`.objectives`).
    An objective with ``begin_epoch(model, optimizer, epoch, first_batch)`` / ``end_epoch(model)`` methods has
    them called before / after every epoch's batches (RAMP's gradient projection, :mod:`torchrobust.psat.ramp_gp`);
    one that keeps state across batches has ``state_dict()`` (tensors and JSON-able values) / ``load_state_dict``:
    that state goes into every resume state and is loaded back, before ``begin_epoch``, on resume.
    Seeded by ``config.seed`` (torch's global RNG is re-seeded at the start for the attacks' random starts).

    ``checkpoint_dir``: write a resume state there (:mod:`torchrobust.train.resume`) after every epoch and every
    ``config.checkpoint_every`` optimiser steps; a folder that already holds one is refused (resume it or delete
    it). ``resume_from``: continue the run whose state is in that folder (default ``checkpoint_dir``: the same
    folder); the result is bitwise identical to the uninterrupted run. ``on_epoch(record)`` is called after every
    epoch, before that epoch's resume state is written: entries it adds to ``record`` are kept in the history and
    in the state, and it is not called again for epochs finished before the interruption.

    Raises :class:`TorchRobustError` when a step makes the loss or the weights NaN/inf; the model then holds the
    weights before that step and the last resume state on disk is untouched.
    """
    from . import resume
    from .precision import autocast, check_precision, grad_scaler, to_memory_format

    cfg = config.validate()
    if adversary is not None and cfg.mode in (TrainMode.TRADES, TrainMode.TRADES_AWP):
        raise TorchRobustError(f"a custom adversary replaces the mode's inputs; it cannot be combined with "
                               f"mode={cfg.mode!r} (use mode='standard')")
    if objective is not None and (adversary is not None or cfg.mode != TrainMode.STANDARD):
        raise TorchRobustError("a custom objective replaces the mode's loss; use it with mode='standard' and no "
                               "adversary")
    ckdir = Path(checkpoint_dir if checkpoint_dir is not None else resume_from) \
        if checkpoint_dir is not None or resume_from is not None else None
    if ckdir is not None:
        from ..validation import check_output_dir

        check_output_dir(ckdir, flag="checkpoint folder")
        if resume_from is None and resume.has_state(ckdir):
            raise TorchRobustError(f"{ckdir} already holds the resume state of an earlier run; resume it "
                                   "(CLI: --resume, API: resume_from=) or delete that folder to start over")
    dev = torch.device(device) if device is not None else model_device(model)
    cfg.precision = check_precision(cfg.precision, dev)
    to_memory_format(model.to(dev), cfg.channels_last)
    _check_data(model, train_set, dev)
    scaler = grad_scaler(cfg.precision, dev)
    torch.manual_seed(cfg.seed + D.rank())
    plist = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not plist:
        raise TorchRobustError("no trainable parameters: every parameter has requires_grad=False; unfreeze "
                               "some or pass params=")
    n = len(dataset_tensors(train_set)[0]) if dataset_tensors(train_set) is not None else len(train_set)
    shard_n = (lambda ab: ab[1] - ab[0])(D.shard_bounds(n))
    steps_per_epoch = math.ceil(shard_n / cfg.batch_size)
    if cfg.max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_batches)
    opt = _make_optimizer(plist, cfg)
    sched = _make_schedule(opt, cfg, steps_per_epoch)
    adversary = adversary if adversary is not None else mode_adversary(cfg.mode, cfg.threat, cfg.eps, cfg.steps,
                                                                       cfg.alpha)
    fp = resume.fingerprint(cfg.to_dict(), model, plist, train_set, dev) if ckdir is not None else {}
    done: dict[str, Any] = {"history": [], "loss": 0.0, "correct": 0, "n": 0, "epoch_seconds": 0.0, "seconds": 0.0}
    epoch0, batch0, order = 0, 0, None
    stateful = objective if callable(getattr(objective, "state_dict", None)) \
        and callable(getattr(objective, "load_state_dict", None)) else None  # e.g. RAMP's gradient projection
    if resume_from is not None:  # last: it restores the RNG states the loop continues from
        pos, done, order = resume.load_state(resume_from, model=model, optimizer=opt, scheduler=sched, fp=fp,
                                             device=dev, objective=stateful)
        epoch0, batch0 = int(pos["epoch"]), int(pos["batch"])
        if scaler is not None and done.get("scaler"):
            scaler.load_state_dict(done["scaler"])
    net: nn.Module = model
    if D.is_distributed():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    history: list[dict[str, float]] = list(done["history"])
    last_good = _LastGood(model)
    step = epoch0 * steps_per_epoch + batch0
    t_start = time.perf_counter() - float(done["seconds"])

    def checkpoint(epoch: int, batch: int, order: torch.Tensor, sums: tuple[float, int, int], t0: float) -> None:
        now = time.perf_counter()
        resume.write_state(ckdir, model=model, optimizer=opt, scheduler=sched, fp=fp, device=dev,  # type: ignore
                           position={"epoch": epoch, "batch": batch, "step": step}, order=order,
                           objective=stateful.state_dict() if stateful is not None else None,  # type: ignore
                           progress={"history": history, "loss": sums[0], "correct": sums[1], "n": sums[2],
                                     "epoch_seconds": now - t0, "seconds": now - t_start,
                                     "scaler": scaler.state_dict() if scaler is not None else None})

    for epoch in range(epoch0, cfg.epochs):
        first = batch0 if epoch == epoch0 else 0
        tot_loss, tot_correct, tot_n = (float(done["loss"]), int(done["correct"]), int(done["n"])) if first \
            else (0.0, 0, 0)
        t0 = time.perf_counter() - (float(done["epoch_seconds"]) if first else 0.0)
        if order is None or epoch != epoch0:
            order = epoch_order(n, cfg.seed, epoch)
        model.train()
        if callable(getattr(objective, "begin_epoch", None)):  # e.g. RAMP's gradient projection
            objective.begin_epoch(model, opt, epoch, first)  # type: ignore[union-attr]
        batches = iterate_batches(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                                  device=dev, max_batches=cfg.max_batches, order=order, start=first)
        if cfg.progress and D.is_main():
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           leave=False)
        for b, (x, y) in enumerate(batches, start=first):
            with autocast(cfg.precision, dev, model):  # the adversary's crafting too; inputs and projections stay fp32
                loss, logits, restore = batch_loss(net, model, x, y, cfg, adversary, objective)
            try:
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:  # fp16: dynamic loss scaling (a step with inf/NaN gradients is skipped)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
            finally:
                restore()  # AWP: back from w + v (a no-op for the other modes)
            if sched is not None:
                sched.step()
            _project_constraints(model)
            step += 1
            loss_value = float(loss.detach())
            if D.any_rank(not (math.isfinite(loss_value) and last_good.finite())):
                last_good.restore()
                what = f"the loss is {loss_value}" if not math.isfinite(loss_value) else "the weights became NaN/inf"
                kept = f"; the last resume state in {ckdir} is kept" if ckdir is not None and resume.has_state(
                    ckdir) else ""
                raise TrainingDiverged(f"training diverged at epoch {epoch + 1}, batch {b + 1}: {what} (lr "
                                       f"{cfg.lr:g}, weight_decay {cfg.weight_decay:g}); lower the learning rate "
                                       "(--lr) or check the weight decay (--weight-decay); the model holds the "
                                       f"weights before that step{kept}", epoch=epoch + 1, batch=b + 1)
            last_good.take()
            k = len(logits) // len(y)
            tot_loss += loss_value * len(y) * k
            tot_correct += int((logits.detach().argmax(1) == y.repeat(k)).sum())
            tot_n += len(y) * k
            if ckdir is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 \
                    and b + 1 < steps_per_epoch:
                checkpoint(epoch, b + 1, order, (tot_loss, tot_correct, tot_n), t0)
        if callable(getattr(objective, "end_epoch", None)):  # RAMP's GP fuses the epoch's update
            objective.end_epoch(model)  # type: ignore[union-attr]
            last_good.take()
        rec: dict[str, float] = {"epoch": epoch + 1, "loss": tot_loss / max(tot_n, 1),
                                 "train_acc": tot_correct / max(tot_n, 1), "lr": opt.param_groups[0]["lr"],
                                 "seconds": time.perf_counter() - t0}
        if val_set is not None:
            from ..evaluate.metrics import accuracy

            vx, vy = dataset_tensors(val_set) or _materialise(val_set)
            rec["val_acc"] = accuracy(model, vx, vy)
        history.append(rec)
        log.info("epoch %d/%d loss %.4f train_acc %.4f%s (%.1fs)", epoch + 1, cfg.epochs, rec["loss"],
                 rec["train_acc"], f" val_acc {rec['val_acc']:.4f}" if "val_acc" in rec else "", rec["seconds"])
        if on_epoch is not None:  # before the epoch's resume state, so what it adds to ``rec`` is kept in it
            on_epoch(rec)
        if ckdir is not None:
            checkpoint(epoch + 1, 0, epoch_order(n, cfg.seed, epoch + 1), (0.0, 0, 0), time.perf_counter())
    model.eval()
    return TrainResult(history=history, seconds=time.perf_counter() - t_start)


def _materialise(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*[data[i] for i in range(len(data))], strict=True)  # type: ignore[arg-type]
    return torch.stack(list(xs)), torch.as_tensor(ys)
