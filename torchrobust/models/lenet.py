"""LeNet of the PyTorch FGSM tutorial, the reprogramming paper's MNIST CNN (Hou et al., ICLR 2025, §4.2).

Layout (``mnist_lenet.py`` of the paper's code = the PyTorch "Adversarial Example Generation" tutorial):

    conv1 1→10 5×5 → max-pool 2 → ReLU → conv2 10→20 5×5 → Dropout2d → max-pool 2 → ReLU → flatten 320
    → fc1 320→50 → ReLU → dropout(0.5) → fc2 50→10

Module names ``conv1``, ``conv2``, ``conv2_drop``, ``fc1``, ``fc2`` follow the tutorial, so its
``lenet_mnist_model.pth`` loads key for key. **Output:** the tutorial returns ``log_softmax``; torchrobust's contract
is logits, so :class:`LeNet` returns the ``fc2`` output. Both give the same predictions and the same
cross-entropy (``log_softmax`` is idempotent), so tutorial weights behave identically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TorchRobustError
from ._common import check_input, check_positive_int
from .normalize import Floats, make_normalize

__all__ = ["LeNet"]


class LeNet(nn.Module):
    """The FGSM-tutorial LeNet (21,840 parameters for 1×28×28 input and 10 classes).

    Args:
        num_classes: output logits (10 in the paper).
        in_channels: image channels (1 for MNIST; 3 gives the SVHN/CIFAR variant of the paper's Table 9).
        input_size: image side length; ``fc1`` has ``20·s²`` inputs with ``s = ((input_size−4)//2 − 4)//2``
            (320 for 28, 500 for 32).
        dropout: drop probability of ``conv2_drop`` (Dropout2d) and of the dropout after ``fc1`` (tutorial: 0.5).
        mean, std: per-channel normalisation (default: none, as in the paper's code).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, dropout: float = 0.5,
                 mean: Floats | None = None, std: Floats | None = None) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        check_positive_int(input_size, "input_size")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise TorchRobustError(f"dropout must be in [0, 1), got {dropout!r}")
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise TorchRobustError(f"LeNet needs input_size >= 16 (two 5x5 convs and two 2x2 pools), got "
                                   f"{input_size}")
        self.in_channels = in_channels
        self.input_size = input_size
        self.flat_features = 20 * side * side
        self.normalize = make_normalize(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(float(dropout))
        self.fc1 = nn.Linear(self.flat_features, 50)
        self.drop = nn.Dropout(float(dropout))
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, "LeNet", min_size=16)
        if x.shape[2] != self.input_size or x.shape[3] != self.input_size:
            raise TorchRobustError(f"LeNet was built for {self.input_size}x{self.input_size} images, got "
                                   f"{x.shape[2]}x{x.shape[3]}; build it with input_size={x.shape[2]}")
        x = self.normalize(x)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.flatten(1)
        x = self.drop(F.relu(self.fc1(x)))
        return self.fc2(x)

    def nrpm_default_layers(self) -> list[str]:
        """The two convs; the paper keeps fc1/fc2 as plain linear layers
        (docs/paper-code-facts.md#reprogramming-layers)."""
        return ["conv1", "conv2"]

    def forge_insertion_points(self) -> list[str]:
        """Every Conv/Linear except conv1, which sees the raw image: before conv2, fc1 and fc2."""
        return ["conv2", "fc1", "fc2"]
