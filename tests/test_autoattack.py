"""The AutoAttack adapter gives exactly the reference AutoAttack's per-example results (same seed, same batches)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

pyautoattack = pytest.importorskip("pyautoattack")

from conftest import train_small_mnist_mlp  # noqa: E402

from torchrobust.attacks import autoattack as AA  # noqa: E402
from torchrobust.attacks.autoattack import AutoAttack, run_autoattack  # noqa: E402
from torchrobust.attacks.threat import L2, Linf  # noqa: E402
from torchrobust.errors import TorchRobustError  # noqa: E402

N = 300


@pytest.fixture(scope="module")
def mnist() -> tuple[nn.Module, Tensor, Tensor]:
    """A small MLP trained for one pass over 12k MNIST training images (~97 % test accuracy), 300 test points."""
    model, x, y = train_small_mnist_mlp(N)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9
    return model, x, y


def _direct(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, version: str,
            attacks: list[str] | None, bs: int) -> tuple[Tensor, Tensor]:
    if version == "custom":
        aa = pyautoattack.AutoAttack(model, norm=norm, eps=eps, seed=0, version="custom", attacks=attacks)
    else:
        aa = pyautoattack.AutoAttack(model, norm=norm, eps=eps, seed=0, version=version)
        if attacks is not None:
            aa.attacks_to_run = list(attacks)
    x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=bs)
    return x_adv, y_adv == y


@pytest.fixture(scope="module")
def custom_run(mnist):
    model, x, y = mnist
    return run_autoattack(model, x, y, "Linf", 0.1, version="custom", attacks_to_run=["apgd-ce", "apgd-t"],
                          batch_size=128)


def test_custom_equals_direct(mnist, custom_run) -> None:
    model, x, y = mnist
    res = custom_run
    x_ref, robust_ref = _direct(model, x, y, "Linf", 0.1, "custom", ["apgd-ce", "apgd-t"], 128)
    assert torch.equal(res.robust, robust_ref)
    assert torch.equal(res.x_adv, x_ref)
    assert 0.0 < res.robust_accuracy < res.clean_accuracy  # a non-trivial split
    assert res.attacks == ["apgd-ce", "apgd-t"]
    # bookkeeping: cumulative flags are monotone and broken_by partitions the clean-but-not-robust points
    assert bool((res.robust_after["apgd-t"] <= res.robust_after["apgd-ce"]).all())
    broken = res.broken_by["apgd-ce"] | res.broken_by["apgd-t"]
    assert torch.equal(broken, res.clean & ~res.robust)
    assert not bool((res.broken_by["apgd-ce"] & res.broken_by["apgd-t"]).any())


def test_standard_subset_equals_direct_l2(mnist) -> None:
    model, x, y = mnist
    res = run_autoattack(model, x[:200], y[:200], L2(1.0), version="standard", attacks_to_run=["apgd-ce"],
                         batch_size=100)
    x_ref, robust_ref = _direct(model, x[:200], y[:200], "L2", 1.0, "standard", ["apgd-ce"], 100)
    assert torch.equal(res.robust, robust_ref)
    assert torch.equal(res.x_adv, x_ref)
    assert res.config["threat"] == "L2" and res.config["eps"] == 1.0


def test_attack_class_contract_rng_and_no_print(mnist, capsys) -> None:
    model, x, y = mnist
    model.train()
    rng = torch.get_rng_state()
    atk = AutoAttack("Linf", eps=0.1, version="custom", attacks_to_run=["apgd-ce"], batch_size=100)
    x_adv = atk(model, x[:100], y[:100])
    assert model.training  # mode restored by the Attack base
    model.eval()
    assert torch.equal(torch.get_rng_state(), rng)  # the reference's global re-seeding is undone
    assert bool(Linf(0.1).contains(x_adv, x[:100]).all())
    assert atk.last_result is not None
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y[:100]
    assert torch.equal(robust, atk.last_result.robust)
    out = capsys.readouterr()
    assert out.out == ""


def test_resume_after_interruption(mnist, custom_run, tmp_path, monkeypatch) -> None:
    model, x, y = mnist
    kw = dict(version="custom", attacks_to_run=["apgd-ce", "apgd-t"], batch_size=128)
    full = custom_run
    state = tmp_path / "aa_state.pt"  # legacy spelling: the stem is aa_state
    calls: list[list[str]] = []
    real = AA._run_reference

    def flaky(aa, xb, yb, bs):
        calls.append(list(aa.attacks_to_run))
        if aa.attacks_to_run == ["apgd-t"]:
            raise KeyboardInterrupt  # simulated interruption after the first sub-attack was saved
        return real(aa, xb, yb, bs)

    monkeypatch.setattr(AA, "_run_reference", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_autoattack(model, x, y, "Linf", 0.1, state_path=state, **kw)
    assert not state.exists() and (tmp_path / "aa_state.safetensors").is_file()
    monkeypatch.setattr(AA, "_run_reference", lambda aa, xb, yb, bs: (calls.append(list(aa.attacks_to_run)),
                                                                      real(aa, xb, yb, bs))[1])
    calls.clear()
    resumed = run_autoattack(model, x, y, "Linf", 0.1, state_path=state, **kw)
    assert calls == [["apgd-t"]]  # apgd-ce was not run again
    assert torch.equal(resumed.robust, full.robust) and torch.equal(resumed.x_adv, full.x_adv)
    for a in full.attacks:
        assert torch.equal(resumed.robust_after[a], full.robust_after[a])
        assert torch.equal(resumed.broken_by[a], full.broken_by[a])


class _Marker:
    """Unpickling this creates ``path``: the planted state file of the issue."""

    def __init__(self, path) -> None:  # noqa: ANN001
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        from pathlib import Path

        return (Path.touch, (Path(self.path),))


def test_stale_or_pickled_state_is_not_reused(mnist, tmp_path, monkeypatch, caplog) -> None:
    import copy
    import logging

    model, x, y = mnist
    x, y = x[:16], y[:16]
    kw = dict(version="custom", attacks_to_run=["apgd-ce"], batch_size=16)
    marker = tmp_path / "PWNED"
    state = tmp_path / "state_Linf_0.1.pt"
    torch.save({"config": {}, "done": ["apgd-ce"], "evil": _Marker(marker)}, state)  # planted pickle
    planted = tmp_path / "state_Linf_0.1.safetensors"
    torch.save({"evil": _Marker(marker)}, planted)
    before = planted.read_bytes()
    calls: list[list[str]] = []
    real = AA._run_reference
    monkeypatch.setattr(AA, "_run_reference", lambda aa, xb, yb, bs: (calls.append(list(aa.attacks_to_run)),
                                                                      real(aa, xb, yb, bs))[1])
    # a pickle under the state's own name: a one-line error before any attack, the file left as it was
    with caplog.at_level(logging.WARNING), pytest.raises(TorchRobustError, match="delete it") as exc:
        run_autoattack(model, x, y, "Linf", 0.1, state_path=state, **kw)
    assert "\n" not in str(exc.value) and str(planted) in str(exc.value)
    assert not marker.exists() and calls == [] and planted.read_bytes() == before
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("never loaded" in m for m in msgs)  # the legacy .pt beside it: ignored, never read
    planted.unlink()
    first = run_autoattack(model, x, y, "Linf", 0.1, state_path=state, **kw)
    assert not marker.exists() and calls == [["apgd-ce"]]
    calls.clear()
    assert torch.equal(run_autoattack(model, x, y, "Linf", 0.1, state_path=state, **kw).robust, first.robust)
    assert calls == []  # its own state is reused
    # another model, other data, another config: recomputed, equal to a run without state
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    for what, (m, xx, yy, eps) in {"model": (other, x, y, 0.1), "data": (model, x.flip(0), y.flip(0), 0.1),
                                   "config": (model, x, y, 0.05)}.items():
        fresh = run_autoattack(m, xx, yy, "Linf", eps, **kw)
        calls.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="torchrobust.resume"):
            res = run_autoattack(m, xx, yy, "Linf", eps, state_path=state, **kw)
        assert calls == [["apgd-ce"]], what
        assert torch.equal(res.robust, fresh.robust) and torch.equal(res.x_adv, fresh.x_adv), what
        assert any(f"another {what}" in r.getMessage() for r in caplog.records), what
    assert not marker.exists()
    # a state with this run's fingerprint that does not fit it (tampered with): an error, never recomputed over
    import json

    from torchrobust import resume

    stem = tmp_path / "state_Linf_0.1"
    fp = json.loads((tmp_path / "state_Linf_0.1.json").read_text())["fingerprint"]
    loaded = resume.load_state(stem, fp)
    assert loaded is not None
    tensors, meta = loaded
    for broken_t, broken_meta, match in [(tensors, {**meta, "done": ["apgd-t"]}, "not a prefix"),
                                         ({k: v for k, v in tensors.items() if k != "x_adv"}, meta, "x_adv")]:
        resume.save_state(stem, broken_t, broken_meta, fp)
        before = (tmp_path / "state_Linf_0.1.safetensors").read_bytes()
        calls.clear()
        with pytest.raises(TorchRobustError, match=match) as exc:
            run_autoattack(model, x, y, "Linf", 0.05, state_path=state, **kw)
        assert "\n" not in str(exc.value) and calls == []
        assert (tmp_path / "state_Linf_0.1.safetensors").read_bytes() == before


def test_input_errors(mnist) -> None:
    model, x, y = mnist
    with pytest.raises(TorchRobustError, match="seed"):
        run_autoattack(model, x[:4], y[:4], "Linf", 0.1, seed=None)
    with pytest.raises(TorchRobustError, match="sub-attack"):
        run_autoattack(model, x[:4], y[:4], "Linf", 0.1, version="custom", attacks_to_run=["pgd"])
    with pytest.raises(TorchRobustError, match="custom"):
        run_autoattack(model, x[:4], y[:4], "Linf", 0.1, version="custom")
    with pytest.raises(TorchRobustError, match="version"):
        run_autoattack(model, x[:4], y[:4], "Linf", 0.1, version="fast")
    with pytest.raises(TorchRobustError, match="threat"):
        AutoAttack("L0", eps=3)
    with pytest.raises(TorchRobustError, match="non-empty"):
        run_autoattack(model, x[:0], y[:0], "Linf", 0.1)


def test_fewer_than_ten_classes_capped(mnist) -> None:
    """The reference crashes with < 10 classes (AutoAttack #110); the adapter caps the target classes."""
    model, x, y = mnist
    keep = y < 5
    small = nn.Sequential(model, nn.Identity())
    five = nn.Sequential(small, _Take(5)).eval()
    res = run_autoattack(five, x[keep][:60], y[keep][:60], "Linf", 0.1, version="custom",
                         attacks_to_run=["apgd-t"], batch_size=60)
    assert res.robust.shape == (60,)


class _Take(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, z: Tensor) -> Tensor:
        return z[:, : self.k]


@pytest.mark.slow
def test_full_standard_equals_direct(mnist) -> None:
    model, x, y = mnist
    res = run_autoattack(model, x[:100], y[:100], "Linf", 0.1, version="standard", batch_size=100)
    x_ref, robust_ref = _direct(model, x[:100], y[:100], "Linf", 0.1, "standard", None, 100)
    assert res.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert torch.equal(res.robust, robust_ref)
    assert torch.equal(res.x_adv, x_ref)
