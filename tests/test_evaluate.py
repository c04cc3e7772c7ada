"""Evaluation sweep: per-example bookkeeping, worst case across attacks, result files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from torchrobust.errors import TorchRobustError
from torchrobust.evaluate import accuracy, correct, robust_correct, sweep
from torchrobust.train import TrainConfig, fit


@pytest.fixture(scope="module")
def trained():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    centers = torch.rand(3, 1, 4, 4, generator=g)
    x = (centers[y] + 0.08 * torch.randn(300, 1, 4, 4, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    fit(m, (x, y), TrainConfig(epochs=15, batch_size=32, lr=0.1))
    return m, x, y


def test_accuracy_and_correct(trained):
    m, x, y = trained
    c = correct(m, x, y)
    assert c.dtype == torch.bool and c.shape == (300,)
    assert accuracy(m, x, y) == pytest.approx(float(c.float().mean()))
    assert accuracy(m, x, y) > 0.9


def test_robust_correct_implies_clean_correct(trained):
    m, x, y = trained

    def flip_all(model, xb, yb):
        return (1 - xb).clamp(0, 1)

    clean = correct(m, x, y)
    rob = robust_correct(m, x, y, flip_all)
    assert not bool((rob & ~clean).any())


def test_sweep_worst_case_and_files(trained, tmp_path):
    m, x, y = trained
    res = sweep(m, x, y, attacks=["fgsm", "pgd"], eps=[0.0, 0.05, 0.2, 0.5], threat="Linf",
                attack_kwargs={"pgd": {"steps": 10}})
    assert res.n == 300
    for a in ["fgsm", "pgd"]:
        assert torch.equal(res.robust[a][0], res.clean)
        assert not bool((res.robust[a] & ~res.clean).any())
    worst = res.worst
    assert torch.equal(worst, res.robust["fgsm"] & res.robust["pgd"])
    acc = res.accuracy()
    assert all(a >= b for a, b in zip(acc, acc[1:], strict=False))
    assert acc[-1] < 0.2
    paths = res.write(tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert doc["per_example"]["pgd"][1] == res.robust["pgd"][1].int().tolist()
    assert doc["table"][2]["worst_case"] == pytest.approx(acc[2])
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "worst_case" in md and "| 0.05 |" in md


@pytest.mark.parametrize("kw,match", [({"attacks": ["nope"]}, "unknown attack"), ({"eps": [-1.0]}, "eps"),
                                      ({"attacks": []}, "no attacks")])
def test_sweep_errors(trained, kw, match):
    m, x, y = trained
    args = {"attacks": ["fgsm"], "eps": [0.1]}
    args.update(kw)
    with pytest.raises(TorchRobustError, match=match):
        sweep(m, x[:10], y[:10], **args)


@pytest.mark.parametrize("bad,match", [(lambda x, y: (x * 2, y), r"\[0, 1\]"),
                                       (lambda x, y: (x.masked_fill(x > 0.5, float("nan")), y), "NaN"),
                                       (lambda x, y: (x, y + 5), "label"),
                                       (lambda x, y: (x, y[:-1]), "shape"),
                                       (lambda x, y: (x.repeat(1, 3, 1, 1), y), "do not fit")])
def test_bad_inputs(trained, bad, match):
    m, x, y = trained
    xb, yb = bad(x[:20].clone(), y[:20].clone())
    with pytest.raises(TorchRobustError, match=match):
        accuracy(m, xb, yb)


def test_evaluate_dispatcher(trained):
    from torchrobust.evaluate import evaluate

    m, x, y = trained
    res = evaluate(m, x[:40], y[:40], suite="sweep", eps=[0.0, 0.2], attack_kwargs={"apgd-ce": {"steps": 5},
                                                                                    "apgd-t": {"steps": 5}})
    assert res.eps == [0.0, 0.2] and res.attacks == ["fgsm", "apgd-ce", "apgd-t"]  # the strong default
    assert res.strength == "weak"  # (5 APGD steps: labelled weak)
    ad = evaluate(m, x[:24], y[:24], suite="adaptive", eps=[0.0, 0.3], whitebox="pgd", steps=5, restarts=1,
                  blackbox=False)
    assert list(ad) == [0.3] and 0.0 <= ad[0.3].robust_accuracy <= ad[0.3].clean_accuracy
    with pytest.raises(TorchRobustError, match="suite"):
        evaluate(m, x[:4], y[:4], suite="brutal")


def test_nan_weight_makes_sweep_and_adaptive_unreliable(trained, tmp_path):
    import copy
    import math

    from torchrobust.evaluate import evaluate_adaptive

    model, x, y = trained
    bad = copy.deepcopy(model)
    with torch.no_grad():
        next(bad.parameters()).view(-1)[0] = math.nan
    x, y = x[:16], y[:16]
    assert sweep(model, x, y, attacks=["fgsm"], eps=[0, 0.1]).reliable  # the same model, healthy
    res = sweep(bad, x, y, attacks=["fgsm"], eps=[0, 0.1])
    assert not res.reliable and [f["code"] for f in res.flags] == ["NONFINITE"]
    res.write(tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["reliable"] is False and "UNRELIABLE" in (tmp_path / "results.md").read_text()
    for checks in (False, True):
        ad = evaluate_adaptive(bad, x, y, "Linf", 0.1, whitebox="pgd", steps=2, restarts=1, blackbox=False,
                               checks=checks, n_check=8)
        assert not ad.reliable and "NONFINITE" in [f["code"] for f in ad.flags]


def test_upper_bound_note_names_every_flagged_label_and_none_without_flags():
    """The shared "upper bounds" note (demo and presets): a label is named iff it has at least one flag code (any code:
    BPDA_NOT_EVALUATED, BPDA_STRONGER, TRANSFER_STRONGER), its codes deduplicated and sorted, labels in the given
    order; a label holding a comma switches the separator to "; "; None when no label has a flag."""
    from torchrobust.evaluate.sweeps import upper_bound_note

    note = upper_bound_note({"LPM": [], "P1": ["BPDA_NOT_EVALUATED", "BPDA_NOT_EVALUATED"],
                             "P3": ("TRANSFER_STRONGER", "BPDA_STRONGER")}, defence="NRPM")
    assert note is not None
    assert note.startswith("**Upper bounds** for P1 (BPDA_NOT_EVALUATED), P3 (BPDA_STRONGER, TRANSFER_STRONGER): ")
    assert "LPM" not in note and "`torchrobust evaluate --suite adaptive`" in note
    semi = upper_bound_note({"weights fine-tuned, λ=0.0": ["BPDA_NOT_EVALUATED"], "P2": ["BPDA_STRONGER"]},
                            adaptive_command="torchrobust paper adaptive", defence="NRPM")
    assert semi is not None
    assert semi.startswith("**Upper bounds** for weights fine-tuned, λ=0.0 (BPDA_NOT_EVALUATED); P2 (BPDA_STRONGER): ")
    assert "`torchrobust paper adaptive`" in semi
    assert upper_bound_note({"LPM": [], "Adv-train": ()}, defence="NRPM") is None
    assert upper_bound_note({}, defence="NRPM") is None


def test_upper_bound_note_names_the_defence_the_caller_gives():
    """The note says what the exact gradient went through as the caller names it: "NRPM" gives the demo's and the
    presets' wording (the whole sentence, hard-coded), another defence gives text without "NRPM"; the defence must
    be named (a keyword without default; an empty name is a one-line error naming the fix)."""
    from torchrobust.evaluate.sweeps import upper_bound_note

    flags = {"LPM": [], "P1": ["BPDA_NOT_EVALUATED"]}
    assert upper_bound_note(flags, defence="NRPM") == (
        "**Upper bounds** for P1 (BPDA_NOT_EVALUATED): the attacks followed the exact gradient through NRPM, which "
        "misleads them; the adaptive suite (`torchrobust evaluate --suite adaptive`: BPDA, transfer) finds lower "
        "robust accuracy (docs/adaptive-evaluation.md).")
    forged = upper_bound_note({"forged": ["BPDA_STRONGER"]}, defence="the forged threshold")
    assert forged is not None and "NRPM" not in forged
    assert "the exact gradient through the forged threshold, which misleads them" in forged
    with pytest.raises(TypeError):
        upper_bound_note(flags)  # type: ignore[call-arg]
    for bad in ("", "  "):
        with pytest.raises(TorchRobustError, match="pass the name of the defence") as err:
            upper_bound_note(flags, defence=bad)
        assert "\n" not in str(err.value)
