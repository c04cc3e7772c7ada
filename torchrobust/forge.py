"""The data-driven Lipschitz defence (Chen, Chen, Chung & Lee, arXiv 2406.19622): forged thresholds, their c_r
search and the ``torchrobust forge`` checkpoint workflow, in one namespace.

The model surgery (:func:`forge`, :func:`calibrate`, :func:`set_c_r`, :func:`unforge`, insertion points; Sec. 3.3,
Eq. 9 and 13, Algorithm 1) lives in :mod:`torchrobust.forge_core`, the c_r search (:func:`search_c_r`,
:class:`CrSearchResult`, :data:`DEFAULT_GRID`, :func:`search_checkpoint`) in :mod:`torchrobust.forge_search`; both
are re-exported here. This module sits above both and above :mod:`torchrobust.checkpoint`, so nothing below it
imports it (see ``docs/architecture.md``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from torchrobust.forge_core import (
    CalibrationData,
    Where,
    calibrate,
    forge,
    forged_modules,
    insertion_points,
    is_forged,
    set_c_r,
    subset_tensors,
    unforge,
)
from torchrobust.forge_search import CRITERIA, DEFAULT_GRID, CrSearchResult, search_c_r, search_checkpoint
from torchrobust.nn.forged import check_c_r
from torchrobust.validation import check_output_file

__all__ = [
    "forge",
    "unforge",
    "calibrate",
    "set_c_r",
    "forged_modules",
    "is_forged",
    "insertion_points",
    "DEFAULT_GRID",
    "CRITERIA",
    "CrSearchResult",
    "search_c_r",
    "forge_checkpoint",
    "search_checkpoint",
    "CalibrationData",
    "Where",
]


def forge_checkpoint(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    data: str = "mnist",
    c_r: float = 2**-7,
    n_calib: int | None = None,
    where: Where = None,
    per_channel: bool = False,
    batch_size: int = 256,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Path:
    """``torchrobust forge CHECKPOINT``: load a torchrobust checkpoint, forge it, save the result.

    Calibrates on ``n_calib`` random (seeded) examples of the *training* split of ``data`` (all of it when
    ``None``), unaugmented, and saves with :func:`torchrobust.checkpoint.save`; the metadata records the
    calibration set. Returns the written path.
    """
    from torchrobust import checkpoint
    from torchrobust import data as trdata

    c_r = check_c_r(c_r)
    check_output_file(out_path, overwrite=True, flag="output")
    model = checkpoint.load(in_path, map_location=device)
    x, _ = subset_tensors(trdata.load(data, "train", root=root), n_calib, seed)
    forged = forge(model, x, c_r=c_r, where=where, inplace=True, per_channel=per_channel, batch_size=batch_size,
                   progress=progress)
    return checkpoint.save(forged, out_path, forged_from=str(in_path), calibration={
        "dataset": data, "split": "train", "n": int(x.shape[0]), "seed": seed})
