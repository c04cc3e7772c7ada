"""--weights on the paper presets: the reprogramming paper's released MNIST checkpoints (layouts of its code's
``mlp3_mnist_model.pth`` and ``lenet_mnist_model.pth``, written here with random weights) load through the safe
loader onto the zoo models and compute what the paper's code computes; bad files give one-line errors."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from torchrobust.errors import TorchRobustError
from torchrobust.experiments.paper_weights import load_paper_weights, reprogram_paper


def _mlp_sd(widths=(256, 64), lmbd: float | None = 0.5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [784, *widths, 10]
    sd: dict[str, torch.Tensor] = {}
    for i in range(len(sizes) - 1):
        sd[f"fc{i + 1}.weight"] = torch.randn(sizes[i + 1], sizes[i], generator=g) * 0.05
        if lmbd is not None:  # the paper code's RobustSum registers λ as robust_sum.lmbd, shape (1,)
            sd[f"fc{i + 1}.robust_sum.lmbd"] = torch.tensor([lmbd + 0.1 * i])
        sd[f"fc{i + 1}.bias"] = torch.randn(sizes[i + 1], generator=g) * 0.05
    return sd


def _lenet_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv1.weight": (10, 1, 5, 5), "conv1.bias": (10,), "conv2.weight": (20, 10, 5, 5),
              "conv2.bias": (20,), "fc1.weight": (50, 320), "fc1.bias": (50,), "fc2.weight": (10, 50),
              "fc2.bias": (10,)}
    return {k: torch.randn(*s, generator=g) * 0.2 for k, s in shapes.items()}


def _x(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _irls(x: torch.Tensor, w: torch.Tensor, lam: float, K: int, eps: float) -> torch.Tensor:
    """The paper code's robust sum written out: z0 = x Wᵀ; K reweighted means of the products a_d x_d, ×D."""
    D = w.shape[1]
    z0 = x @ w.T
    prod = x[:, None, :] * w[None, :, :]
    z = z0
    for _ in range(K):
        r = 1.0 / ((prod - z[..., None] / D).abs() + eps)
        z = D * ((r / r.sum(-1, keepdim=True)) * prod).sum(-1)
    return lam * z0 + (1 - lam) * z


