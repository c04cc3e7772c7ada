"""Robust building blocks, no training logic: NRPM layers (robustness reprogramming), the forged threshold
(data-driven Lipschitz) and hypernetwork-generated convolutions (PSAT)."""

from torchrobust.nn.forged import Forged
from torchrobust.nn.hyper import HyperConv2d, HyperNetwork
from torchrobust.nn.nrpm import nrpm_conv2d, nrpm_linear
from torchrobust.nn.nrpm_layers import LamParametrization, NRPMConv2d, NRPMLinear

__all__ = ["NRPMLinear", "NRPMConv2d", "LamParametrization", "nrpm_linear", "nrpm_conv2d", "Forged", "HyperConv2d",
           "HyperNetwork"]
