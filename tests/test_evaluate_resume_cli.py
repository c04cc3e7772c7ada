"""`torchrobust evaluate --out DIR`: kill -9 at any moment, rerun the same command — it resumes, redoes no finished
batch, and ends with results identical to an uninterrupted run; a state of another checkpoint or split is not
reused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchrobust.cli import main


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ev")
    paths = []
    for seed in (0, 1):
        path = d / f"mlp{seed}.safetensors"
        assert main(["train", "--model", "mlp", "--model-arg", "widths=[32]", "--n-train", "1000", "--epochs", "1",
                     "--batch-size", "64", "--lr", "0.05", "--seed", str(seed), "--out", str(path), "--quiet",
                     "--no-val"]) == 0
        paths.append(path)
    return paths


ARGS = ["--n-examples", "32", "--eps", "0,0.05,0.1", "--batch-size", "8", "--steps", "20", "--quiet",
        "--threads", "1"]


def _run(ckpt: Path, out: Path, *extra: str) -> dict:
    assert main(["evaluate", str(ckpt), *ARGS, *extra, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def _same_results(a: dict, b: dict) -> None:
    assert a["table"] == b["table"]
    assert a["per_example"] == b["per_example"]
    assert a["config"]["counts"] == b["config"]["counts"]  # the same work, nothing done twice


def test_kill_9_then_rerun_resumes_and_matches(ckpts, tmp_path):
    ckpt = ckpts[0]
    ref = _run(ckpt, tmp_path / "ref")
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torchrobust.cli", "evaluate", str(ckpt), *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_json = out / "state.json"
    try:
        deadline = time.monotonic() + 300
        finished: list[str] = []
        while proc.poll() is None and time.monotonic() < deadline:  # kill once a job is done and one is running
            try:
                jobs = json.loads(state_json.read_text())["meta"]["jobs"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.01)
                continue
            finished = [k for k, v in jobs.items() if v["finished"]]
            if len(finished) >= 2:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        err = proc.communicate()[1].decode()
    assert proc.returncode == -signal.SIGKILL, err
    assert not (out / "results.json").exists()  # killed before the end
    jobs_at_kill = json.loads(state_json.read_text())["meta"]["jobs"]
    assert 2 <= sum(v["finished"] for v in jobs_at_kill.values()) < 6
    # rerun the same command: it resumes and ends exactly where an uninterrupted run does
    resumed = _run(ckpt, out)
    _same_results(resumed, ref)
    jobs_after = json.loads(state_json.read_text())["meta"]["jobs"]
    for k, v in jobs_at_kill.items():
        if v["finished"]:  # finished jobs were not redone: their cost is exactly what it was at the kill
            assert jobs_after[k]["forward"] == v["forward"] and jobs_after[k]["gradient"] == v["gradient"]


def test_state_of_another_checkpoint_or_split_is_recomputed(ckpts, tmp_path, caplog):
    a, b = ckpts
    out = tmp_path / "o"
    _run(a, out)
    (out / "results.json").unlink()  # as if killed just before its last write: results.json marks a finished run
    fresh_b = _run(b, tmp_path / "fresh_b")
    got_b = _run(b, out)  # another checkpoint in the same folder: the state is not reused
    _same_results(got_b, fresh_b)
    (out / "results.json").unlink()
    fresh_train = _run(b, tmp_path / "fresh_train", "--split", "train")
    got_train = _run(b, out, "--split", "train")
    _same_results(got_train, fresh_train)
    assert got_train["per_example"] != got_b["per_example"]


def test_results_of_a_finished_run_are_not_overwritten(ckpts, tmp_path, capsys):
    out = tmp_path / "o"
    _run(ckpts[0], out)
    before = (out / "results.json").read_bytes()
    assert main(["evaluate", str(ckpts[0]), *ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert (out / "results.json").read_bytes() == before
