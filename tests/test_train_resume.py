"""Training never loses work and never "succeeds" after diverging.

* A run interrupted (an exception in the API, ``kill -9`` of the CLI) and resumed from its last resume state ends
  bitwise identical to the uninterrupted run: model, optimiser (momentum / Adam moments), LR schedule, RNG states
  (PGD random starts, Gaussian noise) and the data order all continue exactly.
* A resume state from another run is refused; a folder holding one is never silently overwritten.
* A NaN/inf loss or weight stops training with one line; the model holds its last finite weights and the last
  resume state on disk survives.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_9_when
from safetensors.torch import load_file
from torch import nn

from torchrobust.cli import main
from torchrobust.errors import TorchRobustError, TrainingDiverged
from torchrobust.train import TrainConfig, fit, resume


def _blobs(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.full((n, 1, 4, 4), 0.3) + 0.4 * y.view(-1, 1, 1, 1) + 0.05 * torch.randn(n, 1, 4, 4, generator=g)
    return x.clamp(0, 1), y


class Net(nn.Sequential):
    """A small MLP with BatchNorm (buffers must resume too); ``fuse`` interrupts the k-th training forward pass
    (a crash), ``poison`` makes the k-th training forward return NaN (a divergence)."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        super().__init__(nn.Flatten(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
        self.calls, self.fuse, self.poison = 0, None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.training:
            self.calls += 1
            if self.calls == self.fuse:
                raise KeyboardInterrupt
        out = super().forward(x)
        return out * float("nan") if self.training and self.calls == self.poison else out


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _curve(history: list[dict[str, float]]) -> list[tuple[float, float, float]]:
    return [(h["loss"], h["train_acc"], h["lr"]) for h in history]


CONFIGS = {
    "sgd-multistep-gaussian": dict(optimizer="sgd", schedule="multistep", milestones=[1], mode="gaussian",
                                   noise_sigma=0.1, weight_decay=1e-3),
    "adam-onecycle-pgd": dict(optimizer="adam", lr=0.01, schedule="onecycle", mode="pgd", eps=0.05, steps=2),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("crash_at", [7, 10])  # right after an epoch-end state (step 6), mid-epoch (state at 8)
def test_api_resume_is_bitwise_identical(tmp_path, name, crash_at):
    data = _blobs()
    cfg = TrainConfig(epochs=3, batch_size=16, seed=3, checkpoint_every=4, **CONFIGS[name])  # 6 steps/epoch
    ref = Net()
    ref_res = fit(ref, data, cfg)

    crashed = Net()
    crashed.fuse = crash_at
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, data, cfg, checkpoint_dir=tmp_path)
    state = load_file(str(resume.state_path(tmp_path)))
    assert state["data.order"].shape == (96,)
    resumed = Net(seed=123)  # different initial weights: everything must come from the resume state
    res = fit(resumed, data, cfg, checkpoint_dir=tmp_path, resume_from=tmp_path)
    _same(ref, resumed)
    assert _curve(res.history) == _curve(ref_res.history)
    # resuming a finished run trains nothing and gives the same model
    again = Net(seed=5)
    assert _curve(fit(again, data, cfg, resume_from=tmp_path).history) == _curve(ref_res.history)
    _same(ref, again)


