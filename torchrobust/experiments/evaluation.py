"""Checkpoint-to-results workflows of the evaluation: ``torchrobust evaluate CHECKPOINT`` and
``torchrobust certify CHECKPOINT``.

Each loads a torchrobust checkpoint (:func:`torchrobust.checkpoint.load`) and the first ``n_examples`` of a
dataset split (:func:`torchrobust.data.load`), then writes a results folder:
:func:`evaluate_checkpoint` with :func:`torchrobust.evaluate.suite.evaluate_to_dir` (an ε sweep or the adaptive
suite; torchrun-able, resumable), :func:`certify_checkpoint` with
:func:`torchrobust.evaluate.certify.certify_to_dir` (randomized smoothing, Cohen et al. 2019, Algorithm CERTIFY).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["certify_checkpoint", "evaluate_checkpoint", "load_inputs"]


def load_inputs(checkpoint: str | os.PathLike[str], data: str, split: str = "test", *,
                data_root: str | os.PathLike[str] | None = None, n_examples: int | None = None,
                map_location: Any = "cpu") -> tuple[Any, Any, Any]:
    """The checkpoint's model and the first ``n_examples`` (all if None) of ``data``'s ``split`` as tensors."""
    from torchrobust import checkpoint as ckpt
    from torchrobust import data as datasets

    model = ckpt.load(checkpoint, map_location=map_location)
    x, y = datasets.as_tensors(datasets.load(data, split, root=data_root), n_examples)
    return model, x, y


def evaluate_checkpoint(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], suite: str = "sweep", *,
                        data: str = "mnist", split: str = "test", data_root: str | os.PathLike[str] | None = None,
                        n_examples: int | None = 1000, device: str | None = None, threat: str = "Linf",
                        eps: Sequence[float] = (0.0, 0.1, 0.2, 0.3), attacks: Sequence[str] | None = None,
                        attack_kwargs: dict[str, dict[str, Any]] | None = None, steps: int | None = None,
                        restarts: int | None = None, batch_size: int = 500, seed: int = 0, checks: bool = False,
                        progress: bool = True) -> dict[str, Path] | None:
    """``torchrobust evaluate CHECKPOINT``: join the torchrun process group if launched by torchrun
    (:func:`torchrobust.distributed.init_from_env`), load the checkpoint onto this rank's device and the data
    (:func:`load_inputs`), and run :func:`~torchrobust.evaluate.suite.evaluate_to_dir` into ``out_dir`` with the
    checkpoint path, dataset and split recorded in the configuration (and so in the resume fingerprint).
    ``attacks`` None: the sweep's default attacks. Returns ``evaluate_to_dir``'s paths on the main process, None on
    the other ranks."""
    from torchrobust import distributed
    from torchrobust.evaluate.suite import DEFAULT_ATTACKS, evaluate_to_dir

    distributed.init_from_env(device)
    dev = distributed.device_for_rank(device)
    model, x, y = load_inputs(checkpoint, data, split, data_root=data_root, n_examples=n_examples, map_location=dev)
    return evaluate_to_dir(model, x.to(dev), y.to(dev), out_dir, suite, threat=threat, eps=eps,
                           attacks=DEFAULT_ATTACKS if attacks is None else attacks, attack_kwargs=attack_kwargs,
                           steps=steps, restarts=restarts, batch_size=batch_size, seed=seed, checks=checks,
                           progress=progress, config={"checkpoint": str(checkpoint), "data": data, "split": split})


def certify_checkpoint(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, data: str = "mnist",
                       split: str = "test", data_root: str | os.PathLike[str] | None = None,
                       n_examples: int | None = 100, sigma: float = 0.25, n0: int = 100, n: int = 10_000,
                       alpha: float = 0.001, batch_size: int = 1000, seed: int = 0,
                       progress: bool = True) -> dict[str, object]:
    """``torchrobust certify CHECKPOINT``: load the checkpoint (on the CPU) and the data (:func:`load_inputs`) and
    run :func:`~torchrobust.evaluate.certify.certify_to_dir` (smoothing noise ``sigma``, ``n0`` selection and ``n``
    estimation samples, failure probability ``alpha``; Cohen et al. 2019, CERTIFY) into ``out_dir``. Returns its
    JSON document."""
    from torchrobust.evaluate.certify import certify_to_dir

    model, x, y = load_inputs(checkpoint, data, split, data_root=data_root, n_examples=n_examples)
    return certify_to_dir(model, x, y, out_dir, sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                          seed=seed, progress=progress, checkpoint=str(checkpoint))
