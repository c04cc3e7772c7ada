"""HyperNetwork / HyperConv2d: the reconstructed PSAT Eq. 11, tiling, 1×1 reductions, gradients, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.nn.hyper import HyperConv2d, HyperNetwork


def _formula_unit(h: HyperNetwork, z: torch.Tensor) -> torch.Tensor:
    """Eq. 11 written out with explicit sums (module docstring), for one embedding."""
    uo, ui, k, d = h.unit_out, h.unit_in, h.kernel_size, h.hidden
    out = torch.zeros(uo, ui, k, k, dtype=torch.float64)
    for i in range(ui):
        a = [sum(z[n] * h.w_in[n, i * d + hh] for n in range(h.z_dim)) + h.b_in[i * d + hh] for hh in range(d)]
        for o in range(uo):
            for r in range(k):
                for s in range(k):
                    col = (o * k + r) * k + s
                    out[o, i, r, s] = sum(a[hh] * h.w_out[hh, col] for hh in range(d)) + h.b_out[col]
    return out


def test_generated_unit_equals_documented_formula() -> None:
    h = HyperNetwork(z_dim=3, unit_out=2, unit_in=3, kernel_size=3, hidden=4).double()
    z = torch.randn(3, dtype=torch.float64)
    with torch.no_grad():
        got = h(z)
        want = _formula_unit(h, z)
    assert got.shape == (2, 3, 3, 3)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("init", ["ha", "kaiming"])
def test_conv_weight_tiles_units_along_out_then_in(init: str) -> None:
    h = HyperNetwork(z_dim=3, unit_out=2, unit_in=2, kernel_size=3, init=init).double()
    conv = HyperConv2d(4, 6, 3, padding=1, hyper=h, name="blk.conv").double()
    assert conv.grid == (3, 2) and conv.embedding.shape == (3, 2, 3)
    with torch.no_grad():
        w = conv.weight
        assert w.shape == (6, 4, 3, 3)
        for a in range(3):
            for b in range(2):
                torch.testing.assert_close(w[2 * a:2 * a + 2, 2 * b:2 * b + 2], _formula_unit(h, conv.embedding[a, b]))


def test_conv_forward_is_conv2d_with_generated_weight() -> None:
    conv = HyperConv2d(4, 4, 3, stride=2, padding=1, bias=True, z_dim=5, unit=(2, 2, 3)).double()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    ref = nn.Conv2d(4, 4, 3, stride=2, padding=1).double()
    with torch.no_grad():
        ref.weight.copy_(conv.weight)
        ref.bias.copy_(conv.bias)
    torch.testing.assert_close(conv(x), ref(x))


@pytest.mark.parametrize("reduce", ["mean", "sum", "max", "center"])
def test_one_by_one_kernels_reduce_the_generated_unit(reduce: str) -> None:
    h = HyperNetwork(z_dim=3, unit_out=2, unit_in=2, kernel_size=3).double()
    conv = HyperConv2d(2, 4, 1, hyper=h, reduce=reduce).double()
    with torch.no_grad():
        w = conv.weight
        full = torch.cat([_formula_unit(h, conv.embedding[a, 0]) for a in range(2)], 0)  # (4, 2, 3, 3)
    want = {"mean": full.mean((2, 3), keepdim=True), "sum": full.sum((2, 3), keepdim=True),
            "max": full.amax((2, 3), keepdim=True), "center": full[:, :, 1:2, 1:2]}[reduce]
    assert w.shape == (4, 2, 1, 1)
    torch.testing.assert_close(w, want)


def test_gradcheck_weight_wrt_embedding_and_hypernetwork() -> None:
    h = HyperNetwork(z_dim=2, unit_out=2, unit_in=2, kernel_size=3, hidden=3).double()
    conv = HyperConv2d(2, 4, 3, padding=1, hyper=h).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)

    def f(emb: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        units = torch.func.functional_call(h, {"w_in": w_in, "w_out": w_out, "b_in": h.b_in, "b_out": h.b_out},
                                           (emb,))
        w = units.permute(0, 2, 1, 3, 4, 5).reshape(4, 2, 3, 3)
        return F.conv2d(inp, w, padding=1)

    args = (conv.embedding.detach().clone().requires_grad_(), h.w_in.detach().clone().requires_grad_(),
            h.w_out.detach().clone().requires_grad_(), x.requires_grad_())
    assert torch.autograd.gradcheck(f, args)
    # the module's own weight is the same function of its parameters
    torch.testing.assert_close(conv(x), f(*args))


def test_gradients_reach_hypernetwork_and_embedding_through_the_conv() -> None:
    h = HyperNetwork(z_dim=4, unit_out=2, unit_in=2, kernel_size=3)
    conv = HyperConv2d(2, 2, 1, hyper=h)
    conv(torch.randn(1, 2, 3, 3)).sum().backward()
    for p in (h.w_in, h.b_in, h.w_out, h.b_out, conv.embedding):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_parameter_count_matches_formula() -> None:
    for z, u, k in [(64, 64, 3), (128, 64, 3), (32, 32, 5), (16, 16, 5)]:
        h = HyperNetwork(z, u, u, k)
        assert sum(p.numel() for p in h.parameters()) == u * z * z + u * z + z * u * k * k + u * k * k
    # docs/paper-code-facts.md#psat-hypernetwork
    assert sum(p.numel() for p in HyperNetwork(64).parameters()) == 303_680
    assert sum(p.numel() for p in HyperNetwork(128).parameters()) == 1_131_072


def test_shared_hypernetwork_is_referenced_not_registered() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hyper = HyperNetwork(3, 2, 2, 3)
            self.c1 = HyperConv2d(2, 2, 3, padding=1, hyper=self.hyper)
            self.c2 = HyperConv2d(2, 4, 1, hyper=self.hyper)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c2(self.c1(x))

    net = Net()
    keys = list(net.state_dict())
    assert sum(k.endswith("w_in") for k in keys) == 1
    assert net.c1.hypernetwork is net.hyper is net.c2.hypernetwork
    clone = copy.deepcopy(net)
    assert clone.c1.hypernetwork is clone.hyper is clone.c2.hypernetwork and clone.hyper is not net.hyper
    net.double()
    assert net.c1.weight.dtype == torch.float64
    assert net(torch.randn(1, 2, 3, 3, dtype=torch.float64)).shape == (1, 4, 3, 3)


@pytest.mark.parametrize("k,reduce,fan", [(3, "mean", 9), (1, "mean", 1), (1, "sum", 1), (1, "center", 1)])
def test_kaiming_init_gives_he_variance(k: int, reduce: str, fan: int) -> None:
    h = HyperNetwork(z_dim=32, unit_out=16, unit_in=16, kernel_size=3, init="kaiming")
    conv = HyperConv2d(64, 64, k, hyper=h, reduce=reduce)
    with torch.no_grad():
        var = conv.weight.var().item()
    target = 2.0 / (64 * fan)
    assert 0.5 * target < var < 2.0 * target, (var, target)


def test_ha_init_is_truncated_normal() -> None:
    h = HyperNetwork(z_dim=16, unit_out=4, unit_in=4, kernel_size=3, init="ha")
    for p in h.parameters():
        assert p.abs().max() < 2.0 and 0.5 < p.std().item() < 1.1


def test_non_tiling_unit_names_layer_and_sizes() -> None:
    h = HyperNetwork(8, 64, 64, 3)
    with pytest.raises(TorchRobustError, match=r"layer 'layer1.0.conv1'.*64x64.*32x64"):
        HyperConv2d(64, 32, 3, hyper=h, name="layer1.0.conv1")
    with pytest.raises(TorchRobustError, match="kernel 5x5"):
        HyperConv2d(64, 64, 5, hyper=h, name="c")
    with pytest.raises(TorchRobustError, match="unknown 1x1 reduction"):
        HyperConv2d(64, 64, 1, hyper=h, reduce="median")  # type: ignore[arg-type]
    with pytest.raises(TorchRobustError, match="unknown hypernetwork init"):
        HyperNetwork(8, init="xavier")  # type: ignore[arg-type]
    with pytest.raises(TorchRobustError, match="z_dim"):
        HyperNetwork(0)
    with pytest.raises(TorchRobustError, match="z_dim=8"):
        h(torch.zeros(3))
    assert math.isfinite(float(HyperConv2d(64, 128, 1, hyper=h).weight.detach().sum()))
