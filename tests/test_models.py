"""torchrobust.models: every zoo model builds, returns logits on [0, 1] input, has the reference parameter
counts and state_dict layouts, names its defence insertion points correctly, and round-trips its spec.

Large models (WRN-28-10 … WRN-70-16) are built on the ``meta`` device: shapes and parameter counts without memory
or compute, so the file stays fast.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchrobust import models
from torchrobust.errors import TorchRobustError
from torchrobust.models import DMWideResNet, LeNet, Normalize, ResNet, WideResNet

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)

# Small configurations of every registered name, for real (CPU) forwards: name -> (MNIST kwargs, CIFAR kwargs).
SMALL: dict[str, tuple[dict, dict]] = {
    "mlp": ({}, {"in_features": 3 * 32 * 32, "in_channels": 3, "activation": "relu"}),
    "lenet": ({}, {"in_channels": 3, "input_size": 32}),
    "resnet10": ({"width": 4, "in_channels": 1}, {"width": 4}),
    "resnet18": ({"width": 4, "in_channels": 1}, {"width": 4}),
    "resnet34": ({"width": 2, "in_channels": 1}, {"width": 2}),
    "resnet50": ({"width": 2, "in_channels": 1}, {"width": 2}),
    "preact_resnet18": ({"width": 4, "in_channels": 1}, {"width": 4}),
    "preact_resnet34": ({"width": 2, "in_channels": 1}, {"width": 2}),
    "wideresnet": ({"depth": 10, "widen_factor": 1, "in_channels": 1}, {"depth": 10, "widen_factor": 2}),
    "wideresnet_dm": ({"depth": 10, "widen_factor": 1, "in_channels": 1}, {"depth": 10, "widen_factor": 2}),
    "mlp_mixer": ({"in_channels": 1, "input_size": 28, "hidden_dim": 16, "tokens_mlp_dim": 8,
                   "channels_mlp_dim": 16, "depth": 1},
                  {"patch_size": 8, "hidden_dim": 16, "tokens_mlp_dim": 8, "channels_mlp_dim": 16, "depth": 2}),
}
# Names whose size is fixed by the name: exercised on the meta device only.
BIG = {"wrn28_10": {}, "wrn34_10": {}, "wrn70_16": {}}
# PSAT backbones (hypernetwork ResNets, MSD MNIST CNN): built and checked in tests/test_psat.py.
PSAT = {"hyper_resnet18", "hyper_resnet50", "plain_resnet18", "plain_resnet50", "msd_cnn", "hyper_msd_cnn",
        "psat_timm"}  # psat_timm: tests/test_psat_lightweight.py

MNIST_SHAPE, CIFAR_SHAPE = (1, 28, 28), (3, 32, 32)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def on_meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return models.create(name, **kw)


def test_registry_lists_every_model():
    names = models.list_models()
    assert names == sorted(names)
    assert set(names) == set(SMALL) | set(BIG) | PSAT


# ------------------------------------------------------------------------------------------------------------------
# Building and forward shapes
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("which", [0, 1], ids=["mnist", "cifar"])
def test_small_models_give_logits(name, which):
    kw = SMALL[name][which]
    shape = MNIST_SHAPE if which == 0 else CIFAR_SHAPE
    model = models.create(name, num_classes=7, **kw).eval()
    x = torch.rand(3, *shape)
    out = model(x)
    assert out.shape == (3, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # the batch dimension is independent: logits of a sub-batch equal those of the full batch (eval mode)
    torch.testing.assert_close(model(x[1:2]), out[1:2], rtol=1e-4, atol=1e-5)
    # gradients reach the input (attacks need them)
    x.requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(SMALL) + sorted(BIG))
def test_default_models_forward_shapes_on_meta(name):
    """Full-size default configurations (real forwards of the small ones are tested above)."""
    shape = MNIST_SHAPE if name in ("mlp", "lenet") else CIFAR_SHAPE
    kw: dict = {"num_classes": 5}
    if name == "mlp":
        kw.update(in_features=shape[0] * shape[1] * shape[2], in_channels=shape[0])
    elif name in ("lenet", "mlp_mixer"):
        kw.update(in_channels=shape[0], input_size=shape[1])
    else:
        kw.update(in_channels=shape[0])
    model = on_meta(name, **kw)
    out = model(torch.empty(2, *shape, device="meta"))
    assert out.shape == (2, 5)


def test_models_run_in_float64_and_train_mode():
    for name, (kw, _) in SMALL.items():
        model = models.create(name, **kw).double().train()
        out = model(torch.rand(4, *MNIST_SHAPE, dtype=torch.float64))
        assert out.dtype == torch.float64 and out.shape == (4, 10), name


# ------------------------------------------------------------------------------------------------------------------
# Parameter counts (reference values)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kw,expected", [
    ("resnet18", {}, 11_173_962),            # kuangliu/pytorch-cifar ResNet-18, 10 classes
    ("resnet34", {}, 21_282_122),            # kuangliu ResNet-34
    ("resnet50", {}, 23_520_842),            # kuangliu ResNet-50 (PSAT notes: 23.521M)
    ("preact_resnet18", {}, 11_171_146),     # kuangliu PreActResNet-18 (MSD's CIFAR-10 model)
    ("wrn28_10", {}, 36_479_194),            # Zagoruyko & Komodakis WRN-28-10 (36.5M), RobustBench layout
    ("wrn34_10", {}, 46_160_474),            # TRADES / RobustBench WRN-34-10
    ("wideresnet", {"depth": 28, "widen_factor": 10}, 36_479_194),
    ("wideresnet_dm", {"depth": 28, "widen_factor": 10}, 36_479_194),   # same network, DeepMind names
    ("lenet", {}, 21_840),                   # PyTorch FGSM-tutorial LeNet
    ("mlp", {}, 784 * 256 + 256 + 256 * 64 + 64 + 64 * 10 + 10),
])
def test_parameter_counts(name, kw, expected):
    assert n_params(on_meta(name, **kw)) == expected


def test_resnet18_tinyimagenet_count_matches_psat_notes():
    # docs/paper-code-facts.md#psat-parameter-counts: kuangliu ResNet-18 with 200 classes = 11.271M
    assert round(n_params(on_meta("resnet18", num_classes=200)) / 1e6, 3) == 11.271


def test_wrn70_16_size_and_layouts_agree():
    dm = n_params(on_meta("wrn70_16"))
    assert round(dm / 1e6) == 267        # Gowal et al. 2020 / Rebuffi et al. 2021: WRN-70-16 has 267M parameters
    assert n_params(on_meta("wideresnet", depth=70, widen_factor=16)) == dm


def test_narrow_resnet_is_one_eighth_width():
    m = models.create("resnet18", width=8)
    assert m.conv1.out_channels == 8
    assert [m.layer1[0].conv1.out_channels, m.layer2[0].conv1.out_channels, m.layer3[0].conv1.out_channels,
            m.layer4[0].conv1.out_channels] == [8, 16, 32, 64]
    assert m.linear.in_features == 64


# ------------------------------------------------------------------------------------------------------------------
# LeNet / MLP exactly as in the papers
# ------------------------------------------------------------------------------------------------------------------


def test_lenet_has_the_tutorial_shapes():
    shapes = {k: tuple(v.shape) for k, v in models.create("lenet").state_dict().items()}
    assert shapes == {"conv1.weight": (10, 1, 5, 5), "conv1.bias": (10,), "conv2.weight": (20, 10, 5, 5),
                      "conv2.bias": (20,), "fc1.weight": (50, 320), "fc1.bias": (50,), "fc2.weight": (10, 50),
                      "fc2.bias": (10,)}
    assert isinstance(models.create("lenet").conv2_drop, nn.Dropout2d)


def test_lenet_returns_logits_of_the_tutorial_network():
    model = models.create("lenet").eval()
    p = model.state_dict()
    x = torch.rand(5, 1, 28, 28)
    # the tutorial's forward, written out with the functional API: it ends in log_softmax
    h = F.relu(F.max_pool2d(F.conv2d(x, p["conv1.weight"], p["conv1.bias"]), 2))
    h = F.relu(F.max_pool2d(F.conv2d(h, p["conv2.weight"], p["conv2.bias"]), 2))
    h = F.relu(F.linear(h.view(-1, 320), p["fc1.weight"], p["fc1.bias"]))
    tutorial = F.log_softmax(F.linear(h, p["fc2.weight"], p["fc2.bias"]), dim=1)
    logits = model(x)
    assert not torch.allclose(logits.exp().sum(1), torch.ones(5))   # logits, not log-probabilities
    torch.testing.assert_close(F.log_softmax(logits, dim=1), tutorial)


def test_lenet_rejects_wrong_image_size():
    with pytest.raises(TorchRobustError, match="input_size=32"):
        models.create("lenet", in_channels=3)(torch.rand(1, 3, 32, 32))


def test_activation_free_mlp_is_affine_and_relu_mlp_is_not():
    lin = models.create("mlp", widths=[16, 8]).eval()
    relu = models.create("mlp", widths=[16, 8], activation="relu").eval()
    assert [n for n, m in lin.named_modules() if isinstance(m, nn.Linear)] == ["fc1", "fc2", "fc3"]
    x1, x2, zero = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), torch.zeros(4, 1, 28, 28)
    for model, affine in ((lin, True), (relu, False)):
        lhs = model(x1 + x2) + model(zero)
        rhs = model(x1) + model(x2)
        assert torch.allclose(lhs, rhs, atol=1e-5) is affine


def test_mlp_flattens_any_image_shape_and_checks_size():
    m = models.create("mlp", in_features=12, widths=[4])
    assert m(torch.rand(2, 3, 2, 2)).shape == (2, 10)
    with pytest.raises(TorchRobustError, match="in_features=784"):
        models.create("mlp")(torch.rand(2, 3, 32, 32))


# ------------------------------------------------------------------------------------------------------------------
# Normalize
# ------------------------------------------------------------------------------------------------------------------


def test_normalize_layer():
    layer = Normalize(CIFAR_MEAN, CIFAR_STD)
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(layer(x), expected)
    assert layer.state_dict() == {}          # configuration, not state: reference state_dicts stay key-identical
    assert layer.double()(x.double()).dtype == torch.float64
    torch.testing.assert_close(Normalize(0.5, 0.25)(x), (x - 0.5) / 0.25)


def test_normalize_gradcheck():
    layer = Normalize([0.1, 0.2, 0.3], [0.5, 0.4, 0.3]).double()
    x = torch.rand(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("mean,std,match", [
    ((0.1, 0.2), (0.1, 0.2, 0.3), "one value per channel"),
    ((0.1,), (0.0,), "positive"),
    ("abc", (1.0,), "sequence of numbers"),
])
def test_normalize_rejects_bad_constants(mean, std, match):
    with pytest.raises(TorchRobustError, match=match):
        Normalize(mean, std)


def test_models_normalise_inside():
    torch.manual_seed(1)
    plain = models.create("resnet10", width=4).eval()
    normed = models.create("resnet10", width=4, mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    normed.load_state_dict(plain.state_dict())   # same keys: the constants are not state
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(normed(x), plain(Normalize(CIFAR_MEAN, CIFAR_STD)(x)))
    assert not torch.allclose(normed(x), plain(x))
    with pytest.raises(TorchRobustError, match="both mean and std"):
        models.create("resnet10", mean=CIFAR_MEAN)
    with pytest.raises(TorchRobustError, match="in_channels=1"):
        models.create("lenet", mean=CIFAR_MEAN, std=CIFAR_STD)


def test_dm_wideresnet_keeps_robustbench_normalisation_buffers():
    m = models.create("wideresnet_dm", depth=10, widen_factor=1, mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    sd = m.state_dict()
    torch.testing.assert_close(sd["mean"].flatten(), torch.tensor(CIFAR_MEAN))
    assert sd["std"].shape == (3, 1, 1)
    plain = models.create("wideresnet_dm", depth=10, widen_factor=1).eval()
    assert torch.equal(plain.mean, torch.zeros(3, 1, 1)) and torch.equal(plain.std, torch.ones(3, 1, 1))
    plain.load_state_dict(sd)                      # loading a checkpoint brings its normalisation along
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(plain(x), m(x))


# ------------------------------------------------------------------------------------------------------------------
# RobustBench layouts
# ------------------------------------------------------------------------------------------------------------------


def test_wideresnet_state_dict_uses_robustbench_names():
    m = models.create("wideresnet", depth=10, widen_factor=2, sub_block1=True, mean=CIFAR_MEAN, std=CIFAR_STD)
    keys = set(m.state_dict())
    for k in ["conv1.weight", "block1.layer.0.bn1.running_mean", "block1.layer.0.conv1.weight",
              "block1.layer.0.bn2.weight", "block1.layer.0.conv2.weight", "block1.layer.0.convShortcut.weight",
              "sub_block1.layer.0.conv1.weight", "block2.layer.0.convShortcut.weight",
              "block3.layer.0.convShortcut.weight", "bn1.weight", "fc.weight", "fc.bias"]:
        assert k in keys, k
    assert not any("normalize" in k or k.startswith(("mean", "std")) for k in keys)
    assert "fc.bias" not in models.create("wideresnet", depth=10, widen_factor=1, bias_last=False).state_dict()


def test_dm_wideresnet_state_dict_uses_robustbench_names():
    keys = set(on_meta("wrn70_16").state_dict())
    for k in ["mean", "std", "init_conv.weight", "layer.0.block.0.batchnorm_0.weight", "layer.0.block.0.conv_0.weight",
              "layer.0.block.0.batchnorm_1.running_var", "layer.0.block.0.conv_1.weight",
              "layer.0.block.0.shortcut.weight", "layer.2.block.10.conv_1.weight", "batchnorm.weight",
              "logits.weight", "logits.bias"]:
        assert k in keys, k
    assert "layer.0.block.1.shortcut.weight" not in keys
    assert "layer.2.block.11.conv_0.weight" not in keys        # 11 blocks per group for depth 70
    m = on_meta("wrn70_16")
    assert isinstance(m.layer[0].block[0].relu_0, nn.SiLU)


def _randomise_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def _bn(x: torch.Tensor, p: dict, k: str) -> torch.Tensor:
    return F.batch_norm(x, p[k + ".running_mean"], p[k + ".running_var"], p[k + ".weight"], p[k + ".bias"])


def _reference_wrn(p: dict, x: torch.Tensor, n: int) -> torch.Tensor:
    """RobustBench ``WideResNet.forward`` (eval) written from its description, on a state_dict."""
    out = F.conv2d(x, p["conv1.weight"], padding=1)
    for g, stride in ((1, 1), (2, 2), (3, 2)):
        for i in range(n):
            k = f"block{g}.layer.{i}"
            s = stride if i == 0 else 1
            if k + ".convShortcut.weight" in p:          # not equalInOut: x itself is replaced by the activation
                out = F.relu(_bn(out, p, k + ".bn1"))
                skip = F.conv2d(out, p[k + ".convShortcut.weight"], stride=s)
                h = out
            else:
                skip, h = out, F.relu(_bn(out, p, k + ".bn1"))
            h = F.relu(_bn(F.conv2d(h, p[k + ".conv1.weight"], stride=s, padding=1), p, k + ".bn2"))
            out = skip + F.conv2d(h, p[k + ".conv2.weight"], padding=1)
    out = F.relu(_bn(out, p, "bn1"))
    return F.linear(F.avg_pool2d(out, 8).flatten(1), p["fc.weight"], p["fc.bias"])


def _reference_dm(p: dict, x: torch.Tensor, n: int) -> torch.Tensor:
    """RobustBench ``DMWideResNet.forward`` (eval, Swish) written from its description, on a state_dict."""
    out = F.conv2d((x - p["mean"]) / p["std"], p["init_conv.weight"], padding=1)
    for g, stride in ((0, 1), (1, 2), (2, 2)):
        for i in range(n):
            k = f"layer.{g}.block.{i}"
            s = stride if i == 0 else 1
            act = F.silu(_bn(out, p, k + ".batchnorm_0"))
            skip = F.conv2d(act, p[k + ".shortcut.weight"], stride=s) if k + ".shortcut.weight" in p else out
            v = F.pad(act, (1, 1, 1, 1) if s == 1 else (0, 1, 0, 1))
            h = F.silu(_bn(F.conv2d(v, p[k + ".conv_0.weight"], stride=s), p, k + ".batchnorm_1"))
            out = skip + F.conv2d(h, p[k + ".conv_1.weight"], padding=1)
    out = F.silu(_bn(out, p, "batchnorm"))
    return F.linear(F.avg_pool2d(out, 8).flatten(1), p["logits.weight"], p["logits.bias"])


def _reference_resnet(p: dict, x: torch.Tensor, n: int) -> torch.Tensor:
    """The reprogramming code's post-activation CIFAR ResNet (BasicBlock) forward, eval, on a state_dict."""
    out = F.relu(_bn(F.conv2d(x, p["conv1.weight"], padding=1), p, "bn1"))
    for g, stride in ((1, 1), (2, 2), (3, 2), (4, 2)):
        for i in range(n):
            k = f"layer{g}.{i}"
            s = stride if i == 0 else 1
            h = F.relu(_bn(F.conv2d(out, p[k + ".conv1.weight"], stride=s, padding=1), p, k + ".bn1"))
            h = _bn(F.conv2d(h, p[k + ".conv2.weight"], padding=1), p, k + ".bn2")
            if k + ".shortcut.0.weight" in p:
                out = _bn(F.conv2d(out, p[k + ".shortcut.0.weight"], stride=s), p, k + ".shortcut.1")
            out = F.relu(h + out)
    return F.linear(F.avg_pool2d(out, 4).flatten(1), p["linear.weight"], p["linear.bias"])


