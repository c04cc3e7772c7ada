"""PSAT — Parameter-Saving Adversarial Training (Gong et al. 2023) and the multi-norm AT baselines.

* :mod:`~torchrobust.psat.models` — hypernetwork ResNet-18/50 and MSD MNIST CNN backbones, parameter reports.
* :mod:`~torchrobust.psat.aggregate` — :class:`PSATEnsemble` (lowest-entropy Eq. 12 / average), adaptive attack.
* :mod:`~torchrobust.psat.adversary` — PGD, worst-of ("max", Eq. 5), MSD (Eq. 7) adversaries.
* :mod:`~torchrobust.psat.train` — per-member single-norm AT and AT_max / AT_avg / AT_msd / E-AT / RAMP baselines.
* :mod:`~torchrobust.psat.multinorm` — E-AT's extreme-norm adversary and RAMP's logit-pairing objective.
* :mod:`~torchrobust.psat.metrics` — Table 1 metrics (clean, ℓ∞, ℓ2, ℓ1, max, union, avg, trade-off).
* :mod:`~torchrobust.psat.evaluation` — :func:`evaluate` a run directory, :func:`write_tables`,
  :func:`evaluate_to_dir` (both: ``torchrobust psat evaluate``); :func:`~torchrobust.psat.train.train_to_dir` is
  ``torchrobust psat train``.
* :mod:`~torchrobust.psat.analysis` — PSAT Tables 3, 4 and 6 on MNIST (``torchrobust psat experiment tables``), with
  the paper's numbers from :mod:`~torchrobust.psat.paper_numbers`.

>>> from torchrobust import psat
>>> paths = psat.train_members("runs/psat", train_set, threats=["Linf", "L2", "L1"], epochs=1)
>>> rows = psat.evaluate("runs/psat", n_test=1000)
>>> print(psat.format_table(rows))
"""

from __future__ import annotations

from torchrobust.psat.adversary import (
    CIFAR10_BUDGETS,
    MNIST_BUDGETS,
    STRATEGIES,
    MultiNormStrategy,
    PGDConfig,
    TrainingAdversary,
    msd,
    pgd,
    worst_of,
)
from torchrobust.psat.aggregate import (
    THREATS,
    Aggregation,
    PSATEnsemble,
    adaptive_attack,
    prediction_entropy,
    strongest,
)
from torchrobust.psat.evaluation import (
    autoattack_attacks,
    evaluate,
    evaluate_to_dir,
    format_routing,
    pgd_attacks,
    routing,
    write_tables,
)
from torchrobust.psat.metrics import MultiNormRow, evaluate_multi_norm, format_attack_breakdown, format_table, trade_off
from torchrobust.psat.models import (
    MSDCNN,
    ParameterReport,
    PSATResNet,
    count_parameters,
    create,
    hyper_msd_cnn,
    hyper_resnet18,
    hyper_resnet50,
    list_models,
    msd_cnn,
    parameter_report,
    plain_counterpart,
)
from torchrobust.psat.multinorm import EXTREME_NORMS, ExtremeNormAdversary, RAMPObjective, ramp_pairing_loss
from torchrobust.psat.train import (
    PSATTrainConfig,
    load_ensemble,
    load_member,
    train_baselines,
    train_members,
    train_model,
    train_to_dir,
)

__all__ = [
    "EXTREME_NORMS", "ExtremeNormAdversary", "RAMPObjective", "ramp_pairing_loss",
    "Aggregation", "CIFAR10_BUDGETS", "MNIST_BUDGETS", "MultiNormStrategy", "STRATEGIES", "THREATS", "MSDCNN",
    "MultiNormRow", "PGDConfig",
    "PSATEnsemble", "PSATResNet", "PSATTrainConfig", "ParameterReport", "TrainingAdversary", "adaptive_attack",
    "autoattack_attacks", "format_attack_breakdown", "format_routing", "routing", "strongest",
    "count_parameters", "create", "evaluate", "evaluate_multi_norm", "evaluate_to_dir", "format_table", "hyper_msd_cnn",
    "hyper_resnet18", "hyper_resnet50", "list_models", "load_ensemble", "load_member", "msd", "msd_cnn",
    "parameter_report", "pgd", "pgd_attacks", "plain_counterpart", "prediction_entropy", "train_baselines",
    "train_members", "train_model", "train_to_dir", "trade_off", "worst_of", "write_tables",
]
