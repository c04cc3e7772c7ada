"""The data-driven Lipschitz defence (Chen, Chen, Chung & Lee, arXiv 2406.19622): forged thresholds, their c_r
search and the ``torchrobust forge`` checkpoint workflows, in one namespace.

=========================================  ==========================================================================
:mod:`torchrobust.forging.surgery`           insert and remove forged thresholds: :func:`forge`, :func:`unforge`,
                                           :func:`set_c_r`, :func:`insertion_points` (Sec. 3.3, Eq. 9)
:mod:`torchrobust.forging.calibration`       measure ``b`` (Eq. 13, Algorithm 1): :func:`calibrate`,
                                           :func:`forged_modules`, :func:`is_forged`, :func:`calibration_batches`
:mod:`torchrobust.forging.search`            the c_r search on the evaluation engine: :func:`search_c_r`,
                                           :class:`CrSearchResult`, :data:`DEFAULT_GRID`, :data:`CRITERIA`
:mod:`torchrobust.forging.checkpoint`        ``torchrobust forge CHECKPOINT [--search]``: :func:`forge_checkpoint`,
                                           :func:`search_checkpoint`
=========================================  ==========================================================================

The submodules sit at different layers (``docs/architecture.md``): surgery and calibration below the evaluation
engine and :mod:`torchrobust.checkpoint` (which use them), the search above the engine, the checkpoint workflows
above :mod:`torchrobust.checkpoint`. Modules below the search import the submodules, never this namespace.
The Lipschitz analysis of forged models is :mod:`torchrobust.evaluate.lipschitz`.
"""

from __future__ import annotations

from torchrobust.forging.calibration import (
    CalibrationData,
    calibrate,
    calibration_batches,
    forged_modules,
    is_forged,
    subset_tensors,
)
from torchrobust.forging.checkpoint import forge_checkpoint, search_checkpoint
from torchrobust.forging.search import CRITERIA, DEFAULT_GRID, CrSearchResult, search_c_r
from torchrobust.forging.surgery import Where, forge, insertion_points, set_c_r, unforge
from torchrobust.validation import model_device  # re-exported: forge offered it before validation did

__all__ = [
    "forge",
    "unforge",
    "calibrate",
    "set_c_r",
    "forged_modules",
    "is_forged",
    "insertion_points",
    "calibration_batches",
    "model_device",
    "subset_tensors",
    "DEFAULT_GRID",
    "CRITERIA",
    "CrSearchResult",
    "search_c_r",
    "forge_checkpoint",
    "search_checkpoint",
    "CalibrationData",
    "Where",
]
