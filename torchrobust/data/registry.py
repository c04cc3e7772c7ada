"""The dataset registry: names, shapes, class counts, splits and normalisation statistics.

``mean``/``std`` are the per-channel statistics of each *training* set in [0, 1] pixel space. Models take
[0, 1] input and hold their normalisation as a layer (``torchrobust.models.Normalize``); these values are what
such a layer is built from.

CIFAR-10 note: much public code (kuangliu's pytorch-cifar, and the PSAT/g1910 training recipe) normalises
with ``std = (0.2023, 0.1994, 0.2010)``, which is not the per-channel standard deviation of the CIFAR-10
pixels. We register the correct statistics and keep the popular variant as :data:`CIFAR10_STD_COMMON` for
reproducing those papers' models exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torchrobust.errors import unknown_name

__all__ = ["CIFAR10_STD_COMMON", "DATASETS", "DatasetInfo", "DatasetName", "info", "list_datasets"]


class DatasetName(str, Enum):
    """Names of the supported datasets; members compare equal to their lower-case string values."""

    MNIST = "mnist"
    CIFAR10 = "cifar10"
    CIFAR100 = "cifar100"
    SVHN = "svhn"
    TINYIMAGENET = "tinyimagenet"
    IMAGENET10 = "imagenet10"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset.

    Attributes:
        name: registry name (a :class:`DatasetName` value).
        num_classes: number of labels; labels are ``0 .. num_classes - 1``.
        shape: ``(C, H, W)`` of one item as returned by ``torchrobust.data.load`` with default options.
        mean: per-channel mean of the training pixels in [0, 1].
        std: per-channel standard deviation of the training pixels in [0, 1].
        splits: the split names ``load`` accepts.
    """

    name: str
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: tuple[str, ...]


#: The CIFAR-10 ``std`` used by much public training code (not the true pixel std; see the module docstring).
CIFAR10_STD_COMMON: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetInfo] = {
    i.name: i
    for i in (
        DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), ("train", "test")),
        DatasetInfo(
            "cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), ("train", "test")
        ),
        DatasetInfo(
            "cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), ("train", "test")
        ),
        DatasetInfo(
            "svhn", 10, (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), ("train", "test", "extra")
        ),
        # Tiny-ImageNet's official test labels are not public: "val" is the labelled held-out split and
        # "test" is accepted as an alias for it (as in the papers, which report val accuracy as test accuracy).
        DatasetInfo(
            "tinyimagenet", 200, (3, 64, 64), (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262),
            ("train", "val", "test"),
        ),
        DatasetInfo("imagenet10", 10, (3, 224, 224), _IMAGENET_MEAN, _IMAGENET_STD, ("train", "val", "test")),
    )
}


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(DATASETS)


def info(name: str | DatasetName) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (case-insensitive); unknown names raise ``TorchRobustError``."""
    key = name.value if isinstance(name, DatasetName) else str(name).strip().lower()
    if key not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    return DATASETS[key]
