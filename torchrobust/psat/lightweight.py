"""PSAT Table 5: lightweight networks (MobileNetV1, MobileNetV3-S/-L, GhostNet) against the hyper ResNets.

Gong et al. 2023, "Comparison with lightweight networks": "we adversarially trained several multi-perturbation
robust lightweight models for comparison. We used quick stochastic adversarial training [similar to (Madaan,
Shin, and Hwang 2021)] on the CIFAR-10 dataset. The selected lightweight models have comparable parameters with
our method (Ours-64 and Ours-128)". Table 5 then lists Acc_trade-off and "# of Paras" per network.

How the paper builds Table 5, and what we do where it is silent:

* **Not hypernetwork-generated, one model each.** Each lightweight network is an ordinary, directly
  parameterised single model trained against all three norms; PSAT's rows are the three-member hyper
  ResNet-50 (N_z = 64 / 128). Here: :func:`torchrobust.models.lightweight.timm_member` (timm, random weights,
  ``in_chans=1`` on MNIST), one checkpoint per network. The runs (``psat experiment lightweight``) set the
  stem conv's stride to :data:`~torchrobust.models.lightweight.SMALL_IMAGE_STEM_STRIDE` (1) by default, as
  CIFAR-adapted MobileNets do: with timm's strides a 28×28 digit reaches the head as 1×1 and the networks
  learned far slower (see there); ``--stem-stride timm`` keeps timm's.
* **"# of Paras"** is the whole network's parameter count at 10 classes: timm's counts at 3 input channels,
  3,217,226 / 1,528,106 / 4,214,842 / 3,914,318 for MNV1 / MNV3-S / MNV3-L / GN, match the printed 3.20M (the
  only one off, by 0.5 %) / 1.53M / 4.21M / 3.91M, and the three-member hyper ResNet-50 gives 1,764,510 and
  4,874,142 (Ours-64/-128: 1.76M / 4.87M). We count every trainable parameter
  (:func:`~torchrobust.psat.models.count_parameters`) of the model actually trained (1 input channel on MNIST:
  the stem loses ``2 · C_stem · k²``), and report the 3-channel (CIFAR) count beside it for the comparison
  with the paper.
* **Savings.** Table 5 has no savings column (Table 1/6's "Paras Saving" is against the plain ResNet-50). Ours
  is ``1 − P_network / P_PSAT(N_z)`` against the three-member hyper ResNet-50 at the same input channels, for
  N_z = 64 and 128: positive means the lightweight network has fewer parameters than PSAT, negative (shown ↑)
  more.
* **Training.** "Quick stochastic adversarial training" (MNG-AC without its meta noise generator): one norm
  drawn uniformly per batch (:class:`RandomNormAdversary`, ``strategy="stochastic"``, the default); the
  paper gives no further settings. Any multi-norm strategy of the ResNet table (``max``, ``avg``, ``msd``,
  ``eat``, ``ramp``) can be chosen instead. Optimiser, schedule, batch, ε and the training attacks are those of
  the PSAT MNIST experiment (:mod:`torchrobust.psat.experiment`: Adam, triangular lr, batch 100, MSD budgets).
* **Evaluation** is the PSAT evaluation (:func:`torchrobust.psat.evaluation.evaluate`): PGD per norm with
  restarts (optionally AutoAttack), the metrics of Table 1 (trade-off = mean of clean, ℓ∞, ℓ2, ℓ1, max, avg).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchrobust import checkpoint
from torchrobust.errors import TorchRobustError
from torchrobust.io import write_texts
from torchrobust.psat import models as psat_models
from torchrobust.psat.adversary import MNIST_BUDGETS, PGDConfig, TrainingAdversary, pgd
from torchrobust.psat.metrics import NORMS, MultiNormRow
from torchrobust.psat.metrics import table as multinorm_table
from torchrobust.psat.multinorm import ramp_objective
from torchrobust.psat.train import Data, PSATTrainConfig, load_member, train_model
from torchrobust.psat.train import data_settings as _data_settings
from torchrobust.tables import Column, ColumnKind, Table

__all__ = ["PAPER_TABLE5", "PAPER_PSAT", "TABLE5_BACKBONES", "TABLE5_STRATEGIES", "RandomNormAdversary",
           "check_table5", "hyper_resnet_parameters", "top_class_share",
           "build", "train_lightweight", "lightweight_table", "run_table5"]

log = logging.getLogger(__name__)

#: PSAT Table 5 (CIFAR-10): timm name → (paper's label, Acc_trade-off, "# of Paras").
PAPER_TABLE5: dict[str, tuple[str, float, int]] = {
    "mobilenetv1_100": ("MNV1", 0.5227, 3_200_000),
    "mobilenetv3_small_100": ("MNV3-S", 0.4953, 1_530_000),
    "mobilenetv3_large_100": ("MNV3-L", 0.5369, 4_210_000),
    "ghostnet_100": ("GN", 0.5197, 3_910_000),
}
#: PSAT Table 5's own columns: N_z of the three-member hyper ResNet-50 → (label, Acc_trade-off, "# of Paras").
PAPER_PSAT: dict[int, tuple[str, float, int]] = {64: ("Ours-64", 0.5681, 1_760_000),
                                                 128: ("Ours-128", 0.5802, 4_870_000)}
TABLE5_BACKBONES = tuple(PAPER_TABLE5)
#: Multi-norm training strategies: the paper's stochastic one, and the ResNet table's baselines.
TABLE5_STRATEGIES = ("stochastic", "max", "avg", "msd", "eat", "ramp")
_STEM = "table5"  # run-folder subdirectory and table file stem


@dataclass
class RandomNormAdversary:
    """"Quick stochastic adversarial training": per batch one of ``configs`` drawn uniformly
    (``torch.randint`` on the global RNG, which :func:`torchrobust.train.fit` seeds), ``[pgd(x)]``."""

    configs: Sequence[PGDConfig]

    def draw(self) -> PGDConfig:
        return self.configs[int(torch.randint(len(self.configs), ()))]

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        return [pgd(model, x, y, self.draw())]


def hyper_resnet_parameters(z_dim: int, in_chans: int = 1, num_classes: int = 10, members: int = 3) -> int:
    """Parameters of PSAT's aggregate: ``members`` hyper ResNet-50 with embedding size ``z_dim`` (4,874,142 at
    N_z 128, 3 channels, 10 classes: Table 1/2/5)."""
    with torch.device("meta"):
        one = psat_models.create("hyper_resnet50", num_classes=num_classes, z_dim=z_dim, in_channels=in_chans)
    return members * psat_models.count_parameters(one)


def build(backbone: str, in_chans: int = 1, num_classes: int = 10, stem_stride: int | None = None,
          input_size: int | None = None) -> nn.Module:
    """A Table 5 network as a zoo model ``psat_timm`` (see :mod:`torchrobust.models.lightweight`)."""
    return psat_models.create("psat_timm", backbone=backbone, num_classes=num_classes, in_chans=in_chans,
                              stem_stride=stem_stride, input_size=input_size)


def _adversary(strategy: str, eps: Mapping[str, float], steps: Mapping[str, int]) -> TrainingAdversary | \
        RandomNormAdversary:
    if strategy == "stochastic":
        return RandomNormAdversary([PGDConfig(k, float(eps[k]), int(steps[k])) for k in NORMS])
    return TrainingAdversary(strategy, eps=eps, steps=steps)


def _check_strategy(strategy: str) -> None:
    if strategy not in TABLE5_STRATEGIES:
        raise TorchRobustError(f"unknown Table 5 training strategy {strategy!r}; valid: {', '.join(TABLE5_STRATEGIES)}")


def check_table5(backbones: Sequence[str], strategy: str) -> None:
    """Refuse an unknown ``strategy`` or timm name (one-line errors) before any data is loaded or trained."""
    _check_strategy(strategy)
    if not backbones:
        raise TorchRobustError(f"no backbones given; e.g. {','.join(TABLE5_BACKBONES)}")
    for b in backbones:
        with torch.device("meta"):
            build(b)  # unknown timm name: one-line error with close matches, before any training


def train_lightweight(out_dir: str | os.PathLike[str], data: Data, backbones: Sequence[str] = TABLE5_BACKBONES,
                      strategy: str = "stochastic", eps: Mapping[str, float] | None = None,
                      steps: Mapping[str, int] | None = None, config: PSATTrainConfig | None = None,
                      model_kw: Mapping[str, Any] | None = None,
                      device: str | torch.device | None = None) -> dict[str, Path]:
    """Train each of ``backbones`` (:func:`build` with ``model_kw``) with the multi-norm ``strategy`` through
    :func:`~torchrobust.psat.train.train_model` (``torchrobust.train.fit``) and save it as
    ``out_dir/<backbone>.safetensors`` (metadata: strategy, ε, steps, config, wall/CPU seconds, parameters).

    A checkpoint already there is reused (not retrained) only if every setting that changes the training matches:
    strategy, ε, attack steps, the whole :class:`~torchrobust.psat.train.PSATTrainConfig` (epochs, batch, lr,
    schedule, seed, ``max_batches``), ``model_kw`` (channels, ``stem_stride``, ``input_size``) and the training
    data (number of images and SHA-256 of images and labels); any difference is refused (one-line error)."""
    _check_strategy(strategy)
    eps = dict(eps or MNIST_BUDGETS)
    steps = dict(steps or dict.fromkeys(NORMS, 10))
    cfg = (config or PSATTrainConfig()).validate()
    settings = {"strategy": strategy, "eps": eps, "steps": steps, "train_config": asdict(cfg),
                "model_kw": dict(model_kw or {}), **_data_settings(data)}
    out: dict[str, Path] = {}
    for b in backbones:
        path = Path(out_dir) / f"{b}.safetensors"
        if path.is_file():
            meta = checkpoint.load_metadata(path)["metadata"]
            saved = {k: meta.get(k) for k in settings}
            if json.loads(json.dumps(settings)) != saved:
                diff = ", ".join(k for k in settings if json.loads(json.dumps(settings[k])) != saved[k])
                raise TorchRobustError(f"{path} was trained with other settings ({diff}); use another --out or "
                                       "delete it")
            log.info("reusing %s", path)
            out[b] = path
            continue
        torch.manual_seed(cfg.seed)
        model = build(b, **dict(model_kw or {}))
        adv = _adversary(strategy, eps, steps)
        t0, c0 = time.perf_counter(), time.process_time()
        objective = ramp_objective(adv) if isinstance(adv, TrainingAdversary) else None
        history = train_model(model, data, adv, cfg, device, objective=objective)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[b] = checkpoint.save(model.cpu(), path, role="table5", **settings, train_seconds=seconds,
                                 train_cpu_seconds=cpu, history=history,
                                 parameters=psat_models.count_parameters(model))
        log.info("trained %s (%s) in %.0f s -> %s", b, strategy, seconds, path)
    return out


def top_class_share(model: nn.Module, x: Tensor, batch_size: int = 250) -> float:
    """Share of the inputs ``x`` that ``model`` (eval mode) assigns to its most frequent predicted class: 1.0 for
    a collapsed, constant classifier, about 0.1 for a working 10-class MNIST one."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return float(torch.bincount(pred).max()) / len(pred)


