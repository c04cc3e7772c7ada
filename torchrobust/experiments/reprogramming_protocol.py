"""The protocol of the MNIST reprogramming experiments (Hou et al., ICLR 2025): profiles, data, backbones, the FGSM
column, the robust evaluation (default strong, or PGD-20) and the bookkeeping of a preset's rows; the presets
themselves are in :mod:`torchrobust.experiments.reprogramming`, the paper's numbers in
:mod:`torchrobust.experiments.paper_numbers`.

Protocol. Robust accuracy counts an example as correct only if it is classified correctly both clean and after
the attack (the paper code's convention: ε = 0 is the clean accuracy). Every number is reported under

* **FGSM** - the paper's protocol: one step ``clip(x + ε·sign(∇ₓ CE), 0, 1)`` at ε ∈ {0, .05, …, .3}, on the
  first ``n_test`` test images (in order). The gradient at the clean input does not depend on ε, so it is computed
  once per model and reused for every ε - the same adversarial examples as running FGSM once per ε; and
* the **robust evaluation** (``robust_eval=``) on the first ``n_pgd`` test images at the profile's ``pgd_eps``,
  white-box through all K IRLS iterations - the paper's MNIST code evaluates its tables with FGSM only, and a
  one-step attack can overstate the robustness of a nonlinear layer:

  - ``"strong"`` (default): the library's default evaluation, :func:`torchrobust.evaluate.sweep` with its default
    attacks (FGSM, APGD-CE, APGD-T; 100 iterations each, APGD-T on the survivors), the per-example worst case
    (``SweepResult.worst``), stored under ``"strong"`` (per-attack accuracies under ``"strong_attacks"``);
  - ``"pgd20"``: PGD-20 (ℓ∞, random start, ``torchrobust.attacks.PGD`` via the same ``sweep``), stored under
    ``"pgd20"`` - the earlier column, weak (one restart, 20 steps), kept to reproduce the documented numbers.

Profiles (``profile=``) and deviations from the paper. The paper trains the MLP/LeNet backbones for 50 epochs and
reprograms for 5 (its code: 10 epochs, SGD lr 1e-3, momentum 0.9, batch 64, starting from released weights we do not
have). ``"full"`` follows that (backbones 50 epochs - the MLPs at the code's SGD lr 1e-3, which gives a plain MLP
within 1.6 points of the paper's Normal-train row under FGSM (docs/reprogramming-gaps.md) where lr 0.01 for 50
epochs gives a far more fragile one (21 % against the paper's 31.8 % at ε = .05) - reprogramming 5 epochs on all 60k
training images with the code's SGD, lr 1e-3, momentum 0.9, FGSM on 10k, the robust evaluation on 1000 test images
at every ε). The fast profile's Adam rates were chosen for 100 steps; over the full profile's 4,690 steps the
paper's own optimiser is the faithful choice. (Paradigm 2's mixed training loss from the 50-epoch backbone is ≈ 9.8
in its first epoch under either optimiser: that backbone is at 0 % under FGSM ε = 0.3, so CE(x_adv) is large.)
``"fast"`` (default) fits Table 1 with ``robust_eval="pgd20"`` in 15 minutes on 2 CPU cores (the default strong
evaluation costs about 12× PGD-20 on an NRPM MLP: 73 s against 6 s per 100 images, 3 ε, 1 thread): backbones 5
epochs (a linear model converges in a few), reprogramming ``reprogram_steps`` = 100 optimiser steps of batch 64
(6.4k examples, one pass), λ learned with Adam (lr 0.02; SGD at lr 1e-3 would barely move λ in 100 steps), Paradigm
3 with Adam lr 2e-3 for weights and λ, FGSM on all 10k test images (the paper code's set is the first 1000:
``n_test=1000``), the robust evaluation on the first ``n_pgd`` = 1000 at ε ∈ {.1, .2, .3} for the baselines,
Paradigm 1 λ = 0.5, and Paradigms 2/3.
``"quick"`` is a smoke test (tiny subsets, short grids).
Learned λ are kept in [0, 1] by projection (the NRPM layers' ``project_()``), not by the raw/sigmoid mix of the
paper's code (docs/paper-code-facts.md#reprogramming-nrpm-in-the-code). ``mixed=True`` training
(CE(x) + CE(x_adv)) reproduces the code's double ``backward``.
ε of the IRLS weights is the paper code's: 5e-5 for the MLPs, 1e-3 for LeNet (the paper's Algorithm 2 default is
1e-3; with MNIST's small products ``a_d x_d`` a larger ε damps the reweighting towards the plain mean).
Reprogramming keeps the conv bias (the paper code's ``RobustConv2d`` drops it; ``drop_bias=True`` restores that).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.experiments.paper_numbers import EPS_GRID
from torchrobust.reprogramming import learned_lams

__all__ = ["Profile", "PROFILES", "ROBUST_EVALS", "ROBUST_ROWS", "PresetContext", "fgsm_sweep", "linear_mlp",
           "lenet", "load_mnist", "learned_lams_list", "check_robust_eval", "strong_title"]

logger = logging.getLogger("torchrobust.experiments.reprogramming")  # the presets' log, as before

#: the robust evaluations of the presets (``robust_eval=``, CLI ``--robust``): the row key each one stores
ROBUST_EVALS: dict[str, str] = {"strong": "strong", "pgd20": "pgd20", "adaptive": "adaptive"}

#: ``robust_rows=`` (CLI ``--robust-rows``): which rows of a preset get the robust evaluation
ROBUST_ROWS: dict[str, str] = {"selected": "the rows each preset lists (fast profile's default)",
                               "all": "every row (full profile's default)"}


def check_robust_eval(value: str) -> str:
    """``value`` if it is one of :data:`ROBUST_EVALS`, else a one-line :class:`TorchRobustError` naming them."""
    if value not in ROBUST_EVALS:
        raise TorchRobustError(f"robust_eval={value!r} is not one of {', '.join(ROBUST_EVALS)}; pass one of them "
                               "(strong: FGSM + APGD-CE + APGD-T worst case, the default; pgd20: the earlier column; "
                               "adaptive: FGSM, PGD-20 and the adaptive suite)")
    return value


def strong_title(attacks: Sequence[str]) -> str:
    """The title of the strong-evaluation table, naming what ran (APGD's iterations are its default, 100)."""
    from torchrobust.attacks.apgd import APGD

    steps = inspect.signature(APGD).parameters["steps"].default
    return f"Default strong evaluation: worst case over {', '.join(a.upper() for a in attacks)} ({steps} iterations)"


# ------------------------------------------------------------------------------------------------ profiles
@dataclass(frozen=True)
class Profile:
    """Budget of a preset run (see the module docstring for what each profile deviates from the paper)."""

    n_test: int = 10000  # FGSM evaluation set: the first n_test test images (the full test set)
    n_pgd: int = 1000  # robust evaluation set (strong or PGD-20): the first n_pgd test images
    pgd_eps: tuple[float, ...] = (0.1, 0.2, 0.3)  # ε of the robust evaluation
    pgd_steps: int = 20  # PGD steps of robust_eval="pgd20"
    pgd_all_rows: bool = False  # PGD on every row, or only on the rows listed by each preset
    backbone_epochs: int = 5
    mlp_backbone_lr: float = 0.01  # SGD lr of the MLP backbones, normal and adversarial (full: the code's 1e-3)
    backbone_max_batches: int | None = None
    reprogram_epochs: int = 1
    reprogram_steps: int | None = 100  # optimiser steps per epoch (None: the whole training set)
    reprogram_optimizer: str = "adam"  # Paradigms 2/3 (fast: Adam, so that 100 steps move λ; full: the code's SGD)
    reprogram_lr_p2: float = 0.02  # learning rate of Paradigm 2 (λ only)
    reprogram_lr_p3: float = 2e-3  # learning rate of Paradigm 3 (weights and λ)
    batch_size: int = 64
    lam_grid: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
    K_grid: tuple[int, ...] = (0, 1, 2, 3, 4)
    lam_grid_k: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5)
    train_eps_grid: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
    lenet_finetune_epochs: int = 1
    lenet_finetune_lams: tuple[float, ...] = (0.8, 0.5, 0.2, 0.0)  # λ values fine-tuned for Figure 3
    lenet_advft_epochs: int = 3
    n_train: int | None = None  # training subset size (None: all 60k)
    nrpm_eps_mlp: float = 5e-5  # ε of the IRLS weights for the MLPs (the paper code's `--e 5e-5`)
    nrpm_eps_lenet: float = 1e-3  # ... and for LeNet (`mnist_lenet.py --e 1e-3`)
    backend: str = "eager"  # NRPM kernels; "auto" may pick torch.compile (start-up cost, recompiles)
    robust_eval: str = "strong"  # the robust evaluation of the pgd rows: a key of ROBUST_EVALS
    adaptive_budget: str = "default"  # robust_eval="adaptive": a key of adaptive_cell.BUDGETS


