"""PSAT Table 5: timm lightweight networks as multi-norm-trained models, their parameter counts and savings
against the three-member hyper ResNet-50 (torchrobust.psat.lightweight, torchrobust.models.lightweight)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

pytest.importorskip("timm")

from conftest import cli_one_line_error  # noqa: E402

from torchrobust import checkpoint  # noqa: E402
from torchrobust.cli import main  # noqa: E402
from torchrobust.errors import TorchRobustError  # noqa: E402
from torchrobust.models.lightweight import feature_size, stem_conv  # noqa: E402
from torchrobust.psat import count_parameters  # noqa: E402
from torchrobust.psat import lightweight as lw  # noqa: E402
from torchrobust.psat.adversary import PGDConfig  # noqa: E402
from torchrobust.psat.metrics import MultiNormRow  # noqa: E402
from torchrobust.psat.train import PSATTrainConfig  # noqa: E402

# timm 1.0.9, 10 classes, 3 input channels: PSAT Table 5 prints 3.20M / 1.53M / 4.21M / 3.91M
TIMM_3CH = {"mobilenetv1_100": 3_217_226, "mobilenetv3_small_100": 1_528_106,
            "mobilenetv3_large_100": 4_214_842, "ghostnet_100": 3_914_318}


@pytest.mark.parametrize("backbone", lw.TABLE5_BACKBONES)
def test_members_build_and_forward_on_mnist(backbone):
    torch.manual_seed(0)
    model = lw.build(backbone).eval()
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # attacks need input gradients
    assert model.torchrobust_spec["name"] == "psat_timm" and model.torchrobust_spec["kwargs"]["backbone"] == backbone


@pytest.mark.parametrize("backbone", lw.TABLE5_BACKBONES)
def test_parameter_counts_match_the_paper_and_the_stem(backbone):
    with torch.device("meta"):
        one, three = lw.build(backbone, in_chans=1), lw.build(backbone, in_chans=3)
    p1, p3 = count_parameters(one), count_parameters(three)
    assert p3 == TIMM_3CH[backbone]
    assert abs(p3 - lw.PAPER_TABLE5[backbone][2]) / lw.PAPER_TABLE5[backbone][2] < 0.006
    stem = stem_conv(one.net, 1)
    k = stem.kernel_size[0] * stem.kernel_size[1]
    assert p3 - p1 == 2 * stem.out_channels * k  # the stem's two extra input channels, nothing else


def test_hyper_resnet_reference_counts():
    assert lw.hyper_resnet_parameters(128, in_chans=3) == 4_874_142  # PSAT Table 1/2: 4.874M
    assert lw.hyper_resnet_parameters(64, in_chans=3) == 1_764_510  # 1.765M
    # one channel: each of the three members' stems (64×C×3×3, never generated) loses 64·2·9 weights
    assert lw.hyper_resnet_parameters(128, in_chans=1) == 4_874_142 - 3 * 64 * 2 * 9


def _row(name: str, params: int) -> MultiNormRow:
    return MultiNormRow(name, 0.9, {"Linf": 0.5, "L2": 0.6, "L1": 0.7}, 0.4, 0.3, 10, params=params)


def test_savings_against_the_hyper_resnets():
    half = 1_764_510 // 2  # half of PSAT-64 at 3 channels
    t = lw.lightweight_table({"mobilenetv3_small_100": _row("mobilenetv3_small_100", half),
                              "ghostnet_100": _row("ghostnet_100", 2 * 4_874_142)}, in_chans=3)
    mnv3, gn, ref64, ref128 = t.rows
    assert mnv3["saving_vs_psat64"] == pytest.approx(0.5)
    assert mnv3["saving_vs_psat128"] == pytest.approx(1 - half / 4_874_142)
    assert gn["saving_vs_psat128"] == pytest.approx(-1.0)  # twice PSAT-128: shown as an increase
    assert "↑100.00%" in t.markdown_grid() and "↓50.00%" in t.markdown_grid()
    assert mnv3["network"] == "MNV3-S" and mnv3["paper_trade_off"] == 0.4953 and mnv3["params_3ch"] == 1_528_106
    assert mnv3["trade_off"] == pytest.approx((0.9 + 0.5 + 0.6 + 0.7 + 0.4 + 0.6) / 6)
    assert ref64["params"] == 1_764_510 and ref128["params"] == 4_874_142 and "clean" not in ref128


def test_stem_stride_and_resize_change_the_feature_map():
    base = lw.build("mobilenetv3_small_100")
    assert feature_size(base) == (1, 1)  # 28 / 32 (ImageNet strides): as a 32×32 CIFAR image
    assert feature_size(lw.build("mobilenetv3_small_100", stem_stride=1)) == (2, 2)
    big = lw.build("mobilenetv3_small_100", input_size=64)
    assert feature_size(big) == (2, 2)
    assert big.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(TorchRobustError, match="stem_stride"):
        lw.build("mobilenetv3_small_100", stem_stride=0)


def test_top_class_share_flags_a_constant_classifier():
    x = torch.rand(10, 1, 2, 2)
    constant = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    assert lw.top_class_share(constant, x) == 1.0
    # 10 inputs, predictions by the sign of the first pixel: shares 6/10 with 6 positive
    x[:, 0, 0, 0] = torch.tensor([1.0, 1, 1, 1, 1, 1, -1, -1, -1, -1])
    sign = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        sign[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        sign[1].bias.zero_()
    assert lw.top_class_share(sign, x, batch_size=3) == 0.6


def test_stem_conv_needs_a_conv_reading_the_image():
    with pytest.raises(TorchRobustError, match="no Conv2d"):
        stem_conv(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 1)


def test_random_norm_adversary_draws_every_norm_in_its_ball():
    cfgs = [PGDConfig("Linf", 0.3, 1), PGDConfig("L2", 2.0, 1), PGDConfig("L1", 10.0, 1)]
    adv = lw.RandomNormAdversary(cfgs)
    torch.manual_seed(0)
    drawn = [adv.draw().threat for _ in range(60)]
    assert set(drawn) == {"Linf", "L2", "L1"} and max(drawn.count(t) for t in set(drawn)) < 35
    torch.manual_seed(0)
    assert [adv.draw().threat for _ in range(60)] == drawn  # the global RNG (seeded by fit) decides
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    torch.manual_seed(1)
    (xa,) = adv(model, x, y)
    assert xa.shape == x.shape and 0 <= xa.min() and xa.max() <= 1 and (xa - x).abs().max() > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("table5")
    g = torch.Generator().manual_seed(0)
    train = (torch.rand(40, 1, 28, 28, generator=g), torch.randint(0, 10, (40,), generator=g))
    test = (torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g))
    cfg = PSATTrainConfig(batch_size=20)
    paths = lw.run_table5(out, train, test, backbones=["mobilenetv3_small_100"], config=cfg, train_steps=1,
                          eval_steps=1)
    return out, train, test, cfg, paths


def test_tiny_end_to_end_run_writes_the_table(tiny_run):
    out, *_, paths = tiny_run
    folder = out / "table5"
    assert [p.name for p in paths] == ["mobilenetv3_small_100.safetensors", "table5.md", "table5.csv",
                                       "table5.json"]
    doc = json.loads((folder / "table5.json").read_text())
    rows = {r["network"]: r for r in doc["rows"]}
    row = rows["MNV3-S"]
    assert row["params"] == 1_527_818 and row["n"] == 8 and 0 <= row["union"] <= row["clean"] <= 1
    assert row["saving_vs_psat64"] == pytest.approx(1 - 1_527_818 / lw.hyper_resnet_parameters(64, 1))
    assert row["train_cpu_s"] > 0 and row["top_class_share"] >= 1 / 8  # 8 test inputs, 10 classes
    meta = checkpoint.load_metadata(paths[0])["metadata"]
    assert meta["strategy"] == "stochastic" and meta["steps"] == {"Linf": 1, "L2": 1, "L1": 1}
    assert "Saving vs PSAT-128" in (folder / "table5.md").read_text()


def test_tiny_run_reuses_its_checkpoint_and_refuses_other_settings(tiny_run):
    out, train, test, cfg, paths = tiny_run
    before = paths[0].stat().st_mtime_ns
    again = lw.train_lightweight(out / "table5", train, ["mobilenetv3_small_100"], steps=dict.fromkeys(
        ("Linf", "L2", "L1"), 1), config=cfg, model_kw={"in_chans": 1})
    assert again["mobilenetv3_small_100"].stat().st_mtime_ns == before
    evaluated = out / "table5" / "mobilenetv3_small_100.eval.json"
    stamp, table = evaluated.stat().st_mtime_ns, (out / "table5" / "table5.csv").read_text()
    lw.run_table5(out, train, test, backbones=["mobilenetv3_small_100"], config=cfg, train_steps=1, eval_steps=1)
    assert evaluated.stat().st_mtime_ns == stamp and (out / "table5" / "table5.csv").read_text() == table
    with pytest.raises(TorchRobustError, match="other settings"):
        lw.train_lightweight(out / "table5", train, ["mobilenetv3_small_100"], strategy="max",
                             steps=dict.fromkeys(("Linf", "L2", "L1"), 1), config=cfg, model_kw={"in_chans": 1})


_ONE = dict.fromkeys(("Linf", "L2", "L1"), 1)


@pytest.mark.parametrize("change, key", [
    ({"data": "fewer"}, "n_train"),  # 20 of the 40 training images
    ({"data": "relabelled"}, "train_data_sha256"),  # same 40 images, other labels
    ({"data": "other_images"}, "train_data_sha256"),
    ({"strategy": "max"}, "strategy"),
    ({"steps": dict.fromkeys(("Linf", "L2", "L1"), 2)}, "steps"),
    ({"config": {"epochs": 2}}, "train_config"),
    ({"config": {"lr": 2e-3}}, "train_config"),
    ({"config": {"seed": 1}}, "train_config"),
    ({"config": {"schedule": "cosine"}}, "train_config"),
    ({"config": {"max_batches": 1}}, "train_config"),
    ({"model_kw": {"in_chans": 1, "stem_stride": 1}}, "model_kw"),
    ({"model_kw": {"in_chans": 1, "input_size": 32}}, "model_kw"),
])
def test_any_training_difference_is_refused_and_the_checkpoint_kept(tiny_run, change, key):
    out, (x, y), _, cfg, paths = tiny_run
    before = (paths[0].stat().st_mtime_ns, paths[0].read_bytes())
    data = {"fewer": (x[:20], y[:20]), "relabelled": (x, (y + 1) % 10), "other_images": (x.flip(-1), y),
            None: (x, y)}[change.get("data")]
    kw = {"strategy": change.get("strategy", "stochastic"), "steps": change.get("steps", _ONE),
          "config": PSATTrainConfig(**{**dataclasses.asdict(cfg), **change.get("config", {})}),
          "model_kw": change.get("model_kw", {"in_chans": 1})}
    with pytest.raises(TorchRobustError, match=f"other settings \\([^)]*{key}"):
        lw.train_lightweight(out / "table5", data, ["mobilenetv3_small_100"], **kw)
    assert (paths[0].stat().st_mtime_ns, paths[0].read_bytes()) == before
    meta = checkpoint.load_metadata(paths[0])["metadata"]
    assert meta["n_train"] == 40 and len(meta["train_data_sha256"]) == 64


@pytest.mark.parametrize("extra, match", [
    (["--only", "mobilenet_v9"], "unknown timm model 'mobilenet_v9'"),
    (["--strategy", "sometimes"], "unknown Table 5 training strategy"),
])
def test_cli_bad_backbone_or_strategy_is_a_one_line_error(extra, match, tmp_path, capsys):
    cli_one_line_error(capsys, ["psat", "experiment", "lightweight", "--out", str(tmp_path / "o"), "--quiet", *extra],
                       match)
    assert list(tmp_path.iterdir()) == []  # refused before any work: nothing written


@pytest.mark.parametrize("argv, expected", [([], 1), (["--stem-stride", "timm"], None), (["--stem-stride", "2"], 2)])
def test_cli_stem_stride_defaults_to_the_small_image_stride(argv, expected):
    from torchrobust.cli import build_parser
    from torchrobust.models.lightweight import SMALL_IMAGE_STEM_STRIDE

    args = build_parser().parse_args(["psat", "experiment", "lightweight", "--out", "o", *argv])
    assert SMALL_IMAGE_STEM_STRIDE == 1 and args.stem_stride == expected and args.input_size is None


def test_cli_lightweight_run_trains_with_the_given_stem_and_size(tmp_path):
    out = tmp_path / "run"
    assert main(["psat", "experiment", "lightweight", "--out", str(out), "--quiet", "--only", "mobilenetv3_small_100",
                 "--n-train", "20", "--n-test", "4", "--train-steps", "1", "--steps", "1", "--stem-stride", "timm",
                 "--input-size", "32"]) == 0
    meta = checkpoint.load_metadata(out / "table5" / "mobilenetv3_small_100.safetensors")["metadata"]
    assert meta["model_kw"] == {"in_chans": 1, "stem_stride": None, "input_size": 32} and meta["n_train"] == 20
    with pytest.raises(TorchRobustError, match=r"other settings \(model_kw\)"):  # the default stem stride 1 differs
        from torchrobust.psat.experiment import run_stage
        run_stage("lightweight", out, only=["mobilenetv3_small_100"], n_train=20, n_test=4, train_steps=1, steps=1,
                  input_size=32)
