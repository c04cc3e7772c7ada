"""Hypernetwork-generated convolutions (Ha, Dai & Le 2017; PSAT, Gong et al. 2023, Eqs. 8 and 11).

PSAT's Eq. 11 is missing from the published text; this module implements the reconstruction of
``docs/paper-code-facts.md#psat-hypernetwork``, which reproduces all eight parameter counts of PSAT Table 2
exactly. For one embedding ``z ∈ R^{N_z}`` and a unit of ``U_out × U_in × k × k`` weights, with hidden size
``d`` (``d = N_z`` in Ha et al. and PSAT):

.. math::

    a_{i,h} = \\sum_n z_n W^{in}_{n,\\,i d + h} + B^{in}_{i d + h}
        \\qquad i = 0..U_{in}-1,\\; h = 0..d-1                                  \\text{(layer 1)}

    K_{o,i,r,s} = \\sum_h a_{i,h} W^{out}_{h,\\,(o k + r) k + s} + B^{out}_{(o k + r) k + s}
        \\qquad o = 0..U_{out}-1                                               \\text{(layer 2)}

i.e. ``a = (z @ W_in + B_in).view(U_in, d)`` (one row per input channel) and
``K = (a @ W_out + B_out).view(U_in, U_out, k, k).permute(1, 0, 2, 3)``. There is no nonlinearity. The
reference code ``g1910/HyperNetworks`` views the result as ``(U_out, U_in, k, k)`` *without* the permute,
which scrambles Ha et al.'s structure (``W_out`` shared across the rows of input channels); we use the permute
form. The parameter count is the same either way: ``U_in d N_z + U_in d + d U_out k² + U_out k²``.

**Tiling.** A conv with ``C_out = g_o U_out`` and ``C_in = g_i U_in`` owns a grid of ``g_o × g_i`` embeddings
``z[a, b]``; its weight is the block matrix ``W[a U_out + o, b U_in + i] = K(z[a, b])[o, i]`` (units concatenated
along input channels, then the rows along output channels, as in g1910 and the paper's "we concatenate the
output unit in the filter and channel dimensions").

**1×1 kernels** are derived from a generated ``k × k`` unit by a reduction over its spatial dimensions. The
paper says "e.g. use the average/maximum/sum operator"; our default is the average
``W_1x1[o, i] = (1/k²) Σ_{r,s} K[o, i, r, s]``, with ``"sum"``, ``"max"`` and ``"center"`` (``K[o, i, k//2, k//2]``)
as options. One embedding per unit, as for ``k × k`` convs (confirmed by the paper's parameter counts).

**Initialisation.** ``init="ha"`` is the faithful g1910 default: every hypernetwork weight, bias and embedding
drawn from N(0, 1) truncated to (−2, 2) by ``fmod``; the generated kernels then have variance ≈ ``d N_z`` and
rely on BatchNorm after each conv. ``init="kaiming"`` (our option for networks without BatchNorm, such as the
MSD MNIST CNN) draws ``W_in ~ N(0, 1/N_z)``, ``W_out ~ N(0, 2/(d U_in k²))``, zero biases, and embeddings
``~ N(0, s²)`` with ``s² = U_in / C_in`` (``k × k`` convs) so each generated conv starts with He variance
``2 / fan_in``; for 1×1 convs ``s²`` is multiplied by ``k⁴`` (mean), ``k²`` (center, and max as an approximation)
or 1 (sum), which gives the reduced kernels He variance too. The generation formula is identical in both.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchrobust.errors import TorchRobustError

__all__ = ["HyperNetwork", "HyperConv2d", "Reduce", "HyperInit"]

Reduce = Literal["mean", "sum", "max", "center"]
HyperInit = Literal["ha", "kaiming"]
_REDUCES = ("mean", "sum", "max", "center")
_INITS = ("ha", "kaiming")


def _fmod_normal_(t: Tensor) -> Tensor:
    """g1910's init: N(0, 1) truncated to (−2, 2) by ``fmod``."""
    with torch.no_grad():
        t.copy_(torch.fmod(torch.randn_like(t), 2.0))
    return t