def _fmt_params(p: int) -> str:
    return f"{p / 1e6:.3f}M"


def _fmt_saving(s: float) -> str:
    return f"↓{s * 100:.2f}%" if s >= 0 else f"↑{-s * 100:.2f}%"


def lightweight_table(rows: Mapping[str, MultiNormRow], in_chans: int = 1,
                      train_cpu_seconds: Mapping[str, float] | None = None,
                      top_class: Mapping[str, float] | None = None, z_dims: Sequence[int] = (64, 128),
                      digits: int = 2) -> Table:
    """The Table 5 analogue: one row per trained network (``rows``: timm name → its evaluated row) with the
    accuracies of PSAT Table 1, its parameters (at ``in_chans`` and at 3 channels), the saving against the
    three-member hyper ResNet-50 at each ``z_dims`` and the paper's numbers; then one parameter-only row per
    hyper ResNet-50 (not trained here)."""
    ref = {z: hyper_resnet_parameters(z, in_chans) for z in z_dims}
    base = multinorm_table(list(rows.values()), digits)
    acc = [c for c in base.columns if c.kind is ColumnKind.PERCENT and c.name != "saving"]
    p = {"missing": "–", "formatter": _fmt_params}
    cols = [Column("network", ColumnKind.TEXT, label="Network"), Column("timm", ColumnKind.TEXT, missing="–"), *acc,
            Column("params", ColumnKind.INT, label="# Params (ours)", **p),
            Column("params_3ch", ColumnKind.INT, label="# Params (3 ch.)", **p),
            *(Column(f"saving_vs_psat{z}", ColumnKind.PERCENT, label=f"Saving vs PSAT-{z}", missing="–",
                     formatter=_fmt_saving) for z in z_dims),
            Column("paper_trade_off", ColumnKind.PERCENT, digits=digits, label="paper trade-off", missing="–"),
            Column("paper_params", ColumnKind.INT, label="paper # Params", **p),
            Column("top_class_share", ColumnKind.PERCENT, digits=1, label="top-class share", missing="–"),
            Column("train_cpu_s", ColumnKind.SECONDS, digits=0, label="train CPU s", missing="–"),
            Column("n", ColumnKind.INT, missing="–")]
    data: list[dict[str, Any]] = []
    for (name, r), d in zip(rows.items(), base.rows, strict=True):
        paper = PAPER_TABLE5.get(name)
        with torch.device("meta"):
            p3 = psat_models.count_parameters(build(name, in_chans=3))
        params = r.params if r.params is not None else 0
        data.append({**d, "network": paper[0] if paper else name, "timm": name, "params": params, "params_3ch": p3,
                     **{f"saving_vs_psat{z}": 1.0 - params / ref[z] for z in z_dims},
                     "paper_trade_off": paper[1] if paper else None, "paper_params": paper[2] if paper else None,
                     "train_cpu_s": (train_cpu_seconds or {}).get(name),
                     "top_class_share": (top_class or {}).get(name)})
    for z in z_dims:
        paper = PAPER_PSAT.get(z)
        data.append({"network": f"PSAT hyper ResNet-50, N_z {z}, 3 members (not trained here)",
                     "params": ref[z], "params_3ch": hyper_resnet_parameters(z, 3),
                     "paper_trade_off": paper[1] if paper else None, "paper_params": paper[2] if paper else None})
    return Table(cols, data, title="PSAT Table 5 analogue: lightweight networks vs the hyper ResNet-50")


