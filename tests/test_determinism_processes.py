"""Same seed, two processes, same results: every cheap CLI entry point run in two fresh Python processes whose global
RNGs (torch, ``random``, ``numpy.random``) are seeded differently before each command, and their outputs compared
(weights bitwise, result JSON without wall-clock fields).

Why processes: torch 2.14.1 seeds its global generator at random per process (``torch.initial_seed()`` differs run
to run), and ``conftest.py`` re-seeds it to 0 before every test, so a result that silently depends on the global
RNG passes any one-process rerun test. Each process here runs the commands one after the other with its own global
seeds (the second in reverse order, so that once-per-process state such as a probe cache is met in another order);
a command whose output depends on anything but ``--seed`` and its inputs shows up as a difference.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_cifar10_presets import TINY, write_fake_cifar

from torchrobust.cli import main

# a command's argv; {out} is its output path in the process's folder, {ckpt}/{psat}/{cifar} the shared inputs
COMMANDS: dict[str, list[str]] = {
    "train-pgd": ["train", "--model", "mlp", "--model-arg", "widths=[32]", "--n-train", "256", "--epochs", "1",
                  "--batch-size", "64", "--mode", "pgd", "--steps", "2", "--out", "{out}.safetensors", "--no-val"],
    "train-trades": ["train", "--model", "lenet", "--n-train", "128", "--epochs", "1", "--batch-size", "64",
                     "--mode", "trades", "--steps", "1", "--out", "{out}.safetensors", "--no-val"],
    "train-gaussian": ["train", "--model", "mlp", "--model-arg", "widths=[32]", "--n-train", "256", "--epochs", "1",
                       "--batch-size", "64", "--mode", "gaussian", "--out", "{out}.safetensors", "--no-val"],
    "evaluate": ["evaluate", "{ckpt}", "--n-examples", "24", "--eps", "0,0.1", "--attacks", "fgsm,pgd,square",
                 "--attack-arg", "square.n_queries=20", "--steps", "3", "--checks", "--out", "{out}"],
    "evaluate-adaptive": ["evaluate", "{ckpt}", "--n-examples", "12", "--eps", "0,0.3", "--suite", "adaptive",
                          "--steps", "5", "--out", "{out}"],
    "certify": ["certify", "{ckpt}", "--n-examples", "3", "--n0", "20", "--n", "200", "--out", "{out}"],
    "forge": ["forge", "{ckpt}", "--c-r", "2**-5", "--n-calib", "500", "--out", "{out}.safetensors"],
    "demo": ["demo", "--out", "{out}", "--epochs", "1", "--n-test", "20", "--steps", "2", "--p3-steps", "2"],
    "psat-train": ["psat", "train", "--out", "{out}", "--members", "Linf", "--baselines", "max", "--n-train", "100",
                   "--steps", "1"],
    "psat-evaluate": ["psat", "evaluate", "{psat}", "--n-examples", "12", "--restarts", "1", "--steps", "2",
                      "--out", "{out}"],
    "forge-tables": ["forge-tables", "--out", "{out}", "--epochs", "1", "--warmup-epochs", "1", "--max-batches", "2",
                     "--n-test", "6", "--n-calib", "200", "--eps", "0.1,0.3"],
    "paper-table1": ["paper", "table1", "--profile", "quick", "--robust", "pgd20", "--out", "{out}"],
    "cifar10-reprogram": ["cifar10", "reprogram", "--out", "{out}", "--data-root", "{cifar}", *TINY],
}

_RUNNER = """
import json, random, sys
import numpy as np, torch
from torchrobust.cli import main
commands, base, order = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
names = sorted(commands) if order == "forward" else sorted(commands, reverse=True)
for i, name in enumerate(names):
    torch.manual_seed(base + i); random.seed(base + i); np.random.seed(base + i)
    rc = main([*commands[name], "--quiet"])
    assert rc == 0, (name, rc)
"""

_WALL = re.compile(r"(seconds|wall|time|timing|_s$|cpu)")


def _comparable(o: Any) -> Any:
    """A JSON document without its wall-clock fields (keys naming seconds/time/timings/CPU, also inside JSON held
    in strings such as a checkpoint's metadata; 'wall time ...' phrases)."""
    if isinstance(o, dict):
        return {k: _comparable(v) for k, v in o.items() if not _WALL.search(k)}
    if isinstance(o, list):
        return [_comparable(v) for v in o]
    if isinstance(o, str):
        if o[:1] in ("[", "{"):
            try:
                return _comparable(json.loads(o))
            except json.JSONDecodeError:
                pass
        return re.sub(r"wall time[^;.]*", "", o)
    return o


def _outputs(folder: Path) -> dict[str, Any]:
    """Every weight file's tensors (bitwise) and every JSON file (without wall-clock fields) under ``folder``."""
    got: dict[str, Any] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.suffix == ".safetensors":
            got[rel] = {k: hashlib.sha256(v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
                        for k, v in load_file(str(p)).items()}
        elif p.suffix == ".json":
            got[rel] = _comparable(json.loads(p.read_text()))
    return got


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("det-inputs")
    ckpt = d / "mlp.safetensors"
    assert main(["train", "--model", "mlp", "--model-arg", "widths=[32]", "--model-arg", "activation=\"relu\"",
                 "--n-train", "1000", "--epochs", "1", "--batch-size", "64", "--lr", "0.05", "--out", str(ckpt),
                 "--quiet", "--no-val"]) == 0
    assert main(["psat", "train", "--out", str(d / "psat"), "--members", "Linf,L2", "--baselines", "max",
                 "--n-train", "100", "--steps", "1", "--quiet"]) == 0
    return {"ckpt": str(ckpt), "psat": str(d / "psat"), "cifar": str(write_fake_cifar(d / "cifar"))}


def test_cli_results_depend_only_on_the_seed_across_processes(inputs: dict[str, str], tmp_path: Path) -> None:
    outs = {}
    for run, base, order in (("a", 1, "forward"), ("b", 1000, "reverse")):
        folder = tmp_path / run
        folder.mkdir()
        cmds = {name: [a.format(out=str(folder / name), **inputs) for a in argv] for name, argv in COMMANDS.items()}
        r = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(cmds), str(base), order], cwd=folder,
                           capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr[-3000:]
        outs[run] = _outputs(folder)
    a, b = outs["a"], outs["b"]
    assert sorted(a) == sorted(b)
    for name in COMMANDS:  # every command wrote weights or results
        assert any(k.startswith(name) for k in a), name
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"results that depend on the global RNG (not only on --seed): {differ}"


def test_the_compiler_probe_leaves_the_global_rng_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """``compiler_available`` runs once per process, at the first NRPM forward (inside a seeded training, say): its
    test inputs come from its own generator, so a first call and a cached one leave the same global RNG state."""
    from torchrobust.nn import nrpm_compiled as C

    monkeypatch.setattr(C, "_COMPILER_OK", {})
    monkeypatch.setattr(C, "_call", lambda name, *args: C.irls_step(*args))  # the probe's logic, without compiling
    torch.manual_seed(5)
    before = torch.get_rng_state()
    assert C.compiler_available("cpu") is True
    assert torch.equal(torch.get_rng_state(), before)
