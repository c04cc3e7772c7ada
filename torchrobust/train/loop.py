"""Training loops: standard, FGSM/PGD adversarial training (Madry et al. 2018), TRADES (Zhang et al. 2019) and
Gaussian noise augmentation (the base classifiers of randomized smoothing, Cohen et al. 2019).

One loop serves every mode; a mode only changes which inputs the loss sees:

=============  ==========================================================================================
``standard``   cross-entropy on clean inputs
``fgsm``       cross-entropy on single-step examples (:class:`torchrobust.attacks.FGSM`)
``pgd``        cross-entropy on PGD examples (Madry): ``steps`` steps of size ``alpha``, random start
``trades``     CE(f(x), y) + β·KL(f(x_adv) ‖ f(x)), x_adv maximising the KL term (TRADES, Eq. 5 of the paper)
``gaussian``   cross-entropy on x + N(0, σ²) (not clipped to [0,1], as in Cohen et al.)
=============  ==========================================================================================

A custom ``adversary(model, x, y)`` may replace the mode's: it returns one input batch, or several (the loss is
then the mean cross-entropy over them — AT_avg of Tramèr & Boneh 2019, used by :mod:`torchrobust.psat`).

``mixed=True`` adds the clean loss to the adversarial one (CE(x) + CE(x_adv)), as the robustness-reprogramming
paper's code does (it calls ``backward`` twice before one optimiser step).

Adversarial examples are crafted with the model in eval mode (the attacks' contract; BatchNorm statistics are
not updated by the attack's forward passes), then the model is trained on them in train mode.

After each optimiser step every module with a ``project_()`` method (e.g. NRPM layers keeping λ in [0, 1]) is
called, so constrained parameters stay feasible (projected gradient descent).

Under ``torchrun`` the model is wrapped in DistributedDataParallel and each process trains on its shard of
every epoch's permutation (same seed everywhere, so the union of the shards is the permutation).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import TorchRobustError
from . import distributed as D

__all__ = ["TrainConfig", "TrainResult", "fit", "MODES", "SCHEDULES", "iterate_batches", "triangular"]

log = logging.getLogger(__name__)

MODES = ("standard", "fgsm", "pgd", "trades", "gaussian")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "cosine", "step", "multistep", "onecycle", "triangular")


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
    mixed: bool = False
    noise_sigma: float = 0.25
    seed: int = 0
    max_batches: int | None = None
    progress: bool = False

    def validate(self) -> TrainConfig:
        if self.mode not in MODES:
            raise TorchRobustError(f"unknown training mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.optimizer not in OPTIMIZERS:
            raise TorchRobustError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise TorchRobustError(f"unknown LR schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.epochs < 1:
            raise TorchRobustError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise TorchRobustError(f"batch size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TorchRobustError(f"learning rate must be a positive number, got {self.lr}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise TorchRobustError(f"eps must be >= 0, got {self.eps}")
        if self.steps < 1:
            raise TorchRobustError(f"steps must be >= 1, got {self.steps}")
        if self.noise_sigma < 0:
            raise TorchRobustError(f"noise sigma must be >= 0, got {self.noise_sigma}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    seconds: float

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def _dataset_tensors(data: Dataset | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data  # type: ignore[return-value]
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    return None


def iterate_batches(data: Dataset | tuple[torch.Tensor, torch.Tensor], batch_size: int, *, shuffle: bool,
                    seed: int, epoch: int, device: torch.device, max_batches: int | None = None,
                    shard: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches on ``device``; in-memory tensors are sliced directly (no DataLoader overhead).

    The permutation depends only on ``(seed, epoch)``; under DDP each rank takes its contiguous shard of it.
    """
    tensors = _dataset_tensors(data)
    n = len(tensors[0]) if tensors is not None else len(data)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    if shard:
        a, b = D.shard_bounds(n)
        order = order[a:b]
    nb = math.ceil(len(order) / batch_size)
    if max_batches is not None:
        nb = min(nb, max_batches)
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
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def triangular(t: float) -> float:
    """The triangular LR factor at training progress ``t`` ∈ [0, 1]: 0 → 1 linearly over the first 2/5, then
    back to 0 (robust_union's MNIST schedule, Maini et al. 2020)."""
    return t / 0.4 if t < 0.4 else max(0.0, (1 - t) / 0.6)


