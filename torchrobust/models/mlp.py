"""Fully connected MNIST-style classifier (the reprogramming paper's "3-layer MLP", Hou et al., ICLR 2025).

The paper's MLP backbone is 784-256-64-10 (paper Appendix C.2, Table 7). Its public code (``mnist_mlp.py``,
docs/paper-code-facts.md#reprogramming-layers) applies ``fc1``, ``fc2``, ``fc3`` back to back **without any
activation**, so the vanilla (LPM) model is a single linear classifier and NRPM is its only nonlinearity; it
also returns ``log_softmax``. torchrobust keeps the activation-free network as the default (``activation=None``),
offers a ReLU/tanh/... variant through ``activation=``, and always returns logits (``log_softmax`` of logits gives the
same argmax and the same cross-entropy, so checkpoints trained either way behave identically).

Layers are named ``fc1 … fcN`` (as in the paper's code, so its ``mlp3_mnist_model.pth`` weights map key for
key); :attr:`MLP.linears` lists them in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import TorchRobustError
from ._common import check_positive_int, make_activation
from .normalize import Floats, make_normalize

__all__ = ["MLP"]


class MLP(nn.Module):
    """``in_features → widths[0] → … → widths[-1] → num_classes`` with an optional activation between layers.

    Args:
        num_classes: output logits.
        widths: hidden layer sizes (default ``[256, 64]``, the paper's 784-256-64-10; ``[]`` gives a linear model).
        activation: ``None`` (the paper code's activation-free MLP) or a name such as ``"relu"``, ``"tanh"``.
        in_features: flattened input size (784 = 1×28×28). Any input of shape (N, ...) is flattened.
        in_channels: channels of the image, only used to size ``mean``/``std``.
        mean, std: per-channel normalisation applied to the image before flattening (default: none).
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (256, 64), activation: str | None = None,
                 in_features: int = 784, in_channels: int = 1, mean: Floats | None = None,
                 std: Floats | None = None) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_features, "in_features")
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
            raise TorchRobustError(f"widths must be a list of hidden sizes, got {widths!r}; e.g. widths=[256, 64]")
        for w in widths:
            check_positive_int(w, "every entry of widths")
        self.in_features = in_features
        self.normalize = make_normalize(mean, std, in_channels)
        self.act: nn.Module | None = None if activation is None else make_activation(activation)
        sizes = [in_features, *widths, num_classes]
        self.num_layers = len(sizes) - 1
        for i in range(self.num_layers):
            self.add_module(f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))

    @property
    def linears(self) -> list[nn.Linear]:
        """The Linear layers ``fc1 … fcN`` in forward order."""
        return [getattr(self, f"fc{i + 1}") for i in range(self.num_layers)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise TorchRobustError(f"MLP expects a batch (N, ...), got shape {tuple(x.shape)}")
        x = self.normalize(x).flatten(1)
        if x.shape[1] != self.in_features:
            raise TorchRobustError(f"MLP was built for in_features={self.in_features} but the input flattens to "
                                   f"{x.shape[1]}; build it with in_features={x.shape[1]}")
        layers = self.linears
        for i, fc in enumerate(layers):
            x = fc(x)
            if self.act is not None and i < len(layers) - 1:
                x = self.act(x)
        return x

    def nrpm_default_layers(self) -> list[str]:
        """All Linear layers, first and last included (the paper code replaces all three;
        docs/paper-code-facts.md#reprogramming-layers)."""
        return [f"fc{i + 1}" for i in range(self.num_layers)]

    def forge_insertion_points(self) -> list[str]:
        """Every Linear except the first, which sees the raw input (docs/architecture.md)."""
        return [f"fc{i + 1}" for i in range(1, self.num_layers)]
