"""The CIFAR-10 presets (`torchrobust cifar10 reprogram|forge|psat`, torchrobust.presets.cifar10) end to end on tiny
fake CIFAR-10 files at reduced width on CPU: tables written, interrupted runs resumed to the same result, bad input
refused in one line; mixed precision and channels_last in fit; one two-process torchrun run (slow)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_one_line_error as _cli_error

from torchrobust import checkpoint, models
from torchrobust.cli import main
from torchrobust.errors import TorchRobustError
from torchrobust.presets import cifar10 as C

N_PER_FILE = 4  # 5 training batches -> 20 training images, 4 test images


def write_fake_cifar(root: Path, seed: int = 0) -> Path:
    """torchvision's ``cifar-10-batches-py`` layout: one pickled dict per batch (``data`` N×3072 uint8 as a numpy
    array, ``labels`` a list of ints), protocol 2 — what the official release holds and what our restricted
    unpickler (numpy arrays and plain containers only) reads."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"batch_label": name, "data": rng.integers(0, 256, size=(N_PER_FILE, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, size=N_PER_FILE)],
                 "filenames": [f"{name}_{i}.png" for i in range(N_PER_FILE)]}
        with open(base / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    return root


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("cifar"))


#: the tiny reprogramming run: width 2, one backbone, one λ, K = 1, one epoch of 3 batches, 2-step attacks
TINY = ["--width", "2", "--epochs", "1", "--finetune-epochs", "1", "--n-test", "4", "--batch-size", "8",
        "--train-steps", "1", "--eval-steps", "2", "--apgd-steps", "2", "--backbones", "standard", "--lam-grid", "0.5",
        "--K", "1", "--backend", "eager", "--quiet", "--threads", "1"]


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "eval_seconds"} for r in json.loads(path.read_text())["rows"]]