def _make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "triangular":  # per optimiser step; the first step has lr 0
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: triangular(k / total))
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    if cfg.schedule == "step":
        step = max(1, (cfg.milestones[0] if cfg.milestones else max(1, cfg.epochs // 3)) * steps_per_epoch)
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=cfg.gamma)
    if cfg.schedule == "multistep":
        ms = [m * steps_per_epoch for m in (cfg.milestones or [cfg.epochs // 2, 3 * cfg.epochs // 4])]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=cfg.gamma)
    return None


def _adversary(cfg: TrainConfig) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    from .. import attacks

    if cfg.mode == "fgsm":
        return attacks.FGSM(threat=cfg.threat, eps=cfg.eps)
    if cfg.mode == "pgd":
        return attacks.PGD(threat=cfg.threat, eps=cfg.eps, steps=cfg.steps, alpha=cfg.alpha, random_start=True)
    return None


def _trades_adversarial(model: nn.Module, x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The TRADES inner maximisation: PGD on KL(f(x') ‖ f(x)) from x + 0.001·N(0, I), in eval mode."""
    from ..attacks import get_threat

    threat = get_threat(cfg.threat, cfg.eps)
    alpha = cfg.alpha if cfg.alpha is not None else threat.default_alpha(cfg.steps)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        x_adv = threat.project((x + 0.001 * torch.randn_like(x)).clamp(0, 1), x).detach()
        for _ in range(cfg.steps):
            x_adv.requires_grad_(True)
            loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = threat.project(threat.step(x_adv.detach(), grad, alpha), x).detach()
    finally:
        model.train(was_training)
    return x_adv


def _project_constraints(model: nn.Module) -> None:
    for m in model.modules():
        proj = getattr(m, "project_", None)
        if callable(proj):
            proj()


Data = Dataset | tuple[torch.Tensor, torch.Tensor]


def fit(model: nn.Module, train_set: Data, config: TrainConfig,
        params: Iterable[nn.Parameter] | None = None, val_set: Data | None = None,
        device: str | torch.device | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        adversary: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor | Sequence[torch.Tensor]]
        | None = None) -> TrainResult:
    """Train ``model`` in place on ``train_set`` as ``config`` says; returns the per-epoch history.

    ``params``: the parameters to optimise (default: every parameter with ``requires_grad``) — e.g. only the
    NRPM λ's for reprogramming paradigm 2. ``val_set``: clean accuracy on it is logged after every epoch.
    ``adversary``: replaces the inputs of ``config.mode`` (not with ``"trades"``): ``adversary(model, x, y)`` is
    called with the model as it is (the attacks put it in eval mode themselves) and returns the training input,
    or a list of them whose cross-entropies are averaged; ``train_acc`` then counts over all of them.
    Seeded by ``config.seed`` (torch's global RNG is re-seeded at the start for the attacks' random starts).
    """
    cfg = config.validate()
    dev = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    model.to(dev)
    torch.manual_seed(cfg.seed + D.rank())
    plist = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not plist:
        raise TorchRobustError("no trainable parameters: every parameter has requires_grad=False; unfreeze "
                               "some or pass params=")
    net: nn.Module = model
    if D.is_distributed():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    n = len(_dataset_tensors(train_set)[0]) if _dataset_tensors(train_set) is not None else len(train_set)
    shard_n = (lambda ab: ab[1] - ab[0])(D.shard_bounds(n))
    steps_per_epoch = math.ceil(shard_n / cfg.batch_size)
    if cfg.max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_batches)
    opt = _make_optimizer(plist, cfg)
    sched = _make_schedule(opt, cfg, steps_per_epoch)
    if adversary is not None and cfg.mode == "trades":
        raise TorchRobustError("a custom adversary replaces the mode's inputs; it cannot be combined with "
                               "mode='trades' (use mode='standard')")
    adversary = adversary if adversary is not None else _adversary(cfg)
    history: list[dict[str, float]] = []
    t_start = time.perf_counter()
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        tot_loss, tot_correct, tot_n = 0.0, 0, 0
        batches = iterate_batches(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                                  device=dev, max_batches=cfg.max_batches)
        if cfg.progress and D.is_main():
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for x, y in batches:
            if cfg.mode == "trades":
                x_adv = _trades_adversarial(model, x, cfg)
                logits = net(x)
                logits_adv = net(x_adv)
                loss = F.cross_entropy(logits, y) + cfg.trades_beta * F.kl_div(
                    F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
            else:
                if adversary is not None:
                    x_in = adversary(model, x, y)
                    model.train()  # whatever mode the adversary left the model in
                elif cfg.mode == "gaussian":
                    x_in = x + cfg.noise_sigma * torch.randn_like(x)
                else:
                    x_in = x
                if not isinstance(x_in, torch.Tensor):  # several inputs per batch: the mean of their losses
                    if cfg.mixed:
                        raise TorchRobustError("mixed=True needs an adversary that returns one batch; this one "
                                               "returned several (add the clean batch to its list instead)")
                    outs = [net(xi) for xi in x_in]
                    loss = torch.stack([F.cross_entropy(o, y) for o in outs]).mean()
                    logits = torch.cat(outs)
                elif cfg.mixed and x_in is not x:
                    both = net(torch.cat([x, x_in]))
                    logits = both[len(x):]
                    loss = F.cross_entropy(both[:len(x)], y) + F.cross_entropy(logits, y)
                else:
                    logits = net(x_in)
                    loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            _project_constraints(model)
            k = len(logits) // len(y)
            tot_loss += float(loss.detach()) * len(y) * k
            tot_correct += int((logits.detach().argmax(1) == y.repeat(k)).sum())
            tot_n += len(y) * k
        rec: dict[str, float] = {"epoch": epoch + 1, "loss": tot_loss / max(tot_n, 1),
                                 "train_acc": tot_correct / max(tot_n, 1), "lr": opt.param_groups[0]["lr"],
                                 "seconds": time.perf_counter() - t0}
        if val_set is not None:
            from ..evaluate.metrics import accuracy

            vx, vy = _dataset_tensors(val_set) or _materialise(val_set)
            rec["val_acc"] = accuracy(model, vx, vy)
        history.append(rec)
        log.info("epoch %d/%d loss %.4f train_acc %.4f%s (%.1fs)", epoch + 1, cfg.epochs, rec["loss"],
                 rec["train_acc"], f" val_acc {rec['val_acc']:.4f}" if "val_acc" in rec else "", rec["seconds"])
        if on_epoch is not None:
            on_epoch(rec)
    model.eval()
    return TrainResult(history=history, seconds=time.perf_counter() - t_start)


def _materialise(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*[data[i] for i in range(len(data))], strict=True)  # type: ignore[arg-type]
    return torch.stack(list(xs)), torch.as_tensor(ys)
