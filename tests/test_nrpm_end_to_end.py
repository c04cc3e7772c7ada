"""benchmarks/nrpm_end_to_end.py (issue 13, docs/nrpm-end-to-end.md): a tiny Paradigm-3 epoch writes its record,
a partial run is projected to the epoch, the report renders both with speed-ups, bad options are one-line errors."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("nrpm_end_to_end", ROOT / "benchmarks" / "nrpm_end_to_end.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_epoch_records_projection_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    e2e = _script()
    common = ["--backend", "eager", "--n-train", "192", "--n-test", "100", "--batch-size", "64"]
    assert e2e.main(["epoch", *common, "--label", "full", "--json", str(tmp_path / "full.json")]) == 0
    assert e2e.main(["epoch", *common, "--max-batches", "1", "--label", "part",
                     "--json", str(tmp_path / "part.json")]) == 0
    full = json.loads((tmp_path / "full.json").read_text())
    part = json.loads((tmp_path / "part.json").read_text())
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporary files
    assert (full["steps"], full["steps_per_epoch"], full["projected"]) == (3, 3, False)
    assert (part["steps"], part["steps_per_epoch"], part["projected"]) == (1, 3, True)
    assert math.isfinite(full["loss"]) and 0 <= full["train_acc"] <= 1 and 0 <= full["test_acc"] <= 1
    assert "test_acc" not in part  # a partial epoch has no final model to evaluate
    assert part["epoch_cpu_s"] == pytest.approx(3 * part["cpu_s"], abs=0.1)
    assert full["epoch_cpu_s"] == pytest.approx(full["cpu_s"], abs=0.1)
    assert full["code"]["root"] == str(ROOT) and full["backend"] == "eager" and full["K"] == 1

    capsys.readouterr()
    assert e2e.main(["report", str(tmp_path / "full.json"), str(tmp_path / "part.json"), "--baseline", "full"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[1:-1]] for ln in lines[2:]}
    assert rows["full"][3] == "3 of 3 batches" and rows["full"][6] == "1.0"
    assert rows["part"][3] == "1 of 3 batches, projected" and rows["part"][7] == "n/a"  # no final loss shown
    speed = full["epoch_cpu_s"] / part["epoch_cpu_s"]
    assert rows["part"][6] == f"{round(speed, 2):.1f}"


@pytest.mark.parametrize("argv", [["epoch", "--max-batches", "0"], ["epoch", "--lam", "1.5"],
                                  ["table1", "--n-test", "0"]])
def test_bad_options_exit_2(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    e2e = _script()
    with pytest.raises(SystemExit) as exc:
        e2e.main([*argv, "--label", "x", "--json", str(tmp_path / "r.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nrpm_end_to_end: error:") and "\n" not in err
    assert not (tmp_path / "r.json").exists()
