"""Training: standard, FGSM/PGD adversarial training, TRADES, MART, AWP (PGD-AWP, TRADES-AWP), Gaussian noise;
distributed under torchrun. The losses are in :mod:`.objectives`, the weight perturbation of AWP in :mod:`.awp`.

Runs never lose work and never end "successfully" after diverging: ``fit(..., checkpoint_dir=D)`` keeps a resume
state in ``D`` (after every epoch and every ``TrainConfig.checkpoint_every`` steps; safetensors + JSON, no
pickle), ``fit(..., resume_from=D)`` continues a killed run to a bitwise-identical result (:mod:`.resume`), and
a NaN/inf loss or weight stops training with a one-line :class:`~torchrobust.errors.TorchRobustError`, the model
back at its last finite weights. CLI: ``torchrobust train ... --checkpoint-every N`` then ``... --resume``.
"""

from . import awp, distributed, objectives, resume
from .loop import (
    MODES,
    OptimizerName,
    ScheduleName,
    TrainConfig,
    TrainMode,
    TrainResult,
    epoch_order,
    fit,
    iterate_batches,
)
from .workflow import TrainedCheckpoint, train_checkpoint

__all__ = ["MODES", "TrainMode", "OptimizerName", "ScheduleName", "TrainConfig", "TrainResult", "epoch_order", "fit",
           "iterate_batches", "distributed", "resume", "awp", "objectives", "TrainedCheckpoint", "train_checkpoint"]
