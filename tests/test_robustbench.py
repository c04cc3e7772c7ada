"""Loading RobustBench checkpoints from local files (RobustBench and DeepMind key layouts), no download."""

from __future__ import annotations

import pytest
import torch

import torchrobust as tr
from torchrobust.errors import TorchRobustError
from torchrobust.forging import forge, forged_modules
from torchrobust.robustbench import DM_NORMALIZATION, infer_architecture, load_robustbench, read_state_dict

X = torch.rand(2, 3, 32, 32)


def _wrn(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return tr.models.create("wideresnet", depth=10, widen_factor=2, **kw).eval()


def _dm(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return tr.models.create("wideresnet_dm", depth=10, widen_factor=1, **kw).eval()


def test_wrn_state_dict_wrapper_and_module_prefix(tmp_path) -> None:
    ref = _wrn()
    path = tmp_path / "Chen2021LTD_small.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, path)
    assert set(read_state_dict(path)) == set(ref.state_dict())
    for arch, kw in (("wideresnet", {"depth": 10, "widen_factor": 2}), ("auto", {})):
        model = load_robustbench(path, arch=arch, **kw)
        assert not model.training
        assert torch.equal(model(X), ref(X))
        assert model.torchrobust_spec["name"] == "wideresnet"
        assert model.torchrobust_spec["kwargs"]["mean"] is None  # RobustBench WRNs take raw [0, 1] input


def test_model_state_dict_wrapper_and_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    ref = _wrn()
    torch.save({"model_state_dict": ref.state_dict()}, tmp_path / "a.pth")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "b.safetensors"))
    for name in ("a.pth", "b.safetensors"):
        assert torch.equal(load_robustbench(tmp_path / name, arch="auto")(X), ref(X))


def test_sub_block1_is_detected(tmp_path) -> None:
    ref = _wrn(sub_block1=True)
    torch.save(ref.state_dict(), tmp_path / "c100.pt")
    name, kw = infer_architecture(ref.state_dict())
    assert name == "wideresnet" and kw == {"depth": 10, "widen_factor": 2, "sub_block1": True}
    with pytest.raises(TorchRobustError, match="100"):
        load_robustbench(tmp_path / "c100.pt", arch="auto", dataset="cifar100")  # 10-class head
    assert torch.equal(load_robustbench(tmp_path / "c100.pt", arch="auto")(X), ref(X))


def test_wrn_normalisation_from_mu_sigma_keys_or_arguments(tmp_path) -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ref = _wrn(mean=mean, std=std)
    state = dict(ref.state_dict())
    state["mu"] = torch.tensor(mean).view(1, 3, 1, 1)
    state["sigma"] = torch.tensor(std).view(1, 3, 1, 1)
    torch.save(state, tmp_path / "norm.pt")
    model = load_robustbench(tmp_path / "norm.pt", arch="auto")
    assert torch.allclose(model(X), ref(X), atol=1e-6)
    torch.save(ref.state_dict(), tmp_path / "plain.pt")
    model2 = load_robustbench(tmp_path / "plain.pt", arch="auto", mean=mean, std=std)
    assert torch.allclose(model2(X), ref(X), atol=1e-6)
    assert not torch.allclose(load_robustbench(tmp_path / "plain.pt", arch="auto")(X), ref(X), atol=1e-4)


def test_dm_layout_normalisation_inside_the_model(tmp_path) -> None:
    m, s = DM_NORMALIZATION["cifar10"]
    ref = _dm(mean=m, std=s)
    with_buffers = tmp_path / "dm.pt"
    torch.save(ref.state_dict(), with_buffers)
    model = load_robustbench(with_buffers, arch="wideresnet_dm", depth=10, widen_factor=1)
    assert torch.equal(model(X), ref(X))
    assert torch.allclose(model.mean.flatten(), torch.tensor(m))
    state = dict(ref.state_dict())
    del state["mean"], state["std"]
    torch.save(state, tmp_path / "dm_nobuf.pt")
    model = load_robustbench(tmp_path / "dm_nobuf.pt", arch="auto")  # RobustBench's CIFAR-10 constants
    assert torch.allclose(model(X), ref(X), atol=1e-6)
    assert model.torchrobust_spec["kwargs"]["activation"] == "silu"


