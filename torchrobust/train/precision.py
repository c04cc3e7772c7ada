"""Mixed precision and memory format of :func:`torchrobust.train.fit` (``TrainConfig.precision`` / ``channels_last``).

``precision``:

=========  ==============================================================================================
``fp32``   no autocast (the default; every result in the documents is an fp32 run)
``bf16``   ``torch.autocast(device_type, dtype=torch.bfloat16)`` around each batch's loss: CPU, or CUDA with
           bf16 support (Ampere and newer); no loss scaling (bf16 has fp32's exponent range)
``fp16``   ``torch.autocast("cuda", dtype=torch.float16)`` with a ``torch.amp.GradScaler`` (dynamic loss scaling,
           Micikevicius et al., ICLR 2018); CUDA only — on a CPU it is refused (use ``bf16``)
=========  ==============================================================================================

What runs under autocast: the whole batch loss — the training adversary's forward/backward passes (PGD crafting)
and the loss of the crafted inputs. The inputs themselves stay float32: autocast only lowers the precision of the
model's matmuls/convolutions, while the attack's step, its projection onto the ε-ball ∩ [0, 1] and the budget check
run on the float32 input tensors, so every training example is inside its ball exactly as in an fp32 run. The
backward pass and the optimiser step run outside autocast (PyTorch's recipe); the weights stay float32.

**Evaluation is always fp32.** Autocast is entered only inside ``fit``; every evaluation attack (the engine, the
sweeps, AutoAttack) computes the model in float32. A half-precision forward rounds logits and input gradients
(bf16 keeps 8 bits of mantissa), which can flatten the loss surface an attack follows and so *overstate*
robustness; keeping evaluation in fp32 keeps the reported numbers comparable to fp32 runs and the ε-ball check
exact.

``channels_last``: the model's 4-D weights and buffers use ``torch.channels_last`` (NHWC), the layout tensor
cores' convolutions prefer. A convolution with channels_last weights computes and returns channels_last activations
whatever the input's layout, so every layer after the first runs NHWC; the input batches themselves stay NCHW
(the stem convolution converts its 3-channel input internally), because the attacks reshape their float32 input
tensors with ``view``, which a channels_last tensor does not allow. Numerically the same model (convolution
algorithms may round differently); recorded in the training configuration like ``precision``, so a resume state of
one setting is not continued with the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import Enum
from typing import Any

import torch
from torch import nn

from ..errors import TorchRobustError

__all__ = ["Precision", "PRECISIONS", "check_precision", "autocast", "grad_scaler", "to_memory_format"]


class Precision(str, Enum):
    """``TrainConfig.precision`` values; a ``str`` enum, so ``precision="bf16"`` keeps working."""

    FP32 = "fp32"  #: no autocast
    BF16 = "bf16"  #: bfloat16 autocast, no loss scaling
    FP16 = "fp16"  #: float16 autocast with dynamic loss scaling (CUDA only)

    def __str__(self) -> str:
        return self.value


PRECISIONS = tuple(p.value for p in Precision)
_DTYPES = {Precision.BF16.value: torch.bfloat16, Precision.FP16.value: torch.float16}


def check_precision(precision: str, device: torch.device | str) -> str:
    """The plain string of ``precision`` after checking it is one of :data:`PRECISIONS` and runs on ``device``."""
    value = precision.value if isinstance(precision, Precision) else str(precision)
    if value not in PRECISIONS:
        raise TorchRobustError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if value == Precision.FP16 and dev.type != "cuda":
        raise TorchRobustError(f"precision fp16 needs a CUDA device (loss-scaled float16 autocast), got {dev.type}; "
                               "use --precision bf16 on a CPU, or --device cuda")
    if value == Precision.BF16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TorchRobustError("precision bf16: this CUDA device has no bfloat16 support; use --precision fp16")
    if value != Precision.FP32 and dev.type not in ("cpu", "cuda"):
        raise TorchRobustError(f"precision {value} is supported on cpu and cuda, not {dev.type}; use --precision "
                               "fp32")
    return value


@contextlib.contextmanager
def autocast(precision: str, device: torch.device, model: nn.Module) -> Iterator[None]:
    """Autocast of ``precision`` on ``device`` (a no-op for fp32), with ``model``'s outputs cast back to float32.

    The cast (a forward hook, removed on exit) keeps the logits the attacks and losses see in float32: the
    adversaries compare and store their scores in float32 tensors, and the cross-entropy is computed in float32,
    while the model's convolutions and matmuls run in the lower precision.
    """
    if precision == Precision.FP32:
        yield
        return

    def to_float(_module: nn.Module, _inputs: Any, out: Any) -> Any:
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    handle = model.register_forward_hook(to_float)
    try:
        with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
            yield
    finally:
        handle.remove()


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16, None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == Precision.FP16 else None


#: channels_last convs that oneDNN's CPU weight backward mishandles (torch 2.14.1, seen on an AVX2 CPU): a 1x1
#: kernel with stride > 1 and fewer input channels per group than this corrupts the heap and aborts the process
#: (a ResNet shortcut at width 2-4). Reproducer: ``Conv2d(2, 4, 1, stride=2)`` in channels_last, 20 backward passes.
_CL_MIN_CHANNELS = 8


def _check_channels_last_cpu(model: nn.Module) -> None:
    """Refuse channels_last on CPU for a conv that would abort the process in oneDNN (:data:`_CL_MIN_CHANNELS`)."""
    for name, mod in model.named_modules():
        if (isinstance(mod, nn.Conv2d) and mod.weight.device.type == "cpu" and tuple(mod.kernel_size) == (1, 1)
                and tuple(mod.stride) != (1, 1) and mod.in_channels // mod.groups < _CL_MIN_CHANNELS):
            raise TorchRobustError(
                f"channels_last on CPU: conv {name!r} (1x1, stride {tuple(mod.stride)}, {mod.in_channels} input "
                f"channels) makes oneDNN's weight backward corrupt memory and abort (torch {torch.__version__}, "
                f"fewer than {_CL_MIN_CHANNELS} input channels); drop --channels-last or use a wider model")


def to_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """``model`` with its 4-D parameters and buffers in ``channels_last`` (when asked; a no-op otherwise).

    On CPU a model with a narrow strided 1x1 conv is refused (:func:`_check_channels_last_cpu`): oneDNN aborts
    the process in its backward there, so nothing would be saved."""
    if not channels_last:
        return model
    _check_channels_last_cpu(model)
    return model.to(memory_format=torch.channels_last)
