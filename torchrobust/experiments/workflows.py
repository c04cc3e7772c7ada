"""Checkpoint-to-checkpoint workflows of the defences: ``torchrobust reprogram CHECKPOINT``.

:func:`reprogram_checkpoint` loads a torchrobust checkpoint (:func:`torchrobust.checkpoint.load`), applies NRPM
(:func:`torchrobust.reprogramming.reprogram`, paper Sec. 4, Algorithm 1; paradigm 1: fixed λ and K, no training) and
saves the result (:func:`torchrobust.checkpoint.save`) with its provenance in the metadata. The forged-threshold
counterparts are :func:`torchrobust.forging.forge_checkpoint` and :func:`torchrobust.forging.search_checkpoint`.
"""

from __future__ import annotations

import os
from numbers import Real
from pathlib import Path

from torchrobust.reprogramming import IRLS_EPS, LamSpec, LayerSpec
from torchrobust.validation import check_irls_eps, check_irls_steps, check_lam, check_output_file

__all__ = ["reprogram_checkpoint"]


def reprogram_checkpoint(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    lam: LamSpec = 0.5,
    K: int = 3,
    irls_eps: float = IRLS_EPS,
    layers: LayerSpec = None,
    overwrite: bool = False,
    map_location: str = "cpu",
) -> Path:
    """``torchrobust reprogram CHECKPOINT``: load a checkpoint, NRPM-reprogram it (paradigm 1), save the result.

    ``lam``, ``K``, ``irls_eps`` and ``layers`` are those of :func:`torchrobust.reprogramming.reprogram` (λ weighs the
    linear LPM term of Algorithm 1; K Newton-IRLS steps of Eq. (3); ``irls_eps`` the damping of the IRLS weights,
    Appendix Algorithm 2). The output path (refused if it exists, unless ``overwrite``) and the scalar arguments
    are checked before the checkpoint is read. The saved metadata records ``reprogrammed_from`` (``in_path``) and
    ``paradigm=1``; the model's spec records the surgery, so :func:`torchrobust.checkpoint.load` rebuilds it.
    Returns the written path.
    """
    from torchrobust import checkpoint
    from torchrobust.reprogramming import reprogram

    check_output_file(out_path, overwrite=overwrite, flag="output")
    if isinstance(lam, Real):
        check_lam(lam)
    check_irls_steps(K)
    check_irls_eps(irls_eps)
    model = checkpoint.load(in_path, map_location=map_location)
    robust = reprogram(model, lam=lam, K=K, irls_eps=irls_eps, layers=layers, inplace=True)
    return checkpoint.save(robust, out_path, reprogrammed_from=str(in_path), paradigm=1)
