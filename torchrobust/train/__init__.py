"""Training: standard, FGSM/PGD adversarial training, TRADES, Gaussian noise; distributed under torchrun."""

from . import distributed
from .loop import MODES, TrainConfig, TrainResult, fit, iterate_batches

__all__ = ["MODES", "TrainConfig", "TrainResult", "fit", "iterate_batches", "distributed"]