def test_resume_state_of_another_run_is_refused_and_never_overwritten(tmp_path):
    data = _blobs()
    cfg = TrainConfig(epochs=1, batch_size=32, seed=1)
    fit(Net(), data, cfg, checkpoint_dir=tmp_path)
    before = resume.state_path(tmp_path).read_bytes()
    with pytest.raises(TorchRobustError, match=r"different run \(lr 0.01 -> 0.1\)"):
        fit(Net(), data, TrainConfig(epochs=1, batch_size=32, seed=1, lr=0.1), resume_from=tmp_path)
    with pytest.raises(TorchRobustError, match="training data"):
        fit(Net(), _blobs(seed=9), cfg, resume_from=tmp_path)
    with pytest.raises(TorchRobustError, match="model structure"):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), data, cfg, resume_from=tmp_path)
    with pytest.raises(TorchRobustError, match="already holds the resume state"):
        fit(Net(), data, cfg, checkpoint_dir=tmp_path)
    assert resume.state_path(tmp_path).read_bytes() == before
    # the progress bar and the checkpoint frequency do not change results: they may differ on resume
    fit(Net(), data, TrainConfig(epochs=1, batch_size=32, seed=1, checkpoint_every=3), resume_from=tmp_path)
    with pytest.raises(TorchRobustError, match="no usable resume state"):
        fit(Net(), data, cfg, resume_from=tmp_path / "empty")


def test_nan_loss_stops_keeps_last_state_and_last_finite_weights(tmp_path):
    data = _blobs()
    cfg = TrainConfig(epochs=2, batch_size=16, seed=0, checkpoint_every=2)
    m = Net()
    m.poison = 5
    with pytest.raises(TorchRobustError, match=r"diverged at epoch 1, batch 5: the loss is nan .*lower the learning "
                                               r"rate .*resume state in .* is kept") as err:
        fit(m, data, cfg, checkpoint_dir=tmp_path)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, TrainingDiverged) and (err.value.epoch, err.value.batch) == (1, 5)
    state = load_file(str(resume.state_path(tmp_path)))  # the state after step 4 is intact
    for k, v in m.state_dict().items():
        assert torch.isfinite(v.float()).all(), k
    ref = Net()  # the last finite weights are those after 4 steps (BatchNorm statistics included)
    fit(ref, data, TrainConfig(epochs=1, batch_size=16, seed=0, max_batches=4))
    _same(ref, m)
    for k, v in ref.state_dict().items():
        assert torch.equal(state[f"model.{k}"], v), k


def test_weights_turning_inf_stop_training_with_the_weights_before_the_step():
    m = Net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(TorchRobustError, match="diverged at epoch 1, batch 1: the weights became NaN/inf"):
        fit(m, _blobs(), TrainConfig(epochs=1, batch_size=16, lr=3e38, weight_decay=3e38, momentum=0))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kw,match", [
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number >= 0"),
    ({"momentum": -5.0}, "momentum must be a finite number >= 0"),
    ({"lr": float("inf")}, "learning rate"), ({"lr": 0.0}, "learning rate"), ({"lr": 1e300}, "learning rate"),
    ({"max_batches": 0}, "max_batches must be an integer >= 1"), ({"max_batches": -1}, "max_batches"),
    ({"batch_size": 0}, "batch_size"), ({"checkpoint_every": 0}, "checkpoint_every"),
    ({"alpha": float("nan")}, "alpha"), ({"gamma": float("inf")}, "gamma"), ({"milestones": [-1]}, "milestones"),
])
def test_hyper_parameters_are_validated_before_work(kw, match):
    with pytest.raises(TorchRobustError, match=match):
        fit(Net(), _blobs(), TrainConfig(**kw))


def test_labels_beyond_the_model_classes_are_refused():
    x, y = _blobs()
    with pytest.raises(TorchRobustError, match="labels go from 0 to 2 but the model outputs 2 classes; build it "
                                               "with num_classes=3"):
        fit(Net(), (x, y.clamp(max=1) + (y == 1).long()), TrainConfig(epochs=1))


# ------------------------------------------------------------------------------------------------ CLI
TRAIN = ["train", "--model", "mlp", "--model-arg", "widths=[16]", "--n-train", "256", "--epochs", "1",
         "--batch-size", "64", "--no-val", "--quiet", "--threads", "1"]


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    return int(rc), capsys.readouterr().err


