"""Empirical Lipschitz constants of the linear maps behind forged thresholds, and of the whole network.

Chen, Chen, Chung & Lee, arXiv 2406.19622:

* Eq. 5: the global Lipschitz constant of a linear map ``x -> W x`` under L2 is ``sigma_max(W)``. We compute it
  exactly (SVD) for ``nn.Linear`` and for an ``nn.Conv2d`` small enough to form densely (at most
  ``DENSE_MAX_ENTRIES`` inputs x outputs: every MNIST layer), else by power iteration on ``W^T W``, where ``W`` is
  the convolution as a linear operator on the layer's actual input shape (forward = ``conv2d`` without bias,
  adjoint = ``conv_transpose2d``). Power iteration converges from below and stops when the eigen-residual of
  ``W^T W`` is below ``tol``: the reported value is a lower bound of the true norm.
* Definition 1 (Eq. 8): the *empirical* Lipschitz constant ``max_{x in S} ||W x|| / ||x||`` over observed inputs
  ``x`` of the layer (norms per example, over all of its coordinates). We report it on the inputs before the
  forged function (``emp_before``) and after it (``emp_after``).
* Lemma 2 (Eqs. 10-12): zeroing input coordinates replaces ``A = W^T W`` by ``A'`` with those columns zeroed; its
  largest eigenvalue ``sigma_max(W D_x)^2`` (``D_x`` = the 0/1 mask of kept coordinates of input ``x``) is at most
  ``sigma_max(W)^2``. Inputs behind ReLU already have exact zeros, so we separate the two effects per example:
  ``masked_sigma_before`` = ``max_x sigma_max(W D_{x != 0})`` (what the unforged input already uses) and
  ``masked_sigma_max`` = ``max_x sigma_max(W D_{|x| > t})`` (after forging); ``lemma2_holds`` checks
  ``after <= before <= sigma_max(W)`` on every checked example. For linear layers we also report the
  Gershgorin-disc bound the paper's proof uses (``max_i a_ii d_i + sum_{j != i} |a_ij| d_j`` for ``A D``) with
  the same two masks.

Note on what Lemma 2 does and does not say: it bounds the *worst case over directions* of the masked map;
it does not imply ``emp_after <= emp_before`` for a finite data set (the ratio of a particular masked input can
grow or shrink). Both are reported, next to each other, and ``emp_reduced`` says which way the data went.

The network-level estimate is local: ``||f(x + delta) - f(x)||_2 / ||delta||_2`` on logits for attack-found
``delta`` (:func:`local_lipschitz`), reported for the forged model and for the same model with ``c_r = 0``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.nn.forged import Forged, PreForged
from torchrobust.tables import Column, ColumnKind, Table, json_safe
from torchrobust.validation import eval_mode, model_device

from .engine import job_for_attack, run_plan

__all__ = [
    "linear_part",
    "linear_adjoint",
    "spectral_norm",
    "masked_spectral_norm",
    "gershgorin_bound",
    "empirical_lipschitz",
    "local_lipschitz",
    "LipschitzReport",
    "lipschitz_report",
]


# ---------------------------------------------------------------------------------------------- operators
def _check_layer(layer: nn.Module) -> nn.Module:
    if isinstance(layer, PreForged):
        layer = layer.layer
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise TorchRobustError(f"expected an nn.Linear or nn.Conv2d layer, got {type(layer).__name__}")
    return layer


def linear_part(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``W x``: the layer applied without its bias (Eq. 4: the bias cancels in ``f(x + delta) - f(x)``)."""
    layer = _check_layer(layer)
    w = layer.weight if weight is None else weight
    if isinstance(layer, nn.Linear):
        return F.linear(x, w)
    assert isinstance(layer, nn.Conv2d)
    return layer._conv_forward(x, w, None)