PROFILES: dict[str, Profile] = {
    "fast": Profile(),
    "full": Profile(
        n_test=10000, n_pgd=1000, pgd_eps=EPS_GRID[1:], pgd_all_rows=True, backbone_epochs=50, mlp_backbone_lr=1e-3,
        reprogram_epochs=5, reprogram_steps=None, reprogram_optimizer="sgd", reprogram_lr_p2=1e-3,
        reprogram_lr_p3=1e-3, lenet_finetune_epochs=5, lenet_advft_epochs=10,
        lenet_finetune_lams=(0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0),
    ),
    "quick": Profile(
        n_test=100, n_pgd=16, pgd_eps=(0.3,), pgd_steps=5, backbone_epochs=1, backbone_max_batches=40,
        reprogram_steps=3, lam_grid=(1.0, 0.5, 0.0), K_grid=(0, 1), lam_grid_k=(0.7,),
        train_eps_grid=(0.0, 0.3), lenet_finetune_epochs=1, lenet_advft_epochs=1, n_train=2000,
        lenet_finetune_lams=(0.5,), adaptive_budget="quick",
    ),
}


# ------------------------------------------------------------------------------------------------ building blocks
def linear_mlp(n_layers: int = 3, seed: int = 0) -> nn.Module:
    """The paper's activation-free MLP: 1 layer 784-10, 2 layers 784-64-10, 3 layers 784-256-64-10 (App. C.2)."""
    from torchrobust.models.mlp import MLP

    widths = {1: [], 2: [64], 3: [256, 64]}.get(n_layers)
    if widths is None:
        raise TorchRobustError(f"n_layers={n_layers} is not one of the paper's MLPs; use 1, 2 or 3")
    torch.manual_seed(seed)
    return MLP(num_classes=10, widths=widths, activation=None)


