"""Adaptive evaluation: BPDA through thresholds, EOT for random models, transfer/black-box catching gradient
masking, the per-example worst case, and resuming from a state file."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fit, prototype_images, tiny_mlp
from torch import Tensor, nn

from torchrobust.errors import TorchRobustError
from torchrobust.evaluate.adaptive import AdaptiveResult, evaluate_adaptive

N_CLASSES = 10
SHAPE = (1, 8, 8)
FAST = dict(whitebox="pgd", steps=20, restarts=1, square_queries=300, spsa_steps=20, spsa_samples=32,
            batch_size=64, n_check=32)


def _data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    return prototype_images(n, seed, SHAPE, N_CLASSES)


@pytest.fixture(scope="module")
def base() -> nn.Module:
    return fit(tiny_mlp(SHAPE, N_CLASSES), *_data(512, 0))


@pytest.fixture(scope="module")
def test_set() -> tuple[Tensor, Tensor]:
    return _data(96, 1)


class Step(nn.Module):
    """Binarise the input at 0.5 (zero gradient almost everywhere); declares the BPDA protocol (identity)."""

    bpda_surrogate = "identity"

    def __init__(self) -> None:
        super().__init__()
        self.straight_through = False

    def forward(self, x: Tensor) -> Tensor:
        hard = (x > 0.5).to(x.dtype)
        return x + (hard - x).detach() if self.straight_through else hard


class Quantize(nn.Module):
    """Input quantisation to 4 levels with no BPDA surrogate: gradients are zero, the defence masks them."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x * 3) / 3


class Noisy(nn.Module):
    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


def _codes(res: AdaptiveResult) -> set[str]:
    return {f["code"] for f in res.flags}


def test_bpda_beats_plain_pgd_on_hard_threshold(base: nn.Module, test_set) -> None:
    x, y = test_set
    model = nn.Sequential(Step(), base).eval()
    res = evaluate_adaptive(model, x, y, "Linf", 0.25, blackbox=False, **FAST)
    assert {"pgd-ce", "pgd-margin", "bpda-pgd-ce", "bpda-pgd-margin"} <= set(res.correct)
    plain = min(res.accuracy("pgd-ce"), res.accuracy("pgd-margin"))
    bpda = min(res.accuracy("bpda-pgd-ce"), res.accuracy("bpda-pgd-margin"))
    assert bpda < plain - 0.1  # the plain white-box number overstates robustness
    assert res.robust_accuracy <= bpda
    assert torch.equal(res.worst, res.clean & res.correct["pgd-ce"] & res.correct["pgd-margin"]
                       & res.correct["bpda-pgd-ce"] & res.correct["bpda-pgd-margin"])
    assert "ZERO_GRADIENTS" in _codes(res) and "BPDA_STRONGER" in _codes(res) and not res.reliable
    assert res.roles["bpda-pgd-ce"] == res.roles["bpda-pgd-margin"] == "bpda"
    assert res.config["bpda"] is True and model[0].straight_through is False


def test_random_model_gets_eot(base: nn.Module, test_set) -> None:
    x, y = test_set
    res = evaluate_adaptive(Noisy(base, 0.2).eval(), x, y, "Linf", 0.25, blackbox=False, eot_samples=8, **FAST)
    assert "eot-pgd-ce" in res.correct and "eot" not in res.skipped
    assert "RANDOMIZED_OUTPUT" in _codes(res)
    det = evaluate_adaptive(base, x[:32], y[:32], "Linf", 0.25, blackbox=False, checks=False, **FAST)
    assert "eot-pgd-ce" not in det.correct and "eot" in det.skipped and "bpda" in det.skipped


def test_quantised_input_caught_by_transfer_or_blackbox(base: nn.Module, test_set) -> None:
    x, y = test_set
    model = nn.Sequential(Quantize(), base).eval()
    res = evaluate_adaptive(model, x, y, "Linf", 0.25, base_model=base, **FAST)
    assert res.roles["transfer-pgd-ce"] == "transfer" and res.roles["square"] == "blackbox"
    whitebox = float(res.worst_of("whitebox").float().mean())
    assert res.robust_accuracy < whitebox - 0.1  # transfer / black-box find what white-box missed
    assert _codes(res) & {"TRANSFER_STRONGER", "BLACKBOX_STRONGER"}
    assert not res.reliable
    d = res.to_dict()
    assert d["robust_accuracy"] == res.robust_accuracy and len(d["worst"]) == len(x)


