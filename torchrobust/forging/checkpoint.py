"""The ``torchrobust forge CHECKPOINT`` workflows: forge a saved checkpoint, or search its c_r, and save the result.

Both load a torchrobust checkpoint (:func:`torchrobust.checkpoint.load`), draw their calibration (and validation)
examples from the *training* split of a dataset with a seeded permutation, and save through
:func:`torchrobust.checkpoint.save` with the calibration set in the metadata. This module sits above
:mod:`torchrobust.checkpoint`, which itself uses :func:`torchrobust.forging.forge` to rebuild forged models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.forging.calibration import subset_tensors
from torchrobust.forging.search import DEFAULT_GRID, CrSearchResult, search_c_r
from torchrobust.forging.surgery import Where, forge
from torchrobust.nn.forged import check_c_r
from torchrobust.validation import check_output_file

__all__ = ["forge_checkpoint", "search_checkpoint"]


def _load_with_train_data(in_path: str | os.PathLike[str], data: str, n: int | None, seed: int,
                          root: str | os.PathLike[str] | None,
                          device: str | torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The checkpoint's model and ``n`` seeded training examples of ``data`` (all, in order, when ``None``)."""
    from torchrobust import checkpoint
    from torchrobust import data as trdata

    model = checkpoint.load(in_path, map_location=device)
    x, y = subset_tensors(trdata.load(data, "train", root=root), n, seed)
    return model, x, y


def forge_checkpoint(
    in_path: str | os.PathLike[str], out_path: str | os.PathLike[str], data: str = "mnist", c_r: float = 2**-7,
    n_calib: int | None = None, where: Where = None, per_channel: bool = False, batch_size: int = 256, seed: int = 0,
    root: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu", progress: bool = False,
) -> Path:
    """``torchrobust forge CHECKPOINT``: load a torchrobust checkpoint, forge it, save the result.

    Calibrates on ``n_calib`` random (seeded) examples of the *training* split of ``data`` (all of it when
    ``None``), unaugmented, and saves with :func:`torchrobust.checkpoint.save`; the metadata records the
    calibration set. Returns the written path.
    """
    from torchrobust import checkpoint

    c_r = check_c_r(c_r)
    check_output_file(out_path, overwrite=True, flag="output")
    model, x, _ = _load_with_train_data(in_path, data, n_calib, seed, root, device)
    forged = forge(model, x, c_r=c_r, where=where, inplace=True, per_channel=per_channel, batch_size=batch_size,
                   progress=progress)
    return checkpoint.save(forged, out_path, forged_from=str(in_path), calibration={
        "dataset": data, "split": "train", "n": int(x.shape[0]), "seed": seed})


def search_checkpoint(
    in_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    data: str = "mnist",
    grid: Sequence[float] = DEFAULT_GRID,
    n_calib: int | None = 10000,
    n_val: int = 1000,
    eps: float = 0.3,
    steps: int = 20,
    criterion: str = "max_robust_clean_drop",
    max_clean_drop: float = 1.0,
    bpda: bool = True,
    batch_size: int = 256,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    save_forged: bool = True,
    progress: bool = False,
) -> CrSearchResult:
    """``torchrobust forge CHECKPOINT --search``: c_r search on a checkpoint, tables + plot into ``out_dir``.

    Calibration uses ``n_calib`` training examples; the validation set is ``n_val`` further training examples
    (disjoint from the calibration ones, never the test set). The default attack is L-inf PGD with ``eps`` and
    ``steps``, its random start seeded with ``seed`` (which also draws the split). With ``save_forged`` the forged
    model at the chosen c_r is saved as ``out_dir/forged.safetensors``.
    """
    grid = [check_c_r(c) for c in grid]
    model, x, y = _load_with_train_data(in_path, data, None, seed, root, device)
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_cal = x.shape[0] - n_val if n_calib is None else n_calib
    if n_cal + n_val > x.shape[0]:
        raise TorchRobustError(f"n_calib + n_val = {n_cal + n_val} exceeds the {x.shape[0]} training examples; "
                               "lower them")
    cal, val = idx[:n_cal], idx[n_cal:n_cal + n_val]
    result = search_c_r(model, x[cal], x[val], y[val], grid=grid, criterion=criterion,
                        max_clean_drop=max_clean_drop, bpda=bpda, eps=eps, steps=steps, batch_size=batch_size,
                        out_dir=out_dir, progress=progress, seed=seed)
    if save_forged and result.model is not None:
        from torchrobust import checkpoint

        checkpoint.save(result.model, Path(out_dir) / "forged.safetensors", forged_from=str(in_path),
                        calibration={"dataset": data, "split": "train", "n": int(n_cal), "seed": seed},
                        c_r_search=result.to_json())
    return result
