"""Train a zoo model into a checkpoint file, resumably (what ``torchrobust train`` runs).

The resume state is kept in ``checkpoint_dir`` (default ``<out>.resume/``) after every epoch and every
``TrainConfig.checkpoint_every`` steps, so ``resume=True`` continues a killed run bit for bit; it is removed once
the checkpoint is saved. Under torchrun every rank trains its shard; rank 0 saves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TorchRobustError
from . import distributed, resume
from .loop import TrainConfig, fit

__all__ = ["TrainedCheckpoint", "train_checkpoint"]


@dataclass
class TrainedCheckpoint:
    """What :func:`train_checkpoint` saved: the checkpoint ``path`` and the final metrics of the run."""

    path: Path
    final: dict[str, Any] = field(default_factory=dict)


def train_checkpoint(model_name: str, out: str | os.PathLike[str], config: TrainConfig, *,
                     model_kwargs: dict[str, Any] | None = None, data: str = "mnist", root: str | None = None,
                     n_train: int | None = None, validate: bool = True,
                     checkpoint_dir: str | os.PathLike[str] | None = None, resume_run: bool = False,
                     overwrite: bool = False, device: str | None = None) -> TrainedCheckpoint | None:
    """Create zoo model ``model_name``, :func:`~torchrobust.train.fit` it on the first ``n_train`` examples of
    ``data``'s training split (validation: the first 1000 test examples unless ``validate=False``), save it to
    ``out`` with the training configuration as metadata.

    Output paths and the resume state are checked before any work: ``out`` must not exist unless ``overwrite``;
    ``resume_run=True`` needs a resume state in ``checkpoint_dir`` and ``resume_run=False`` refuses one (delete it
    to start over). Returns the saved checkpoint on the main process, None on the other torchrun ranks.
    """
    import torch

    from .. import data as datasets
    from .. import models
    from ..checkpoint import save
    from ..validation import check_output_dir, check_output_file

    config.validate()
    path = check_output_file(out, overwrite=overwrite)
    ckdir = check_output_dir(checkpoint_dir or path.with_name(path.name + ".resume"), flag="--checkpoint-dir")
    if resume_run and not resume.has_state(ckdir):
        raise TorchRobustError(f"--resume: no resume state in {ckdir}; run without --resume to start training "
                               "(or pass the --checkpoint-dir of the interrupted run)")
    if not resume_run and resume.has_state(ckdir):
        raise TorchRobustError(f"{ckdir} holds the resume state of an interrupted run; add --resume to continue "
                               "it, or delete that folder to start over")
    distributed.init_from_env(device)
    dev = distributed.device_for_rank(device)
    x, y = datasets.as_tensors(datasets.load(data, "train", root=root), n_train)
    torch.manual_seed(config.seed)
    model = models.create(model_name, **(model_kwargs or {}))
    val = datasets.as_tensors(datasets.load(data, "test", root=root), 1000) if validate else None
    result = fit(model, (x, y), config, val_set=val, device=dev, checkpoint_dir=ckdir,
                 resume_from=ckdir if resume_run else None)
    saved = None
    if distributed.is_main():
        saved = TrainedCheckpoint(save(model, path, training=config.to_dict(), data=data, history=result.history,
                                       train_seconds=result.seconds), dict(result.final))
    distributed.barrier()  # the final model is on disk before any rank drops its resume state
    resume.clear_state(ckdir)
    distributed.cleanup()
    return saved