def linear_adjoint(layer: nn.Module, y: torch.Tensor, input_shape: Sequence[int],
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """``W^T y`` for a batch ``y`` of outputs; ``input_shape`` is the per-example input shape.

    Linear: ``y @ W``. Conv2d with zero padding: ``conv_transpose2d`` with the output padding that restores
    ``input_shape``; other padding modes: the vector-Jacobian product of :func:`linear_part` (exact as well).
    """
    layer = _check_layer(layer)
    w = layer.weight if weight is None else weight
    if isinstance(layer, nn.Linear):
        return y @ w
    assert isinstance(layer, nn.Conv2d)
    if layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        out_pad = []
        for d in range(2):
            size = input_shape[-2 + d]
            base = ((y.shape[-2 + d] - 1) * layer.stride[d] - 2 * layer.padding[d]
                    + layer.dilation[d] * (layer.kernel_size[d] - 1) + 1)
            out_pad.append(size - base)
        if all(0 <= p < max(layer.stride[d], layer.dilation[d]) for d, p in enumerate(out_pad)):
            return F.conv_transpose2d(y, w, None, layer.stride, layer.padding, tuple(out_pad), layer.groups,
                                      layer.dilation)
    x0 = torch.zeros((y.shape[0], *input_shape), dtype=y.dtype, device=y.device, requires_grad=True)
    with torch.enable_grad():
        out = linear_part(layer, x0, w)
        (grad,) = torch.autograd.grad(out, x0, grad_outputs=y)
    return grad


def _power_iteration(
    apply: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    shape: Sequence[int],
    n_iter: int,
    tol: float,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    mask: torch.Tensor | None = None,
) -> float:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn((1, *shape), generator=gen, dtype=dtype).to(device)
    if mask is not None:
        v = v * mask
    norm = v.norm()
    if norm == 0:
        return 0.0
    v = v / norm
    v_prev = v
    for _ in range(n_iter):
        u = apply(v)
        new_sigma = float(u.norm())
        v = adjoint(u)
        if mask is not None:
            v = v * mask
        vn = v.norm()
        if vn == 0 or new_sigma == 0:
            return 0.0
        v = v / vn
        # Stop on the eigen-residual of A^T A, not on the change of sigma: with two nearly equal top singular
        # values sigma creeps up by less than tol per step long before it is close to sigma_max.
        if float((v * vn - new_sigma**2 * v_prev).norm()) <= tol * max(new_sigma**2, 1e-30):
            break
        v_prev = v
    return float(apply(v).norm())


# Operators with at most this many entries (inputs x outputs) are formed densely and their norm is exact (SVD).
DENSE_MAX_ENTRIES = 1 << 23


def _operator_norm(apply: Callable[[torch.Tensor], torch.Tensor], adjoint: Callable[[torch.Tensor], torch.Tensor],
                   shape: Sequence[int], n_iter: int, tol: float, device: torch.device, seed: int,
                   mask: torch.Tensor | None = None) -> float:
    """``sigma_max`` of the linear map ``apply`` on inputs of ``shape``: exact (the map formed column by column,
    then SVD) when it has at most :data:`DENSE_MAX_ENTRIES` entries, power iteration otherwise."""
    n = math.prod(shape)
    n_out = math.prod(apply(torch.zeros((1, *shape), dtype=torch.float64, device=device)).shape[1:])
    if n * n_out <= DENSE_MAX_ENTRIES:
        cols = []
        for start in range(0, n, 512):
            eye = torch.zeros((min(512, n - start), n), dtype=torch.float64, device=device)
            eye[torch.arange(eye.shape[0]), torch.arange(start, start + eye.shape[0])] = 1.0
            cols.append(apply(eye.view(-1, *shape)).flatten(1))
        return float(torch.linalg.matrix_norm(torch.cat(cols).T, ord=2))
    return _power_iteration(apply, adjoint, shape, n_iter, tol, torch.float64, device, seed, mask=mask)


def spectral_norm(layer: nn.Module, input_shape: Sequence[int] | None = None, n_iter: int = 1000,
                  tol: float = 1e-10, seed: int = 0) -> float:
    """``sigma_max(W)`` of a Linear (exact, SVD) or Conv2d layer (power iteration on ``input_shape`` = (C, H, W)).

    Computed in float64. The convolution's norm depends on the input size, stride and padding, so
    ``input_shape`` is required for convolutions.
    """
    layer = _check_layer(layer)
    w = layer.weight.detach().double()
    if isinstance(layer, nn.Linear):
        return float(torch.linalg.matrix_norm(w, ord=2))
    if input_shape is None:
        raise TorchRobustError("spectral_norm of a Conv2d needs input_shape=(C, H, W); the operator norm depends "
                               "on the input size")
    shape = tuple(int(s) for s in input_shape)
    return _operator_norm(lambda v: linear_part(layer, v, w),
                          lambda u: linear_adjoint(layer, u, shape, w), shape, n_iter, tol, w.device, seed)


def masked_spectral_norm(layer: nn.Module, mask: torch.Tensor, n_iter: int = 1000, tol: float = 1e-10,
                         seed: int = 0) -> float:
    """``sigma_max(W D)`` with ``D = diag(mask)`` over one example's input coordinates (Lemma 2's ``A'``).

    ``mask`` has the per-example input shape (``(F,)`` or ``(T, F)`` for Linear; ``(C, H, W)`` for Conv2d).
    Linear: exact, ``max_t sigma_max(W[:, mask_t])`` over token rows. Conv2d: power iteration of
    ``D W^T W D``.
    """
    layer = _check_layer(layer)
    w = layer.weight.detach().double()
    m = mask.detach().to(device=w.device, dtype=torch.bool)
    if isinstance(layer, nn.Linear):
        rows = m.reshape(-1, m.shape[-1])
        best = 0.0
        for pattern in torch.unique(rows, dim=0):
            if pattern.any():
                best = max(best, float(torch.linalg.matrix_norm(w[:, pattern], ord=2)))
        return best
    shape = tuple(m.shape)
    md = m.to(torch.float64).unsqueeze(0)
    return _operator_norm(lambda v: linear_part(layer, v * md, w),
                          lambda u: linear_adjoint(layer, u, shape, w) * md, shape, n_iter, tol, w.device, seed,
                          mask=md)


def gershgorin_bound(layer: nn.Module, mask: torch.Tensor | None = None) -> float:
    """Gershgorin bound ``max_i (a_ii d_i + sum_{j != i} |a_ij| d_j)`` on ``lambda_max(A D)``, ``A = W^T W``.

    The quantity the paper's proof of Lemma 2 shrinks (Theorem 1, Eq. 12). Linear layers only (for a Conv2d
    ``A`` is too large to form); ``mask`` is ``(F,)`` or ``(T, F)`` (max over token rows), ``None`` = all kept.
    """
    layer = _check_layer(layer)
    if not isinstance(layer, nn.Linear):
        raise TorchRobustError("gershgorin_bound needs an nn.Linear layer (A = W^T W is not formed for convs)")
    w = layer.weight.detach().double()
    a = w.T @ w
    if mask is None:
        rows = torch.ones(1, a.shape[0], dtype=torch.bool, device=a.device)
    else:
        rows = mask.detach().to(a.device, torch.bool).reshape(-1, a.shape[0])
    absa = a.abs()
    diag = torch.diagonal(a)
    best = -math.inf
    for pattern in torch.unique(rows, dim=0):
        d = pattern.to(a.dtype)
        # row i of A D: diagonal a_ii d_i, off-diagonal |a_ij| d_j
        radius = absa @ d - diag.abs() * d
        best = max(best, float((diag * d + radius).max()))
    return best


# ---------------------------------------------------------------------------------------------- data level
def _ratios(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-example ``||W x|| / ||x||`` (NaN where ``x = 0``)."""
    with torch.no_grad():
        xd = x.detach().double()
        wx = linear_part(layer, xd, layer.weight.detach().double())
        num = wx.flatten(1).norm(dim=1)
        den = xd.flatten(1).norm(dim=1)
        return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(den, math.nan))


def _nanmax(t: torch.Tensor) -> float:
    t = t[~torch.isnan(t)]
    return float(t.max()) if t.numel() else math.nan


def _iter_x(data: Any, n: int | None, batch_size: int) -> Iterator[torch.Tensor]:
    from torchrobust.forging.calibration import calibration_batches

    batches, _ = calibration_batches(data, batch_size, None)
    seen = 0
    for x in batches:
        if n is not None:
            if seen >= n:
                break
            x = x[: n - seen]
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise TorchRobustError("data contains NaN or inf; every ratio would be NaN and silently skipped: clean it")
        seen += x.shape[0]
        yield x


@dataclass
class _LayerStats:
    name: str
    layer: nn.Module
    forged: Forged | None
    input_shape: tuple[int, ...] | None = None
    before: list[torch.Tensor] = field(default_factory=list)
    after: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    nonzero: list[torch.Tensor] = field(default_factory=list)
    zeroed: int = 0
    total: int = 0


def _targets(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module, Forged | None]]:
    out: list[tuple[str, nn.Module, Forged | None]] = []
    mods = dict(model.named_modules())
    if layers is None:
        for name, m in mods.items():
            if isinstance(m, PreForged):
                out.append((name, m.layer, m.forged))
        if not out:
            raise TorchRobustError("the model has no forged layers; pass layers=[...] (Linear/Conv2d names) or "
                                   "forge it first")
        return out
    for name in layers:
        m = mods.get(name)
        if isinstance(m, PreForged):
            out.append((name, m.layer, m.forged))
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            out.append((name, m, None))
        else:
            raise TorchRobustError(f"layer {name!r} is not a Linear/Conv2d (or forged) layer of the model")
    return out


def empirical_lipschitz(
    model: nn.Module,
    data: Any,
    layers: Sequence[str] | None = None,
    n: int | None = 512,
    batch_size: int = 128,
    lemma2_samples: int = 4,
    n_iter: int = 1000,
    tol: float = 1e-10,
    rtol: float = 1e-4,
) -> list[dict[str, Any]]:
    """Per-layer Definition 1 before/after forging, ``sigma_max(W)``, and the Lemma 2 check on observed data.

    Args:
        model: a forged model (``layers=None`` uses every forged layer) or any model with ``layers`` given.
        data: inputs (tensor, ``(x, y)``, Dataset or DataLoader); the first ``n`` examples are used.
        lemma2_samples: examples per layer for the exact masked-norm check (power iteration per example for
            convolutions, so keep it small for big models).
        rtol: relative tolerance of the Lemma 2 comparison (power iteration converges from below).

    Returns one dict per layer: ``name``, ``kind``, ``input_shape``, ``sigma_max``, ``emp_before``,
    ``emp_after``, ``emp_reduced``, ``masked_sigma_before``, ``masked_sigma_max``, ``lemma2_holds``,
    ``gershgorin_full`` (unmasked ``A``), ``gershgorin_before``, ``gershgorin_after`` (linear layers; NaN for
    convs), ``zero_fraction`` (fraction of input entries zeroed by the threshold that were not already 0).
    """
    targets = _targets(model, layers)
    stats = [_LayerStats(name, layer, forged) for name, layer, forged in targets]
    handles = []

    def pre_hook(st: _LayerStats) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0]
            if st.input_shape is None:
                st.input_shape = tuple(x.shape[1:])
            st.before.append(_ratios(st.layer, x).cpu())
            if st.forged is not None:
                kept = st.forged.keep_mask(x)
                fx = x * kept
                st.after.append(_ratios(st.layer, fx).cpu())
                st.zeroed += int(((~kept) & (x != 0)).sum())
                st.total += x.numel()
                take = lemma2_samples - sum(mk.shape[0] for mk in st.masks)
                if take > 0:
                    st.masks.append(kept[:take].cpu())
                    st.nonzero.append((x[:take] != 0).cpu())

        return hook

    for st, (name, _, _) in zip(stats, targets, strict=True):
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(pre_hook(st)))
    device = model_device(model)
    try:
        with eval_mode(model), torch.no_grad():  # every submodule's train/eval flag restored afterwards
            for x in _iter_x(data, n, batch_size):
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()

    rows: list[dict[str, Any]] = []
    for st in stats:
        if st.input_shape is None:
            raise TorchRobustError(f"layer {st.name!r} was not reached by the forward pass; check the data")
        sigma = spectral_norm(st.layer, st.input_shape, n_iter=n_iter, tol=tol)
        before = _nanmax(torch.cat(st.before))
        after = _nanmax(torch.cat(st.after)) if st.after else math.nan
        masked = masked_before = math.nan
        g_before = g_after = g_full = math.nan
        is_linear = isinstance(st.layer, nn.Linear)
        if is_linear:
            g_full = gershgorin_bound(st.layer)
        if st.masks:
            masks, nonzero = torch.cat(st.masks), torch.cat(st.nonzero)
            masked = max(masked_spectral_norm(st.layer, mk, n_iter=n_iter, tol=tol, seed=i)
                         for i, mk in enumerate(masks))
            masked_before = max(masked_spectral_norm(st.layer, mk, n_iter=n_iter, tol=tol, seed=i)
                                for i, mk in enumerate(nonzero))
            if is_linear:
                g_before = max(gershgorin_bound(st.layer, mk) for mk in nonzero)
                g_after = max(gershgorin_bound(st.layer, mk) for mk in masks)
        rows.append({
            "name": st.name,
            "kind": "linear" if is_linear else "conv",
            "input_shape": list(st.input_shape),
            "sigma_max": sigma,
            "emp_before": before,
            "emp_after": after,
            "emp_reduced": bool(after <= before) if not math.isnan(after) else None,
            "masked_sigma_before": masked_before,
            "masked_sigma_max": masked,
            "lemma2_holds": bool(masked <= masked_before * (1 + rtol) + 1e-12
                                 and masked_before <= sigma * (1 + rtol) + 1e-12) if not math.isnan(masked) else None,
            "gershgorin_full": g_full,
            "gershgorin_before": g_before,
            "gershgorin_after": g_after,
            "zero_fraction": st.zeroed / st.total if st.total else math.nan,
        })
    return rows


# ---------------------------------------------------------------------------------------------- network level
def local_lipschitz(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Per-example local estimate ``||f(x_adv) - f(x)||_2 / ||x_adv - x||_2`` on logits (NaN where equal)."""
    if x.shape != x_adv.shape:
        raise TorchRobustError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and "
                               f"{tuple(x_adv.shape)}")
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(x_adv).all())):
        raise TorchRobustError("x or x_adv contains NaN or inf; clean the inputs (NaN ratios would be dropped)")
    with torch.no_grad():
        d_out = (model(x_adv) - model(x)).double().flatten(1).norm(dim=1)
        d_in = (x_adv - x).double().flatten(1).norm(dim=1)
    return torch.where(d_in > 0, d_out / d_in.clamp_min(1e-300), torch.full_like(d_in, math.nan)).cpu()


