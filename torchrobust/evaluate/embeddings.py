"""Hidden-embedding analysis: how far an adversarial perturbation moves each layer's output.

Reproduces the analysis of Hou et al., *Robustness Reprogramming for Representation Learning* (ICLR 2025),
Sec. 5.3: Table 3 (norms of the difference between clean and attacked embeddings, per layer, averaged over
examples) and Figure 5 / Figure 11 (one example's hidden embeddings, clean vs attacked, and the predicted class
probabilities).

The embeddings are the outputs of the model's pattern-matching layers - every ``nn.Linear``, ``nn.Conv2d`` and
NRPM layer, in ``named_modules()`` order (for the paper's LeNet: ``z1..z4`` = conv1, conv2, fc1, fc2) - captured
with forward hooks, i.e. before any activation that follows them.

Note on the paper's "ℓ2" column: in Table 3 the input row reads ``||x - x'||_1 = 93.21``,
``||·||_2 = 27.54``, ``||·||_∞ = 0.30`` for ε = 0.3 on 784-pixel MNIST images. A 784-vector with entries of
magnitude <= 0.3 has an ℓ2 norm of at most 0.3·28 = 8.4, so the paper's column is the **squared** ℓ2 norm
(≈ 0.3 · 93.21 = 27.96 when most perturbed pixels move by the full 0.3). We report both: ``l2`` (the norm) and
``l2_sq`` (comparable with the paper's column).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.io import atomic_write_bytes
from torchrobust.validation import eval_mode, model_device

__all__ = ["embedding_layers", "record_embeddings", "embedding_differences", "plot_embeddings"]

logger = logging.getLogger(__name__)


def _is_pattern_layer(m: nn.Module) -> bool:
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        return True
    try:
        from torchrobust.nn import NRPMConv2d, NRPMLinear
    except ImportError:  # pragma: no cover - the NRPM layers are part of the package
        return False
    return isinstance(m, (NRPMLinear, NRPMConv2d))


def embedding_layers(model: nn.Module) -> list[str]:
    """Qualified names of the model's pattern-matching layers (Linear, Conv2d, NRPM), in forward-definition order."""
    names = [name for name, m in model.named_modules() if name and _is_pattern_layer(m)]
    # an NRPM layer may keep its original layer as a registered child; report the outer one only
    return [n for n in names if not any(n.startswith(p + ".") for p in names)]


