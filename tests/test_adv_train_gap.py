"""benchmarks/adv_train_gap.py on a tiny budget: every variant's cell and report, and a rerun recomputes nothing."""

from __future__ import annotations

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def gap():
    return load_benchmark("adv_train_gap")


def test_variants_report_and_resume(gap, tmp_path, monkeypatch):
    cells = gap.run(tmp_path, ["scratch-5-lr0.01", "ft-5-lr1e-3"], n_test=200, n_train=640, backbone_epochs=1,
                    epoch_scale=0.2)
    assert set(cells) == {"scratch-5-lr0.01", "ft-5-lr1e-3"}
    for cell in cells.values():
        assert len(cell["fgsm_first1000"]) == len(cell["fgsm_all"]) == 7
        assert cell["fgsm_first1000"] == cell["fgsm_all"]  # 200 < 1000: the same images
        assert all(0 <= v <= 100 for v in cell["fgsm_all"]) and cell["fgsm_all"][0] > 20  # trained: above chance
    ft = cells["ft-5-lr1e-3"]["config"]
    assert ft["from_backbone"] and ft["epochs"] == 1 and (tmp_path / "models" / "standard.safetensors").is_file()
    md = (tmp_path / "adv_train_gap.md").read_text()
    assert "| paper Adv-train | first 1000 | 76.4 |" in md and "| ft-5-lr1e-3 | all 200 |" in md

    def no_training(*a, **k):
        raise AssertionError("a finished variant was retrained")

    monkeypatch.setattr(gap.PresetContext, "train", no_training)
    again = gap.run(tmp_path, ["scratch-5-lr0.01", "ft-5-lr1e-3"], n_test=200, n_train=640, backbone_epochs=1,
                    epoch_scale=0.2)
    assert again == cells


def test_standard_backbone_is_the_presets_backbone_at_lr_1e_3(gap, tmp_path):
    """The benchmark's standard backbone comes from the presets' own helper (reprogramming._backbones) and is, bit
    for bit, what the benchmark trained before it used that helper: linear_mlp(3, seed) standard-trained by
    PresetContext.train for the given epochs at SGD lr 1e-3; its checkpoint metadata is unchanged too."""
    import torch

    from torchrobust import checkpoint

    ctx = gap._ctx(640, 0, 1)
    got = gap._standard_backbone(ctx, tmp_path)
    want = gap.linear_mlp(3, 0)
    ctx.train(want, epochs=1, lr=1e-3, tag="standard")
    assert got.state_dict().keys() == want.state_dict().keys()
    assert all(torch.equal(v, want.state_dict()[k]) for k, v in got.state_dict().items())
    meta = checkpoint.load_metadata(tmp_path / "models" / "standard.safetensors").get("metadata")
    assert meta == {"experiment": "adv_train_gap", "epochs": 1, "lr": 1e-3, "seed": 0, "n_train": 640}
