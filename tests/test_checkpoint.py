"""Checkpoints: exact round trip, atomic writes, clear errors for corrupt/mismatched/foreign files."""

from __future__ import annotations

import json
import os

import pytest
import torch

from torchrobust import checkpoint, models
from torchrobust import io as tr_io
from torchrobust.errors import TorchRobustError


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name,kw", [("mlp", {"widths": [32, 16], "activation": None}),
                                     ("mlp", {"widths": [8], "activation": "relu"}),
                                     ("lenet", {}),
                                     ("hyper_msd_cnn", {"z_dim": 4, "unit": 16})])
def test_round_trip_exact(tmp_path, name, kw):
    m = models.create(name, **kw)
    path = checkpoint.save(m, tmp_path / "m.safetensors", note="hello", metrics={"acc": 0.5})
    m2 = checkpoint.load(path)
    assert type(m2) is type(m)
    assert _same_state(m, m2)
    assert not m2.training
    x = torch.rand(3, 1, 28, 28)
    m.eval()
    assert torch.equal(m(x), m2(x))
    meta = checkpoint.load_metadata(path)
    assert meta["metadata"] == {"note": "hello", "metrics": {"acc": 0.5}}
    assert meta["model"]["name"] == name
    sidecar = json.loads((tmp_path / "m.safetensors.json").read_text())
    assert sidecar == meta


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    m = models.create("mlp", widths=[4])
    path = checkpoint.save(m, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        checkpoint.save(models.create("mlp", widths=[5]), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_unserialisable_metadata_is_a_clear_error(tmp_path):
    with pytest.raises(TorchRobustError, match="JSON"):
        checkpoint.save(models.create("mlp", widths=[4]), tmp_path / "m.safetensors", bad=object())


def test_model_without_spec_needs_one(tmp_path):
    with pytest.raises(TorchRobustError, match="torchrobust_spec"):
        checkpoint.save(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TorchRobustError, match="not found"):
        checkpoint.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(TorchRobustError, match="corrupt"):
        checkpoint.load(bad)
    path = checkpoint.save(models.create("mlp", widths=[4]), tmp_path / "ok.safetensors")
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TorchRobustError, match="corrupt"):
        checkpoint.load(tmp_path / "trunc.safetensors")


def test_mismatched_checkpoint(tmp_path):
    m = models.create("mlp", widths=[4])
    path = checkpoint.save(m, tmp_path / "m.safetensors")
    other = models.create("mlp", widths=[5])
    with pytest.raises(TorchRobustError, match="does not match"):
        checkpoint.load_weights(other, path)
    with pytest.raises(TorchRobustError, match="does not match"):
        checkpoint.load_weights(models.create("lenet"), path)


def test_foreign_pt_loads_weights_only(tmp_path):
    m = models.create("mlp", widths=[4])
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}, "epoch": 3},
               tmp_path / "w.pt")
    m2 = checkpoint.load_weights(models.create("mlp", widths=[4]), tmp_path / "w.pt")
    assert _same_state(m, m2)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(TorchRobustError, match="weights-only"):
        checkpoint.load_state_dict_file(tmp_path / "evil.pt")


def test_write_texts_writes_every_extension_and_leaves_no_temporary_files(tmp_path):
    from torchrobust.checkpoint import write_texts

    out = tmp_path / "new" / "dir"
    paths = write_texts(out, "report", {"md": "# a\n", "csv": "x,y\n1,2\n"})
    assert paths == {"md": out / "report.md", "csv": out / "report.csv"}
    assert paths["md"].read_text() == "# a\n" and paths["csv"].read_text() == "x,y\n1,2\n"
    write_texts(out, "report", {"md": "# b\n"})  # rewrite in place
    assert paths["md"].read_text() == "# b\n"
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md"]


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask022", "umask077", "umask002"])
def test_new_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert tr_io._umask() == mask
    path = checkpoint.save(models.create("mlp", widths=[4]), tmp_path / "m.safetensors")
    assert _mode(path) == expected
    assert _mode(tmp_path / "m.safetensors.json") == expected
    checkpoint.atomic_write_bytes(tmp_path / "new" / "r.md", b"x")
    assert _mode(tmp_path / "new" / "r.md") == expected