def _resolve(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    if layers is None:
        names = embedding_layers(model)
        if not names:
            raise TorchRobustError("model has no Linear/Conv2d/NRPM layer to record; pass layers=[names]")
        return names
    modules = dict(model.named_modules())
    for n in layers:
        if n not in modules:
            valid = ", ".join(embedding_layers(model)[:6])
            raise TorchRobustError(f"no layer named {n!r} in the model; valid names include: {valid}")
    return list(layers)


@torch.no_grad()
def record_embeddings(
    model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run ``model(x)`` in eval mode and return ``({layer name: output}, logits)`` (outputs detached).

    Every submodule's train/eval flag is restored afterwards.
    """
    names = _resolve(model, layers)
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    handles = []
    for n in names:
        def hook(_m: nn.Module, _inp: object, output: torch.Tensor, n: str = n) -> None:
            out[n] = output.detach()
        handles.append(modules[n].register_forward_hook(hook))
    dev = model_device(model, x.device)
    try:
        with eval_mode(model):
            logits = model(x.to(dev))
    finally:
        for h in handles:
            h.remove()
    return {n: out[n] for n in names if n in out}, logits.detach()


def embedding_differences(
    model: nn.Module,
    x_clean: torch.Tensor,
    x_adv: torch.Tensor,
    layers: Sequence[str] | None = None,
    include_input: bool = True,
    batch_size: int = 256,
) -> list[dict[str, float | str | int]]:
    """Per-layer embedding difference between clean and adversarial inputs (paper Table 3).

    For every example ``i`` and layer ``l`` the difference ``d = z_l(x_i) - z_l(x'_i)`` is flattened and its
    ℓ1, ℓ2, squared ℓ2 (the paper's "ℓ2" column, see the module docs) and ℓ∞ norms are taken; each row
    reports their mean over the examples.

    Returns rows ``{"label": "x" | "z1" | ..., "layer": name, "l1", "l2", "l2_sq", "linf", "n"}``; the first
    row is the input difference ``|x - x'|`` when ``include_input``.
    """
    if x_clean.shape != x_adv.shape:
        raise TorchRobustError(
            f"x_clean has shape {tuple(x_clean.shape)} but x_adv {tuple(x_adv.shape)}; pass matching batches"
        )
    if x_clean.shape[0] == 0:
        raise TorchRobustError("x_clean is empty; pass at least one example")
    names = _resolve(model, layers)
    keys = (["x"] if include_input else []) + names
    sums = {k: torch.zeros(4, dtype=torch.float64) for k in keys}
    n_total = 0
    for start in range(0, x_clean.shape[0], batch_size):
        xc = x_clean[start : start + batch_size]
        xa = x_adv[start : start + batch_size]
        ec, _ = record_embeddings(model, xc, names)
        ea, _ = record_embeddings(model, xa, names)
        if include_input:
            ec["x"], ea["x"] = xc, xa.to(xc.device)
        for k in keys:
            d = (ec[k] - ea[k].to(ec[k].device)).flatten(1).double()
            l2 = d.norm(p=2, dim=1)
            stats = torch.stack(
                [d.abs().sum(1), l2, l2.square(), d.abs().amax(1) if d.shape[1] else torch.zeros_like(l2)]
            )
            sums[k] += stats.sum(1).cpu()
        n_total += xc.shape[0]
    rows: list[dict[str, float | str | int]] = []
    for i, k in enumerate(keys):
        mean = (sums[k] / n_total).tolist()
        label = "x" if k == "x" else f"z{i + (0 if include_input else 1)}"
        rows.append(
            {"label": label, "layer": "input" if k == "x" else k, "l1": mean[0], "l2": mean[1],
             "l2_sq": mean[2], "linf": mean[3], "n": n_total}
        )
    return rows


def _squeeze_channel(t: torch.Tensor) -> torch.Tensor:
    return t[0] if t.dim() == 3 and t.shape[0] == 1 else t


def _as_image(t: torch.Tensor) -> torch.Tensor:
    """A 2-D array to show for one example's embedding: C×H×W → channel mosaic, vector → near-square grid."""
    t = t.detach().float().cpu()
    if t.dim() == 3:
        c, h, w = t.shape
        cols = int(torch.ceil(torch.sqrt(torch.tensor(float(c)))).item())
        rows = (c + cols - 1) // cols
        canvas = torch.full((rows * (h + 1) - 1, cols * (w + 1) - 1), float("nan"))
        for i in range(c):
            r, q = divmod(i, cols)
            canvas[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = t[i]
        return canvas
    v = t.flatten()
    cols = int(torch.ceil(torch.sqrt(torch.tensor(float(v.numel())))).item())
    rows = (v.numel() + cols - 1) // cols
    pad = torch.full((rows * cols,), float("nan"))
    pad[: v.numel()] = v
    return pad.view(rows, cols)


def plot_embeddings(
    model: nn.Module,
    x_clean: torch.Tensor,
    x_adv: torch.Tensor,
    path: str | Path,
    layers: Sequence[str] | None = None,
    index: int = 0,
    title: str | None = None,
) -> Path:
    """Save a PNG of one example's hidden embeddings, clean (top row) vs attacked (bottom row) (paper Figure 5).

    Columns: the input, each recorded layer's output (conv outputs as a channel mosaic, vectors as a grid;
    both rows of a column share one colour scale) and the predicted class probabilities. Returns the path.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    if not 0 <= index < x_clean.shape[0]:
        raise TorchRobustError(
            f"index={index} is outside the batch of {x_clean.shape[0]}; pick 0..{x_clean.shape[0] - 1}"
        )
    xc, xa = x_clean[index : index + 1], x_adv[index : index + 1]
    names = _resolve(model, layers)
    ec, lc = record_embeddings(model, xc, names)
    ea, la = record_embeddings(model, xa, names)
    cols = [("x", xc[0], xa[0])] + [(f"z{i + 1}: {n}", ec[n][0], ea[n][0]) for i, n in enumerate(names)]
    ncol = len(cols) + 1
    fig = Figure(figsize=(2.2 * ncol, 4.6))
    axes = fig.subplots(2, ncol, squeeze=False)
    for j, (label, a, b) in enumerate(cols):
        ia, ib = _as_image(_squeeze_channel(a)), _as_image(_squeeze_channel(b))
        finite = torch.cat([ia[~ia.isnan()], ib[~ib.isnan()]])
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
        for r, img in enumerate((ia, ib)):
            ax = axes[r][j]
            ax.imshow(img.numpy(), cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=8)
    pc, pa = lc.softmax(-1)[0].cpu(), la.softmax(-1)[0].cpu()
    for r, (p, tag) in enumerate(((pc, "clean"), (pa, "attacked"))):
        ax = axes[r][ncol - 1]
        ax.bar(range(p.numel()), p.numpy(), color="tab:blue" if r == 0 else "tab:red")
        ax.set_ylim(0, 1)
        ax.set_title(f"{tag}: pred {int(p.argmax())}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("clean")
    axes[1][0].set_ylabel("attacked")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    buf = io.BytesIO()  # rendered in memory, then written atomically: no half-written figure on a crash
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    logger.info("embedding figure written to %s", path)
    return path
