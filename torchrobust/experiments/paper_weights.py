"""Load the reprogramming paper's released MNIST checkpoints into the zoo models (Hou et al., ICLR 2025).

The paper's public code (``chris-hzc/Robustness-Reprogramming``; layouts described in ``docs/reprogramming.md``,
"The paper's own weights", and ``docs/paper-code-facts.md``) ships two MNIST state_dicts, saved with
``torch.save(model.state_dict())``:

* ``mlp3_mnist_model.pth`` - the activation-free 784-256-64-10 MLP (``mnist_mlp.py``): keys ``fc{i}.weight``
  ``(out, in)``, ``fc{i}.bias`` and ``fc{i}.robust_sum.lmbd`` (a one-element λ per layer, the weight of the
  linear term in ``λ·z_LPM + (1-λ)·z_NRPM``, paper Algorithm 1). The same layout with one or two layers
  (784-10, 784-64-10) is the code's ``--num_linear 1|2``. Checkpoints its training loop writes
  (``epoch{N}.pth``) have the same keys, λ learned.
* ``lenet_mnist_model.pth`` - the PyTorch FGSM-tutorial LeNet (``mnist_lenet.py``): ``conv1`` 10×1×5×5,
  ``conv2`` 20×10×5×5, ``fc1`` 50×320, ``fc2`` 10×50, each with its bias. The code's ``RobustConv2d`` never adds
  the conv bias (also at λ = 1), so :func:`load_paper_weights` zeroes the two conv biases unless
  ``conv_bias=True`` - the paper's LeNet numbers are those of the bias-free convs.

Files are read with ``torch.load(weights_only=True)`` (or safetensors) through
:func:`torchrobust.checkpoint.load_state_dict_file`: a pickle that carries code is refused, never run. A wrong
layout, a missing or unexpected key, a wrong shape or a non-finite value is a one-line
:class:`~torchrobust.errors.TorchRobustError`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrobust.errors import TorchRobustError

__all__ = ["PaperWeights", "load_paper_weights", "reprogram_paper", "ARCHS"]

#: Architectures the paper's MNIST code releases weights for.
ARCHS: tuple[str, ...] = ("mlp", "lenet")

_LENET_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (10, 1, 5, 5), "conv1.bias": (10,), "conv2.weight": (20, 10, 5, 5), "conv2.bias": (20,),
    "fc1.weight": (50, 320), "fc1.bias": (50,), "fc2.weight": (10, 50), "fc2.bias": (10,),
}
_LAM_KEY = re.compile(r"^(?P<layer>[A-Za-z0-9_.]+)\.robust_sum\.(?:lmbd|beta)$")
_FC_KEY = re.compile(r"^fc(?P<i>[0-9]+)\.(?P<kind>weight|bias)$")


@dataclass
class PaperWeights:
    """A paper checkpoint mapped onto a zoo model.

    ``model``: the zoo ``mlp`` (activation-free) or ``lenet``, eval mode, ``torchrobust_spec`` set;
    ``lams``: the file's raw per-layer λ (``{layer: value}``, as stored: the code uses it raw in its paradigm-1
    evaluation and as ``sigmoid(λ)`` after its ``--paradigm 2`` training), ``None`` when the file has none;
    ``conv_bias``: whether LeNet's conv biases were kept; ``sha256``: of the file.
    """

    arch: str
    model: nn.Module
    lams: dict[str, float] | None
    path: str
    sha256: str
    conv_bias: bool = False

    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance (recorded by the presets)."""
        return {"path": self.path, "sha256": self.sha256, "arch": self.arch, "lams": self.lams,
                "conv_bias": self.conv_bias if self.arch == "lenet" else None}