def _reference_preact(p: dict, x: torch.Tensor, n: int) -> torch.Tensor:
    """kuangliu/MSD ``PreActResNet`` forward (eval) on a state_dict: the shortcut conv reads relu(bn1(x))."""
    out = F.conv2d(x, p["conv1.weight"], padding=1)
    for g, stride in ((1, 1), (2, 2), (3, 2), (4, 2)):
        for i in range(n):
            k = f"layer{g}.{i}"
            s = stride if i == 0 else 1
            act = F.relu(_bn(out, p, k + ".bn1"))
            skip = F.conv2d(act, p[k + ".shortcut.0.weight"], stride=s) if k + ".shortcut.0.weight" in p else out
            h = F.relu(_bn(F.conv2d(act, p[k + ".conv1.weight"], stride=s, padding=1), p, k + ".bn2"))
            out = F.conv2d(h, p[k + ".conv2.weight"], padding=1) + skip
    return F.linear(F.avg_pool2d(out, 4).flatten(1), p["linear.weight"], p["linear.bias"])


@pytest.mark.parametrize("name,reference", [("wideresnet", _reference_wrn), ("wideresnet_dm", _reference_dm),
                                            ("resnet18", _reference_resnet), ("preact_resnet18", _reference_preact)])
def test_forward_matches_the_reference_layout(name, reference):
    kw = {"depth": 16, "widen_factor": 2}            # 2 blocks per stage: width-changing and equal-width blocks
    if name in ("resnet18", "preact_resnet18"):
        kw = {"width": 4}
    if name == "wideresnet_dm":
        kw.update(mean=CIFAR_MEAN, std=CIFAR_STD, activation="silu")
    model = models.create(name, **kw).double().eval()
    _randomise_bn(model)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference(model.state_dict(), x, 2))