@contextmanager
def _c_r_zero(model: nn.Module) -> Iterator[None]:
    mods = [m for m in model.modules() if isinstance(m, Forged)]
    saved = [m.c_r_value for m in mods]
    try:
        for m in mods:
            m.set_c_r(0.0)
        yield
    finally:
        for m, c in zip(mods, saved, strict=True):
            m.set_c_r(c)


def _network_row(label: str, ratios: torch.Tensor) -> dict[str, Any]:
    r = ratios[~torch.isnan(ratios)]
    return {"model": label, "n": int(r.numel()),
            "max": float(r.max()) if r.numel() else math.nan,
            "mean": float(r.mean()) if r.numel() else math.nan,
            "median": float(r.median()) if r.numel() else math.nan}


@dataclass
class LipschitzReport:
    """Per-layer and network-level Lipschitz estimates of a forged model (see the module docstring)."""

    layers: list[dict[str, Any]]
    network: list[dict[str, Any]]
    c_r: float | None = None

    @property
    def lemma2_holds(self) -> bool:
        """Whether ``sigma_max(W D_x) <= sigma_max(W)`` held for every checked layer and example."""
        return all(r["lemma2_holds"] is not False for r in self.layers)

    def layer_table(self) -> Table:
        """The per-layer table (:class:`torchrobust.tables.Table`; ``zero_fraction`` a ``PERCENT``)."""
        f = ColumnKind.FLOAT
        cols = [Column("name", ColumnKind.TEXT, label="layer"), Column("kind", ColumnKind.TEXT),
                Column("sigma_max", f, label="σ_max(W)"), Column("emp_before", f, label="emp. before"),
                Column("emp_after", f, label="emp. after"), Column("emp_reduced", f, label="reduced"),
                Column("masked_sigma_before", f, label="max σ(W D_x≠0)"),
                Column("masked_sigma_max", f, label="max σ(W D_forged)"),
                Column("lemma2_holds", ColumnKind.BOOL, label="Lemma 2", bools=("yes", "NO")),
                Column("gershgorin_full", f, label="Gershgorin A"),
                Column("gershgorin_before", f, label="Gershgorin x≠0"),
                Column("gershgorin_after", f, label="Gershgorin forged"),
                Column("zero_fraction", ColumnKind.PERCENT, label="zeroed %")]
        return Table(cols, self.layers, title="Per-layer Lipschitz estimates")

    def network_table(self) -> Table:
        """The network-level table: empirical ratios ‖Δlogits‖/‖δ‖ of attack perturbations per model."""
        f = ColumnKind.FLOAT
        cols = [Column("model", ColumnKind.TEXT, label="network (logits, attack δ)"), Column("n", ColumnKind.INT),
                Column("max", f), Column("mean", f), Column("median", f)]
        return Table(cols, self.network, title="Network-level empirical Lipschitz ratios")

    def to_markdown(self) -> str:
        """Both tables as GitHub Markdown."""
        md = self.layer_table().markdown_grid()
        return md + ("\n" + self.network_table().markdown_grid() if self.network else "")

    def to_csv(self) -> str:
        """The per-layer table as CSV (a missing value is an empty cell)."""
        return self.layer_table().to_csv()

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN as ``null``; ``columns``: the schemas of the two tables)."""
        return {"c_r": self.c_r, "lemma2_holds": self.lemma2_holds, "layers": json_safe(self.layers),
                "network": json_safe(self.network),
                "columns": {"layers": self.layer_table().schema(), "network": self.network_table().schema()}}

    def write(self, out_dir: str | os.PathLike[str], stem: str = "lipschitz") -> dict[str, Path]:
        """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` into ``out_dir``."""
        from torchrobust.io import write_texts

        return write_texts(out_dir, stem, {"md": self.to_markdown(), "csv": self.to_csv(),
                                           "json": json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n"})


def lipschitz_report(
    model: nn.Module,
    data: Any,
    labels: torch.Tensor | None = None,
    attack: Callable[..., torch.Tensor] | None = None,
    n: int | None = 512,
    n_attack: int = 256,
    batch_size: int = 128,
    lemma2_samples: int = 4,
) -> LipschitzReport:
    """Per-layer :func:`empirical_lipschitz` plus, when ``attack`` and ``labels`` are given, the network-level
    :func:`local_lipschitz` on the first ``n_attack`` examples for the forged model and for ``c_r = 0``.

    ``data`` must then be a tensor of inputs aligned with ``labels``. The attack is run separately on each
    configuration (each gets its own worst-case ``delta``), on every example, as one job of the evaluation engine
    (``keep_adv``, ``all_points``; its points budget-checked against the attack's own threat model).
    """
    layers = empirical_lipschitz(model, data, n=n, batch_size=batch_size, lemma2_samples=lemma2_samples)
    network: list[dict[str, Any]] = []
    c_r_values = sorted({m.c_r_value for m in model.modules() if isinstance(m, Forged)})
    if attack is not None:
        if labels is None or not isinstance(data, torch.Tensor):
            raise TorchRobustError("the network-level estimate needs data as a tensor and labels=...")
        device = model_device(model)
        x, y = data[:n_attack], labels[:n_attack]
        # every point is attacked (clean errors too) and kept: one engine job with keep_adv and all_points
        job = job_for_attack(attack, name="lipschitz", keep_adv=True, all_points=True)

        def run() -> torch.Tensor:
            x_adv = run_plan(model, x, y, [job], batch_size=batch_size).adv[job.key]
            return torch.cat([local_lipschitz(model, x[i:i + batch_size].to(device),
                                              x_adv[i:i + batch_size].to(device))
                              for i in range(0, x.shape[0], batch_size)])

        with eval_mode(model):  # every submodule's train/eval flag restored afterwards
            with _c_r_zero(model):
                network.append(_network_row("unforged (c_r = 0)", run()))
            label = "forged" + (f" (c_r = {c_r_values[0]:g})" if len(c_r_values) == 1 else "")
            network.append(_network_row(label, run()))
    return LipschitzReport(layers=layers, network=network,
                           c_r=c_r_values[0] if len(c_r_values) == 1 else None)