def _split_lams(sd: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    rest: dict[str, torch.Tensor] = {}
    lams: dict[str, float] = {}
    for k, v in sd.items():
        m = _LAM_KEY.match(k)
        if m is None:
            rest[k] = v
            continue
        if v.numel() != 1:
            raise TorchRobustError(f"{path}: {k} holds {v.numel()} values, the paper code's λ is one number; "
                                   "pass an unmodified paper checkpoint")
        lams[m.group("layer")] = float(v.reshape(()).item())
    return rest, lams


def _check_finite(sd: dict[str, torch.Tensor], path: Path) -> None:
    for k, v in sd.items():
        if not v.is_floating_point():
            raise TorchRobustError(f"{path}: {k} has dtype {v.dtype}, expected floating point weights; "
                                   "pass an unmodified paper checkpoint")
        if not bool(torch.isfinite(v).all()):
            raise TorchRobustError(f"{path}: {k} holds NaN or Inf values; the checkpoint is damaged, re-download it")


def _mlp_widths(sd: dict[str, torch.Tensor], path: Path) -> list[int]:
    idx = set()
    for k in sd:
        m = _FC_KEY.match(k)
        if m is None:
            raise TorchRobustError(f"{path}: unexpected key {k!r} for the paper's MLP layout (fc1..fcN weight/bias, "
                                   "optional fcN.robust_sum.lmbd); pass mlp3_mnist_model.pth or a file in its layout")
        idx.add(int(m.group("i")))
    n = len(idx)
    if idx != set(range(1, n + 1)):
        raise TorchRobustError(f"{path}: MLP layers {sorted(idx)} are not fc1..fc{n} without gaps; "
                               "pass a file in the paper's fc1..fcN layout")
    widths, fan_in = [], 784
    for i in range(1, n + 1):
        for kind in ("weight", "bias"):
            if f"fc{i}.{kind}" not in sd:
                raise TorchRobustError(f"{path}: missing key 'fc{i}.{kind}' of the paper's MLP layout; "
                                       "pass a complete state_dict")
        w, b = sd[f"fc{i}.weight"], sd[f"fc{i}.bias"]
        if w.dim() != 2 or w.shape[1] != fan_in or tuple(b.shape) != (w.shape[0],):
            raise TorchRobustError(f"{path}: fc{i}.weight has shape {tuple(w.shape)} and fc{i}.bias "
                                   f"{tuple(b.shape)}; expected ({'out'}, {fan_in}) and (out,) in a 784-...-10 MLP")
        fan_in = int(w.shape[0])
        widths.append(fan_in)
    if widths[-1] != 10:
        raise TorchRobustError(f"{path}: the last layer fc{n} has {widths[-1]} outputs, the paper's MNIST MLP 10; "
                               "pass a 10-class checkpoint")
    return widths[:-1]


def _check_lenet(sd: dict[str, torch.Tensor], path: Path) -> None:
    missing = [k for k in _LENET_SHAPES if k not in sd]
    extra = sorted(k for k in sd if k not in _LENET_SHAPES)
    if missing or extra:
        what = (f"missing {', '.join(missing)}" if missing else "") + ("; " if missing and extra else "") + \
            (f"unexpected {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}" if extra else "")
        raise TorchRobustError(f"{path}: not the paper's LeNet layout ({what}); pass lenet_mnist_model.pth or a "
                               "file with conv1, conv2, fc1, fc2 weights and biases")
    for k, shape in _LENET_SHAPES.items():
        if tuple(sd[k].shape) != shape:
            raise TorchRobustError(f"{path}: {k} has shape {tuple(sd[k].shape)}, the paper's LeNet {shape}; "
                                   "pass lenet_mnist_model.pth or a file in its layout")


def _detect(sd: dict[str, torch.Tensor]) -> str | None:
    if any(k.startswith(("conv1.", "conv2.")) for k in sd):
        return "lenet"
    if any(_FC_KEY.match(k) for k in sd):
        return "mlp"
    return None


def load_paper_weights(path: str | Path, arch: str | None = None, *, conv_bias: bool = False) -> PaperWeights:
    """Read a paper checkpoint (``.pth``/``.pt`` via ``torch.load(weights_only=True)``, or ``.safetensors``).

    Args:
        path: the file.
        arch: ``"mlp"`` or ``"lenet"`` to insist on one layout; ``None`` infers it from the keys.
        conv_bias: LeNet only - keep the conv biases (``False``, the default, zeroes them as the paper code's
            ``RobustConv2d`` ignores them, so the model computes what the paper evaluated).

    Returns:
        :class:`PaperWeights` with the zoo model (strictly loaded, eval mode) and the file's λ values.
    """
    from torchrobust import models
    from torchrobust.checkpoint import load_state_dict_file

    if arch is not None and arch not in ARCHS:
        raise TorchRobustError(f"unknown paper architecture {arch!r}; valid: {', '.join(ARCHS)}")
    p = Path(path)
    raw = load_state_dict_file(p)  # weights_only=True / safetensors; one-line errors for unreadable files
    sd, lams = _split_lams({str(k): v for k, v in raw.items()}, p)
    _check_finite(sd, p)
    found = _detect(sd)
    if found is None:
        shown = ", ".join(sorted(sd)[:4]) or "no tensors"
        raise TorchRobustError(f"{p}: neither the paper's MLP (fc1..fcN) nor its LeNet (conv1, conv2, fc1, fc2) "
                               f"layout (keys: {shown}); pass mlp3_mnist_model.pth or lenet_mnist_model.pth")
    if arch is not None and found != arch:
        raise TorchRobustError(f"{p} holds the paper's {found} layout but {arch} is needed here; pass a {arch} "
                               "checkpoint")
    if found == "mlp":
        widths = _mlp_widths(sd, p)
        model = models.create("mlp", widths=widths, activation=None)
        layer_names = {f"fc{i + 1}" for i in range(len(widths) + 1)}
    else:
        _check_lenet(sd, p)
        model = models.create("lenet")
        layer_names = {"conv1", "conv2", "fc1", "fc2"}
        if not conv_bias:
            sd = dict(sd)
            sd["conv1.bias"] = torch.zeros_like(sd["conv1.bias"])
            sd["conv2.bias"] = torch.zeros_like(sd["conv2.bias"])
    bad = sorted(k for k in lams if k not in layer_names)
    if bad:
        raise TorchRobustError(f"{p}: λ key(s) for unknown layer(s) {', '.join(bad)}; pass an unmodified paper "
                               "checkpoint")
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    model.eval()
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    return PaperWeights(arch=found, model=model, lams=dict(sorted(lams.items())) or None, path=str(p),
                        sha256=digest, conv_bias=bool(conv_bias))


def reprogram_paper(pw: PaperWeights, *, K: int, irls_eps: float, lam: float | dict[str, float] | None = None,
                    lam_transform: str = "raw", backend: str = "auto") -> nn.Module:
    """The paper code's NRPM model from a loaded checkpoint: the NRPM layers of the paper's code (every MLP
    linear; LeNet's two convs) with λ from the file (``lam=None``) or given, on an independent copy.

    ``lam_transform``: ``"raw"`` (λ as stored, the code's paradigm-1 evaluation; a stored λ outside [0, 1] is
    refused, since it may be a ``--paradigm 2`` logit), ``"sigmoid"`` (``sigmoid(λ)``, the code's
    ``--paradigm 2``) or ``"unbounded"`` (λ as stored even outside [0, 1], used as-is through the layers'
    ``lam_parametrization="raw"``: what the code's ``--paradigm 1`` does with a λ it trained out of [0, 1]).
    ``K``, ``irls_eps``: the IRLS steps and ε of paper Algorithm 2 (the code: K = 1; ε 5e-5 for the MLP, 1e-3 for
    LeNet).
    """
    from torchrobust.reprogramming import reprogram

    if lam_transform not in ("raw", "sigmoid", "unbounded"):
        raise TorchRobustError(f"unknown lam_transform {lam_transform!r}; valid: raw, sigmoid, unbounded")
    layers = ["conv1", "conv2"] if pw.arch == "lenet" else [n for n, m in pw.model.named_modules()
                                                           if isinstance(m, nn.Linear)]
    if lam is None:
        if not pw.lams:
            raise TorchRobustError(f"{pw.path} stores no λ; pass lam= (e.g. 0.5)")
        given = {k: v for k, v in pw.lams.items() if k in layers}
        missing = [n for n in layers if n not in given]
        if missing:
            raise TorchRobustError(f"{pw.path} stores no λ for {', '.join(missing)}; pass lam=")
        if lam_transform == "sigmoid":
            given = {k: 1.0 / (1.0 + math.exp(-v)) for k, v in given.items()}
        bad = {k: v for k, v in given.items() if not 0.0 <= v <= 1.0}
        if bad and lam_transform == "raw":
            raise TorchRobustError(f"{pw.path}: raw λ {bad} outside [0, 1]; pass lam_transform='sigmoid' (the "
                                   "code's paradigm-2 checkpoints), 'unbounded' (paradigm 1: λ used as-is) or lam=")
        lam_spec: float | dict[str, float] = {n: given[n] for n in layers}
    else:
        lam_spec = {n: lam for n in layers} if isinstance(lam, (int, float)) else dict(lam)
    param = "raw" if lam_transform == "unbounded" else "clamp"
    return reprogram(copy.deepcopy(pw.model), lam=lam_spec, K=K, irls_eps=irls_eps, inplace=True,
                     backend=backend, lam_parametrization=param).eval()