def lenet(seed: int) -> nn.Module:
    """The paper code's MNIST LeNet (PyTorch FGSM tutorial), seeded."""
    from torchrobust.models.lenet import LeNet

    torch.manual_seed(seed)
    return LeNet(num_classes=10)


def fgsm_sweep(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float] = EPS_GRID, batch_size: int = 500
) -> torch.Tensor:
    """Per-example correctness under one-step FGSM for every ε: a bool tensor ``(len(eps), N)``.

    ``x_adv = clip(x + ε·sign(∇ₓ CE(f(x), y)), 0, 1)`` (Goodfellow et al. 2015; the paper code's ``fgsm_attack``),
    with the model in eval mode (every submodule's mode restored); an example counts as correct only if it is also
    correct on the clean input (so the ε = 0 row is clean accuracy). As in the evaluation engine
    (:func:`torchrobust.evaluate.engine.run_plan`), only the clean-correct examples are attacked, in batches of
    ``batch_size``; the gradient at the clean input does not depend on ε, so each batch's gradient is computed once
    and every ε is stepped from it (:meth:`torchrobust.attacks.FGSM.perturb_radii`) - bit for bit the engine's
    one-job-per-ε result (tested) at one forward/backward pass instead of one per ε.
    """
    from torchrobust.attacks.fgsm import FGSM
    from torchrobust.evaluate.metrics import correct, predict
    from torchrobust.validation import model_device

    clean = correct(model, x, y, batch_size).cpu()
    out = clean.unsqueeze(0).repeat(len(eps), 1)
    rows = [i for i, e in enumerate(eps) if float(e) > 0]
    idx = clean.nonzero().squeeze(1)
    if not rows or len(idx) == 0:
        return out
    attack = FGSM("Linf", eps=max(float(eps[i]) for i in rows))
    dev = model_device(model, x.device)
    # no eval_mode here: correct, perturb_radii (the attack contract) and predict each run the model in eval mode
    # and restore every submodule's mode (tests/test_reprogram.py)
    for start in range(0, len(idx), batch_size):
        sel = idx[start:start + batch_size]
        xb, yb = x[sel].to(dev), y[sel].to(dev)
        advs = attack.perturb_radii(model, xb, yb, [float(eps[i]) for i in rows])
        for i, x_adv in zip(rows, advs, strict=True):
            out[i, sel] = (predict(model, x_adv, len(sel)) == yb).cpu()
    return out


