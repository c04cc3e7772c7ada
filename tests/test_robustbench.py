"""Loading RobustBench checkpoints from local files (RobustBench and DeepMind key layouts), no download."""

from __future__ import annotations

import pytest
import torch

import torchrobust as tr
from torchrobust.errors import TorchRobustError
from torchrobust.forge import forge, forged_modules
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
