"""timm lightweight classifiers as zoo models: the networks of PSAT Table 5 (Gong et al. 2023, "Comparison with
lightweight networks": MobileNetV1, MobileNetV3-Small/-Large, GhostNet).

:func:`timm_member` builds any timm classifier by name (``timm.create_model(..., pretrained=False)`` through
:func:`torchrobust.models.timm_model`, so an unknown name is a one-line error with close matches) with
``in_chans`` input channels (1 for MNIST) and wraps it so it takes [0, 1] NCHW images like every zoo model.
PSAT Table 5 uses them as ordinary, directly parameterised networks (nothing is hypernetwork-generated; see
:mod:`torchrobust.psat.lightweight`). Registered in the zoo as ``"psat_timm"``, so checkpoints reload with
:func:`torchrobust.load`::

    models.create("psat_timm", backbone="mobilenetv3_small_100", in_chans=1)

Adapting an ImageNet network to 28×28 MNIST is decided from the module structure, never from the name:

* **channels**: timm's ``in_chans`` rebuilds the stem conv for 1 channel (randomly initialised either way).
* **resolution**: these networks reduce the input 32× (timm's ``feature_info``), so with timm's strides a
  28×28 digit ends as a 1×1 feature map, as a 32×32 CIFAR-10 image would (the paper is silent on any CIFAR
  adaptation). Two options trade CPU for resolution: ``stem_stride`` sets the stride of the **stem** — the first
  ``Conv2d`` in module order that reads the ``in_chans`` input channels (:func:`stem_conv`) — and ``input_size``
  resizes the input (bilinear, inside the model, so attacks still act on the 28×28 image). :func:`feature_size`
  reports the resulting final map. :data:`SMALL_IMAGE_STEM_STRIDE` is the stem stride the Table 5 runs use by
  default (see there for why).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TorchRobustError
from .ecosystem import timm_model

__all__ = ["SMALL_IMAGE_STEM_STRIDE", "TimmMember", "timm_member", "stem_conv", "feature_size"]

#: Stem stride for small (28-32 px) images, the default of the PSAT Table 5 runs (``torchrobust psat experiment
#: lightweight --stem-stride``; ``None``/``timm`` keeps timm's). Decided from the structure, not the names: every
#: network's stem is a stride-2 conv and the whole net reduces 32×, so a 28×28 digit reaches the head as 1×1;
#: stride 1 in the stem (as CIFAR-adapted MobileNets do) leaves 2×2 (1.2-2.2× the CPU time of timm's strides).
#: Pilot on MNIST (MobileNetV3-S, standard training, 150 batches of 100, Adam 1e-3 triangular, 500 test
#: images): clean accuracy 55.6 % with timm's stride 2, 75.4 % with stride 1 (92.2 % at lr 4e-3); with timm's
#: strides, 5-step stochastic AT on 20k-60k images left all four networks (near-)constant. Under one identical
#: AT recipe (16k images, 2-step stochastic PGD, lr 4e-3) GhostNet reached 98.5 % clean / 14.5 % union with
#: stride 1 and 54.5 % / 0.5 % with timm's stride 2 (docs/psat.md, "Table 5 analogue").
SMALL_IMAGE_STEM_STRIDE: int | None = 1


def stem_conv(net: nn.Module, in_chans: int) -> nn.Conv2d:
    """The stem of ``net``: the first ``nn.Conv2d`` (in ``net.modules()`` order) whose ``in_channels`` is the
    image's ``in_chans``; :class:`TorchRobustError` if there is none."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == in_chans:
            return m
    raise TorchRobustError(f"no Conv2d reading {in_chans} input channel(s) found; this network has no conv stem "
                           "whose stride could be adapted (leave stem_stride unset)")


class TimmMember(nn.Module):
    """A timm classifier taking [0, 1] images of ``in_chans`` channels, optionally resized to ``input_size``."""

    def __init__(self, net: nn.Module, in_chans: int, input_size: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.in_chans = in_chans
        self.input_size = input_size

    def _resize(self, x: Tensor) -> Tensor:
        if self.input_size is None or tuple(x.shape[-2:]) == (self.input_size, self.input_size):
            return x
        return F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self._resize(x))

    def features(self, x: Tensor) -> Tensor:
        """The final feature map (timm's ``forward_features``) of ``x``."""
        return self.net.forward_features(self._resize(x))


def timm_member(backbone: str, num_classes: int = 10, in_chans: int = 1, stem_stride: int | None = None,
                input_size: int | None = None) -> TimmMember:
    """timm classifier ``backbone`` (random weights) for ``num_classes`` classes and ``in_chans`` channels; see
    the module docstring for ``stem_stride`` (the stem conv's stride; ``None`` keeps timm's) and ``input_size``
    (resize the input to this square size; ``None`` keeps it)."""
    if stem_stride is not None and (isinstance(stem_stride, bool) or not isinstance(stem_stride, int)
                                    or stem_stride < 1):
        raise TorchRobustError(f"stem_stride must be a positive integer or None, got {stem_stride!r}")
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                   or input_size < 8):
        raise TorchRobustError(f"input_size must be an integer >= 8 or None, got {input_size!r}")
    net = timm_model(backbone, num_classes=num_classes, in_chans=in_chans)
    if stem_stride is not None:
        stem_conv(net, in_chans).stride = (stem_stride, stem_stride)
    return TimmMember(net, in_chans, input_size).train()


def feature_size(model: TimmMember, image_size: int = 28) -> tuple[int, int]:
    """Height and width of ``model``'s final feature map for a square ``image_size`` input (one dry run in eval
    mode on zeros)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            f = model.features(torch.zeros(1, model.in_chans, image_size, image_size, dtype=p.dtype, device=p.device))
    finally:
        model.train(was)
    return int(f.shape[-2]), int(f.shape[-1])