def test_loaded_model_forges_and_round_trips_through_checkpoint(tmp_path) -> None:
    ref = _wrn()
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    model = load_robustbench(tmp_path / "w.pt", arch="auto")
    f = forge(model, torch.rand(8, 3, 32, 32), c_r=2**-7)
    assert len(forged_modules(f)) == len(ref.forge_insertion_points())
    back = tr.load(tr.save(f, tmp_path / "forged.safetensors"))
    assert torch.equal(back(X), f(X))


def test_mismatch_and_bad_input_errors(tmp_path) -> None:
    torch.save(_dm().state_dict(), tmp_path / "dm.pt")
    with pytest.raises(TorchRobustError, match=r"does not match arch='wideresnet'.*DeepMind"):
        load_robustbench(tmp_path / "dm.pt", arch="wideresnet", depth=10, widen_factor=1)
    torch.save(_wrn().state_dict(), tmp_path / "w.pt")
    with pytest.raises(TorchRobustError, match=r"WRN-10-2 in the RobustBench WideResNet layout"):
        load_robustbench(tmp_path / "w.pt", arch="wideresnet", depth=16, widen_factor=2)
    with pytest.raises(TorchRobustError, match=r"has shape"):
        load_robustbench(tmp_path / "w.pt", arch="wideresnet", depth=10, widen_factor=3)
    with pytest.raises(TorchRobustError, match="unknown RobustBench architecture"):
        load_robustbench(tmp_path / "w.pt", arch="resnet18")
    with pytest.raises(TorchRobustError, match="unknown dataset"):
        load_robustbench(tmp_path / "w.pt", dataset="mnist")
    with pytest.raises(TorchRobustError, match="not found"):
        load_robustbench(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TorchRobustError, match="cannot read"):
        load_robustbench(tmp_path / "junk.pt")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(TorchRobustError, match="neither"):
        load_robustbench(tmp_path / "other.pt", arch="auto")