def test_mlp_layout_loads_and_matches_reference(tmp_path):
    sd = _mlp_sd()
    path = tmp_path / "mlp3_mnist_model.pth"
    torch.save(sd, path)
    pw = load_paper_weights(path)
    assert pw.arch == "mlp" and pw.lams == pytest.approx({"fc1": 0.5, "fc2": 0.6, "fc3": 0.7})
    x = _x()
    h = x.flatten(1)
    for i in (1, 2, 3):  # no activation between layers (the paper's MLP)
        h = torch.addmm(sd[f"fc{i}.bias"], h, sd[f"fc{i}.weight"].T)
    with torch.no_grad():
        assert torch.equal(pw.model(x), h)
    # NRPM with the file's λ per layer, K = 1 and the code's MLP ε = 5e-5
    robust = reprogram_paper(pw, K=1, irls_eps=5e-5, backend="eager")
    h = x.flatten(1)
    for i, lam in zip((1, 2, 3), (0.5, 0.6, 0.7), strict=True):
        h = _irls(h, sd[f"fc{i}.weight"], lam, 1, 5e-5) + sd[f"fc{i}.bias"]
    with torch.no_grad():
        torch.testing.assert_close(robust(x), h, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(robust(x), pw.model(x), atol=1e-3)  # the NRPM part does change the logits


def test_mlp_sigmoid_lambda_and_one_layer_variant(tmp_path):
    path = tmp_path / "epoch9.safetensors"
    from safetensors.torch import save_file

    save_file(_mlp_sd(widths=(), lmbd=2.0), str(path))  # --num_linear 1, raw λ of a --paradigm 2 run
    pw = load_paper_weights(path, "mlp")
    assert [n for n, _ in pw.model.named_children() if n.startswith("fc")] == ["fc1"]
    with pytest.raises(TorchRobustError, match="sigmoid"):
        reprogram_paper(pw, K=1, irls_eps=5e-5, backend="eager")  # raw 2.0 is no weight in [0, 1]
    robust = reprogram_paper(pw, K=2, irls_eps=5e-5, backend="eager", lam_transform="sigmoid")
    lam = float(torch.sigmoid(torch.tensor(2.0)))
    sd = _mlp_sd(widths=(), lmbd=2.0)
    ref = _irls(_x().flatten(1), sd["fc1.weight"], lam, 2, 5e-5) + sd["fc1.bias"]
    with torch.no_grad():
        torch.testing.assert_close(robust(_x()), ref, rtol=1e-4, atol=1e-4)
    # a --paradigm 1 checkpoint whose raw λ left [0, 1]: used as-is, as the code does (λ = 2 extrapolates past LPM)
    unb = reprogram_paper(pw, K=2, irls_eps=5e-5, backend="eager", lam_transform="unbounded")
    assert unb.fc1.lam == 2.0 and unb.fc1.lam_parametrization == "raw"
    ref = _irls(_x().flatten(1), sd["fc1.weight"], 2.0, 2, 5e-5) + sd["fc1.bias"]
    with torch.no_grad():
        torch.testing.assert_close(unb(_x()), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(TorchRobustError, match="unknown lam_transform 'logit'"):
        reprogram_paper(pw, K=1, irls_eps=5e-5, lam_transform="logit")


def test_lenet_layout_drops_conv_bias_like_the_paper_code(tmp_path):
    sd = _lenet_sd()
    path = tmp_path / "lenet_mnist_model.pth"
    torch.save(sd, path)
    x = _x()

    def ref(conv_bias: bool) -> torch.Tensor:
        h = F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"] if conv_bias else None)
        h = F.relu(F.max_pool2d(h, 2))
        h = F.conv2d(h, sd["conv2.weight"], sd["conv2.bias"] if conv_bias else None)
        h = F.relu(F.max_pool2d(h, 2)).flatten(1)
        h = F.relu(h @ sd["fc1.weight"].T + sd["fc1.bias"])
        return h @ sd["fc2.weight"].T + sd["fc2.bias"]

    pw = load_paper_weights(path, "lenet")
    assert pw.lams is None and not pw.conv_bias
    with torch.no_grad():
        torch.testing.assert_close(pw.model(x), ref(False), rtol=1e-5, atol=1e-5)
        kept = load_paper_weights(path, conv_bias=True).model(x)
        torch.testing.assert_close(kept, ref(True), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(kept, ref(False), atol=1e-3)
    robust = reprogram_paper(pw, K=1, irls_eps=1e-3, backend="eager", lam=0.3)
    assert {n for n, m in robust.named_modules() if type(m).__name__ == "NRPMConv2d"} == {"conv1", "conv2"}
    with pytest.raises(TorchRobustError, match="stores no"):
        reprogram_paper(pw, K=1, irls_eps=1e-3, backend="eager")


@pytest.mark.parametrize("case,match", [
    ("missing", "missing key 'fc2.bias'"),
    ("extra", "unexpected key"),
    ("shape", "fc2.weight has shape"),
    ("nan", "NaN"),
    ("lenet-as-mlp", "lenet layout but mlp"),
    ("foreign", "neither the paper's MLP"),
    ("lenet-missing", "not the paper's LeNet layout"),
    ("lam-size", "one number"),
])
def test_bad_layouts_are_one_line_errors(tmp_path, case, match):
    sd = _mlp_sd()
    arch = None
    if case == "missing":
        del sd["fc2.bias"]
    elif case == "extra":
        sd["fc4.running_mean"] = torch.zeros(3)
    elif case == "shape":
        sd["fc2.weight"] = torch.zeros(64, 100)
    elif case == "nan":
        sd["fc1.weight"][0, 0] = float("nan")
    elif case == "lenet-as-mlp":
        sd, arch = _lenet_sd(), "mlp"
    elif case == "foreign":
        sd = {"layer.0.weight": torch.zeros(3, 3)}
    elif case == "lenet-missing":
        sd = _lenet_sd()
        del sd["fc2.weight"]
    elif case == "lam-size":
        sd["fc1.robust_sum.lmbd"] = torch.zeros(3)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with pytest.raises(TorchRobustError, match=match) as info:
        load_paper_weights(path, arch)
    assert "\n" not in str(info.value)


class _Payload:
    """Unpickling this would run a shell command; torch.load(weights_only=True) must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    sd = _mlp_sd()
    sd["fc1.robust_sum.lmbd"] = _Payload(str(marker))  # type: ignore[assignment]
    torch.save(sd, path)  # pickling only records the call
    with pytest.raises(TorchRobustError, match="weights-only"):
        load_paper_weights(path)
    assert not marker.exists()
    from torchrobust.cli import main

    rc = main(["paper", "table1", "--weights", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "weights-only" in err
    assert not marker.exists()


def test_cli_weights_wrong_arch_and_missing_file(tmp_path, capsys):
    path = tmp_path / "lenet.pth"
    torch.save(_lenet_sd(), path)
    from torchrobust.cli import main

    rc = main(["paper", "table8", "--weights", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "mlp" in err
    rc = main(["paper", "lenet", "--weights", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not found" in err
    rc = main(["paper", "adaptive", "--weights", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--weights" in err


def test_preset_uses_the_loaded_backbone(tmp_path):
    """table8 (quick profile) with --weights: its LPM row (K = 0) is the loaded model's FGSM accuracy, and the
    file's provenance is recorded."""
    from torchrobust.experiments.reprogramming import EPS_GRID, PROFILES, fgsm_sweep, load_mnist, run

    path = tmp_path / "mlp3.pth"
    torch.save(_mlp_sd(lmbd=0.5), path)
    res = run("table8", tmp_path / "o", quick=True, weights=path)
    assert res["config"]["weights"]["sha256"] and res["config"]["weights"]["lams"]["fc1"] == pytest.approx(0.5)
    pw = load_paper_weights(path)
    prof = PROFILES["quick"]
    *_, x_te, y_te = load_mnist(prof, 0)
    n = prof.n_test
    expect = [round(100 * float(v), 2) for v in fgsm_sweep(pw.model, x_te[:n], y_te[:n], EPS_GRID).float().mean(1)]
    k0 = next(r for r in res["rows"] if r["row"].endswith("K=0"))
    assert k0["fgsm"] == expect
