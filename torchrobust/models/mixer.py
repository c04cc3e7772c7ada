"""A small MLP-Mixer (Tolstikhin et al., NeurIPS 2021) for CIFAR/MNIST-sized images.

The reprogramming paper evaluates NRPM on MLP-Mixer-2/4/8 for CIFAR-10 (Hou et al., ICLR 2025, Appendix C.1,
Table 6; depth = number of Mixer blocks) without giving the sizes; torchrobust's defaults are a small CIFAR
configuration (patch 4 → 64 tokens, hidden 128, token MLP 64, channel MLP 512, depth 4).

Layout (Tolstikhin et al., Fig. 1 / Eq. 1):

    stem: Conv2d(C, hidden, patch, stride=patch) → tokens (N, T, hidden)
    blocks.i: x + token_mlp(norm1(x)ᵀ)ᵀ ; x + channel_mlp(norm2(x))    with  mlp = fc1 → GELU → fc2
    norm (LayerNorm) → mean over tokens → head

The token-mixing MLP is an ``nn.Linear`` over the token axis (applied to the transposed tensor), so every MLP is an
``nn.Linear`` that NRPM / the forged threshold can wrap. Both structure hooks return the ``fc1``/``fc2`` of every
token and channel MLP (the forged-function paper puts F "on the inputs of fc1 and fc2 in every MLP block").
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TorchRobustError
from ._common import check_input, check_positive_int, make_activation, qualified_names
from .normalize import Floats, make_normalize

__all__ = ["MLPMixer", "MixerBlock", "MixerMLP"]


class MixerMLP(nn.Module):
    """``fc2(act(fc1 x))`` (Tolstikhin et al. Eq. 1)."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MixerBlock(nn.Module):
    """Token mixing then channel mixing, each pre-LayerNorm with a skip connection."""

    def __init__(self, num_tokens: int, hidden_dim: int, tokens_mlp_dim: int, channels_mlp_dim: int,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.token_mlp = MixerMLP(num_tokens, tokens_mlp_dim, activation)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.channel_mlp = MixerMLP(hidden_dim, channels_mlp_dim, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, T, hidden)
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    """MLP-Mixer classifier taking [0, 1] images and returning logits.

    Args:
        num_classes: output logits.
        in_channels, input_size: image shape (3, 32 for CIFAR; 1, 28 for MNIST). ``input_size`` must be a
            multiple of ``patch_size``.
        patch_size: side of the non-overlapping patches (tokens = (input_size / patch_size)²).
        hidden_dim: channels per token (C in the paper).
        tokens_mlp_dim, channels_mlp_dim: hidden widths D_S and D_C of the token- and channel-mixing MLPs.
        depth: number of Mixer blocks (the paper's "MLP-Mixer-2/4/8").
        activation: MLP nonlinearity (GELU in Tolstikhin et al.).
        mean, std: per-channel normalisation (default: none).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, patch_size: int = 4,
                 hidden_dim: int = 128, tokens_mlp_dim: int = 64, channels_mlp_dim: int = 512, depth: int = 4,
                 activation: str = "gelu", mean: Floats | None = None, std: Floats | None = None) -> None:
        super().__init__()
        for value, what in ((num_classes, "num_classes"), (in_channels, "in_channels"),
                            (input_size, "input_size"), (patch_size, "patch_size"), (hidden_dim, "hidden_dim"),
                            (tokens_mlp_dim, "tokens_mlp_dim"), (channels_mlp_dim, "channels_mlp_dim"),
                            (depth, "depth")):
            check_positive_int(value, what)
        if input_size % patch_size:
            raise TorchRobustError(f"input_size={input_size} is not a multiple of patch_size={patch_size}; "
                                   "pick a patch size that divides the image side")
        make_activation(activation)
        self.in_channels, self.input_size, self.patch_size = in_channels, input_size, patch_size
        self.num_tokens = (input_size // patch_size) ** 2
        self.normalize = make_normalize(mean, std, in_channels)
        self.stem = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.Sequential(*[
            MixerBlock(self.num_tokens, hidden_dim, tokens_mlp_dim, channels_mlp_dim, activation)
            for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, "MLPMixer")
        if x.shape[2] != self.input_size or x.shape[3] != self.input_size:
            raise TorchRobustError(f"MLPMixer was built for {self.input_size}x{self.input_size} images (its token "
                                   f"MLP has a fixed token count), got {x.shape[2]}x{x.shape[3]}; build it with "
                                   f"input_size={x.shape[2]}")
        tokens = self.stem(self.normalize(x)).flatten(2).transpose(1, 2)  # (N, T, hidden)
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens.mean(dim=1))

    def _mlp_linears(self) -> list[nn.Module]:
        mods: list[nn.Module] = []
        for b in self.blocks:
            mods += [b.token_mlp.fc1, b.token_mlp.fc2, b.channel_mlp.fc1, b.channel_mlp.fc2]
        return mods

    def nrpm_default_layers(self) -> list[str]:
        """The fc1/fc2 of every token- and channel-mixing MLP (not the patch stem or the head)."""
        return qualified_names(self, self._mlp_linears())

    def forge_insertion_points(self) -> list[str]:
        """Before fc1 and fc2 of every Mixer MLP (Chen et al.: "on the inputs of fc1 and fc2")."""
        return qualified_names(self, self._mlp_linears())