# ------------------------------------------------------------------ against RobustBench's own classes (PyPI package)
# The architecture files are loaded one by one: `import robustbench` runs the package's __init__, which imports
# `autoattack` (the PyPI `pyautoattack` >= 0.2 installs it as `pyautoattack`) and `pkg_resources` (gone from
# setuptools >= 81); the architecture files need only torch.
def _robustbench_architecture(stem: str):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("robustbench is not installed (pip install 'torchrobust[robustbench]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "model_zoo" / "architectures" / f"{stem}.py"
    file_spec = importlib.util.spec_from_file_location(f"_robustbench_{stem}", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def _scramble_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so equal outputs mean equal computations."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding: our zoo copies pool with ``adaptive_avg_pool2d(·, 1)`` where RobustBench's
    classes call ``avg_pool2d(·, 8)``, which sums in another order (differences ~1e-8 on unit-scale logits)."""
    return bool(torch.allclose(a, b, rtol=0, atol=1e-6)) and bool(torch.equal(a.argmax(1), b.argmax(1)))


def _save_layouts(state: dict, tmp_path) -> list:
    """The checkpoint layouts RobustBench's zoo ships: plain, under 'state_dict', DataParallel 'module.' keys."""
    paths = [tmp_path / "plain.pt", tmp_path / "wrapped.pt", tmp_path / "dataparallel.pt"]
    torch.save(state, paths[0])
    torch.save({"state_dict": state, "epoch": 100}, paths[1])
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, paths[2])
    return paths


def test_real_robustbench_wideresnet_loads_with_identical_outputs(tmp_path) -> None:
    wrn = _robustbench_architecture("wide_resnet")
    torch.manual_seed(0)
    ref = _scramble_batchnorm(wrn.WideResNet(depth=10, num_classes=10, widen_factor=2))
    assert set(ref.state_dict()) == set(_wrn().state_dict())  # our zoo copy has RobustBench's key layout
    for path in _save_layouts(ref.state_dict(), tmp_path):
        for arch, kw in (("auto", {}), ("wideresnet", {"depth": 10, "widen_factor": 2})):
            model = load_robustbench(path, arch=arch, **kw)
            assert _same(model(X), ref(X)), (path.name, arch)
    # the other direction: RobustBench's class serves in place of ours for a file our loader reads
    back = wrn.WideResNet(depth=10, num_classes=10, widen_factor=2).eval()
    back.load_state_dict(read_state_dict(tmp_path / "dataparallel.pt"))
    assert torch.equal(back(X), ref(X))


def test_real_robustbench_wideresnet_sub_block1_and_mu_sigma_buffers(tmp_path) -> None:
    wrn = _robustbench_architecture("wide_resnet")

    class WithNormalization(wrn.WideResNet):
        """The pattern of RobustBench's zoo entries that normalise (e.g. Rony2019DecouplingNet): mu/sigma
        buffers in the state dict, applied before the WideResNet."""

        def __init__(self) -> None:
            super().__init__(depth=10, num_classes=100, widen_factor=2, sub_block1=True)
            self.register_buffer("mu", torch.tensor([0.507, 0.487, 0.441]).view(1, 3, 1, 1))
            self.register_buffer("sigma", torch.tensor([0.267, 0.256, 0.276]).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward((x - self.mu) / self.sigma)

    torch.manual_seed(0)
    ref = _scramble_batchnorm(WithNormalization())
    for path in _save_layouts(ref.state_dict(), tmp_path):
        model = load_robustbench(path, arch="auto", dataset="cifar100")
        assert model.torchrobust_spec["kwargs"]["sub_block1"] is True
        assert model.torchrobust_spec["kwargs"]["mean"] == pytest.approx([0.507, 0.487, 0.441])
        assert _same(model(X), ref(X)), path.name
    assert not torch.allclose(load_robustbench(tmp_path / "plain.pt", arch="auto", dataset="cifar100",
                                               mean=(0.0,) * 3, std=(1.0,) * 3)(X), ref(X), atol=1e-4)


@pytest.mark.parametrize("activation", ["relu", "swish"])
def test_real_robustbench_dm_wideresnet_loads_with_identical_outputs(tmp_path, activation: str) -> None:
    dm = _robustbench_architecture("dm_wide_resnet")
    fn = torch.nn.ReLU if activation == "relu" else dm.Swish
    torch.manual_seed(0)
    ref = _scramble_batchnorm(dm.DMWideResNet(num_classes=10, depth=10, width=1, activation_fn=fn))
    # the constants our loader falls back to are the ones RobustBench's class defaults to
    assert DM_NORMALIZATION["cifar10"] == (dm.CIFAR10_MEAN, dm.CIFAR10_STD)
    assert DM_NORMALIZATION["cifar100"] == (dm.CIFAR100_MEAN, dm.CIFAR100_STD)
    for path in _save_layouts(ref.state_dict(), tmp_path):  # mean/std are non-persistent: not in the files
        if activation == "relu":
            model = load_robustbench(path, arch="wideresnet_dm", depth=10, widen_factor=1, activation="relu")
        else:
            model = load_robustbench(path, arch="auto")  # SiLU, the activation of RobustBench's DM models
        assert _same(model(X), ref(X)), path.name


def test_real_robustbench_preact_resnet_matches_the_zoo_copy() -> None:
    """RobustBench's ``PreActResNet`` with ``PreActBlockV2`` (shortcut from the pre-activation, no BN before the
    head) is our ``preact_resnet18``: same state-dict keys and shapes, same outputs. Its ``PreActBlock`` (shortcut
    from the block input, Wong2020Fast) and ``bn_before_fc`` variants are other networks: ``load_robustbench`` does
    not take PreActResNet files; load them into RobustBench's class."""
    rn = _robustbench_architecture("resnet")
    torch.manual_seed(0)
    ref = _scramble_batchnorm(rn.PreActResNet(rn.PreActBlockV2, [2, 2, 2, 2]))
    ours = tr.models.create("preact_resnet18").eval()
    ours.load_state_dict(ref.state_dict())
    assert _same(ours(X), ref(X))
    other = _scramble_batchnorm(rn.PreActResNet(rn.PreActBlock, [2, 2, 2, 2]))
    ours.load_state_dict(other.state_dict())
    assert not torch.allclose(ours(X), other(X), atol=1e-3)
