"""`torchrun --nproc_per_node 2` (gloo on CPU) gives the same per-example evaluation as one process, and
distributed training runs and writes one checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from torchrobust import checkpoint, models
from torchrobust.cli import main


def _torchrun(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "torchrobust.cli", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch

    from torchrobust import data
    from torchrobust.train import TrainConfig, fit

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("dist")
    m = models.create("mlp", widths=[32], activation="relu")
    x, y = data.as_tensors(data.load("mnist", "train"), 3000)
    fit(m, (x, y), TrainConfig(epochs=1, batch_size=64, lr=0.05))
    return checkpoint.save(m, d / "m.safetensors")


def test_two_process_evaluation_equals_one_process(ckpt, tmp_path):
    common = ["evaluate", str(ckpt), "--n-examples", "101", "--eps", "0,0.05,0.2", "--steps", "5", "--quiet",
              "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    _torchrun([*common, "--out", str(tmp_path / "two")], tmp_path)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["config"]["world_size"] == 2 and one["config"]["world_size"] == 1
    assert one["per_example"] == two["per_example"]
    assert one["table"] == two["table"]


def test_two_process_training(tmp_path):
    out = tmp_path / "ddp.safetensors"
    _torchrun(["train", "--model", "mlp", "--model-arg", "widths=[16]", "--n-train", "600", "--epochs", "1",
               "--batch-size", "50", "--out", str(out), "--quiet", "--no-val", "--threads", "1"], tmp_path)
    m = checkpoint.load(out)
    assert sum(p.numel() for p in m.parameters()) > 0
    assert len(checkpoint.load_metadata(out)["metadata"]["history"]) == 1
