"""torchvision and timm classifiers: structural defaults, exact round trips, and the default evaluation on them.

Every model is built without pretrained weights; its normalisation/scale parameters are scrambled (`_scramble`) so
that zero-initialised pieces (timm's zero-init last BatchNorm of residual blocks, torchvision ViT's zero head,
ConvNeXt's 1e-6 layer scale) and tiny heads (torchvision's MobileNet) do not hide the layers the defences replace
or starve the attack of gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchrobust as tr
from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.engine import Job, run_plan
from torchrobust.forging import forge, forged_modules, insertion_points, unforge
from torchrobust.models import structure
from torchrobust.reprogramming import nrpm_layers, reprogram, select_layers, unreprogram

# (library, name, constructor kwargs, input side): the reduced input size each architecture allows
MODELS = [
    ("torchvision", "resnet18", {}, 16),
    ("torchvision", "resnet50", {}, 16),
    ("torchvision", "mobilenet_v3_small", {}, 16),
    ("torchvision", "vit_b_16", {"image_size": 16}, 16),
    ("timm", "resnet18", {}, 16),
    ("timm", "mobilenetv3_small_100", {}, 16),
    ("timm", "ghostnet_100", {}, 16),
    ("timm", "vit_tiny_patch16_224", {"img_size": 16}, 16),
    ("timm", "convnext_atto", {}, 32),  # stem /4 and three /2 downsamples: 32 is the smallest side
]
IDS = [f"{lib}-{name}" for lib, name, _, _ in MODELS]
# residual blocks, default NRPM layers, default forge insertion points (the table in docs/architecture.md)
COUNTS = {
    "torchvision-resnet18": (8, 16, 19), "torchvision-resnet50": (16, 48, 52),
    "torchvision-mobilenet_v3_small": (6, 28, 28), "torchvision-vit_b_16": (12, 24, 24),
    "timm-resnet18": (8, 16, 19), "timm-mobilenetv3_small_100": (6, 28, 28), "timm-ghostnet_100": (16, 82, 92),
    "timm-vit_tiny_patch16_224": (12, 48, 48), "timm-convnext_atto": (12, 36, 36),
}


def _scramble(model: nn.Module, side: int) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.Linear):  # unit-gain weights (torchvision's MobileNet head is N(0, 0.01))
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
        for name, p in model.named_parameters():
            if p.abs().max() < 1e-4 and not name.endswith("bias"):
                p.copy_(torch.ones_like(p))  # layer-scale gammas
        # BatchNorm running statistics of the data, as after training: otherwise eval-mode activations forget the
        # input within a few layers (and so does its gradient)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.train()
        calibration = torch.rand(8, 3, side, side, generator=g)
        model(calibration)
        model.eval()
        # logits of unit spread: a saturated softmax would leave the attack no cross-entropy gradient
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        scale = float(model(calibration).std())
        head.weight.div_(scale)
        if head.bias is not None:
            head.bias.div_(scale)
    return model


def _build(lib: str, name: str, kwargs: dict, side: int = 16) -> nn.Module:
    if lib == "timm":
        pytest.importorskip("timm", reason="timm is not installed (pip install 'torchrobust[timm]')")
        builder = tr.models.timm_model
    else:
        builder = tr.models.torchvision_model
    torch.manual_seed(0)
    return _scramble(builder(name, num_classes=10, **kwargs), side)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: nn.Module, ref: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert list(now) == list(ref)
    assert all(torch.equal(now[k], ref[k]) for k in ref)


@pytest.mark.parametrize(("lib", "name", "kwargs", "side"), MODELS, ids=IDS)
def test_structural_defaults_round_trip_and_default_evaluation(lib: str, name: str, kwargs: dict,
                                                               side: int) -> None:
    model = _build(lib, name, kwargs, side)
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_out = model(x)
    ref_state = _state(model)
    linear_like = structure.wrappable_layers(model)
    stem, head = linear_like[0], linear_like[-1]

    # defaults come from the structure: inside residual blocks / attention, never the stem or the head
    blocks = structure.residual_blocks(model)
    assert blocks, "no residual block found"
    layers = select_layers(model)
    points = insertion_points(model)
    assert (len(blocks), len(layers), len(points)) == COUNTS[f"{lib}-{name}"]
    assert set(layers) <= set(points)
    assert stem not in layers and head not in layers and stem not in points and head not in points
    shortcuts = {n for b in blocks for n in b.shortcut}
    assert not shortcuts & set(layers)  # shortcut convs get a forged threshold, not NRPM
    assert shortcuts <= set(points)
    if "vit" in name:
        attention = structure.attention_modules(model)
        assert len(attention) == len(blocks)  # one attention module per transformer block
        mlp_linears = [n for n in layers if isinstance(model.get_submodule(n), nn.Linear)]
        assert len(mlp_linears) >= 2 * len(blocks)  # every block's MLP (and timm's qkv/proj too)

    # reprogram -> unreprogram restores the exact model
    robust = reprogram(model, lam=0.5, K=1, backend="eager")
    assert list(nrpm_layers(robust)) == layers
    with torch.no_grad():
        robust_out = robust(x)
    assert torch.isfinite(robust_out).all()
    assert not torch.allclose(robust_out, ref_out, atol=1e-6)  # NRPM changed what the layers compute
    # the evaluation engine attacks the reprogrammed model with the default sweep's first attack, FGSM: one
    # gradient through every NRPM layer. (APGD at the one or two steps a unit test affords starts from a random
    # point of the ball and may end below the clean loss, so it would not show that the gradient arrived.)
    x1 = x[:1]
    with torch.no_grad():
        y1 = robust(x1).argmax(1)
        clean_loss = nn.functional.cross_entropy(robust(x1), y1)
    job = Job("fgsm", "Linf", 0.1, keep_adv=True, all_points=True)
    res = run_plan(robust, x1, y1, [job])
    adv = res.adv[job.key]
    assert adv.shape == x1.shape and float((adv - x1).abs().max()) <= 0.1 + 1e-6
    assert float(res.loss[job.key][0]) > float(clean_loss)  # the gradient reached the input, and the loss rose

    back = unreprogram(robust)
    _assert_same_state(back, ref_state)
    with torch.no_grad():
        assert torch.equal(back(x), ref_out)

    # forge -> unforge restores the exact model
    forged = forge(model, x, c_r=0.25)
    assert [n.rpartition(".")[0] for n, _ in forged_modules(forged)] == points
    with torch.no_grad():
        assert not torch.allclose(forged(x), ref_out, atol=1e-6)  # c_r < 1 clips activations
    restored = unforge(forged)
    _assert_same_state(restored, ref_state)
    with torch.no_grad():
        assert torch.equal(restored(x), ref_out)
    _assert_same_state(model, ref_state)  # the original was never touched


def test_with_normalization_wraps_a_model_and_keeps_its_structure() -> None:
    model = _build("torchvision", "resnet18", {})
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    wrapped = tr.models.with_normalization(model, mean, std)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = model((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
        assert torch.allclose(wrapped(x), expected, atol=1e-6)
    assert wrapped.model is model and not wrapped.training
    assert select_layers(wrapped) == [f"model.{n}" for n in select_layers(model)]
    assert insertion_points(wrapped) == [f"model.{n}" for n in insertion_points(model)]
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in model.state_dict()}  # mean/std: not weights
    with pytest.raises(TorchRobustError, match="already normalises"):
        tr.models.with_normalization(wrapped, mean, std)
    with pytest.raises(TorchRobustError, match="in_channels=3"):
        tr.models.with_normalization(model, (0.5, 0.5), (0.2, 0.2))
    with pytest.raises(TorchRobustError, match="std must be positive"):
        tr.models.with_normalization(model, mean, (0.2, 0.0, 0.2))
    with pytest.raises(TorchRobustError, match="nn.Module"):
        tr.models.with_normalization("resnet18", mean, std)  # type: ignore[arg-type]


class _NoAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu()


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu() + self.down(x)


def test_structure_on_hand_built_models() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), _Residual(), _NoAdd(), nn.Flatten(), nn.Linear(16, 10))
    (block,) = structure.residual_blocks(net)
    assert block == structure.ResidualBlock("1", main=("1.conv",), shortcut=("1.down",))
    assert structure.default_nrpm_layers(net) == ["1.conv"]
    assert structure.default_insertion_points(net) == ["1.conv", "1.down"]
    # no residual block: every replaceable layer (NRPM), every one but the first (forge)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    assert structure.residual_blocks(plain) == []
    assert select_layers(plain) == ["1", "3"] and insertion_points(plain) == ["3"]
    # nn.MultiheadAttention reads its weights directly: nothing inside it is replaced
    mha = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2), "fc": nn.Linear(8, 2)})
    assert structure.attention_modules(mha) == ["attn"] and structure.replaceable_layers(mha) == ["fc"]


def test_bad_inputs_are_one_line_errors() -> None:
    no_layer = nn.Sequential(nn.ReLU(), nn.Flatten())
    with pytest.raises(TorchRobustError, match="no nn.Linear or nn.Conv2d layer to reprogram") as e1:
        reprogram(no_layer)
    with pytest.raises(TorchRobustError, match="no insertion point") as e2:
        forge(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.rand(2, 4))
    with pytest.raises(TorchRobustError, match="unknown torchvision model 'resnt18'; did you mean resnet18") as e3:
        tr.models.torchvision_model("resnt18")
    with pytest.raises(TorchRobustError, match="random weights only"):
        tr.models.torchvision_model("resnet18", weights="DEFAULT")
    assert all("\n" not in str(e.value) for e in (e1, e2, e3))


def test_unknown_timm_name_is_a_one_line_error() -> None:
    pytest.importorskip("timm", reason="timm is not installed (pip install 'torchrobust[timm]')")
    with pytest.raises(TorchRobustError, match="unknown timm model 'resnet81'; did you mean resnet18") as e:
        tr.models.timm_model("resnet81")
    assert "\n" not in str(e.value)
    with pytest.raises(TorchRobustError, match="random weights only"):
        tr.models.timm_model("resnet18", pretrained=True)
