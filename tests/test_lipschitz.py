"""Empirical Lipschitz constants (Chen et al., arXiv 2406.19622: Eq. 5, Definition 1, Lemma 2)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

import torchrobust as tr
from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.lipschitz import (
    LipschitzReport,
    empirical_lipschitz,
    gershgorin_bound,
    linear_adjoint,
    linear_part,
    lipschitz_report,
    local_lipschitz,
    masked_spectral_norm,
    spectral_norm,
)
from torchrobust.forging import forge, forged_modules


def _dense(conv: nn.Conv2d, shape: tuple[int, ...]) -> torch.Tensor:
    """The convolution (without bias) as an explicit matrix on flattened inputs of ``shape``."""
    n = math.prod(shape)
    eye = torch.eye(n, dtype=torch.float64).view(n, *shape)
    return linear_part(conv, eye, conv.weight.detach().double()).flatten(1).T


def test_linear_spectral_norm_is_exact_and_attained_by_top_singular_vector() -> None:
    lin = nn.Linear(12, 7)
    w = lin.weight.detach().double()
    _, s, vh = torch.linalg.svd(w)
    assert spectral_norm(lin) == pytest.approx(s[0].item(), rel=1e-12)
    x = torch.randn(200, 12, dtype=torch.float64)
    ratios = (x @ w.T).norm(dim=1) / x.norm(dim=1)
    assert ratios.max().item() <= s[0].item() * (1 + 1e-12)  # Definition 1 <= sigma_max
    top = vh[0].to(torch.float32).unsqueeze(0)
    rows = empirical_lipschitz(nn.Sequential(lin), top, layers=["0"], n=None)
    assert rows[0]["emp_before"] == pytest.approx(s[0].item(), rel=1e-6)  # equality for v_1
    assert math.isnan(rows[0]["emp_after"]) and rows[0]["lemma2_holds"] is None


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 7, 7)),
        (nn.Conv2d(2, 4, 3, stride=2, padding=0), (2, 8, 8)),
        (nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2), (4, 6, 6)),
        (nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 5, 5)),
    ],
)
def test_conv_adjoint_and_power_iteration_match_dense_matrix(conv: nn.Conv2d, shape: tuple[int, ...]) -> None:
    w = conv.weight.detach().double()
    v = torch.randn(3, *shape, dtype=torch.float64)
    av = linear_part(conv, v, w)
    u = torch.randn_like(av)
    assert torch.allclose((av * u).sum(), (v * linear_adjoint(conv, u, shape, w)).sum(), atol=1e-10)
    m = _dense(conv, shape)
    assert spectral_norm(conv, shape) == pytest.approx(torch.linalg.matrix_norm(m, 2).item(), rel=1e-5)
    mask = torch.rand(shape) > 0.4
    masked = torch.linalg.matrix_norm(m[:, mask.flatten()], 2).item()
    assert masked_spectral_norm(conv, mask) == pytest.approx(masked, rel=1e-5)


def test_linear_masked_norm_and_gershgorin() -> None:
    lin = nn.Linear(10, 6)
    w = lin.weight.detach().double()
    mask = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 1, 0, 1], [0, 0, 0, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    expected = max(torch.linalg.matrix_norm(w[:, r], 2).item() for r in mask)
    assert masked_spectral_norm(lin, mask) == pytest.approx(expected, rel=1e-12)  # max over token rows
    assert masked_spectral_norm(lin, mask) <= spectral_norm(lin)
    a = w.T @ w
    g = gershgorin_bound(lin)
    assert g >= torch.linalg.eigvalsh(a).max().item() - 1e-12  # Theorem 1 bounds lambda_max(A)
    assert g == pytest.approx((a.abs().sum(1)).max().item(), rel=1e-12)
    assert gershgorin_bound(lin, mask) <= g + 1e-12  # Lemma 2's proof: discs move towards 0 and shrink
    with pytest.raises(TorchRobustError, match="nn.Linear"):
        gershgorin_bound(nn.Conv2d(1, 1, 3))


def test_forged_mlp_lemma2_and_bounds_hold() -> None:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.rand(128, 1, 4, 4)
    f = forge(m, x, c_r=0.25)
    rows = empirical_lipschitz(f, x, lemma2_samples=8)
    assert [r["name"] for r in rows] == ["3", "5"]
    for r in rows:
        assert r["kind"] == "linear"
        assert r["emp_before"] <= r["sigma_max"] * (1 + 1e-9)
        assert r["emp_after"] <= r["sigma_max"] * (1 + 1e-9)
        assert r["masked_sigma_max"] <= r["masked_sigma_before"] * (1 + 1e-9)
        assert r["masked_sigma_before"] <= r["sigma_max"] * (1 + 1e-9)
        assert r["lemma2_holds"] is True
        assert r["gershgorin_after"] <= r["gershgorin_before"] + 1e-9 <= r["gershgorin_full"] + 2e-9
        assert 0 < r["zero_fraction"] < 1
        assert isinstance(r["emp_reduced"], bool)


def test_forged_conv_model_lemma2_holds() -> None:
    m = tr.models.create("wideresnet", depth=10, widen_factor=1).eval()
    x = torch.rand(8, 3, 16, 16)
    f = forge(m, x, c_r=2**-3)
    rows = empirical_lipschitz(f, x, lemma2_samples=1, n_iter=300)
    assert len(rows) == len(forged_modules(f))
    for r in rows:
        assert r["kind"] == "conv" and len(r["input_shape"]) == 3
        assert r["emp_before"] <= r["sigma_max"] * (1 + 1e-4)
        assert r["lemma2_holds"] is True
        assert math.isnan(r["gershgorin_before"])


def test_local_lipschitz_of_linear_model_is_bounded_by_sigma() -> None:
    lin = nn.Linear(8, 5)
    x = torch.rand(20, 8)
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    r = local_lipschitz(lin, x, x_adv)
    assert r.shape == (20,)
    w = lin.weight.detach().double()
    d = (x_adv - x).double()
    assert torch.allclose(r, (d @ w.T).norm(dim=1) / d.norm(dim=1), rtol=1e-5)
    assert r.max().item() <= spectral_norm(lin) * (1 + 1e-5)
    assert torch.isnan(local_lipschitz(lin, x, x)).all()
    with pytest.raises(TorchRobustError, match="same shape"):
        local_lipschitz(lin, x, x[:3])


def test_lipschitz_report_with_attack_writes_tables(tmp_path) -> None:
    m = tr.models.create("lenet")
    x = torch.rand(24, 1, 28, 28)
    y = torch.randint(0, 10, (24,))
    f = forge(m, x, c_r=2**-4)
    rep = lipschitz_report(f, x, labels=y, attack=tr.attacks.FGSM(threat="Linf", eps=0.1), n=24, n_attack=12,
                           lemma2_samples=1)
    assert isinstance(rep, LipschitzReport)
    assert rep.c_r == 2**-4 and rep.lemma2_holds
    assert [r["model"] for r in rep.network] == ["unforged (c_r = 0)", "forged (c_r = 0.0625)"]
    assert all(r["n"] > 0 and r["max"] >= r["mean"] > 0 for r in rep.network)
    assert all(mod.c_r_value == 2**-4 for _, mod in forged_modules(f))  # c_r restored after the c_r = 0 run
    paths = rep.write(tmp_path)
    assert "σ_max(W)" in paths["md"].read_text() and "conv2" in paths["csv"].read_text()
    assert rep.to_json()["lemma2_holds"] is True


def test_network_ratios_are_one_engine_job_equal_to_a_plain_batch_loop() -> None:
    """The network-level loop runs on the engine (keep_adv, all_points): same numbers as attacking every example in
    slices of batch_size by hand, clean errors included."""
    torch.manual_seed(0)
    m = tr.models.create("lenet")
    x, y = torch.rand(20, 1, 28, 28), torch.randint(0, 10, (20,))
    f = forge(m, x, c_r=2**-4).eval()
    atk = tr.attacks.PGD(threat="L2", eps=1.0, steps=3, seed=3)
    rep = lipschitz_report(f, x, labels=y, attack=atk, n=8, n_attack=18, batch_size=8, lemma2_samples=1)
    assert not bool((f(x[:18]).argmax(1) == y[:18]).all())  # clean errors are in the measured set
    ratios = torch.cat([local_lipschitz(f, x[i:min(i + 8, 18)], atk(f, x[i:min(i + 8, 18)], y[i:min(i + 8, 18)]))
                        for i in range(0, 18, 8)])
    r = ratios[~torch.isnan(ratios)]
    forged = rep.network[1]
    assert forged["n"] == r.numel() == 18
    assert forged["max"] == float(r.max()) and forged["mean"] == float(r.mean())


def test_lipschitz_errors() -> None:
    with pytest.raises(TorchRobustError, match="input_shape"):
        spectral_norm(nn.Conv2d(1, 2, 3))
    with pytest.raises(TorchRobustError, match="Linear or nn.Conv2d"):
        spectral_norm(nn.ReLU())
    with pytest.raises(TorchRobustError, match="no forged layers"):
        empirical_lipschitz(nn.Sequential(nn.Linear(3, 3)), torch.rand(4, 3))
    with pytest.raises(TorchRobustError, match="not a Linear"):
        empirical_lipschitz(nn.Sequential(nn.ReLU()), torch.rand(4, 3), layers=["0"])
    f = forge(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)), torch.rand(4, 3))
    with pytest.raises(TorchRobustError, match="labels"):
        lipschitz_report(f, torch.rand(4, 3), attack=tr.attacks.FGSM(threat="Linf", eps=0.1))


# ------------------------------------------------- eval mode and atomic figures (lipschitz, embeddings, certify)
class _Mixed(nn.Module):
    """Root in train mode, BatchNorm frozen (eval) by the caller, Dropout in train: a per-submodule state."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.drop, self.fc2 = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3)
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(any(m.training for m in self.modules()))
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x.flatten(1))))))