@dataclass
class PresetContext:
    """Everything a preset needs: data, profile, seeds and the bookkeeping of the rows (training through
    :func:`torchrobust.train.fit`, the FGSM column and the robust evaluation of a row)."""

    profile: Profile
    seed: int
    progress: bool
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    device: torch.device
    rows: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    weights: Any = None  # paper_weights.PaperWeights: the paper's released backbone replaces the trained one
    cache: Any = None  # preset_cache.PresetCache: finished trainings and rows reused, new ones stored (resume)
    arch: str = "mlp"  # "mlp" or "lenet": which adaptive_cell.BUDGETS entry robust_eval="adaptive" uses

    def train(self, model: nn.Module, *, mode: str = "standard", eps: float = 0.3, epochs: int = 1,
              lr: float = 0.01, optimizer: str = "sgd", max_batches: int | None = None,
              params: list[nn.Parameter] | None = None, on_epoch: Callable[[dict[str, float]], None] | None = None,
              tag: str = "") -> list[dict[str, float]]:
        """Train ``model`` in place (:func:`torchrobust.train.fit`) and return the per-epoch history. With a
        :attr:`cache`, a training stored earlier is loaded instead (``on_epoch`` is then not called: what it adds
        to an epoch's record is in the stored history), and an interrupted one continues from its resume state."""
        from torchrobust.train import TrainConfig, fit

        cfg = TrainConfig(
            epochs=epochs, batch_size=self.profile.batch_size, optimizer=optimizer, lr=lr, momentum=0.9,
            mode=mode, threat="Linf", eps=eps, mixed=mode != "standard", seed=self.seed,
            max_batches=max_batches, progress=self.progress,
        )
        data = (self.x_train, self.y_train)
        t0 = time.perf_counter()
        if self.cache is None:
            history = fit(model, data, cfg, params=params, device=self.device, on_epoch=on_epoch).history
        else:
            from dataclasses import replace

            from torchrobust.experiments.preset_cache import CHECKPOINT_EVERY

            trained = params if params is not None else [w for w in model.parameters() if w.requires_grad]
            names = [n for n, w in model.named_parameters() if any(w is t for t in trained)]
            settings = {**{k: v for k, v in cfg.to_dict().items() if k != "progress"}, "params": names,
                        "device": str(self.device)}

            def run(fit_dir: Any, resume: bool) -> list[dict[str, Any]]:
                where = {"resume_from": fit_dir} if resume else {"checkpoint_dir": fit_dir}
                return fit(model, data, replace(cfg, checkpoint_every=CHECKPOINT_EVERY), params=params,
                           device=self.device, on_epoch=on_epoch, **where).history

            history = self.cache.train(model, tag, settings, run)
        self.timings[f"train {tag}"] = time.perf_counter() - t0
        return history

    def fgsm(self, model: nn.Module) -> list[float]:
        n = self.profile.n_test
        c = fgsm_sweep(model, self.x_test[:n], self.y_test[:n], EPS_GRID)
        return [round(100 * float(v), 2) for v in c.float().mean(1)]

    def pgd(self, model: nn.Module) -> dict[str, float]:
        from torchrobust.evaluate import sweep

        n = self.profile.n_pgd
        res = sweep(model, self.x_test[:n], self.y_test[:n], attacks=["pgd"], eps=list(self.profile.pgd_eps),
                    threat="Linf", attack_kwargs={"pgd": {"steps": self.profile.pgd_steps}}, seed=self.seed)
        acc = res.accuracy("pgd")
        out = {"clean": round(100 * float(res.clean.float().mean()), 2)}
        out.update({f"{e:g}": round(100 * a, 2) for e, a in zip(res.eps, acc, strict=True)})
        return out

    def strong(self, model: nn.Module) -> tuple[dict[str, float], dict[str, dict[str, float]], list[str]]:
        """The default strong evaluation on the first ``n_pgd`` test images at ``pgd_eps``: ``(worst, per_attack,
        flags)``, accuracies in % keyed ``"clean"`` and ``f"{ε:g}"``. ``worst`` is the per-example worst case over the
        default attacks of :func:`torchrobust.evaluate.sweep` (white-box, seeded by the preset seed);
        ``per_attack[name]`` each attack's own column (APGD-T runs on the survivors of the earlier attacks, so its
        column is cumulative); ``flags`` the sweep's flag codes (``BPDA_NOT_EVALUATED`` on every NRPM model: an
        upper bound until the adaptive suite has run)."""
        from torchrobust.evaluate import sweep

        n = self.profile.n_pgd
        res = sweep(model, self.x_test[:n], self.y_test[:n], eps=list(self.profile.pgd_eps), threat="Linf",
                    seed=self.seed)
        clean = round(100 * float(res.clean.float().mean()), 2)

        def cells(acc: list[float]) -> dict[str, float]:
            return {"clean": clean, **{f"{e:g}": round(100 * a, 2) for e, a in zip(res.eps, acc, strict=True)}}

        return (cells(res.accuracy()), {a: cells(res.accuracy(a)) for a in res.attacks},
                sorted({str(f["code"]) for f in res.flags}))

    def adaptive(self, model: nn.Module, state: Callable[[str], Any] | None = None
                 ) -> tuple[dict[str, float], dict[str, dict[str, float]], list[str]]:
        """The adaptive protocol (:func:`torchrobust.experiments.adaptive_cell.evaluate_cell`: FGSM, PGD-20, then the
        adaptive suite on their survivors - white-box, BPDA through NRPM, transfer from the same weights without
        NRPM, Square, SPSA) on the first ``n_pgd`` test images at each ``pgd_eps``, with the profile's
        ``adaptive_budget`` for this architecture: ``(worst, per_stage, flags)``, accuracies in % keyed ``"clean"``
        and ``f"{ε:g}"``; ``per_stage`` holds FGSM and PGD-20 alone; ``flags`` the suite's flag codes at any ε.
        ``state(part)``: a path stem per ε for the suite's resumable state (None: not kept)."""
        from torchrobust.evaluate.adaptive import undefended_base
        from torchrobust.experiments.adaptive_cell import BUDGETS, evaluate_cell

        n = self.profile.n_pgd
        x, y = self.x_test[:n], self.y_test[:n]
        budget = BUDGETS[self.profile.adaptive_budget][self.arch]
        base = undefended_base(model)
        worst: dict[str, float] = {}
        stages: dict[str, dict[str, float]] = {"fgsm": {}, "pgd20": {}}
        flags: set[str] = set()
        clean = 0.0
        for e in self.profile.pgd_eps:
            cell = evaluate_cell(model, base, x, y, float(e), budget, self.seed,
                                 state(f"eps{e:g}") if state is not None else None, self.progress)
            clean = cell["clean"]
            worst[f"{e:g}"] = cell["adaptive"]
            stages["fgsm"][f"{e:g}"], stages["pgd20"][f"{e:g}"] = cell["fgsm"], cell["pgd20"]
            flags.update(cell["flags"])
        return ({"clean": clean, **worst}, {k: {"clean": clean, **v} for k, v in stages.items()}, sorted(flags))

    def add_diverged(self, label: str, paper: list[float] | None, reason: str, **extra: Any) -> dict[str, Any]:
        """Record a row whose training diverged: no accuracies (``fgsm`` None), ``diverged`` the one-line reason -
        the other rows of the preset are kept, and no number is reported for a model that does not exist."""
        row: dict[str, Any] = {"row": label, "fgsm": None, "paper_fgsm": paper, "diverged": reason, **extra}
        self.rows.append(row)
        logger.warning("%s: training diverged, no accuracies recorded (%s)", label, reason)
        return row

    def add(self, label: str, model: nn.Module, paper: list[float] | None, *, pgd: bool = False,
            **extra: Any) -> dict[str, Any]:
        """Evaluate ``model`` and record its row: FGSM always; the robust evaluation (``profile.robust_eval``:
        ``"strong"`` or ``"pgd20"``) when ``pgd`` (or the profile's ``pgd_all_rows``) and ``n_pgd`` > 0."""
        robust = self.profile.n_pgd > 0 and (pgd or self.profile.pgd_all_rows)
        cache = self.cache
        key = cache.row_key(label, model, {"robust": robust}) if cache is not None else ""  # hashes the model once

        def state(part: str) -> Any:  # the adaptive suite's per-ε state, named by this row's key
            return cache.row_state_stem(label, key, part)

        def measure() -> dict[str, Any]:
            values: dict[str, Any] = {"fgsm": self.fgsm(model)}
            if robust and self.profile.robust_eval == "pgd20":
                values["pgd20"] = self.pgd(model)
            elif robust and self.profile.robust_eval == "adaptive":
                values["adaptive"], values["adaptive_stages"], values["adaptive_flags"] = self.adaptive(
                    model, state if cache is not None else None)
            elif robust:
                values["strong"], values["strong_attacks"], values["strong_flags"] = self.strong(model)
            return values

        if self.cache is None:
            t0 = time.perf_counter()
            values = measure()
            seconds = time.perf_counter() - t0
        else:
            values, seconds = self.cache.row(label, key, measure)
        row: dict[str, Any] = {"row": label, "fgsm": values.pop("fgsm"), "paper_fgsm": paper, **values}
        row.update(extra)
        self.timings[f"eval {label}"] = seconds
        self.rows.append(row)
        robust = (f" PGD-20 {row['pgd20']}" if "pgd20" in row
                  else f" strong (worst case) {row['strong']}" if "strong" in row
                  else f" adaptive (worst case) {row['adaptive']}" if "adaptive" in row else "")
        logger.info("%s: FGSM %s%s", label, row["fgsm"], robust)
        return row


def load_mnist(profile: Profile, seed: int) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)`` of MNIST; the training set is the profile's seeded random subset."""
    from torchrobust import data

    x_tr, y_tr = data.as_tensors(data.load("mnist", "train"))
    x_te, y_te = data.as_tensors(data.load("mnist", "test"))
    if profile.n_train is not None and profile.n_train < len(x_tr):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x_tr), generator=g)[: profile.n_train]
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    return x_tr, y_tr, x_te, y_te


def learned_lams_list(model: nn.Module) -> list[float]:
    """The learned λ of every NRPM layer, rounded to 3 digits (as the tables print them)."""
    return [round(v, 3) for v in learned_lams(model).values()]
