"""torchvision and timm classifiers: structural defaults, exact round trips, and the default evaluation on them.

The default evaluation (``tr.evaluate.evaluate(model, x, y)``: FGSM, APGD-CE, APGD-T on the survivors, worst
case, ε ∈ {0, 0.1, 0.2, 0.3} ℓ∞) runs on each model plain, reprogrammed (NRPM, default layers) and forged (default
insertion points, c_r = 2**-7), on 2 random images labelled with the model's own predictions.

Every model is built without pretrained weights; its normalisation/scale parameters are scrambled (`_scramble`) so
that zero-initialised pieces (timm's zero-init last BatchNorm of residual blocks, torchvision ViT's zero head,
ConvNeXt's 1e-6 layer scale) and tiny heads (torchvision's MobileNet) do not hide the layers the defences replace
or starve the attack of gradient.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import torchrobust as tr
from torchrobust.errors import TorchRobustError
from torchrobust.evaluate import SweepResult, engine
from torchrobust.evaluate.engine import Job, run_plan
from torchrobust.evaluate.sweeps import DEFAULT_ATTACKS
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
def test_structural_defaults_round_trips_and_a_gradient_through_nrpm(lib: str, name: str, kwargs: dict,
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
    # gradient through every NRPM layer, on every model in the default suite (the full default evaluation of the
    # reprogrammed models is test_full_default_evaluation, slow-marked for six of them)
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
    # a model whose only linear maps sit inside nn.MultiheadAttention (read directly, never replaced): nothing to
    # reprogram; a model with no Linear/Conv2d at all: no insertion point
    with pytest.raises(TorchRobustError, match="no nn.Linear or nn.Conv2d layer to reprogram") as e4:
        reprogram(nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2)}))
    with pytest.raises(TorchRobustError, match="no insertion point") as e5:
        forge(no_layer, torch.rand(2, 4))
    # arguments the architecture rejects with an assert (torchvision ViT: image_size not a multiple of 16)
    with pytest.raises(TorchRobustError, match=r"torchvision model 'vit_b_16' rejects the arguments \['image_size'\]"
                       ) as e6:
        tr.models.torchvision_model("vit_b_16", image_size=15)
    assert all("\n" not in str(e.value) for e in (e1, e2, e3, e4, e5, e6))


def test_unknown_timm_name_is_a_one_line_error() -> None:
    pytest.importorskip("timm", reason="timm is not installed (pip install 'torchrobust[timm]')")
    with pytest.raises(TorchRobustError, match="unknown timm model 'resnet81'; did you mean resnet18") as e:
        tr.models.timm_model("resnet81")
    assert "\n" not in str(e.value)
    with pytest.raises(TorchRobustError, match="random weights only"):
        tr.models.timm_model("resnet18", pretrained=True)
    with pytest.raises(TorchRobustError, match="unknown timm model 'qqq_not_a_model'; see timm's model list") as e2:
        tr.models.timm_model("qqq_not_a_model")
    # arguments a timm constructor rejects: an unknown keyword, an assert (ViT), a ValueError, an IndexError
    bad = [("resnet18", {"img_size": 16}), ("vit_tiny_patch16_224", {"global_pool": "bogus"}),
           ("convnext_atto", {"global_pool": "bogus"}), ("convnext_atto", {"depths": (1,)})]
    for name, kwargs in bad:
        with pytest.raises(TorchRobustError, match=f"timm model '{name}' rejects the arguments") as e3:
            tr.models.timm_model(name, **kwargs)
        assert "\n" not in str(e3.value)
    assert "\n" not in str(e2.value)


def test_missing_timm_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` sees when timm is not installed
    with pytest.raises(TorchRobustError, match=r"timm is not installed; pip install 'torchrobust\[timm\]'") as e:
        tr.models.timm_model("resnet18")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ the library's default evaluation
VARIANTS = ("plain", "nrpm", "forged")
#: (model-variant) ids whose full default evaluation takes longer than a unit test affords: 28–294 s each (541 s
#: together) at load 6 on the 2-core VM (`pytest -m slow tests/test_ecosystem_models.py --durations=10`). Fewer APGD
#: iterations would not make them fast: APGD stops a point once it is broken, and these break within 2–8 steps at
#: ε = 0.3 (resnet50-nrpm after ~100, and not within 5); their cost is the NRPM gradient itself (depthwise convs run
#: group by group, vit_b_16's 768-wide linears): 5-step APGD at one ε still took 9–46 s each. In the default suite
#: the structural test above sends FGSM through every NRPM layer of every model instead.
SLOW_FULL = {"torchvision-resnet50-nrpm", "torchvision-mobilenet_v3_small-nrpm", "torchvision-vit_b_16-nrpm",
             "timm-mobilenetv3_small_100-nrpm", "timm-ghostnet_100-nrpm", "timm-convnext_atto-nrpm"}


def _variant(model: nn.Module, variant: str, x: torch.Tensor) -> nn.Module:
    if variant == "nrpm":
        return reprogram(model, lam=0.5, K=1, backend="eager")
    if variant == "forged":  # the paper's default c_r = 2**-7, calibrated on the batch itself
        return forge(model, x)
    return model


def _default_evaluation(model: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch,
                        **kwargs: object) -> SweepResult:
    """``tr.evaluate.evaluate(model, x, y, **kwargs)`` (the default attack set: FGSM, APGD-CE, APGD-T on the
    survivors, per-example worst case) with y the model's own predictions, and the checks every evaluation must
    pass: every result inside its ε-ball and [0, 1] (the engine's check ran on every attacked batch, and we
    recheck), robust <= clean per example, the model's per-submodule modes and its weights/buffers untouched,
    the cost of every attack counted."""
    with torch.no_grad():
        y = model(x).argmax(1)  # every point is correct clean: there is something to attack
    model.train()
    next(model.children()).eval()  # mixed modes, which a blanket model.train(was) would not restore
    modes = [m.training for m in model.modules()]
    ref_state = _state(model)
    checked: list[tuple[str, float, torch.Tensor, torch.Tensor]] = []
    real_check = engine._check_budget

    def spy(job: Job, threat: object, x_adv: torch.Tensor, xb: torch.Tensor, tol: float) -> None:
        real_check(job, threat, x_adv, xb, tol)
        checked.append((job.label, float(job.eps), x_adv.detach().clone(), xb.detach().clone()))

    monkeypatch.setattr(engine, "_check_budget", spy)
    res = tr.evaluate.evaluate(model, x, y, **kwargs)
    monkeypatch.undo()

    assert [m.training for m in model.modules()] == modes  # every submodule's mode restored
    _assert_same_state(model, ref_state)  # no BatchNorm statistics or forged maxima updated
    assert res.attacks == list(DEFAULT_ATTACKS)
    # NRPM layers and forged thresholds declare a BPDA surrogate the default attacks do not use: their numbers are
    # marked as upper bounds (BPDA_NOT_EVALUATED); a plain model's are reliable
    declared = any(getattr(m, "bpda_surrogate", None) is not None for m in model.modules())
    assert [f["code"] for f in res.flags] == (["BPDA_NOT_EVALUATED"] if declared else [])
    assert bool(res.clean.all())
    for a in res.attacks:  # robust implies clean, per example; the worst case is below every attack
        assert not bool((res.robust[a] & ~res.clean).any())
        assert not bool((res.worst & ~res.robust[a]).any())
    eps = [e for e in res.eps if e > 0]
    n_eps, n = len(eps), len(x)
    counts = res.config["counts"]
    assert counts["fgsm"]["gradient"] == n * n_eps  # one gradient per point and ε
    assert counts["apgd-ce"]["gradient"] >= n * n_eps  # APGD-CE attacked every point at every ε
    # APGD-T ran exactly where points survived FGSM and APGD-CE (AutoAttack's protocol), >= 1 gradient each
    survivors = sum(int((res.robust["fgsm"][j] & res.robust["apgd-ce"][j]).sum())
                    for j, e in enumerate(res.eps) if e > 0)
    assert (counts["apgd-t"]["gradient"] >= survivors) and ((counts["apgd-t"]["gradient"] == 0) == (survivors == 0))
    assert all(res.seconds[a] > 0 for a in ("fgsm", "apgd-ce"))
    # the engine's budget check ran on every attacked batch (here: one batch per attack that had points), and holds
    ran = {(a, e) for a, e, _, _ in checked}
    expected = {(a, e) for e in eps for a in ("fgsm", "apgd-ce")}
    expected |= {("apgd-t", e) for j, e in enumerate(res.eps) if e > 0
                 and bool((res.robust["fgsm"][j] & res.robust["apgd-ce"][j]).any())}
    assert ran == expected and len(checked) == len(expected)
    for _, e, x_adv, xb in checked:
        assert float((x_adv - xb).abs().max()) <= e + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    return res


def _eval_cases(slow: set[str]) -> list:
    out = []
    for lib, name, kwargs, side in MODELS:
        for v in VARIANTS:
            case_id = f"{lib}-{name}-{v}"
            marks = [pytest.mark.slow] if case_id in slow else []
            out.append(pytest.param(lib, name, kwargs, side, v, marks=marks, id=case_id))
    return out


@pytest.mark.parametrize(("lib", "name", "kwargs", "side", "variant"), _eval_cases(SLOW_FULL))
def test_full_default_evaluation(lib: str, name: str, kwargs: dict, side: int, variant: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``tr.evaluate.evaluate(model, x, y)`` with nothing but defaults: ε ∈ {0, 0.1, 0.2, 0.3} ℓ∞, FGSM + APGD-CE
    + APGD-T (100 steps each), on 2 random images; the result is labelled strong, and at ε = 0.3 the attacks
    break the (untrained) model: the gradient reaches the input through every NRPM layer / forged threshold."""
    base = _build(lib, name, kwargs, side)
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    model = _variant(base, variant, x)
    res = _default_evaluation(model, x, monkeypatch)
    assert res.eps == [0.0, 0.1, 0.2, 0.3] and res.threat == "Linf"
    assert res.strength == "strong" and res.to_dict()["strength"] == "strong"
    acc = res.accuracy()
    assert acc[0] == 1.0 and all(a <= acc[0] for a in acc) and acc[-1] < 1.0