def test_an_overwritten_file_keeps_its_mode(tmp_path, umask):
    umask(0o077)
    shared = tmp_path / "shared.md"
    shared.write_text("old")
    os.chmod(shared, 0o644)
    checkpoint.atomic_write_bytes(shared, b"new")
    assert shared.read_text() == "new" and _mode(shared) == 0o644
    os.chmod(shared, 0o640)
    checkpoint.write_texts(tmp_path, "shared", {"md": "newer"})
    assert _mode(shared) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["shared.md"]


def test_save_to_a_directory_or_under_a_file_is_a_clear_error(tmp_path):
    m = models.create("mlp", widths=[4])
    (tmp_path / "dir").mkdir()
    with pytest.raises(TorchRobustError, match="is a directory") as info:
        checkpoint.save(m, tmp_path / "dir")
    assert "\n" not in str(info.value)
    (tmp_path / "file.txt").write_text("x")
    for bad in (tmp_path / "file.txt" / "m.safetensors", tmp_path / "file.txt" / "a" / "b" / "m.safetensors"):
        with pytest.raises(TorchRobustError, match="is a file, not a folder"):
            checkpoint.save(m, bad)
        with pytest.raises(TorchRobustError, match="is a file, not a folder"):
            checkpoint.atomic_write_bytes(bad, b"x")
    assert (tmp_path / "file.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file.txt"]


def _rewrite_doc(path, doc) -> None:
    """Re-store the checkpoint at ``path`` with its torchrobust document replaced by ``doc`` (any JSON)."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(path)), str(path), metadata={"torchrobust": json.dumps(doc)})


@pytest.mark.parametrize("edit", [
    lambda d: d["model"].pop("name"),
    lambda d: d.update(model=None),
    lambda d: d["model"].update(kwargs=[1, 2]),
    lambda d: d["model"].update(transforms={"name": "forge"}),
    lambda d: d.update(metadata=[1]),
])
def test_malformed_metadata_is_a_clear_error(tmp_path, edit):
    path = checkpoint.save(models.create("mlp", widths=[4]), tmp_path / "m.safetensors")
    doc = checkpoint.load_metadata(path)
    edit(doc)
    _rewrite_doc(path, doc)
    for fn in (checkpoint.load, checkpoint.load_metadata):
        with pytest.raises(TorchRobustError, match="corrupt checkpoint") as info:
            fn(path)
        assert "\n" not in str(info.value)


def test_metadata_that_is_a_json_list_or_bad_transform_arguments(tmp_path):
    path = checkpoint.save(models.create("mlp", widths=[4]), tmp_path / "m.safetensors")
    _rewrite_doc(path, [1, 2, 3])
    for fn in (checkpoint.load, checkpoint.load_metadata):
        with pytest.raises(TorchRobustError, match="JSON list"):
            fn(path)
    path = checkpoint.save(models.create("mlp", widths=[4]), tmp_path / "m.safetensors")
    doc = checkpoint.load_metadata(path)
    doc["model"]["transforms"] = [{"name": "forge", "kwargs": {"bogus": 1}}]
    _rewrite_doc(path, doc)
    with pytest.raises(TorchRobustError, match="invalid arguments"):
        checkpoint.load(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 3, b"\xff" * 64])
def test_empty_or_garbage_safetensors_is_a_clear_error(tmp_path, content):
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    for fn in (checkpoint.load, checkpoint.load_metadata, checkpoint.load_state_dict_file):
        with pytest.raises(TorchRobustError, match="corrupt") as info:
            fn(path)
        assert "\n" not in str(info.value)
