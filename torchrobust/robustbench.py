"""Load RobustBench WideResNet checkpoints from a local file, without robustbench, timm or any download.

RobustBench (Croce et al. 2021) fetches weights from Google Drive at run time; torchrobust never downloads.
:func:`load_robustbench` reads a file you already have (``torch.load(weights_only=True)``, or safetensors) into
the zoo classes that reproduce RobustBench's key layouts:

* ``"wrn34_10"``, ``"wrn28_10"`` (and the generic ``"wideresnet"``): RobustBench's ``WideResNet``
  (``conv1``, ``block{1,2,3}.layer.i.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``), ReLU, **no
  normalisation** -- RobustBench's models of this class take raw [0, 1] input (e.g. Chen2021LTD_WRN34_10,
  Chen2024Data_WRN_34_10, Wu2020Adversarial_extra). Pass ``mean``/``std`` for one that was trained on
  normalised input; top-level ``mu``/``sigma`` (or ``mean``/``std``) tensors found in the file are used as such.
  A file containing RobustBench's unused ``sub_block1`` stage (CIFAR-100 Chen2021LTD_WRN34_10) is detected.
* ``"wrn70_16"`` (and the generic ``"wideresnet_dm"``): RobustBench's ``DMWideResNet`` (DeepMind layout:
  ``init_conv``, ``layer.g.block.i.{batchnorm_0,conv_0,batchnorm_1,conv_1,shortcut}``, ``batchnorm``,
  ``logits``) with SiLU/Swish, normalisation **inside** the model through the ``mean``/``std`` buffers. When the
  file lacks them, the constants RobustBench's model zoo passes for the dataset are used (CIFAR-10 mean
  (0.4914, 0.4822, 0.4465), std (0.2471, 0.2435, 0.2616); CIFAR-100 (0.5071, 0.4865, 0.4409) /
  (0.2673, 0.2564, 0.2762)).
* ``"auto"``: the layout, depth, width and ``sub_block1`` are read off the key names and weight shapes.

Wrappers ``{"state_dict": ...}``, ``{"model_state_dict": ...}``, ``{"model": ...}``, ``{"net": ...}`` and the
``module.`` / ``model.`` prefixes (DataParallel, RobustBench's Chen2020Efficient) are removed. Loading is strict:
a file that does not match the architecture raises :class:`~torchrobust.errors.TorchRobustError` naming the
first missing / unexpected key and the layout the file seems to have. The returned model is in eval mode, takes
[0, 1] input, and carries ``torchrobust_spec`` so it can be forged and saved with :func:`torchrobust.save`.

Checked against RobustBench itself (``pip install 'torchrobust[robustbench]'``; tests/test_robustbench.py): state dicts
of the package's own ``wide_resnet.WideResNet`` (with ``sub_block1`` and the zoo's ``mu``/``sigma`` buffers) and
``dm_wide_resnet.DMWideResNet`` (ReLU and its ``Swish``), saved plain, under ``state_dict`` and with ``module.`` keys,
load here with the same outputs (to float32 rounding, ~1e-7: the zoo pools with ``adaptive_avg_pool2d`` where
RobustBench calls ``avg_pool2d(·, 8)``; same predictions). RobustBench's classes can also serve instead of the zoo
copies: ``rb_model.load_state_dict(read_state_dict(path))`` takes any file this module reads (the copies stay: they
need no robustbench install and carry the structure hooks). ``preact_resnet18`` of the zoo is RobustBench's
``PreActResNet(PreActBlockV2, [2, 2, 2, 2])``; its ``PreActBlock`` variant (Wong2020Fast) and ``bn_before_fc``
models are other networks, not loaded here. ``import robustbench`` itself fails with current dependencies (its
``__init__`` imports ``autoattack``, which ``pyautoattack`` >= 0.2 installs as ``pyautoattack``, and
``pkg_resources``, gone from setuptools >= 81); import its architecture files one by one, as the tests do.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrobust.checkpoint import state_dict_mismatch
from torchrobust.errors import TorchRobustError

__all__ = ["load_robustbench", "read_state_dict", "infer_architecture", "ARCHS", "DATASETS", "DM_NORMALIZATION"]

log = logging.getLogger(__name__)

#: Architecture names accepted by :func:`load_robustbench` (zoo registry names, plus ``"auto"``).
ARCHS = ("auto", "wrn28_10", "wrn34_10", "wideresnet", "wrn70_16", "wideresnet_dm")
#: Dataset name -> number of classes.
DATASETS = {"cifar10": 10, "cifar100": 100}
#: Normalisation constants RobustBench's zoo passes to ``DMWideResNet`` (``dm_wide_resnet.py``).
DM_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_PREFIXES = ("module.", "model.")
_NORM_KEYS = (("mu", "sigma"), ("mean", "std"), ("normalize.mean", "normalize.std"))


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a local ``.pt``/``.pth``/``.safetensors`` file, unwrapping common containers.

    Uses ``torch.load(weights_only=True)``: no pickled code is ever executed.
    """
    path = Path(path)
    if not path.is_file():
        raise TorchRobustError(f"RobustBench checkpoint not found: {path}; download it yourself (torchrobust never "
                               "downloads) and pass its local path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is a problem with the user's file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TorchRobustError(f"cannot read {path} as a weights-only checkpoint ({first}); re-export it with "
                               "torch.save(model.state_dict(), path)") from None
    for _ in range(3):
        if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise TorchRobustError(f"{path} does not hold a state dict; expected a mapping of tensors, optionally "
                               "under 'state_dict' or 'model_state_dict'")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise TorchRobustError(f"{path} holds no tensors; expected a model state dict")
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def infer_architecture(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """Guess ``(registry name, kwargs)`` of a WideResNet state dict from its keys and shapes.

    Returns ``("wideresnet", {depth, widen_factor, sub_block1})`` for RobustBench's layout or
    ``("wideresnet_dm", {depth, widen_factor, activation: "silu"})`` for DeepMind's (whose activation cannot be
    read from the weights; SiLU is what the DM WRN-70-16 models use).
    """
    if "init_conv.weight" in state and "layer.0.block.0.conv_0.weight" in state:
        n = _count(state, r"layer\.0\.block\.(\d+)\.")
        width = state["layer.0.block.0.conv_0.weight"].shape[0] // 16
        return "wideresnet_dm", {"depth": 6 * n + 4, "widen_factor": int(width), "activation": "silu"}
    if "conv1.weight" in state and "block1.layer.0.conv1.weight" in state:
        n = _count(state, r"block1\.layer\.(\d+)\.")
        width = state["block1.layer.0.conv1.weight"].shape[0] // 16
        return "wideresnet", {"depth": 6 * n + 4, "widen_factor": int(width),
                              "sub_block1": any(k.startswith("sub_block1.") for k in state)}
    raise TorchRobustError("the checkpoint is neither RobustBench's WideResNet layout (conv1, block1.layer.*) nor "
                           "DeepMind's (init_conv, layer.*.block.*); load it into your own model instead")


def _describe(state: Mapping[str, torch.Tensor]) -> str:
    try:
        name, kw = infer_architecture(state)
    except TorchRobustError:
        return "an unknown layout"
    layout = "DeepMind (DMWideResNet)" if name == "wideresnet_dm" else "RobustBench WideResNet"
    return f"WRN-{kw['depth']}-{kw['widen_factor']} in the {layout} layout"


def _classes(state: Mapping[str, torch.Tensor]) -> int | None:
    for key in ("fc.weight", "logits.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def load_robustbench(
    path: str | os.PathLike[str],
    arch: str = "wrn34_10",
    dataset: str = "cifar10",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    map_location: str | torch.device = "cpu",
    **arch_kwargs: Any,
) -> nn.Module:
    """Build ``arch`` from the zoo and load a local RobustBench checkpoint into it (strictly).

    Args:
        path: local ``.pt``/``.pth``/``.safetensors`` file.
        arch: ``"wrn34_10"``, ``"wrn28_10"``, ``"wrn70_16"``, the generic ``"wideresnet"`` /
            ``"wideresnet_dm"`` (with ``depth=``, ``widen_factor=``, ... in ``arch_kwargs``), or ``"auto"``.
        dataset: ``"cifar10"`` or ``"cifar100"`` (number of classes; DM normalisation defaults).
        mean, std: input normalisation for a WideResNet trained on normalised input (default: none, or the
            ``mu``/``sigma`` stored in the file). For DM models they override the file's ``mean``/``std``.
        map_location: device of the returned model.
        arch_kwargs: extra constructor arguments (e.g. ``activation="relu"`` for a ReLU DM model).

    Returns:
        The model in eval mode, taking [0, 1] input.
    """
    from torchrobust import models

    if arch not in ARCHS:
        raise TorchRobustError(f"unknown RobustBench architecture {arch!r}; valid: {', '.join(ARCHS)}")
    if dataset not in DATASETS:
        raise TorchRobustError(f"unknown dataset {dataset!r} for RobustBench WideResNets; valid: "
                               f"{', '.join(DATASETS)}")
    state = read_state_dict(path)
    num_classes = DATASETS[dataset]
    found = _classes(state)
    if found is not None and found != num_classes:
        raise TorchRobustError(f"{path} has {found} output classes but dataset={dataset!r} has {num_classes}; "
                               "pass the dataset the model was trained on")
    kwargs = dict(arch_kwargs)
    name = arch
    if arch == "auto":
        name, inferred = infer_architecture(state)
        kwargs = {**inferred, **kwargs}
    is_dm = name in ("wrn70_16", "wideresnet_dm")

    if is_dm:
        if mean is not None or std is not None:
            if mean is None or std is None:
                raise TorchRobustError("pass both mean and std (or neither)")
            state["mean"] = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
            state["std"] = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        elif "mean" not in state or "std" not in state:
            m, s = DM_NORMALIZATION[dataset]
            log.info("%s has no mean/std buffers; using RobustBench's %s constants", path, dataset)
            state["mean"] = torch.tensor(m).view(-1, 1, 1)
            state["std"] = torch.tensor(s).view(-1, 1, 1)
    else:
        for mk, sk in _NORM_KEYS:
            if mk in state and sk in state:
                m_t, s_t = state.pop(mk), state.pop(sk)
                if mean is None and std is None:
                    mean = tuple(float(v) for v in m_t.flatten())
                    std = tuple(float(v) for v in s_t.flatten())
        if (mean is None) != (std is None):
            raise TorchRobustError("pass both mean and std (or neither)")
        if mean is not None:
            kwargs.update(mean=list(mean), std=list(std))  # type: ignore[arg-type]
    model = models.create(name, num_classes=num_classes, **kwargs)

    why = state_dict_mismatch(model, state)
    if why is not None:
        raise TorchRobustError(f"{path} does not match arch={arch!r} ({why}); the file looks like "
                               f"{_describe(state)} -- pass arch='auto' or the matching arch")
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()
