"""Robust layers: NRPM (Robustness Reprogramming) and friends."""

from torchrobust.nn.nrpm import nrpm_conv2d, nrpm_linear
from torchrobust.nn.nrpm_layers import NRPMConv2d, NRPMLinear

__all__ = ["NRPMLinear", "NRPMConv2d", "nrpm_linear", "nrpm_conv2d"]
