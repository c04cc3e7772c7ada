"""Bad inputs: every CLI mistake ends with ONE line on stderr and exit status 2 — no traceback, nothing written or
modified on disk — and the library's bad inputs raise :class:`TorchRobustError` (docs/reliability.md).

The CLI cases run in-process through :func:`torchrobust.cli.main` (fast); a few run as real subprocesses to prove
that no traceback reaches the terminal, and one interrupts a run with SIGINT (exit 130). Every case snapshots the
files (bytes, mode, mtime) and folders of its workspace and of the shared fixture folder before and after.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

import torchrobust as tr
from torchrobust import attacks, checkpoint, models, validation
from torchrobust.cli import main
from torchrobust.errors import TorchRobustError

CUDA_MISSING = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


def _raw_checkpoint(path: Path, meta: str | None) -> Path:
    """A safetensors file with the tensors of a tiny MLP and ``meta`` as its torchrobust header (None: none)."""
    sd = {k: v.contiguous() for k, v in models.create("mlp", widths=[16]).state_dict().items()}
    path.write_bytes(st_save(sd, metadata=None if meta is None else {"torchrobust": meta}))
    return path


class _Evil:
    """Unpickling this object would run a shell command (it must never be unpickled)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny MLP checkpoint, broken variants of it, finished result folders and other obstacles."""
    d = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    ckpt = checkpoint.save(models.create("mlp", widths=[16], activation="relu"), d / "mlp.safetensors")
    f: dict[str, Path] = {"ckpt": ckpt, "root": d}
    f["file"] = d / "a_file.txt"
    f["file"].write_text("not a folder\n")
    f["dir"] = d / "a_folder"
    f["dir"].mkdir()
    f["missing"] = d / "missing.safetensors"
    f["empty"] = d / "empty.safetensors"
    f["empty"].write_bytes(b"")
    f["garbage"] = d / "garbage.safetensors"
    f["garbage"].write_bytes(b"garbage" * 10)
    f["truncated"] = d / "truncated.safetensors"
    f["truncated"].write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    f["plain"] = _raw_checkpoint(d / "plain.safetensors", None)
    f["noname"] = _raw_checkpoint(d / "noname.safetensors", json.dumps({"format": 1, "model": {"kwargs": {}}}))
    f["listmeta"] = _raw_checkpoint(d / "listmeta.safetensors", json.dumps([1, 2, 3]))
    f["badjson"] = _raw_checkpoint(d / "badjson.safetensors", "{not json")
    f["pickled"] = d / "mlp.pt"
    torch.save(models.create("mlp", widths=[16]).state_dict(), f["pickled"])
    f["lenet3"] = checkpoint.save(models.create("lenet", in_channels=3), d / "lenet3.safetensors")
    # finished runs: the files each command would write are already there
    for name, files_ in {"done": ("results.json", "results.csv", "results.md", "accuracy_vs_eps.png"),
                         "done_adaptive": ("adaptive.json", "adaptive.csv", "adaptive.md"),
                         "done_demo": ("results.json", "mlp.safetensors"),
                         "done_certify": ("certify.json",),
                         "done_search": ("cr_search.json", "forged.safetensors"),
                         "done_psat": ("Linf.safetensors", "psat_table.md")}.items():
        f[name] = d / name
        f[name].mkdir()
        for fn in files_:
            (f[name] / fn).write_text(json.dumps({"table": [{"eps": 0.0, "worst_case": 0.5}]}) + "\n")
    # a CIFAR-10 folder whose test batch is a pickle that would run a command if it were unpickled freely
    f["evil_cifar"] = d / "evil_cifar"
    (f["evil_cifar"] / "cifar-10-batches-py").mkdir(parents=True)
    f["evil_marker"] = d / "PWNED"
    (f["evil_cifar"] / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(_Evil(f["evil_marker"])))
    return f


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under ``roots``: type, mode, mtime and (files) bytes."""
    snap: dict[str, tuple] = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            st = p.lstat()
            snap[str(p)] = (st.st_mode, st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return snap


def _assert_one_line_error(rc: int, err: str, match: str) -> None:
    assert rc == 2, f"exit status {rc}, stderr {err!r}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("torchrobust: error: "), lines[0]
    assert match.lower() in lines[0].lower(), f"{match!r} not in {lines[0]!r}"


E = ["evaluate", "{ckpt}", "--n-examples", "8", "--eps", "0,0.1", "--steps", "1", "--out", "{out}"]
ADA = ["evaluate", "{ckpt}", "--n-examples", "8", "--eps", "0,0.1", "--steps", "1", "--suite", "adaptive"]
FORGE = ["forge", "{ckpt}", "--n-calib", "50"]
SEARCH = ["forge", "{ckpt}", "--search", "--n-calib", "50", "--n-val", "20", "--steps", "1", "--grid", "2**-7"]
CERT = ["certify", "{ckpt}", "--n-examples", "2", "--n0", "5", "--n", "10"]
DEMO = ["demo", "--epochs", "1", "--n-test", "8", "--steps", "1", "--p3-steps", "1"]
PSAT_TRAIN = ["psat", "train", "--n-train", "20", "--epochs", "1", "--steps", "1", "--members", "Linf"]

CLI_CASES: list[tuple[str, list[str], str]] = [
    # -- output paths (validated before any work)
    ("evaluate-out-is-file", [*E, "--out", "{file}"], "is a file"),
    ("evaluate-out-under-file", [*E, "--out", "{file}/sub"], "is a file"),
    ("evaluate-out-has-results", [*E, "--out", "{done}"], "--overwrite"),
    ("evaluate-adaptive-out-has-results", [*ADA, "--out", "{done_adaptive}"], "--overwrite"),
    ("evaluate-adaptive-out-is-file", [*ADA, "--out", "{file}"], "is a file"),
    ("demo-out-is-file", [*DEMO, "--out", "{file}"], "is a file"),
    ("demo-out-under-file", [*DEMO, "--out", "{file}/demo"], "is a file"),
    ("demo-out-has-results", [*DEMO, "--out", "{done_demo}"], "--overwrite"),
    ("forge-search-out-is-file", [*SEARCH, "--out", "{file}"], "is a file"),
    ("forge-search-out-under-file", [*SEARCH, "--out", "{file}/s"], "is a file"),
    ("forge-search-out-has-results", [*SEARCH, "--out", "{done_search}"], "--overwrite"),
    ("forge-out-exists", [*FORGE, "--c-r", "2**-7", "--out", "{ckpt}"], "already exists"),
    ("forge-out-is-folder", [*FORGE, "--c-r", "2**-7", "--out", "{dir}"], "is a folder"),
    ("forge-out-under-file", [*FORGE, "--c-r", "2**-7", "--out", "{file}/f.safetensors"], "is a file"),
    ("certify-out-is-file", [*CERT, "--out", "{file}"], "is a file"),
    ("certify-out-under-file", [*CERT, "--out", "{file}/c"], "is a file"),
    ("certify-out-has-results", [*CERT, "--out", "{done_certify}"], "--overwrite"),
    ("report-out-is-file", ["report", "{done}", "--out", "{file}"], "is a file"),
    ("report-out-under-file", ["report", "{done}", "--out", "{file}/r"], "is a file"),
    ("reprogram-out-exists", ["reprogram", "{ckpt}", "--out", "{ckpt}"], "already exists"),
    ("reprogram-out-is-folder", ["reprogram", "{ckpt}", "--out", "{dir}"], "is a folder"),
    ("psat-train-out-is-file", [*PSAT_TRAIN, "--out", "{file}"], "is a file"),
    ("psat-train-out-has-member", [*PSAT_TRAIN, "--out", "{done_psat}"], "--overwrite"),
    ("psat-evaluate-tables-exist", ["psat", "evaluate", "{done_psat}", "--n-examples", "4"], "--overwrite"),
    ("paper-out-is-file", ["paper", "table1", "--out", "{file}"], "is a file"),
    # -- numbers
    ("batch-size-0", [*E, "--batch-size", "0"], "--batch-size"),
    ("batch-size-negative", [*E, "--batch-size", "-5"], "--batch-size"),
    ("batch-size-not-int", [*E, "--batch-size", "ten"], "--batch-size"),
    ("eps-overflow", [*E, "--eps", "2**10000"], "--eps"),
    ("eps-inf", [*E, "--eps", "inf"], "--eps"),
    ("eps-nan", [*E, "--eps", "0,nan"], "--eps"),
    ("eps-1e400", [*E, "--eps", "1e400"], "--eps"),
    ("eps-negative", [*E, "--eps", "-0.1"], "--eps"),
    ("eps-empty", [*E, "--eps", ","], "--eps"),
    ("eps-complex", [*E, "--eps=-8**0.5"], "--eps"),
    ("eps-zero-division", [*E, "--eps", "0**-1"], "--eps"),
    ("eps-not-number", [*E, "--eps", "0.1,abc"], "--eps"),
    ("c-r-overflow", [*FORGE, "--c-r", "10**400", "--out", "{out}/f.safetensors"], "--c-r"),
    ("c-r-nan", [*FORGE, "--c-r", "nan", "--out", "{out}/f.safetensors"], "--c-r"),
    ("c-r-negative", [*FORGE, "--c-r", "-1", "--out", "{out}/f.safetensors"], "c_r"),
    ("grid-empty", [*SEARCH[:-2], "--grid", ",", "--out", "{out}"], "--grid"),
    ("grid-inf", [*SEARCH[:-2], "--grid", "2**-7,inf", "--out", "{out}"], "--grid"),
    ("threads-negative", [*E, "--threads", "-1"], "--threads"),
    ("threads-zero", [*E, "--threads", "0"], "--threads"),
    ("train-threads-zero", ["train", "--model", "mlp", "--threads", "0", "--out", "{out}/m.safetensors"],
     "--threads"),
    ("n-examples-0", [*E, "--n-examples", "0"], "--n-examples"),
    ("n-examples-negative", [*E, "--n-examples", "-3"], "--n-examples"),
    ("steps-0", [*E, "--steps", "0"], "--steps"),
    ("restarts-0", [*E, "--restarts", "0"], "--restarts"),
    ("certify-n-0", [*CERT, "--n", "0", "--out", "{out}"], "--n"),
    ("certify-sigma-nan", [*CERT, "--sigma", "nan", "--out", "{out}"], "--sigma"),
    ("certify-sigma-negative", [*CERT, "--sigma", "-0.25", "--out", "{out}"], "sigma"),
    ("certify-alpha-above-1", [*CERT, "--alpha", "2", "--out", "{out}"], "alpha"),
    ("demo-epochs-0", [*DEMO, "--epochs", "0", "--out", "{out}"], "--epochs"),
    ("demo-n-test-0", [*DEMO, "--n-test", "0", "--out", "{out}"], "--n-test"),
    ("reprogram-lam-above-1", ["reprogram", "{ckpt}", "--lam", "1.5", "--out", "{out}/r.safetensors"], "lam"),
    ("reprogram-lam-nan", ["reprogram", "{ckpt}", "--lam", "nan", "--out", "{out}/r.safetensors"], "--lam"),
    ("reprogram-K-negative", ["reprogram", "{ckpt}", "--K", "-1", "--out", "{out}/r.safetensors"], "--K"),
    ("paper-n-test-0", ["paper", "table1", "--n-test", "0", "--out", "{out}"], "--n-test"),
    # -- devices
    ("device-cuda-missing", [*E, "--device", CUDA_MISSING], "cuda"),
    ("device-bogus", [*E, "--device", "bogus"], "--device"),
    ("device-bad-index", [*E, "--device", "cuda:abc"], "--device"),
    ("device-meta", [*E, "--device", "meta"], "--device"),
    ("train-device-bogus", ["train", "--model", "mlp", "--device", "bogus", "--out", "{out}/m.safetensors"],
     "--device"),
    ("paper-device-bogus", ["paper", "table1", "--device", "bogus", "--out", "{out}"], "--device"),
    # -- checkpoints
    ("checkpoint-missing", [*E[:1], "{missing}", *E[2:]], "not found"),
    ("checkpoint-empty", [*E[:1], "{empty}", *E[2:]], "corrupt checkpoint"),
    ("checkpoint-garbage", [*E[:1], "{garbage}", *E[2:]], "corrupt checkpoint"),
    ("checkpoint-truncated", [*E[:1], "{truncated}", *E[2:]], "corrupt checkpoint"),
    ("checkpoint-is-folder", [*E[:1], "{dir}", *E[2:]], "a_folder"),
    ("checkpoint-no-metadata", [*E[:1], "{plain}", *E[2:]], "no torchrobust metadata"),
    ("checkpoint-metadata-no-name", [*E[:1], "{noname}", *E[2:]], "noname.safetensors"),
    ("checkpoint-metadata-list", [*E[:1], "{listmeta}", *E[2:]], "listmeta.safetensors"),
    ("checkpoint-metadata-not-json", [*E[:1], "{badjson}", *E[2:]], "not valid JSON"),
    ("checkpoint-pickled-pt", [*E[:1], "{pickled}", *E[2:]], "mlp.pt"),
    ("checkpoint-wrong-channels", [*E[:1], "{lenet3}", *E[2:]], "in_channels"),
    ("certify-checkpoint-garbage", ["certify", "{garbage}", "--out", "{out}"], "corrupt checkpoint"),
    ("forge-checkpoint-listmeta", [*FORGE[:1], "{listmeta}", *FORGE[2:], "--c-r", "2**-7", "--out",
                                   "{out}/f.safetensors"], "listmeta.safetensors"),
    ("reprogram-checkpoint-empty", ["reprogram", "{empty}", "--out", "{out}/r.safetensors"], "corrupt checkpoint"),
    # -- names, data and combinations
    ("unknown-attack", [*E, "--attacks", "pgdd"], "unknown attack 'pgdd'"),
    ("attacks-empty", [*E, "--attacks", ","], "--attacks"),
    ("unknown-threat", [*E, "--threat", "L7"], "unknown threat model"),
    ("unknown-dataset", [*E, "--data", "mnits"], "unknown dataset"),
    ("missing-dataset-files", [*E, "--data", "cifar10", "--data-root", "{out}/nodata"], "cifar10"),
    ("dataset-pickle-with-code", [*E, "--data", "cifar10", "--data-root", "{evil_cifar}"], "not allowed"),
    ("unknown-split", [*E, "--split", "validation"], "split"),
    ("unknown-suite", [*E, "--suite", "fast"], "--suite"),
    ("adaptive-with-attacks", [*ADA, "--attacks", "pgd", "--out", "{out}"], "--attacks"),
    ("adaptive-with-attack-arg", [*ADA, "--attack-arg", "pgd.alpha=0.1", "--out", "{out}"], "--attack-arg"),
    ("adaptive-only-eps-0", [*ADA, "--eps", "0", "--out", "{out}"], "eps > 0"),
    ("attack-arg-unknown-attack", [*E, "--attack-arg", "cw.steps=3"], "ATTACK.PARAM"),
    ("attack-arg-no-value", [*E, "--attack-arg", "pgd.alpha"], "KEY=VALUE"),
    ("attack-arg-unknown-param", [*E, "--attack-arg", "pgd.alphaa=0.1"], "alphaa"),
    ("forge-neither-c-r-nor-search", [*FORGE, "--out", "{out}/f.safetensors"], "--c-r"),
    ("forge-search-and-c-r", [*SEARCH, "--c-r", "2**-7", "--out", "{out}"], "--search"),
    ("forge-grid-without-search", [*FORGE, "--c-r", "2**-7", "--grid", "2**-7", "--out", "{out}/f.safetensors"],
     "--grid"),
    ("report-missing-run", ["report", "{out}/nothing"], "run folder not found"),
    ("report-no-results", ["report", "{dir}"], "no results"),
    ("reprogram-unknown-layers", ["reprogram", "{ckpt}", "--layers", "nope*", "--out", "{out}/r.safetensors"], "nope"),
    ("psat-unknown-member", ["psat", "train", "--members", "L7", "--out", "{out}"], "L7"),
    ("psat-nothing-to-train", ["psat", "train", "--members", ",", "--out", "{out}"], "nothing to train"),
    ("psat-unknown-autoattack", ["psat", "evaluate", "{dir}", "--autoattack", "apgd-x"], "apgd-x"),
    ("psat-evaluate-missing-run", ["psat", "evaluate", "{out}/none"], "not found"),
    ("paper-unknown-name", ["paper", "table99", "--out", "{out}"], "table99"),
    ("unknown-option", [*E, "--bogus-flag"], "--bogus-flag"),
    ("missing-checkpoint-argument", ["evaluate"], "checkpoint"),
    ("no-command", [], "command"),
    ("unknown-command", ["evaluat"], "evaluat"),
]


@pytest.mark.parametrize("argv,match", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_mistake_is_one_line_exit_2_and_writes_nothing(argv, match, files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output folders (results, ...) would land here and be seen
    subs = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path / "out")}
    args = [a.format(**subs) for a in argv]
    before = _snapshot(files["root"], tmp_path)
    rc = main([*args, "--quiet"] if args else args)
    err = capsys.readouterr().err
    _assert_one_line_error(rc, err, match)
    assert _snapshot(files["root"], tmp_path) == before, "the failed command changed files on disk"
    assert not files["evil_marker"].exists()


def test_at_least_sixty_distinct_cli_cases():
    assert len({c[0] for c in CLI_CASES}) == len(CLI_CASES) >= 60


# ------------------------------------------------------------------------------------------ real processes
@pytest.mark.parametrize("argv,match", [
    (["evaluate", "{garbage}", "--out", "{out}"], "corrupt checkpoint"),
    (["evaluate", "{ckpt}", "--eps", "2**10000", "--out", "{out}"], "--eps"),
    (["demo", "--out", "{file}"], "is a file"),
], ids=["corrupt-checkpoint", "eps-overflow", "demo-out-file"])
def test_subprocess_mistake_has_no_traceback(argv, match, files, tmp_path):
    subs = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path / "out")}
    before = _snapshot(files["root"], tmp_path)
    r = subprocess.run([sys.executable, "-m", "torchrobust.cli", *[a.format(**subs) for a in argv], "--quiet"],
                       capture_output=True, text=True, timeout=180, cwd=tmp_path,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    _assert_one_line_error(r.returncode, r.stderr, match)
    assert r.stdout == ""
    assert _snapshot(files["root"], tmp_path) == before


def _default_sigint() -> None:
    """A shell starts background jobs with SIGINT ignored, and a Python started with SIGINT ignored keeps ignoring
    it (no KeyboardInterrupt): give the child the default disposition a terminal's foreground process has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_exits_130_with_one_line(files, tmp_path):
    """Ctrl-C during an evaluation: exit status 130, last stderr line "torchrobust: interrupted", no traceback and
    no results file. (ε = 0.01 leaves most points robust, so early-stopping PGD-1000 runs for minutes.)"""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "torchrobust.cli", "evaluate", str(files["ckpt"]),
                             "--n-examples", "2000", "--attacks", "pgd", "--steps", "1000", "--eps", "0.01",
                             "--batch-size", "1", "--out", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_default_sigint)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # its first log line: the work has started
            line = proc.stderr.readline()
            lines.append(line)
            if " INFO " in line or not line:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)[::-1]
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + rest
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "torchrobust: interrupted"
    assert not (out / "results.json").exists()


# ------------------------------------------------------------------------------------------ overwrite / resume
def test_overwrite_flag_replaces_results_and_without_it_nothing_changes(files, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["evaluate", str(files["ckpt"]), "--n-examples", "8", "--eps", "0,0.1", "--steps", "1", "--out",
            str(out), "--quiet"]
    assert main(argv) == 0
    first = (out / "results.json").read_bytes()
    snap = _snapshot(out)
    capsys.readouterr()
    assert main(argv) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "already holds results (results.json)")
    assert _snapshot(out) == snap
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "results.json").read_bytes())["table"] == json.loads(first)["table"]


def test_adaptive_resumes_in_place_but_refuses_a_finished_run(files, tmp_path, capsys):
    """An interrupted adaptive run (state files, no adaptive.json) resumes in the same --out; a finished one is
    refused without --overwrite."""
    out = tmp_path / "ad"
    argv = ["evaluate", str(files["ckpt"]), "--n-examples", "6", "--eps", "0.3", "--steps", "2", "--suite",
            "adaptive", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    doc = json.loads((out / "adaptive.json").read_text())
    (out / "adaptive.json").unlink()  # as if killed after the per-ε state was saved
    assert main(argv) == 0
    assert json.loads((out / "adaptive.json").read_text())["table"] == doc["table"]
    capsys.readouterr()
    assert main(argv) == 2
    _assert_one_line_error(2, capsys.readouterr().err, "--overwrite")
    assert main([*argv, "--overwrite"]) == 0


def test_corrupt_adaptive_state_is_refused_not_unpickled(files, tmp_path, capsys):
    """A corrupt, empty or pickled resume state in --out is never trusted nor overwritten: one line on stderr, exit
    2, the bad files untouched, nothing unpickled (torchrobust.resume's contract)."""
    argv = ["evaluate", str(files["ckpt"]), "--n-examples", "6", "--eps", "0.3", "--steps", "2", "--suite",
            "adaptive", "--quiet"]
    clean = tmp_path / "clean"
    assert main([*argv, "--out", str(clean)]) == 0
    states = sorted(p.name for p in clean.iterdir() if p.name.startswith("state_") and p.suffix == ".safetensors")
    assert states
    marker = tmp_path / "PWNED"
    for kind in ("empty", "garbage", "pickle"):
        broken = tmp_path / kind
        broken.mkdir()
        for name in states:
            if kind == "pickle":
                (broken / name).write_bytes(pickle.dumps(_Evil(marker)))
            else:
                (broken / name).write_bytes(b"" if kind == "empty" else b"\x00garbage" * 4)
        before = _snapshot(broken)
        capsys.readouterr()
        rc = main([*argv, "--out", str(broken)])
        _assert_one_line_error(rc, capsys.readouterr().err, "delete it or choose another output folder")
        assert _snapshot(broken) == before, kind
        assert not marker.exists()


@pytest.mark.parametrize("kind", ["garbage", "pickle"])
def test_cli_sweep_refuses_foreign_state_in_out(files, tmp_path, capsys, kind):
    """``torchrobust evaluate CKPT --out DIR`` (sweep suite) where DIR holds a foreign state.safetensors."""
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "PWNED"
    (out / "state.safetensors").write_bytes(os.urandom(512) if kind == "garbage" else pickle.dumps(_Evil(marker)))
    before = _snapshot(out)
    rc = main(["evaluate", str(files["ckpt"]), "--n-examples", "8", "--eps", "0,0.1", "--steps", "1", "--out",
               str(out), "--quiet"])
    err = capsys.readouterr().err
    _assert_one_line_error(rc, err, "state.safetensors")
    assert "delete it or choose another output folder" in err
    assert _snapshot(out) == before and not marker.exists()


def test_unwritable_out_is_refused_before_work(files, tmp_path, capsys, monkeypatch):
    """A folder the user may not write to (simulated: the tests may run as root, who may write anywhere)."""
    import torchrobust.validation as V

    real_access = os.access
    monkeypatch.setattr(V.os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    before = _snapshot(tmp_path)
    for argv in (["evaluate", str(files["ckpt"]), "--out", str(tmp_path / "o")],
                 ["certify", str(files["ckpt"]), "--out", str(tmp_path / "o")],
                 ["demo", "--out", str(tmp_path / "o")],
                 ["forge", str(files["ckpt"]), "--search", "--out", str(tmp_path / "o")],
                 ["report", str(files["done"]), "--out", str(tmp_path / "o")],
                 ["reprogram", str(files["ckpt"]), "--out", str(tmp_path / "r.safetensors")]):
        assert main([*argv, "--quiet"]) == 2, argv
        _assert_one_line_error(2, capsys.readouterr().err, "not writable")
    assert _snapshot(tmp_path) == before


def test_help_exits_0(capsys):
    assert main(["evaluate", "--help"]) == 0
    assert "--overwrite" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the library API
def _x(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("mlp", widths=[16], activation="relu").eval()


def _with_nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[0, 0, 3, 3] = float("nan")
    return x


def _pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **kw: object) -> torch.Tensor:
    return attacks.create("pgd", **{"threat": "Linf", "eps": 0.1, "steps": 2, **kw})(model, x, y)


def _forge(x: torch.Tensor) -> object:
    from torchrobust.forging import forge

    return forge(_mlp(), x, c_r=2**-7)


def _evil_pt(path: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump({"w": _Evil(path.with_name("PWNED_PT"))}, fh)
    return path


API_CASES = [
    ("save-to-folder", lambda d: tr.save(_mlp(), d), "folder|directory"),
    ("save-under-file", lambda d: tr.save(_mlp(), (d / "f.txt").write_text("x") and d / "f.txt" / "m.safetensors"),
     ""),
    ("save-without-spec", lambda d: tr.save(torch.nn.Linear(2, 2), d / "m.safetensors"), "torchrobust_spec"),
    ("save-unjsonable-metadata", lambda d: tr.save(_mlp(), d / "m.safetensors", note=object()), "JSON"),
    ("load-missing", lambda d: checkpoint.load(d / "none.safetensors"), "not found"),
    ("load-metadata-list", lambda d: checkpoint.load(_raw_checkpoint(d / "l.safetensors", "[1]")), ""),
    ("load-metadata-no-name", lambda d: checkpoint.load(_raw_checkpoint(d / "n.safetensors", '{"format": 1, '
                                                                        '"model": {}}')), ""),
    ("load-pickle-with-code", lambda d: checkpoint.load_state_dict_file(_evil_pt(d / "evil.pt")), ""),
    ("float64-model-float32-input-pgd", lambda d: _pgd(_mlp().double(), *_x()), "float64"),
    ("float64-model-float32-input-accuracy",
     lambda d: __import__("torchrobust.evaluate", fromlist=["accuracy"]).accuracy(_mlp().double(), *_x()),
     "float64"),
    ("nan-pixel-to-forge", lambda d: _forge(_with_nan(_x()[0])), "NaN"),
    ("nan-pixel-to-attack", lambda d: _pgd(_mlp(), _with_nan(_x()[0]), _x()[1]), "NaN"),
    ("pixels-above-1", lambda d: _pgd(_mlp(), _x()[0] * 2, _x()[1]), "[0, 1]"),
    ("uint8-pixels", lambda d: _pgd(_mlp(), (_x()[0] * 255).to(torch.uint8), _x()[1]), "uint8"),
    ("wrong-channels", lambda d: _pgd(_mlp(), torch.rand(2, 3, 28, 28), torch.tensor([0, 1])), ""),
    ("labels-out-of-range", lambda d: _pgd(_mlp(), _x()[0], torch.full((4,), 10)), "label"),
    ("labels-wrong-length", lambda d: _pgd(_mlp(), _x()[0], torch.tensor([0, 1])), "shape"),
    ("eps-negative", lambda d: _pgd(_mlp(), *_x(), eps=-0.1), "eps"),
    ("eps-nan", lambda d: _pgd(_mlp(), *_x(), eps=float("nan")), "eps"),
    ("eps-inf", lambda d: _pgd(_mlp(), *_x(), eps=float("inf")), "eps"),
    ("steps-0", lambda d: _pgd(_mlp(), *_x(), steps=0), "steps"),
    ("unknown-attack", lambda d: attacks.create("pgdd"), "pgdd"),
    ("unknown-model", lambda d: models.create("mpl"), "mpl"),
    ("sweep-no-eps", lambda d: __import__("torchrobust.evaluate", fromlist=["sweep"]).sweep(
        _mlp(), *_x(), attacks=["pgd"], eps=[]), "eps"),
    ("output-dir-is-file", lambda d: validation.check_output_dir((d / "f").write_text("x") and d / "f"),
     "is a file"),
    ("output-file-is-dir", lambda d: validation.check_output_file(d), "is a folder"),
]


@pytest.mark.parametrize("fn,match", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_one_line_error(fn, match, tmp_path):
    with pytest.raises(TorchRobustError) as info:
        fn(tmp_path)
    msg = str(info.value)
    assert msg.strip() and "\n" not in msg.strip()
    if match:
        assert any(m.lower() in msg.lower() for m in match.split("|")), msg
    assert not any(p.name.startswith("PWNED") for p in tmp_path.iterdir())


def test_nan_weight_model_is_never_reported_reliable(files, tmp_path, capsys):
    """A checkpoint whose weights hold NaN evaluates (exit 0) but its table is flagged NONFINITE, not reliable."""
    m = _mlp()
    with torch.no_grad():
        m.fc1.weight[0, 0] = float("nan")
    ck = checkpoint.save(m, tmp_path / "nan.safetensors")
    out = tmp_path / "res"
    assert main(["evaluate", str(ck), "--n-examples", "8", "--eps", "0,0.1", "--steps", "1", "--out", str(out),
                 "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["reliable"] is False and "NONFINITE" in {f["code"] for f in doc["flags"]}
    assert "UNRELIABLE" in (out / "results.md").read_text()