@pytest.mark.parametrize("extra,match", [
    (["--lr", "1e6"], "training diverged at epoch 1"),
    (["--weight-decay", "nan"], "weight_decay must be a finite number"),
    (["--momentum", "-5"], "momentum must be a finite number >= 0"),
    (["--threads", "-1"], "--threads"),
    (["--max-batches", "0"], "--max-batches"), (["--max-batches", "-1"], "--max-batches"),
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-5"], "--batch-size"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--model-arg", "num_classes=5"], "the model outputs 5 classes; build it with num_classes=10"),
    (["--resume"], "no resume state"),
    (["OUT=dir"], "is a folder"), (["OUT=under-file"], "is a file, not a folder"),
])
def test_cli_bad_options_one_line_exit_2_nothing_written(tmp_path, capsys, extra, match):
    work = tmp_path / "w"
    work.mkdir()
    out = work / "m.safetensors"
    if extra == ["OUT=dir"]:
        out.mkdir()
        extra = []
    elif extra == ["OUT=under-file"]:
        (work / "f").write_text("x")
        out = work / "f" / "m.safetensors"
        extra = []
    before = sorted(work.rglob("*"))
    rc, err = _cli([*TRAIN, "--out", str(out), *extra], capsys)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("torchrobust: error:") and "Traceback" not in err, err
    assert match in err
    assert sorted(work.rglob("*")) == before  # no model, no resume state


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_cli_kill_9_then_resume_is_bitwise_identical(tmp_path, capsys):
    args = ["train", "--model", "mlp", "--model-arg", "widths=[32]", "--n-train", "1024", "--batch-size", "16",
            "--epochs", "2", "--lr", "0.05", "--checkpoint-every", "2", "--no-val", "--quiet", "--threads", "1"]
    killed = tmp_path / "killed.safetensors"
    state = resume.state_path(tmp_path / "killed.safetensors.resume")
    kill_9_when([sys.executable, "-m", "torchrobust.cli", *args, "--out", str(killed)], state.exists)
    assert not killed.exists()
    step = int(resume.read_state(state)[0]["position"]["step"])
    assert 2 <= step < 128  # a state mid-run survived the kill

    assert _cli([*args, "--out", str(killed), "--resume"], capsys)[0] == 0
    assert not state.parent.exists()  # the resume state is dropped once the model is saved
    ref = tmp_path / "ref.safetensors"
    assert _cli([*args, "--out", str(ref)], capsys)[0] == 0
    a, b = _tensors(killed), _tensors(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the resumed run also refuses to run again over an existing state without --resume (work is never lost)
    state.parent.mkdir()
    state.write_bytes(b"partial")
    rc, err = _cli([*args, "--out", str(tmp_path / "other.safetensors"), "--checkpoint-dir", str(state.parent)],
                   capsys)
    assert rc == 2 and "add --resume to continue it" in err


@pytest.mark.parametrize("steps", ["0", "-1"])
def test_demo_needs_at_least_one_paradigm3_step(tmp_path, capsys, steps):
    from torchrobust.experiments.demo import run_demo

    rc, err = _cli(["demo", "--p3-steps", steps, "--out", str(tmp_path / "d")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "--p3-steps" in err and "Traceback" not in err
    with pytest.raises(TorchRobustError, match="p3_steps .* must be an integer >= 1"):
        run_demo(tmp_path / "d", p3_steps=int(steps))
    assert not (tmp_path / "d").exists()


def test_clear_state_removes_the_temporary_file_of_a_write_killed_midway(tmp_path):
    """kill -9 during the atomic write of a state leaves ``.state.rank0.safetensors.XXXX.tmp`` behind; once the
    final model is saved, clearing the state removes it and the folder (a user's own file would keep the folder)."""
    from torchrobust.train import resume as train_resume

    d = tmp_path / "m.safetensors.resume"
    d.mkdir()
    state = train_resume.state_path(d)
    state.write_bytes(b"state")
    (d / f".{state.name}.abc123.tmp").write_bytes(b"half a state")
    train_resume.clear_state(d)
    assert not d.exists()
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    train_resume.clear_state(d)
    assert (d / "notes.txt").read_text() == "mine"