def _mixed() -> _Mixed:
    m = _Mixed()
    m.train()
    m.bn.eval()
    return m


def test_lipschitz_and_embeddings_run_in_eval_mode_and_restore_every_submodule_flag() -> None:
    from torchrobust.evaluate.embeddings import record_embeddings

    x, y = torch.rand(16, 6), torch.randint(0, 3, (16,))
    m = _mixed()
    stats = m.bn.running_mean.clone()
    f = forge(m, x, c_r=2**-3, inplace=True)
    f.seen.clear()
    lipschitz_report(f, x, labels=y, attack=tr.attacks.FGSM(threat="Linf", eps=0.1), n=16, n_attack=8,
                     lemma2_samples=1)
    record_embeddings(f, x)
    assert f.seen and not any(f.seen)  # every forward pass with every submodule in eval mode
    assert f.training and f.drop.training and not f.bn.training  # restored per submodule, not model.train(was)
    assert torch.equal(f.bn.running_mean, stats)


def test_embedding_and_certified_accuracy_figures_are_written_atomically(tmp_path) -> None:
    from torchrobust.evaluate.certify import CertifyResult, plot_certified_accuracy
    from torchrobust.evaluate.embeddings import plot_embeddings

    x = torch.rand(2, 1, 28, 28)
    res = [CertifyResult(index=i, label=0, predict=0, radius=0.1 * (i + 1), p_a_lower=0.9, count=90, n=100,
                         correct=True) for i in range(3)]
    umask = os.umask(0)
    os.umask(umask)
    for write in (lambda p: plot_embeddings(tr.models.create("lenet"), x, (x + 0.1).clamp(0, 1), p),
                  lambda p: plot_certified_accuracy(res, p)):
        out = write(tmp_path / "sub" / "fig.png")
        assert out.read_bytes()[:4] == b"\x89PNG" and (out.stat().st_mode & 0o777) == 0o666 & ~umask
        assert sorted(q.name for q in out.parent.iterdir()) == ["fig.png"]  # no temporary file left behind
        (tmp_path / "dir.png").mkdir(exist_ok=True)
        with pytest.raises(TorchRobustError, match="dir.png") as err:  # one line, not IsADirectoryError
            write(tmp_path / "dir.png")
        assert "\n" not in str(err.value)
        out.unlink()


def test_power_iteration_path_matches_dense_norm_on_seeded_convs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Operators too large to form densely use power iteration; it stops on the eigen-residual, so it stays
    accurate when the top two singular values are close (forced here on small convs)."""
    import torchrobust.evaluate.lipschitz as lip

    torch.manual_seed(7)
    convs = [(nn.Conv2d(2, 4, 3, stride=2), (2, 8, 8)), (nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 7, 7))]
    exact = [spectral_norm(c, s) for c, s in convs]  # dense (SVD)
    masks = [torch.rand(s) > 0.4 for _, s in convs]
    exact_masked = [masked_spectral_norm(c, m) for (c, _), m in zip(convs, masks, strict=True)]
    monkeypatch.setattr(lip, "DENSE_MAX_ENTRIES", 0)
    for (c, s), m, e, em in zip(convs, masks, exact, exact_masked, strict=True):
        assert spectral_norm(c, s) == pytest.approx(e, rel=1e-5)
        assert masked_spectral_norm(c, m) == pytest.approx(em, rel=1e-5)
        assert spectral_norm(c, s) <= e * (1 + 1e-12)  # power iteration converges from below