def test_wideresnet_skip_paths_follow_robustbench():
    m = WideResNet(depth=10, widen_factor=2).eval()
    with torch.no_grad():
        for b in m.blocks():
            b.conv2.weight.zero_()
    b1 = m.block1.layer[0]            # 16 -> 32: skip = convShortcut(relu(bn1(x)))
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(b1(x), b1.convShortcut(F.relu(b1.bn1(x))))
    m2 = WideResNet(depth=16, widen_factor=1).eval()
    b = m2.block1.layer[1]           # 16 -> 16: the skip is the raw x, not the activation
    with torch.no_grad():
        b.conv2.weight.zero_()
    torch.testing.assert_close(b(x), x)


def test_dm_block_pads_like_tensorflow_same():
    m = DMWideResNet(depth=10, widen_factor=1, activation="relu").eval()
    seen: dict[str, tuple] = {}
    blk = m.layer[1].block[0]        # the stride-2 block of group 1

    def record(key: str):
        def hook(mod: nn.Module, args: tuple) -> None:
            seen.setdefault(key, tuple(args[0].shape))
        return hook

    blk.conv_0.register_forward_pre_hook(record("s2"))
    m.layer[0].block[0].conv_0.register_forward_pre_hook(record("s1"))
    out = m(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert seen["s1"][-2:] == (34, 34)     # (1, 1, 1, 1) padding at stride 1
    assert seen["s2"][-2:] == (33, 33)     # (0, 1, 0, 1) padding at stride 2: bottom/right only
    odd = blk(torch.randn(1, 16, 7, 7))   # TF 'SAME' on an odd size pads (1, 1, 1, 1): 7 -> 4, like the shortcut
    assert odd.shape == (1, 32, 4, 4)


def test_dm_block_gradcheck():
    m = DMWideResNet(depth=10, widen_factor=1, activation="silu", in_channels=1).double().eval()
    blk = m.layer[1].block[0]
    x = torch.randn(1, 16, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(blk, (x,))


# ------------------------------------------------------------------------------------------------------------------
# Structure hooks
# ------------------------------------------------------------------------------------------------------------------


def _check_names(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    mods = dict(model.named_modules())
    assert names and len(set(names)) == len(names)
    for n in names:
        assert n in mods, n
        assert isinstance(mods[n], (nn.Linear, nn.Conv2d)), n
    return {n: mods[n] for n in names}


@pytest.mark.parametrize("name", sorted(SMALL) + sorted(BIG))
def test_hooks_name_existing_linear_or_conv_layers(name):
    model = on_meta(name, **SMALL.get(name, ({}, {}))[1])
    _check_names(model, model.nrpm_default_layers())
    _check_names(model, model.forge_insertion_points())


def test_mlp_and_lenet_hooks():
    mlp = models.create("mlp")
    assert mlp.nrpm_default_layers() == ["fc1", "fc2", "fc3"]
    assert mlp.forge_insertion_points() == ["fc2", "fc3"]
    lenet = models.create("lenet")
    assert lenet.nrpm_default_layers() == ["conv1", "conv2"]
    assert lenet.forge_insertion_points() == ["conv2", "fc1", "fc2"]


@pytest.mark.parametrize("name,n_nrpm,n_forge,n_short", [
    ("resnet18", 16, 19, 3), ("resnet34", 32, 35, 3), ("resnet50", 16, 52, 4), ("preact_resnet18", 16, 19, 3),
    ("wrn28_10", 24, 27, 3), ("wrn34_10", 30, 33, 3), ("wrn70_16", 66, 69, 3),
])
def test_residual_hooks(name, n_nrpm, n_forge, n_short):
    model = on_meta(name)
    nrpm = _check_names(model, model.nrpm_default_layers())
    assert len(nrpm) == n_nrpm
    assert all(m.kernel_size == (3, 3) for m in nrpm.values())
    stem = {"conv1", "init_conv"}
    assert not stem & set(nrpm) and not any("hortcut" in n for n in nrpm)
    forge = _check_names(model, model.forge_insertion_points())
    assert len(forge) == n_forge and not stem & set(forge)
    assert set(nrpm) <= set(forge)
    shortcuts = [n for n in forge if "hortcut" in n]
    assert len(shortcuts) == n_short and all(forge[n].kernel_size == (1, 1) for n in shortcuts)
    assert model.forge_insertion_points(shortcuts=False) == [n for n in forge if "hortcut" not in n]
    if name.startswith("resnet"):   # optional: every main-path conv, as the paper code's Bottleneck does
        assert model.nrpm_default_layers(bottleneck_1x1=True) == [n for n in forge if "hortcut" not in n]


@pytest.mark.parametrize("name,kw,lower", [
    ("resnet18", {"width": 4}, 0.0),
    ("resnet50", {"width": 2}, 0.0),
    ("preact_resnet18", {"width": 4}, 0.0),
    ("wideresnet", {"depth": 16, "widen_factor": 2}, 0.0),
    ("wideresnet_dm", {"depth": 16, "widen_factor": 2, "activation": "relu"}, 0.0),
    ("wideresnet_dm", {"depth": 16, "widen_factor": 2, "activation": "silu"}, -0.2785),   # min of SiLU
])
def test_forge_points_read_activation_outputs(name, kw, lower):
    """The forged threshold goes right after an activation that feeds a conv
    (docs/paper-code-facts.md#forged-function-resolutions): every insertion point's input must be an activation
    output, which the stem conv's (normalised image) input is not."""
    model = models.create(name, mean=CIFAR_MEAN, std=CIFAR_STD, **kw).eval()
    mods = dict(model.named_modules())
    mins: dict[str, float] = {}
    for n in model.forge_insertion_points():
        mods[n].register_forward_pre_hook(lambda m, a, n=n: mins.__setitem__(n, float(a[0].detach().min())))
    model(torch.rand(4, 3, 32, 32))
    assert set(mins) == set(model.forge_insertion_points())
    assert min(mins.values()) >= lower - 1e-6


def test_mixer_hooks_are_the_mlp_linears():
    m = models.create("mlp_mixer", depth=2)
    names = m.nrpm_default_layers()
    assert names == m.forge_insertion_points()
    assert names == [f"blocks.{i}.{mlp}.{fc}" for i in range(2) for mlp in ("token_mlp", "channel_mlp")
                     for fc in ("fc1", "fc2")]
    assert m.blocks[0].token_mlp.fc1.in_features == m.num_tokens == 64


# ------------------------------------------------------------------------------------------------------------------
# Spec round-trip and errors
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL) + sorted(BIG))
def test_spec_round_trips(name):
    kw = SMALL[name][1] if name in SMALL else {}
    torch.manual_seed(3)
    model = on_meta(name, num_classes=4, **kw) if name in BIG else models.create(name, num_classes=4, **kw)
    spec = model.torchrobust_spec
    assert spec["name"] == name and spec["kwargs"]["num_classes"] == 4
    assert json.loads(json.dumps(spec)) == spec
    for k, v in kw.items():
        assert spec["kwargs"][k] == v
    torch.manual_seed(3)
    rebuilt = (on_meta(spec["name"], **spec["kwargs"]) if name in BIG
               else models.create(spec["name"], **spec["kwargs"]))
    assert rebuilt.torchrobust_spec == spec
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    if name not in BIG:
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_spec_records_json_values():
    m = models.create("resnet10", width=4, mean=torch.tensor(CIFAR_MEAN), std=CIFAR_STD)
    kw = m.torchrobust_spec["kwargs"]
    assert kw["mean"] == pytest.approx(list(CIFAR_MEAN)) and kw["std"] == list(CIFAR_STD)
    assert kw["width"] == 4 and kw["in_channels"] == 3


def test_unknown_model_name():
    with pytest.raises(TorchRobustError) as err:
        models.create("mpl")
    assert str(err.value).startswith("unknown model 'mpl'; valid: ") and "mlp" in str(err.value)


def test_unknown_kwarg_names_the_valid_ones():
    with pytest.raises(TorchRobustError) as err:
        models.create("mlp", width=[3])
    msg = str(err.value)
    assert "'width'" in msg and "widths" in msg and "activation" in msg and "\n" not in msg
    with pytest.raises(TorchRobustError, match="fixed by the name"):
        models.create("wrn28_10", depth=34)


@pytest.mark.parametrize("name,kw,match", [
    ("resnet18", {"width": 0}, "width must be a positive integer"),
    ("wideresnet", {"depth": 27}, "6n\\+4"),
    ("wideresnet", {"activation": "gelu"}, "unknown activation 'gelu'"),
    ("mlp", {"activation": "relu6"}, "unknown activation"),
    ("mlp", {"widths": 5}, "widths must be a list"),
    ("mlp_mixer", {"patch_size": 5}, "not a multiple of patch_size"),
    ("lenet", {"input_size": 8}, "input_size >= 16"),
    ("mlp", {"mean": object(), "std": 1.0}, "JSON-serialisable"),
])
def test_bad_kwarg_values(name, kw, match):
    with pytest.raises(TorchRobustError, match=match):
        models.create(name, **kw)


def test_resnet_class_rejects_unknown_depth():
    with pytest.raises(TorchRobustError, match="unsupported ResNet depth 19"):
        ResNet(depth=19)


def test_wrong_input_channels_is_a_one_line_error():
    model = models.create("resnet10", width=4)
    with pytest.raises(TorchRobustError, match="in_channels=1"):
        model(torch.rand(2, 1, 28, 28))
    with pytest.raises(TorchRobustError, match="NCHW"):
        LeNet()(torch.rand(28, 28))


def test_model_kwargs_lists_defaults():
    kw = models.model_kwargs("wrn28_10")
    assert "depth" not in kw and kw["num_classes"] == 10 and kw["activation"] == "relu"
    assert models.model_kwargs("mlp")["widths"] == (256, 64)