def _spy(monkeypatch, record) -> None:
    """Every attack call the engine makes is recorded as ``record(attack class name, batch size)``."""
    from torchrobust.evaluate import engine as E

    real = E._build_attack

    def build(job, seed):
        attack = real(job, seed)

        def call(m, xx, yy):
            record(type(attack).__name__, len(xx))
            return attack(m, xx, yy)

        return call

    monkeypatch.setattr(E, "_build_attack", build)


def test_blackbox_only_attacks_survivors(base: nn.Module, test_set, monkeypatch) -> None:
    x, y = test_set
    seen: dict[str, int] = {}
    _spy(monkeypatch, lambda name, n: seen.__setitem__(name, seen.get(name, 0) + n))
    res = evaluate_adaptive(base, x, y, "Linf", 0.25, checks=False, **FAST)
    survivors = res.clean & res.correct["pgd-ce"] & res.correct["pgd-margin"]
    assert seen["PGD"] == 2 * int(res.clean.sum())  # CE and margin, each on every clean-correct point
    assert seen["Square"] == int(survivors.sum())
    assert bool(res.correct["square"][~survivors].all())  # not attacked -> reported as not broken by it


def test_resume_from_state_file(base: nn.Module, test_set, tmp_path, monkeypatch) -> None:
    x, y = test_set
    x, y = x[:48], y[:48]
    kw = dict(FAST, checks=False)
    full = evaluate_adaptive(base, x, y, "Linf", 0.25, **kw)
    state = tmp_path / "adaptive_state"
    calls: list[str] = []

    def interrupting(name, n):
        calls.append(name)
        if name == "Square":  # the third attack (Square) is interrupted
            raise KeyboardInterrupt

    _spy(monkeypatch, interrupting)
    with pytest.raises(KeyboardInterrupt):
        evaluate_adaptive(base, x, y, "Linf", 0.25, state_path=state, **kw)
    assert (tmp_path / "adaptive_state.safetensors").is_file() and (tmp_path / "adaptive_state.json").is_file()
    jobs = json.loads((tmp_path / "adaptive_state.json").read_text())["meta"]["jobs"]
    assert [k.split("@")[0] for k, v in jobs.items() if v["finished"]] == ["pgd-ce", "pgd-margin"]

    calls.clear()
    monkeypatch.undo()
    _spy(monkeypatch, lambda name, n: calls.append(name))
    resumed = evaluate_adaptive(base, x, y, "Linf", 0.25, state_path=state, **kw)
    assert list(dict.fromkeys(calls)) == ["Square", "SPSA"]  # the finished white-box attacks were skipped
    assert set(resumed.correct) == set(full.correct)
    for k in full.correct:
        assert torch.equal(resumed.correct[k], full.correct[k]), k
    assert resumed.robust_accuracy == full.robust_accuracy


def test_progress_and_errors(base: nn.Module, test_set) -> None:
    x, y = test_set
    res = evaluate_adaptive(base, x[:16], y[:16], "L2", 1.5, blackbox=False, progress=True, checks=False, **FAST)
    assert res.threat == "L2" and res.eps == 1.5
    with pytest.raises(TorchRobustError, match="whitebox"):
        evaluate_adaptive(base, x[:4], y[:4], "Linf", 0.1, whitebox="fab")
    with pytest.raises(TorchRobustError):
        evaluate_adaptive(base, x[:4], y[:3], "Linf", 0.1)


def test_autoattack_whitebox_with_no_correct_point(base: nn.Module, test_set) -> None:
    """Nothing is classified correctly: the reference AutoAttack is not called on an empty batch."""
    pytest.importorskip("pyautoattack")
    x, y = test_set
    wrong = (base(x[:8]).argmax(1) + 1) % N_CLASSES
    res = evaluate_adaptive(base, x[:8], wrong, "Linf", 0.25, blackbox=False, checks=False,
                            **{**FAST, "whitebox": "autoattack"})
    assert res.clean_accuracy == 0.0 and res.robust_accuracy == 0.0 and set(res.correct) == {"apgd-ce", "apgd-t"}


def test_autoattack_whitebox_when_available(base: nn.Module, test_set) -> None:
    pytest.importorskip("pyautoattack")
    x, y = test_set
    res = evaluate_adaptive(base, x[:32], y[:32], "Linf", 0.25, blackbox=False, checks=False,
                            **{**FAST, "whitebox": "autoattack"})
    assert set(res.correct) == {"apgd-ce", "apgd-t"}
    assert bool((res.correct["apgd-t"] <= res.correct["apgd-ce"]).all())  # cumulative, as the reference runs them
    assert res.robust_accuracy < res.clean_accuracy