class HyperNetwork(nn.Module):
    """Two-layer linear weight generator (reconstructed PSAT Eq. 11, after Ha et al. 2017 §3.1).

    Maps embeddings ``z`` of shape ``(..., z_dim)`` to units of shape ``(..., unit_out, unit_in, k, k)``.

    Args:
        z_dim: embedding size ``N_z``.
        unit_out, unit_in: output / input channels of one generated unit (64 × 64 for ResNets).
        kernel_size: spatial size ``k`` of a unit (3 for ResNets).
        hidden: hidden size ``d`` per input channel; ``None`` means ``d = z_dim`` (Ha et al., PSAT).
        init: ``"ha"`` (faithful) or ``"kaiming"`` (scaled); see the module docstring.
    """

    def __init__(
        self,
        z_dim: int = 64,
        unit_out: int = 64,
        unit_in: int = 64,
        kernel_size: int = 3,
        hidden: int | None = None,
        init: HyperInit = "ha",
    ) -> None:
        super().__init__()
        for name, v in (("z_dim", z_dim), ("unit_out", unit_out), ("unit_in", unit_in),
                        ("kernel_size", kernel_size)):
            if not isinstance(v, int) or v < 1:
                raise TorchRobustError(f"HyperNetwork {name}={v!r} is invalid; pass a positive integer")
        if init not in _INITS:
            raise TorchRobustError(f"unknown hypernetwork init {init!r}; valid: {', '.join(_INITS)}")
        d = z_dim if hidden is None else int(hidden)
        if d < 1:
            raise TorchRobustError(f"HyperNetwork hidden={hidden!r} is invalid; pass a positive integer or None")
        self.z_dim, self.unit_out, self.unit_in, self.kernel_size, self.hidden = (
            z_dim, unit_out, unit_in, kernel_size, d)
        self.init = init
        k2 = kernel_size * kernel_size
        self.w_in = nn.Parameter(torch.empty(z_dim, unit_in * d))
        self.b_in = nn.Parameter(torch.empty(unit_in * d))
        self.w_out = nn.Parameter(torch.empty(d, unit_out * k2))
        self.b_out = nn.Parameter(torch.empty(unit_out * k2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as described by ``init`` (module docstring)."""
        if self.init == "ha":
            for p in (self.w_in, self.b_in, self.w_out, self.b_out):
                _fmod_normal_(p)
        else:
            k2 = self.kernel_size ** 2
            with torch.no_grad():
                self.w_in.normal_(0.0, 1.0 / math.sqrt(self.z_dim))
                self.w_out.normal_(0.0, math.sqrt(2.0 / (self.hidden * self.unit_in * k2)))
                self.b_in.zero_()
                self.b_out.zero_()

    def embedding_std(self, in_channels: int, kernel_size: int, reduce: Reduce = "mean") -> float | None:
        """Std of the embeddings of a conv under ``init="kaiming"`` (``None``: use the ``"ha"`` init)."""
        if self.init == "ha":
            return None
        var = self.unit_in / in_channels
        if kernel_size == 1 and self.kernel_size > 1:
            k2 = self.kernel_size ** 2
            var *= {"mean": k2 * k2, "center": k2, "sum": 1.0, "max": k2}[reduce]
        return math.sqrt(var)

    def forward(self, z: Tensor, reduce: Reduce | None = None) -> Tensor:
        """Generate units: ``z (..., z_dim) -> (..., unit_out, unit_in, k, k)``.

        With ``reduce`` in ``"mean"``/``"sum"``/``"center"`` the units are reduced to ``1 × 1`` over their
        spatial dimensions. These reductions are linear, so they are applied to ``W_out``/``B_out`` *before*
        the second layer — exactly equal to reducing the full units, at ``1/k²`` of the memory (this is what
        makes the 1×1 convs of a PSAT ResNet-50 cheap). ``"max"`` is reduced after generation.
        """
        if z.shape[-1] != self.z_dim:
            raise TorchRobustError(
                f"embedding has size {z.shape[-1]} but the hypernetwork expects z_dim={self.z_dim}; "
                "build the embeddings with the same z_dim")
        batch = z.shape[:-1]
        k = self.kernel_size
        a = (z @ self.w_in + self.b_in).reshape(*batch, self.unit_in, self.hidden)
        if reduce in ("mean", "sum", "center") and k > 1:
            w = self.w_out.reshape(self.hidden, self.unit_out, k * k)
            b = self.b_out.reshape(self.unit_out, k * k)
            if reduce == "mean":
                w, b = w.mean(-1), b.mean(-1)
            elif reduce == "sum":
                w, b = w.sum(-1), b.sum(-1)
            else:
                c = (k // 2) * k + k // 2
                w, b = w[..., c], b[..., c]
            return (a @ w + b).reshape(*batch, self.unit_in, self.unit_out, 1, 1).transpose(-4, -3)
        units = (a @ self.w_out + self.b_out).reshape(*batch, self.unit_in, self.unit_out, k, k).transpose(-4, -3)
        if reduce == "max" and k > 1:
            units = units.amax(dim=(-2, -1), keepdim=True)
        return units

    def num_generated(self) -> int:
        """Number of weights in one unit."""
        return self.unit_out * self.unit_in * self.kernel_size ** 2

    def extra_repr(self) -> str:
        return (f"z_dim={self.z_dim}, unit=({self.unit_out}, {self.unit_in}, {self.kernel_size}, "
                f"{self.kernel_size}), hidden={self.hidden}, init={self.init!r}")


class HyperConv2d(nn.Module):
    """A 2-D convolution whose weight is generated by a (possibly shared) :class:`HyperNetwork`.

    The conv owns a grid of ``(C_out / U_out) × (C_in / U_in)`` embeddings (parameter ``embedding`` of shape
    ``(g_o, g_i, z_dim)``) and an optional ordinary bias; its weight is tiled from the generated units as in the
    module docstring, and a 1×1 conv reduces each ``k × k`` unit with ``reduce``.

    A hypernetwork passed in as ``hyper`` is *shared*: it is referenced, not registered, so a model with many
    generated convs stores it once; the owner (e.g. the PSAT models) registers it. Without ``hyper`` the conv
    builds and registers its own from ``z_dim`` / ``unit`` / ``init``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: as in :class:`torch.nn.Conv2d`
            (square kernels; ``kernel_size`` must equal the unit's ``k``, or be 1).
        bias: add an ordinary (not generated) bias.
        hyper: shared generator, or ``None`` to own one.
        reduce: ``"mean"`` (default), ``"sum"``, ``"max"`` or ``"center"`` for 1×1 kernels.
        name: layer name used in error messages.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = False,
        *,
        hyper: HyperNetwork | None = None,
        z_dim: int = 64,
        unit: tuple[int, int, int] = (64, 64, 3),
        init: HyperInit = "ha",
        reduce: Reduce = "mean",
        name: str = "conv",
    ) -> None:
        super().__init__()
        if reduce not in _REDUCES:
            raise TorchRobustError(f"unknown 1x1 reduction {reduce!r} for layer {name!r}; valid: "
                                   f"{', '.join(_REDUCES)}")
        if hyper is None:
            self.hyper = HyperNetwork(z_dim, unit[0], unit[1], unit[2], init=init)
            hyper = self.hyper
        else:
            self.__dict__["_shared_hyper"] = hyper  # referenced, not registered (see class docstring)
        uo, ui, k = hyper.unit_out, hyper.unit_in, hyper.kernel_size
        if kernel_size not in (k, 1):
            raise TorchRobustError(
                f"layer {name!r}: kernel {kernel_size}x{kernel_size} cannot be generated from a "
                f"{uo}x{ui}x{k}x{k} unit; use kernel_size {k} or 1, or a hypernetwork with kernel_size "
                f"{kernel_size}")
        if out_channels % uo or in_channels % ui:
            raise TorchRobustError(
                f"layer {name!r}: a {uo}x{ui} unit does not tile {out_channels}x{in_channels} "
                f"(out x in channels); choose a unit size dividing both channel counts")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.reduce: Reduce = reduce
        self.name = name
        self.grid = (out_channels // uo, in_channels // ui)
        self.embedding = nn.Parameter(torch.empty(*self.grid, hyper.z_dim))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_embedding()

    @property
    def hypernetwork(self) -> HyperNetwork:
        """The generator (own or shared)."""
        own = self._modules.get("hyper")
        return own if own is not None else self.__dict__["_shared_hyper"]  # type: ignore[return-value]

    def reset_embedding(self) -> None:
        """Initialise the embeddings according to the generator's ``init``."""
        std = self.hypernetwork.embedding_std(self.in_channels, self.kernel_size, self.reduce)
        if std is None:
            _fmod_normal_(self.embedding)
        else:
            with torch.no_grad():
                self.embedding.normal_(0.0, std)

    @property
    def weight(self) -> Tensor:
        """The generated ``(C_out, C_in, kernel, kernel)`` weight (differentiable w.r.t. hyper and embeddings)."""
        hyper = self.hypernetwork
        go, gi = self.grid
        k = hyper.kernel_size
        reduce = self.reduce if (self.kernel_size == 1 and k > 1) else None
        units = hyper(self.embedding, reduce)  # (go, gi, uo, ui, kk, kk)
        kk = units.shape[-1]
        return units.permute(0, 2, 1, 3, 4, 5).reshape(go * hyper.unit_out, gi * hyper.unit_in, kk, kk)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, grid={self.grid}, reduce={self.reduce!r}, "
                f"bias={self.bias is not None}")
