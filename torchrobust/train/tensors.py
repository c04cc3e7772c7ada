"""The in-memory fast path shared by the training loop and its resume fingerprint."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset

__all__ = ["dataset_tensors"]


def dataset_tensors(data: Dataset | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x, y)`` when ``data`` is already two tensors (a pair or a two-tensor ``TensorDataset``), else ``None``
    (the caller then reads the dataset item by item)."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data  # type: ignore[return-value]
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    return None