def run_table5(out_dir: str | os.PathLike[str], train_data: Data, test_data: tuple[Tensor, Tensor],
               backbones: Sequence[str] = TABLE5_BACKBONES, strategy: str = "stochastic",
               config: PSATTrainConfig | None = None, train_steps: int = 5, eval_steps: int = 10,
               restarts: int = 1, autoattack: Sequence[str] | None = None,
               model_kw: Mapping[str, Any] | None = None) -> list[Path]:
    """Train (:func:`train_lightweight`) and evaluate (:func:`torchrobust.psat.evaluation.evaluate`, PGD with
    ``eval_steps`` steps and ``restarts`` per norm, MNIST budgets) every network of ``backbones`` and write
    :func:`lightweight_table` as ``out_dir/table5/table5.{md,csv,json}``. Names and strategy are checked before
    any work. Resumable: a network's checkpoint (same training settings) and its evaluation
    (``<backbone>.eval.json``: same test data, attack settings and checkpoint) are reused, so networks can be run
    one per call into the same folder and a last call with all of them only writes the table. Returns the
    written paths (checkpoints first)."""
    from torchrobust.psat.evaluation import evaluate

    check_table5(backbones, strategy)
    folder = Path(out_dir) / _STEM
    in_chans = int(test_data[0].shape[1])
    kw = {"in_chans": in_chans, **dict(model_kw or {})}
    paths = train_lightweight(folder, train_data, backbones, strategy,
                              steps=dict.fromkeys(NORMS, train_steps), config=config, model_kw=kw)
    rows: dict[str, MultiNormRow] = {}
    shares: dict[str, float] = {}
    digest = hashlib.sha256(test_data[0].contiguous().numpy().tobytes() + test_data[1].contiguous().numpy().tobytes())
    settings = {"test_data_sha256": digest.hexdigest(), "n_test": len(test_data[0]), "eval_steps": eval_steps,
                "restarts": restarts, "autoattack": None if autoattack is None else list(autoattack)}
    for b, pth in paths.items():
        cached = folder / f"{b}.eval.json"
        doc = json.loads(cached.read_text()) if cached.is_file() else {}
        if doc.get("settings") == settings and doc.get("checkpoint_mtime_ns") == pth.stat().st_mtime_ns:
            log.info("reusing the evaluation of %s (%s)", b, cached)
        else:
            (row,) = evaluate({b: pth}, data=test_data, n_test=len(test_data[0]),
                              steps=dict.fromkeys(NORMS, eval_steps), alpha={}, restarts=restarts,
                              autoattack=autoattack)
            doc = {"settings": settings, "checkpoint_mtime_ns": pth.stat().st_mtime_ns, "row": asdict(row)}
        if "top_class_share" not in doc:
            doc["top_class_share"] = top_class_share(load_member(pth), test_data[0])
            write_texts(folder, f"{b}.eval", {"json": json.dumps(doc, indent=1) + "\n"})
        rows[b] = MultiNormRow(**doc["row"])
        shares[b] = float(doc["top_class_share"])
    cpu = {b: checkpoint.load_metadata(p)["metadata"].get("train_cpu_seconds") for b, p in paths.items()}
    table = lightweight_table(rows, in_chans, cpu, shares)
    written = table.write(folder, _STEM)
    log.info("Table 5 analogue\n%s", table.markdown_grid())
    return [*paths.values(), *written.values()]