# ----------------------------------------------------------------------------------------------- reprogram
def test_reprogram_preset_end_to_end(cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rp"
    # width 8: at width 2 the ResNet's strided 1x1 shortcut is too narrow for channels_last on CPU (refused below)
    assert main(["cifar10", "reprogram", "--out", str(out), "--data-root", str(cifar), *TINY,
                 "--precision", "bf16", "--channels-last", "--width", "8"]) == 0
    printed = capsys.readouterr().out
    assert "| standard P3 |" in printed and "PGD-2" in printed
    result = json.loads((out / "reprogram.json").read_text())
    assert [r["row"] for r in result["rows"]] == ["standard LPM", "standard P1 lam=0.5", "standard P2", "standard P3"]
    assert result["n_train"] == 5 * N_PER_FILE and result["n_test"] == N_PER_FILE
    assert result["config"]["precision"] == "bf16" and result["config"]["channels_last"] is True
    for r in result["rows"]:  # the worst case is per example, so never above any single attack or clean
        assert 0.0 <= r["worst"] <= min(r["clean"], r["pgd"], r["apgd-ce"], r["apgd-t"]) <= 1.0
    assert [len(r["lams"]) for r in result["rows"][2:]] == [16, 16]  # the 16 block convs are NRPM (paper code)
    table = json.loads((out / "reprogram_table.json").read_text())
    assert [c["name"] for c in table["columns"]][:6] == ["row", "clean", "pgd", "apgd-ce", "apgd-t", "worst"]
    # the trained models are checkpoints that reload (the backbone was trained under bf16 with channels_last)
    saved = checkpoint.load_metadata(out / "models" / "standard.safetensors")["metadata"]
    assert saved["training"]["precision"] == "bf16" and saved["training"]["channels_last"] is True
    p3 = checkpoint.load(out / "models" / "standard_p3.safetensors")
    assert any(hasattr(m, "lam") for m in p3.modules())
    assert not list(out.rglob("*.resume"))  # every resume state was removed once its model was saved


def test_reprogram_preset_resumes_after_interruption(cifar: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed inside the backbone's training (after its second resume state) and rerun gives the same models
    and table as an uninterrupted run, and a finished run's rerun trains and attacks nothing."""
    from torchrobust.train import resume

    cfg = C.quick_config(n_test=4, epochs=2, checkpoint_every=1)
    C.run("reprogram", tmp_path / "a", cfg, root=cifar)
    real_write, writes = resume.write_state, []

    def crash_after_two(*args, **kwargs):
        writes.append(1)
        if len(writes) > 2:
            raise KeyboardInterrupt  # what Ctrl-C / a kill leaves: the state of the last write on disk
        return real_write(*args, **kwargs)

    monkeypatch.setattr(resume, "write_state", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        C.run("reprogram", tmp_path / "b", cfg, root=cifar)
    assert resume.has_state(tmp_path / "b" / "models" / "standard.safetensors.resume")
    assert not (tmp_path / "b" / "models" / "standard.safetensors").exists()
    monkeypatch.setattr(resume, "write_state", real_write)
    C.run("reprogram", tmp_path / "b", cfg, root=cifar)
    assert _rows(tmp_path / "a" / "reprogram.json") == _rows(tmp_path / "b" / "reprogram.json")
    for name in ("standard", "standard_p2", "standard_p3"):
        a = checkpoint.load(tmp_path / "a" / "models" / f"{name}.safetensors").state_dict()
        b = checkpoint.load(tmp_path / "b" / "models" / f"{name}.safetensors").state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name  # bit for bit
    # a finished run: the rerun reuses every model and row
    import torchrobust.evaluate as E
    import torchrobust.train as T

    monkeypatch.setattr(T, "fit", lambda *a, **k: pytest.fail("a finished model was retrained"))
    monkeypatch.setattr(E, "sweep", lambda *a, **k: pytest.fail("a finished row was recomputed"))
    again = C.run("reprogram", tmp_path / "b", cfg, root=cifar)
    assert [{k: v for k, v in r.items() if k != "eval_seconds"} for r in again["rows"]] == \
        _rows(tmp_path / "a" / "reprogram.json")


def test_a_rerun_with_other_options_is_refused(cifar: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cifar10", "reprogram", "--out", str(tmp_path / "rp"), "--data-root", str(cifar), *TINY]
    assert main(argv) == 0
    _cli_error(capsys, [*argv, "--K", "2"], "holds a run with other options (differs in: K)", "choose another --out")


# ----------------------------------------------------------------------------------------------- forge
def test_forge_preset_over_the_cr_grid(cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    wrn = models.create("wideresnet", depth=10, widen_factor=1)  # RobustBench's WideResNet key layout, reduced
    torch.save({"state_dict": {f"module.{k}": v for k, v in wrn.state_dict().items()}}, tmp_path / "rb.pt")
    out = tmp_path / "fg"
    argv = ["cifar10", "forge", "--out", str(out), "--data-root", str(cifar), "--weights", str(tmp_path / "rb.pt"),
            "--grid", "2**-8,2**-6,2**-4", "--n-calib", "12", "--n-val", "6", "--n-test", "4", "--eval-steps", "2",
            "--apgd-steps", "2", "--quiet", "--threads", "1"]
    assert main(argv) == 0
    assert "| c_r=0.0625 |" in capsys.readouterr().out
    result = json.loads((out / "forge.json").read_text())
    rows = result["rows"]
    assert [r["c_r"] for r in rows] == [0.0, 2**-8, 2**-6, 2**-4]  # the unforged baseline first, then the grid
    assert sum(r["chosen"] for r in rows) == 1 and result["chosen_c_r"] in [r["c_r"] for r in rows]
    zeroed = [r["zero_fraction"] for r in rows]
    assert zeroed[0] == 0 and zeroed == sorted(zeroed) and zeroed[-1] > 0  # a larger c_r zeroes more activations
    for r in rows:
        assert 0.0 <= r["robust_worst"] <= min(r["robust"], r["robust_bpda"]) <= r["clean"] <= 1.0
    assert result["validation"]["n_val"] == 6
    assert main(argv) == 0  # a finished run is read back, not recomputed
    assert _rows(out / "forge.json") == [{k: v for k, v in r.items() if k != "eval_seconds"} for r in rows]


# ----------------------------------------------------------------------------------------------- psat
def test_psat_preset_members_baselines_and_resume(cifar: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = C.quick_config(width=4, n_test=4, eval_steps=1, psat_eval_steps=1)
    out = tmp_path / "ps"
    result = C.run("psat", out, cfg, root=cifar)
    names = [r["name"] for r in result["rows"]]
    assert {"H_Linf", "H_L2", "H_L1", "AT_max"} <= set(names) and any(n.startswith("PSAT") for n in names)
    for r in result["rows"]:
        assert set(r["per_norm"]) == {"Linf", "L2", "L1"} and 0.0 <= r["union"] <= r["clean"] <= 1.0
    meta = checkpoint.load_metadata(out / "psat" / "Linf.safetensors")["metadata"]
    assert meta["role"] == "psat_member" and meta["eps"] == {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0}
    # one member lost: the rerun trains only that one, then evaluates again
    (out / "psat" / "L2.safetensors").unlink()
    (out / "rows" / "multi-norm_table.json").unlink()
    import torchrobust.train as T

    trained, real_fit = [], T.fit

    def counting_fit(model, *args, **kwargs):
        trained.append(type(model).__name__)
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(T, "fit", counting_fit)
    again = C.run("psat", out, cfg, root=cifar)
    assert len(trained) == 1 and [r["name"] for r in again["rows"]] == names


# ----------------------------------------------------------------------------------------------- bad input
def test_missing_cifar_file_is_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_fake_cifar(tmp_path / "data")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    out = tmp_path / "rp"
    _cli_error(capsys, ["cifar10", "reprogram", "--out", str(out), "--data-root", str(root), *TINY],
               "cifar10 not found", "data_batch_3", "--data-root")
    assert not out.exists()
    _cli_error(capsys, ["cifar10", "psat", "--out", str(out), "--data-root", str(tmp_path / "nowhere")],
               "cifar10 not found", "test_batch")


def test_option_errors_name_the_fix(cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--out", str(tmp_path / "o"), "--data-root", str(cifar)]
    _cli_error(capsys, ["cifar10", "reprogram", *base, "--precision", "fp16"], "fp16 needs a CUDA device",
               "--precision bf16")
    _cli_error(capsys, ["cifar10", "forge", *base], "needs a RobustBench checkpoint", "--weights")
    _cli_error(capsys, ["cifar10", "forge", *base, "--weights", str(tmp_path / "none.pt")], "no such file")
    _cli_error(capsys, ["cifar10", "reprogram", *base, "--weights", str(tmp_path / "none.pt")], "drop it")
    _cli_error(capsys, ["cifar10", "reprogram", *base, "--backbones", "standard,pgdd"], "pgdd", "valid:")
    _cli_error(capsys, ["cifar10", "reprogram", *base, "--lam-grid", "0.5,1.5"], "[0, 1]")
    _cli_error(capsys, ["cifar10", "reprogram", *base, "--irls-eps", "0"], "irls_eps must be a finite number > 0")
    _cli_error(capsys, ["cifar10", "forge", *base, "--weights", str(cifar / "cifar-10-batches-py" / "test_batch"),
                        "--grid", "0,2**-7"], "c_r grid needs values > 0")
    _cli_error(capsys, ["cifar10", "reprogram", *base, "--precision", "fp8"], "invalid choice")
    _cli_error(capsys, ["train", "--model", "lenet", "--out", str(tmp_path / "m.safetensors"), "--precision", "fp16",
                        "--max-batches", "1"], "fp16 needs a CUDA device")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------- fit's precision
def test_bf16_autocast_runs_the_model_in_bf16_and_keeps_fp32_weights_and_inputs() -> None:
    """precision="bf16": the convolutions of the training forward passes (the PGD adversary's included) run in
    bfloat16 while the model's inputs (clean and crafted) and its weights stay float32, and the logits the loss and
    the attack see are float32; fit leaves no hook behind. fp32 runs no bfloat16 at all."""
    from torchrobust.train import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    for precision in ("fp32", "bf16"):
        seen: dict[str, set] = {"conv": set(), "input": set()}
        torch.manual_seed(0)
        net = models.create("resnet18", width=8)
        hooks = [net.conv1.register_forward_hook(lambda m, i, o, s=seen: s["conv"].add(o.dtype)),
                 net.register_forward_pre_hook(lambda m, i, s=seen: s["input"].add(i[0].dtype))]
        fit(net, (x, y), TrainConfig(epochs=1, batch_size=8, mode="pgd", eps=8 / 255, steps=2, precision=precision,
                                     channels_last=precision == "bf16", max_batches=1))
        assert seen["conv"] == ({torch.bfloat16, torch.float32} if precision == "bf16" else {torch.float32})
        assert seen["input"] == {torch.float32}
        assert all(p.dtype == torch.float32 for p in net.parameters())
        for h in hooks:
            h.remove()
        assert not net._forward_hooks and not net._forward_pre_hooks  # fit's float32-logits hook was removed
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(TorchRobustError, match="unknown precision 'fp64'"):
        TrainConfig(precision="fp64").validate()


# ----------------------------------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_reprogram_preset_under_torchrun(cifar: Path, tmp_path: Path) -> None:
    """Two gloo processes: DDP training, sharded evaluation, one set of files written by rank 0."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "torchrobust.cli", "cifar10", "reprogram", "--out", str(out), "--data-root", str(cifar), *TINY]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "reprogram.json").read_text())
    assert result["world_size"] == 2 and len(result["rows"]) == 4
    assert (out / "models" / "standard_p3.safetensors").is_file() and not list(out.rglob("*.resume"))


def test_fp16_loss_scaler_state_resumes_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fp16 path (autocast + GradScaler) on CPU, with the CUDA-only check lifted: the scaler's state (scale,
    growth tracker) is part of the resume state, so a run killed after its third state write and resumed ends with
    the uninterrupted run's weights and scaler state."""
    import torchrobust.train.precision as P
    from torchrobust.train import TrainConfig, fit, resume

    monkeypatch.setattr(P, "check_precision", lambda precision, device: str(precision))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g)
    cfg = TrainConfig(epochs=2, batch_size=8, mode="pgd", eps=8 / 255, steps=1, precision="fp16", checkpoint_every=1,
                      lr=0.05)

    def train(folder: str, resume_from: bool = False) -> torch.nn.Module:
        torch.manual_seed(0)
        m = models.create("resnet18", width=2)
        fit(m, (x, y), cfg, checkpoint_dir=tmp_path / folder, resume_from=tmp_path / folder if resume_from else None)
        return m

    a = train("a")
    real_write, writes = resume.write_state, []

    def crash(*args, **kwargs):
        writes.append(1)
        if len(writes) > 3:
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr(resume, "write_state", crash)
    with pytest.raises(KeyboardInterrupt):
        train("b")
    monkeypatch.setattr(resume, "write_state", real_write)
    b = train("b", resume_from=True)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    scaler = {f: resume.read_state(resume.state_path(tmp_path / f))[0]["progress"]["scaler"] for f in ("a", "b")}
    assert scaler["a"] == scaler["b"] and scaler["a"]["_growth_tracker"] > 0 and scaler["a"]["scale"] > 0


def test_channels_last_refuses_a_conv_onednn_aborts_on(cifar: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """channels_last on CPU with a strided 1x1 conv of < 8 input channels (the width-2 ResNet's shortcut) would abort
    the process in oneDNN's weight backward (torch 2.14.1, AVX2): refused in one line before any training."""
    from torchrobust.train import TrainConfig, fit

    net = models.create("resnet18", width=2)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with pytest.raises(TorchRobustError, match="layer2.0.shortcut") as ei:
        fit(net, (x, y), TrainConfig(epochs=1, batch_size=8, channels_last=True, max_batches=1))
    assert "\n" not in str(ei.value) and "--channels-last" in str(ei.value)
    assert net.conv1.weight.is_contiguous()  # untouched
    fit(net, (x, y), TrainConfig(epochs=1, batch_size=8, max_batches=1))  # the same model trains without it
    out = tmp_path / "cl"
    _cli_error(capsys, ["cifar10", "reprogram", "--out", str(out), "--data-root", str(cifar), *TINY,
                        "--channels-last"], "channels_last", "shortcut")
