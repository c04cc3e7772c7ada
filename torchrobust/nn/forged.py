"""The forged threshold function of the data-driven Lipschitz defence.

Chen, Chen, Chung & Lee, "Data-Driven Lipschitz Continuity: A Cost-Effective Approach to Improve Adversarial
Robustness" (arXiv 2406.19622), Sec. 3.3:

* Eq. 9:  ``f(x) = 0 if |x| <= c_th else x`` (the comparison is inclusive, as in the paper);
* Eq. 13: ``c_th = c_r * max_{x in S} F_{1->i}(x)`` -- one threshold per insertion point, one shared ``c_r``;
* Algorithm 1: two modes like BatchNorm. *Tracking* mode updates the running maximum ``b`` and returns its
  input unchanged; *inference* mode freezes ``b`` and zeroes every entry with ``|x| <= c_r * b``. The default
  state (inference, ``b = c_r = 0``) is exactly the identity.

Our resolutions (``docs/paper-code-facts.md#forged-function-resolutions``):

* ``b`` tracks ``max |x|`` by default. Algorithm 1 literally tracks the signed maximum ``max(b, x)``; behind
  ReLU the two agree, behind SiLU/GELU they agree in practice. ``signed_max=True`` gives the paper-literal form.
* ``b`` is one scalar per insertion point (the paper's "each layer has its own c_i^th"); ``per_channel=True`` is
  an ablation that keeps one maximum per channel (dim 1 for conv inputs, the last dim for linear inputs).

Modes and ``.train()``/``.eval()``
    Tracking is a separate switch (:meth:`Forged.track` / :meth:`Forged.freeze`, or the ``tracking``
    attribute); ``.train()`` and ``.eval()`` do not touch it, because calibration is meant to run with the
    network in eval mode (BatchNorm on running statistics) while the forged modules track. A module in training
    mode that is not tracking applies the threshold exactly as in eval mode.

Inference before calibration
    A module whose ``c_r > 0`` but which has never tracked any data (``n_tracked == 0``) is still exactly the
    identity (``b = 0`` zeroes nothing but exact zeros). This almost always means calibration was forgotten, so
    the first such forward pass emits a :class:`UserWarning` (once per module). It is a warning, not an error,
    because a checkpoint loader legitimately builds the module first and fills ``b`` from the state dict.

BPDA protocol
    Eq. 9 has zero gradient on zeroed entries and one elsewhere (autograd of ``x * mask``), which is what the
    paper evaluated and which can mask gradients. A module that declares a class attribute
    ``bpda_surrogate`` (here ``"identity"``) supports ``with bpda_mode(model):`` -- inside the context every
    such module sets ``straight_through = True``: the forward value is unchanged (bit for bit) and the
    backward pass uses the declared surrogate (here the identity, Athalye et al. 2018 BPDA). Other torchrobust
    modules that want BPDA evaluation implement the same two attributes (``bpda_surrogate: str`` and a boolean
    ``straight_through``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from torchrobust.errors import TorchRobustError

__all__ = ["Forged", "PreForged", "bpda_mode", "bpda", "check_c_r"]


def check_c_r(c_r: float) -> float:
    """Validate the shared hyper-parameter ``c_r`` of Eq. 13 (a finite number >= 0) and return it as float."""
    try:
        value = float(c_r)
    except (TypeError, ValueError):
        raise TorchRobustError(f"c_r must be a number, got {c_r!r}; pass e.g. c_r=2**-7") from None
    except OverflowError:  # an int beyond float range, e.g. 10**400
        raise TorchRobustError("c_r must be a finite number >= 0, got an integer too large for a float; the paper "
                               "uses 2**-8 .. 2**-6") from None
    if not math.isfinite(value) or value < 0:
        raise TorchRobustError(f"c_r must be a finite number >= 0, got {c_r!r}; the paper uses 2**-8 .. 2**-6")
    return value


class Forged(nn.Module):
    """Forged threshold function (Eq. 9) with Algorithm 1's tracking / inference modes.

    Args:
        c_r: the shared ratio of Eq. 13; the threshold is ``c_r * b``. ``0`` (default) is the identity.
        per_channel: keep one running maximum per channel instead of one scalar (ablation, not in the paper).
        num_channels: number of channels; required when ``per_channel`` is true.
        channel_dim: the channel dimension of the input (1 for NCHW conv inputs, -1 for linear inputs).
        signed_max: track the signed maximum ``max(b, x)`` of Algorithm 1 instead of ``max(b, |x|)``.

    Buffers (in the state dict): ``b`` (the running maximum, shape ``()`` or ``(num_channels,)``), ``c_r``
    (scalar) and ``n_tracked`` (number of samples seen while tracking).
    """

    #: BPDA surrogate used for the backward pass when ``straight_through`` is set (see :func:`bpda_mode`).
    bpda_surrogate: str = "identity"

    b: torch.Tensor
    n_tracked: torch.Tensor

    def __init__(
        self,
        c_r: float = 0.0,
        *,
        per_channel: bool = False,
        num_channels: int | None = None,
        channel_dim: int = 1,
        signed_max: bool = False,
    ) -> None:
        super().__init__()
        c_r = check_c_r(c_r)
        if per_channel and (num_channels is None or num_channels < 1):
            raise TorchRobustError("per_channel=True needs num_channels >= 1; pass the layer's input channels")
        self.per_channel = bool(per_channel)
        self.channel_dim = int(channel_dim)
        self.signed_max = bool(signed_max)
        shape: tuple[int, ...] = (int(num_channels),) if per_channel and num_channels else ()
        self.register_buffer("b", torch.zeros(shape))
        self.register_buffer("c_r", torch.tensor(c_r))
        self.register_buffer("n_tracked", torch.tensor(0, dtype=torch.long))
        self._c_r_value = c_r  # python mirrors of the buffers: avoid a device sync in forward
        self._has_tracked = False
        self.tracking = False
        self.straight_through = False
        self._warned_uncalibrated = False

    # ------------------------------------------------------------------ modes
    def track(self, mode: bool = True) -> Forged:
        """Switch to tracking mode (``mode=True``) or back to inference mode; returns ``self``."""
        self.tracking = bool(mode)
        return self

    def freeze(self) -> Forged:
        """Switch to inference mode: ``b`` is frozen and the threshold is applied; returns ``self``."""
        return self.track(False)

    def reset(self) -> Forged:
        """Forget the tracked maximum (``b = 0``, ``n_tracked = 0``); returns ``self``."""
        self.b.zero_()
        self.n_tracked.zero_()
        self._has_tracked = False
        self._warned_uncalibrated = False
        return self

    def set_c_r(self, c_r: float) -> Forged:
        """Change ``c_r`` without recalibrating; returns ``self``."""
        value = check_c_r(c_r)
        self.c_r.fill_(value)
        self._c_r_value = value
        return self

    @property
    def calibrated(self) -> bool:
        """Whether the module has tracked at least one sample (or loaded ``b`` from a calibrated state dict)."""
        return bool(self.n_tracked.item() > 0)

    @property
    def threshold(self) -> torch.Tensor:
        """The threshold ``c_th = c_r * b`` of Eq. 13 (scalar, or per channel)."""
        return self.c_r * self.b

    @property
    def c_r_value(self) -> float:
        """``c_r`` as a Python float (no device sync)."""
        return self._c_r_value

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The entries of ``x`` that Eq. 9 keeps in inference mode: ``|x| > c_th`` (bool, shaped like ``x``)."""
        return x.abs() > self._broadcast((self.c_r * self.b).to(x.dtype), x)

    def calibration_state(self) -> tuple[torch.Tensor, torch.Tensor, bool, bool]:
        """A copy of everything calibration changes, to put back with :meth:`restore_calibration`."""
        return self.b.clone(), self.n_tracked.clone(), self._has_tracked, self._warned_uncalibrated

    def restore_calibration(self, state: tuple[torch.Tensor, torch.Tensor, bool, bool]) -> Forged:
        """Put back a :meth:`calibration_state` (e.g. after a failed calibration); returns ``self``."""
        b, n_tracked, has_tracked, warned = state
        self.b.copy_(b)
        self.n_tracked.copy_(n_tracked)
        self._has_tracked, self._warned_uncalibrated = has_tracked, warned
        return self

    # ------------------------------------------------------------------ forward
    def _reduce_dims(self, x: torch.Tensor) -> list[int]:
        cdim = self.channel_dim % x.dim()
        return [d for d in range(x.dim()) if d != cdim]

    def _broadcast(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        cdim = self.channel_dim % x.dim()
        shape = [1] * x.dim()
        shape[cdim] = t.numel()
        return t.view(shape)

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        v = x.detach()
        if not self.signed_max:
            v = v.abs()
        if self.per_channel:
            cdim = self.channel_dim % v.dim()
            if v.shape[cdim] != self.b.numel():
                raise TorchRobustError(
                    f"Forged(per_channel=True) expects {self.b.numel()} channels on dim {self.channel_dim}, "
                    f"got input of shape {tuple(v.shape)}; rebuild it with the layer's channel count"
                )
            m = v.amax(dim=self._reduce_dims(v))
        else:
            m = v.amax()
        self.b.copy_(torch.maximum(self.b, m.to(self.b)))
        self.n_tracked += x.shape[0] if x.dim() > 0 else 1
        self._has_tracked = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tracking: update ``b`` and return ``x`` unchanged. Inference: Eq. 9 with ``c_th = c_r * b``."""
        if self.tracking:
            self._update(x)
            return x
        if self._c_r_value == 0.0:
            return x
        if not self._has_tracked and not self._warned_uncalibrated:
            self._warned_uncalibrated = True
            warnings.warn(
                "Forged module has c_r > 0 but was never calibrated (b = 0), so it is the identity; "
                "run torchrobust.forging.calibrate(model, data) or load a calibrated state dict",
                UserWarning,
                stacklevel=2,
            )
        kept = x * self.keep_mask(x)
        if self.straight_through:
            # BPDA with the identity surrogate: forward value == kept exactly, d out / d x = 1.
            return x + (kept - x).detach()
        return kept

    # ------------------------------------------------------------------ state dict
    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._c_r_value = float(self.c_r.item())
        self._has_tracked = bool(self.n_tracked.item() > 0)
        self._warned_uncalibrated = False

    def extra_repr(self) -> str:
        parts = [f"c_r={self._c_r_value:g}"]
        if self.per_channel:
            parts.append(f"per_channel=True, num_channels={self.b.numel()}, channel_dim={self.channel_dim}")
        if self.signed_max:
            parts.append("signed_max=True")
        if self.tracking:
            parts.append("tracking=True")
        return ", ".join(parts)


class PreForged(nn.Sequential):
    """A linear map preceded by its forged threshold: ``layer(forged(x))`` (Fig. 2's insertion point).

    Built by :func:`torchrobust.forging.forge`; it keeps the original ``layer`` object, so
    :func:`torchrobust.forging.unforge` can put it back unchanged. State-dict keys of a wrapped layer named
    ``block.conv1`` become ``block.conv1.forged.{b,c_r,n_tracked}`` and ``block.conv1.layer.{weight,bias}``.
    ``weight`` and ``bias`` are forwarded to the wrapped layer for code that reads them.
    """

    def __init__(self, forged: Forged, layer: nn.Module) -> None:
        super().__init__()
        self.forged = forged
        self.layer = layer

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's weight."""
        return self.layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The wrapped layer's bias (or ``None``)."""
        return self.layer.bias


@contextmanager
def bpda_mode(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Run every module of ``model`` that declares ``bpda_surrogate`` straight-through (BPDA).

    Inside the context, forward values are unchanged and gradients use each module's declared surrogate (the
    identity for :class:`Forged`). The previous ``straight_through`` flags are restored on exit, also when an
    exception is raised. ``enabled=False`` makes the context a no-op (handy for ``bpda_mode(m, adaptive)``).
    """
    saved: list[tuple[nn.Module, bool]] = []
    if enabled:
        for module in model.modules():
            if getattr(type(module), "bpda_surrogate", None) is not None:
                saved.append((module, bool(getattr(module, "straight_through", False))))
                module.straight_through = True
    try:
        yield model
    finally:
        for module, previous in saved:
            module.straight_through = previous


#: Short alias of :func:`bpda_mode`.
bpda = bpda_mode
